"""Read-only views of audit results, shared by `datacure issues` and the report."""

from __future__ import annotations

import polars as pl

from ..store import Store
from ..store import schema as S
from ..store.errors import InputError

SNIPPET = 160  # characters of text shown per row


def resolve_run(store: Store, run_id: int | None = None, auditor: str | None = None) -> int:
    """The run id to show (default: the latest), checking that it exists and, when `auditor` is
    given, that the auditor ran in it (a skipped auditor's reason is the error)."""
    run = run_id if run_id is not None else store.latest_run_id()
    if run is None:
        raise InputError(
            f"the store {store.path} has no audit run", f"run `datacure audit --db {store.path}`"
        )
    ran = [
        r[0]
        for r in store.fetchall(
            f"SELECT DISTINCT auditor FROM {S.ISSUE_SUMMARY} WHERE run_id = ? ORDER BY 1", [run]
        )
    ]
    if not ran and not store.fetchone(f"SELECT 1 FROM {S.RUNS} WHERE run_id = ?", [run]):
        raise InputError(f"no audit run {run}", "list runs with `datacure sql 'FROM runs'`")
    if auditor is not None and auditor not in ran:
        skipped = store.fetchone(
            f"SELECT reason FROM {S.SKIPPED} WHERE run_id = ? AND auditor = ?", [run, auditor]
        )
        if skipped:
            raise InputError(
                f"auditor {auditor!r} was skipped in run {run}: {skipped[0]}",
                "give it what it needs and run `datacure audit` again",
            )
        raise InputError(
            f"auditor {auditor!r} did not run in run {run}",
            f"auditors in that run: {', '.join(ran) or 'none'}",
        )
    return run


def worst_issues(
    store: Store, auditor: str | None = None, top: int = 20, run_id: int | None = None
) -> pl.DataFrame:
    """The `top` most severe flagged rows of a run (default: the latest), lowest score first.

    Columns: auditor, row_id, split, score, the row's text (first 160 characters) or image path,
    given_label (the label in `samples`), suggested_label (from the auditor's details, when it
    makes one) and the remaining details as JSON."""
    if top < 1:
        raise InputError(f"--top must be at least 1, got {top}", "pass --top 20, for example")
    run = resolve_run(store, run_id, auditor)
    text_col = store.text_column()
    if text_col and text_col in {c for c, _ in store.columns(S.SAMPLES)}:
        content = f"left(s.{S.quote(text_col)}::VARCHAR, {SNIPPET}) AS text"
    elif S.IMAGE_PATH in {c for c, _ in store.columns(S.SAMPLES)}:
        content = f"s.{S.IMAGE_PATH} AS image_path"
    else:
        content = "NULL::VARCHAR AS text"
    where = "i.run_id = ? AND i.is_issue" + (" AND i.auditor = ?" if auditor else "")
    params: list = [run] + ([auditor] if auditor else []) + [int(top)]
    return store.polars(
        f"""
        SELECT i.auditor, i.row_id, s.{S.SPLIT} AS split, round(i.score, 4) AS score, {content},
               s.{S.LABEL}::VARCHAR AS given_label,
               i.details ->> 'suggested_label' AS suggested_label,
               json_merge_patch(coalesce(i.details, '{{}}'::JSON),
                                '{{"given_label": null, "suggested_label": null}}')::VARCHAR
                   AS details
        FROM {S.ISSUES} i LEFT JOIN {S.SAMPLES} s USING ({S.ROW_ID})
        WHERE {where}
        ORDER BY i.score, i.auditor, i.row_id
        LIMIT ?
        """,
        params,
    )


def run_summary(store: Store, run_id: int | None = None) -> pl.DataFrame:
    """One row per auditor of a run: status (ok or skipped), flagged rows, audited rows, share,
    dataset-level score, and the skip reason."""
    run = resolve_run(store, run_id)
    return store.polars(
        f"""
        WITH counts AS (
            SELECT auditor, count(*) AS num_rows FROM {S.ISSUES} WHERE run_id = ? GROUP BY 1
        )
        SELECT u.auditor, 'ok' AS status, u.num_issues, coalesce(c.num_rows, 0) AS num_rows,
               CASE WHEN coalesce(c.num_rows, 0) > 0 THEN u.num_issues / c.num_rows END AS share,
               u.score, NULL::VARCHAR AS reason
        FROM {S.ISSUE_SUMMARY} u LEFT JOIN counts c USING (auditor)
        WHERE u.run_id = ?
        UNION ALL
        SELECT auditor, 'skipped', NULL, NULL, NULL, NULL, reason
        FROM {S.SKIPPED} WHERE run_id = ?
        ORDER BY status, auditor
        """,
        [run, run, run],
    )


def issue_rows(
    store: Store,
    auditor: str | None = None,
    top: int | None = 20,
    run_id: int | None = None,
    flagged_only: bool = True,
) -> pl.DataFrame:
    """Rows of a run's issues, worst first, for notebooks: auditor, row_id, score, is_issue,
    each `details` field as its own column, then the row's own columns from `samples`. A details
    field whose name is also a samples column is kept as `<name>_details`."""
    if top is not None and top < 1:
        raise InputError(f"top must be at least 1, got {top}", "pass top=20, for example")
    run = resolve_run(store, run_id, auditor)
    where = (
        "run_id = ?"
        + (" AND auditor = ?" if auditor else "")
        + (" AND is_issue" if flagged_only else "")
    )
    params: list = [run] + ([auditor] if auditor else [])
    limit = f"LIMIT {int(top)}" if top is not None else ""
    found = store.polars(
        f"SELECT auditor, {S.ROW_ID}, score, is_issue, details::VARCHAR AS details "
        f"FROM {S.ISSUES} WHERE {where} ORDER BY score, auditor, {S.ROW_ID} {limit}",
        params,
    )
    sample_cols = [c for c, _ in store.columns(S.SAMPLES) if c != S.CONTENT_HASH]
    rows = store.polars(
        f"SELECT {', '.join(S.quote(c) for c in sample_cols)} FROM {S.SAMPLES} "
        f"WHERE {S.ROW_ID} IN (SELECT unnest(?::BIGINT[]))",
        [found[S.ROW_ID].to_list()],
    )
    details = found.select("details")
    if found.height and details["details"].drop_nulls().len():
        decoded = details["details"].str.json_decode(infer_schema_length=None)
        if isinstance(decoded.dtype, pl.Struct):
            fields = decoded.struct.unnest()
            taken = set(sample_cols) | {"auditor", "score", "is_issue"}
            fields = fields.rename({c: f"{c}_details" for c in fields.columns if c in taken})
            found = pl.concat([found.drop("details"), fields], how="horizontal")
    else:
        found = found.drop("details")
    return found.join(rows, on=S.ROW_ID, how="left", maintain_order="left")
