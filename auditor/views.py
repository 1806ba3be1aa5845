"""Read-only views of audit results, shared by `datacure issues` and the report."""

from __future__ import annotations

import polars as pl

from store import Store
from store import schema as S
from store.errors import InputError

SNIPPET = 160  # characters of text shown per row


def worst_issues(
    store: Store, auditor: str | None = None, top: int = 20, run_id: int | None = None
) -> pl.DataFrame:
    """The `top` most severe flagged rows of a run (default: the latest), lowest score first.

    Columns: auditor, row_id, split, score, the row's text (first 160 characters) or image path,
    given_label (the label in `samples`), suggested_label (from the auditor's details, when it
    makes one) and the remaining details as JSON."""
    if top < 1:
        raise InputError(f"--top must be at least 1, got {top}", "pass --top 20, for example")
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
