"""The edits table for people: list planned edits with a preview of their rows, and accept or
reject them by id or rule (`datacure edits`)."""

from __future__ import annotations

import polars as pl

from ..store import schema as S
from ..store.errors import InputError
from .policy import ACCEPTED, ADD, REJECTED


# --- listing and reviewing -----------------------------------------------------------------------
def list_edits(store, top: int = 50, status: str | None = None) -> pl.DataFrame:
    """Planned edits with the row's split, current label and a preview of its text or image."""
    if not store.table_exists(S.EDITS):
        return pl.DataFrame()
    text_col, image_col = store.text_column(), store.image_column()
    cols = [c for c, _ in store.columns(S.SAMPLES)] if store.table_exists(S.SAMPLES) else []
    preview = "NULL"
    if text_col and text_col in cols:
        preview = f"left(s.{S.quote(text_col)}::VARCHAR, 80)"
    elif image_col and S.IMAGE_PATH in cols:
        preview = f"s.{S.IMAGE_PATH}"
    gen_preview = "coalesce(left(g.text, 80), g.image_path)"
    where = "WHERE e.status = ?" if status else ""
    limit = f"LIMIT {int(top)}" if top else ""
    return store.polars(
        f"SELECT e.edit_id, e.action, e.reason, e.status, e.row_id, "
        f"coalesce(s.split, g.split) AS split, "
        f"coalesce(s.label::VARCHAR, g.label) AS label, e.new_label, "
        f"json_extract(e.details, '$.copies')::INT AS copies, "
        f"coalesce({gen_preview}, {preview}) AS content "
        f"FROM {S.EDITS} e LEFT JOIN {S.SAMPLES} s ON s.row_id = e.row_id "
        f"LEFT JOIN {S.GENERATED} g ON g.row_id = e.row_id AND e.action = '{ADD}' "
        f"{where} ORDER BY e.edit_id {limit}",
        [status] if status else None,
    )


def _select_edits(store, spec: str) -> list[int]:
    """Edit ids named by `spec`: comma-separated ids, 'all', or action/reason/auditor names
    (a name may also be `kind:oversample` or `kind:generated`)."""
    ids, names = [], []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part.isdigit():
            ids.append(int(part))
        else:
            names.append(part.lower())
    found = set()
    if ids:
        have = {r[0] for r in store.fetchall(f"SELECT edit_id FROM {S.EDITS}")}
        missing = sorted(set(ids) - have)
        if missing:
            raise InputError(
                f"no edit with id {', '.join(map(str, missing))}",
                "list the edits with `datacure edits`",
            )
        found |= set(ids)
    for name in names:
        if name == "all":
            rows = store.fetchall(f"SELECT edit_id FROM {S.EDITS}")
        elif name.startswith("kind:"):
            rows = store.fetchall(
                f"SELECT edit_id FROM {S.EDITS} WHERE json_extract_string(details, '$.kind') = ?",
                [name[5:]],
            )
        else:
            rows = store.fetchall(
                f"SELECT edit_id FROM {S.EDITS} WHERE lower(action) = ? OR lower(reason) = ? "
                "OR lower(auditor) = ?",
                [name, name, name],
            )
            if not rows:
                known = store.fetchall(
                    f"SELECT DISTINCT action FROM {S.EDITS} UNION SELECT DISTINCT reason FROM "
                    f"{S.EDITS}"
                )
                raise InputError(
                    f"no edit matches {name!r}",
                    "use edit ids, 'all', or one of: "
                    + ", ".join(sorted({str(k[0]) for k in known if k[0]})),
                )
        found |= {int(r[0]) for r in rows}
    return sorted(found)


def review_edits(
    store, accept: str | None = None, reject: str | None = None, note: str = ""
) -> int:
    """Accept or reject edits by id or rule; returns how many edits changed status.

    Each decision is also recorded in `reviews` (row_id, auditor, decision), so a later plan
    knows the row was reviewed. When a rule names edits on both sides, reject wins."""
    acc = _select_edits(store, accept) if accept else []
    rej = _select_edits(store, reject) if reject else []
    acc = [a for a in acc if a not in set(rej)]
    changed = 0
    with store.transaction():
        for ids, status in ((acc, ACCEPTED), (rej, REJECTED)):
            if not ids:
                continue
            frame = pl.DataFrame({"edit_id": ids}, schema={"edit_id": pl.Int32})
            store.con.register("_dc_ids", frame.to_arrow())
            try:
                changed += int(
                    store.scalar(
                        f"SELECT count(*) FROM {S.EDITS} WHERE status != ? AND edit_id IN "
                        "(SELECT edit_id FROM _dc_ids)",
                        [status],
                    )
                )
                store.execute(
                    f"UPDATE {S.EDITS} SET status = ? "
                    "WHERE edit_id IN (SELECT edit_id FROM _dc_ids)",
                    [status],
                )
                # `reviews` records that a reviewer rejected the flag behind a dropped/relabelled
                # row (adds are not flags, so they are not recorded there).
                store.execute(
                    f"DELETE FROM {S.REVIEWS} WHERE (row_id, auditor) IN (SELECT row_id, auditor "
                    f"FROM {S.EDITS} WHERE edit_id IN (SELECT edit_id FROM _dc_ids) "
                    f"AND action != '{ADD}')"
                )
                store.execute(
                    f"INSERT INTO {S.REVIEWS} SELECT row_id, auditor, "
                    f"CASE WHEN ? = '{ACCEPTED}' THEN 'accept' ELSE 'reject' END, "
                    "new_label, now(), "
                    f"'edit ' || edit_id::VARCHAR || CASE WHEN ? = '' THEN '' ELSE ': ' || ? END "
                    f"FROM {S.EDITS} WHERE edit_id IN (SELECT edit_id FROM _dc_ids) "
                    f"AND action != '{ADD}'",
                    [status, note, note],
                )
            finally:
                store.con.unregister("_dc_ids")
    return changed
