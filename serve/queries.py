"""What the browser app reads from the store: lists filtered and paginated in DuckDB, one row with
its evidence, the findings, the embedding map, the planned edits (the SQL console's reads are
in serve/console.py).

Every function takes an open `Store` and returns plain JSON-safe data (the JSON API returns it
as is; the pages render it). Lists never leave DuckDB unfiltered: a page of 50 flags of a 1M-row
store reads the page, not the table. Summaries come from the report (`report/summary.py`) and the
views (`auditor/views.py`) so the app, `datacure report` and `datacure issues` agree.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..report.summary import _clip, _loads, _safe, build_summary
from ..store import schema as S
from ..store.errors import InputError

SNIPPET = 240  # characters of text per row in lists
MAX_PAGE = 500  # rows per page at most (lists and the SQL console)
NEIGHBOURS = 10
PARTNERS = 8  # partner rows shown per flag


class NotFound(InputError):
    """A row, page or auditor that does not exist (HTTP 404)."""


def _content(st) -> tuple[str | None, bool]:
    """(text column present in samples, whether rows are images); looked up once per open
    store (a request), not once per query."""
    hit = getattr(st, "_dc_content", None)
    if hit is None:
        cols = {c for c, _ in st.columns(S.SAMPLES)}
        text_col = st.text_column()
        hit = st._dc_content = ((text_col if text_col in cols else None), S.IMAGE_PATH in cols)
    return hit


def latest_run(st, run_id: int | None = None) -> int | None:
    if run_id is not None:
        if not st.fetchone(f"SELECT 1 FROM {S.RUNS} WHERE run_id = ?", [int(run_id)]):
            raise NotFound(f"no audit run {run_id}", "leave out run= to see the latest run")
        return int(run_id)
    return st.latest_run_id()


# --- overview ----------------------------------------------------------------------------------
def summary(st) -> dict:
    """The report's summary without examples and map (those have their own pages)."""
    out = build_summary(st, max_examples=0, map_points=0)
    out.pop("embedding_map", None)
    for a in out.get("auditors") or []:
        a.pop("examples", None)
    return out


def auditors(st, run_id: int | None) -> list[dict]:
    """Auditors of a run with their flag counts (for filters and navigation)."""
    if run_id is None:
        return []
    rows = st.fetchall(
        f"SELECT u.auditor, u.num_issues, u.score FROM {S.ISSUE_SUMMARY} u "
        "WHERE u.run_id = ? ORDER BY u.auditor",
        [run_id],
    )
    return [{"name": a, "flagged": int(n or 0), "score": s} for a, n, s in rows]


def labels(st, limit: int = 200) -> list[str]:
    return [
        r[0]
        for r in st.fetchall(
            f"SELECT label::VARCHAR FROM {S.SAMPLES} WHERE label IS NOT NULL GROUP BY 1 "
            "ORDER BY count(*) DESC, 1 LIMIT ?",
            [limit],
        )
    ]


# --- flagged rows --------------------------------------------------------------------------------
@dataclass
class IssueFilter:
    """The filters of a list of flags; every field optional. `reviewed`: any, yes or no."""

    auditor: str | None = None
    split: str | None = None
    label: str | None = None
    q: str | None = None
    min_score: float | None = None
    max_score: float | None = None
    reviewed: str = "any"
    run: int | None = None

    @classmethod
    def from_query(cls, params) -> IssueFilter:
        """From URL query parameters (or a JSON object); empty values mean no filter."""
        vals: dict[str, Any] = {}
        for f in fields(cls):
            raw = params.get(f.name)
            if raw is None or (isinstance(raw, str) and raw.strip() == ""):
                continue
            if f.name in ("min_score", "max_score"):
                try:
                    raw = float(raw)
                except (TypeError, ValueError):
                    raise InputError(
                        f"{f.name}={raw!r} is not a number", f"give {f.name} in [0, 1]"
                    ) from None
            elif f.name == "run":
                try:
                    raw = int(raw)
                except (TypeError, ValueError):
                    raise InputError(f"run={raw!r} is not a run id", "give an integer") from None
            elif f.name == "reviewed":
                if raw not in ("any", "yes", "no"):
                    raise InputError(f"reviewed={raw!r}", "use any, yes or no")
            else:
                raw = str(raw)
            vals[f.name] = raw
        return cls(**vals)

    def as_query(self) -> dict[str, str]:
        """The non-default filters as URL parameters."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and v != "" and not (f.name == "reviewed" and v == "any"):
                out[f.name] = str(v)
        return out


def _where(st, flt: IssueFilter, run_id: int) -> tuple[str, list]:
    """WHERE clause over `issues i` for a filter (sample filters as a semi-join on row_id)."""
    where, params = ["i.run_id = ?", "i.is_issue"], [run_id]
    if flt.auditor:
        where.append("i.auditor = ?")
        params.append(flt.auditor)
    if flt.min_score is not None:
        where.append("i.score >= ?")
        params.append(flt.min_score)
    if flt.max_score is not None:
        where.append("i.score <= ?")
        params.append(flt.max_score)
    sample_where, sample_params = [], []
    if flt.split:
        sample_where.append(f"{S.SPLIT} = ?")
        sample_params.append(flt.split)
    if flt.label:
        sample_where.append(f"{S.LABEL}::VARCHAR = ?")
        sample_params.append(flt.label)
    if flt.q:
        text_col, image = _content(st)
        col = text_col or (S.IMAGE_PATH if image else None)
        if col is None:
            raise InputError("this store has no text to search", "leave the search box empty")
        # contains(), not LIKE: the user's % and _ are plain characters
        sample_where.append(f"contains(lower({S.quote(col)}::VARCHAR), lower(?))")
        sample_params.append(flt.q)
    if sample_where:
        where.append(
            f"i.row_id IN (SELECT {S.ROW_ID} FROM {S.SAMPLES} WHERE {' AND '.join(sample_where)})"
        )
        params += sample_params
    if flt.reviewed in ("yes", "no"):
        neg = "NOT " if flt.reviewed == "no" else ""
        where.append(
            f"{neg}EXISTS (SELECT 1 FROM {S.REVIEWS} r "
            "WHERE r.row_id = i.row_id AND r.auditor = i.auditor)"
        )
    return " AND ".join(where), params


def _details(det) -> dict:
    """A flag's `details` JSON as a dict (anything else under the key "details")."""
    details = _loads(det) or {}
    return details if isinstance(details, dict) else {"details": details}


def _suggested(details: dict) -> str | None:
    for key in ("suggested_label", "suggestion"):
        if details.get(key) is not None:
            return str(details[key])
    return None


def list_issues(st, flt: IssueFilter, limit: int = 50, offset: int = 0, count=True) -> dict:
    """One page of flagged rows, worst first (lowest score), with the row's split, label, a text
    snippet (or whether it has an image), the suggested label and the review decision. `count`:
    True for the filter's total, False for none, or a function (store, filter) -> total."""
    limit = max(1, min(int(limit), MAX_PAGE))
    offset = max(0, int(offset))
    run_id = latest_run(st, flt.run)
    if run_id is None:
        return {"run_id": None, "rows": [], "total": 0, "limit": limit, "offset": offset}
    page = _issue_page(st, flt, run_id, limit, offset)
    # the page's rows of `samples` and `reviews` by id, as a list parameter (a join with the
    # page read the text column of far more rows)
    ids = sorted({int(p[0]) for p in page})
    samples, reviews = _page_samples(st, ids), _page_reviews(st, ids)
    out = [
        _issue_row(
            rid,
            aud,
            score,
            _details(det),
            samples.get(rid, (None, None, None, False)),
            reviews.get((rid, aud), (None, None)),
        )
        for rid, aud, score, det in page
    ]
    total = count(st, flt) if callable(count) else (count_issues(st, flt) if count else None)
    return _safe({"run_id": run_id, "rows": out, "total": total, "limit": limit, "offset": offset})


def _issue_page(st, flt: IssueFilter, run_id: int, limit: int, offset: int) -> list[tuple]:
    """(row_id, auditor, score, details) of the page's flags, worst first."""
    where, params = _where(st, flt, run_id)
    # Two passes over `issues`: the score of the last row of the page (a top-N of one column),
    # then the page's rows with their details among the rows at or under it. DuckDB then reads
    # the wide `details` column only where a row passes, not for every flagged row.
    order = "ORDER BY i.score, i.auditor, i.row_id LIMIT ? OFFSET ?"
    if flt.split or flt.label or flt.q:
        # the samples filter already keeps few rows; a second pass would run it twice
        sql = f"SELECT i.row_id, i.auditor, i.score, i.details::VARCHAR FROM {S.ISSUES} i "
        return st.fetchall(f"{sql} WHERE {where} {order}", [*params, limit, offset])
    return st.fetchall(
        f"""
        SELECT i.row_id, i.auditor, i.score, i.details::VARCHAR FROM {S.ISSUES} i
        WHERE {where} AND i.score <= (
            SELECT max(score) FROM (
                SELECT i.score FROM {S.ISSUES} i WHERE {where} ORDER BY i.score LIMIT ?
            )
        )
        {order}
        """,
        [*params, *params, offset + limit, limit, offset],
    )


def _page_samples(st, ids: list[int]) -> dict[int, tuple]:
    """row_id -> (split, label, text snippet, has_image) of the page's rows."""
    text_col, image = _content(st)
    content = (
        f"left(s.{S.quote(text_col)}::VARCHAR, {SNIPPET + 1}) AS text"
        if text_col
        else "NULL::VARCHAR AS text"
    )
    has_image = f"s.{S.IMAGE_PATH} IS NOT NULL AS has_image" if image else "false AS has_image"
    return {
        r[0]: r[1:]
        for r in st.fetchall(
            f"SELECT s.{S.ROW_ID}, s.{S.SPLIT}, s.{S.LABEL}::VARCHAR, {content}, {has_image} "
            f"FROM {S.SAMPLES} s WHERE s.{S.ROW_ID} IN (SELECT unnest(?::BIGINT[]))",
            [ids],
        )
    }


def _page_reviews(st, ids: list[int]) -> dict[tuple, tuple]:
    """(row_id, auditor) -> (decision, new_label) of the page's rows."""
    return {
        (r[0], r[1]): r[2:]
        for r in st.fetchall(
            f"SELECT row_id, auditor, decision, new_label FROM {S.REVIEWS} "
            "WHERE row_id IN (SELECT unnest(?::BIGINT[]))",
            [ids],
        )
    }


def _issue_row(rid, aud, score, details: dict, sample: tuple, review: tuple) -> dict:
    """One flag of the list: its row's split, label and snippet, and its review."""
    split, label, text, img = sample
    decision, new_label = review
    if isinstance(text, str) and len(text) > SNIPPET:
        text = text[: SNIPPET - 1] + "\u2026"
    return {
        S.ROW_ID: rid,
        "auditor": aud,
        "score": score,
        "details": details,
        "split": split,
        "label": label,
        "suggested_label": _suggested(details),
        "text": text,
        "has_image": bool(img),
        "review": {"decision": decision, "new_label": new_label} if decision else None,
    }


def count_issues(st, flt: IssueFilter) -> int:
    """How many flags a filter selects."""
    run_id = latest_run(st, flt.run)
    if run_id is None:
        return 0
    where, params = _where(st, flt, run_id)
    return int(st.scalar(f"SELECT count(*) FROM {S.ISSUES} i WHERE {where}", params))


def matching_flags(st, flt: IssueFilter):
    """Every (row_id, auditor) flag a filter selects, as an Arrow table (for bulk reviews)."""
    run_id = latest_run(st, flt.run)
    if run_id is None:
        raise InputError("the store has no audit run", "run `datacure audit` first")
    where, params = _where(st, flt, run_id)
    return run_id, st.arrow(f"SELECT i.row_id, i.auditor FROM {S.ISSUES} i WHERE {where}", params)


# --- one row ----------------------------------------------------------------------------------
def _sample_rows(st, row_ids: list[int], full: bool = False) -> dict[int, dict]:
    """Rows of `samples` by id: every column but the content hash (text clipped unless full)."""
    if not row_ids:
        return {}
    cols = [c for c, _ in st.columns(S.SAMPLES) if c != S.CONTENT_HASH]
    text_col, _ = _content(st)
    sel = []
    for c in cols:
        if c == text_col and not full:
            sel.append(f"left({S.quote(c)}::VARCHAR, {SNIPPET + 1}) AS {S.quote(c)}")
        else:
            sel.append(S.quote(c))
    cur = st.execute(
        f"SELECT {', '.join(sel)} FROM {S.SAMPLES} "
        f"WHERE {S.ROW_ID} IN (SELECT unnest(?::BIGINT[]))",
        [[int(r) for r in row_ids]],
    )
    names = [d[0] for d in cur.description]
    out = {}
    for rec in cur.fetchall():
        d = dict(zip(names, rec))
        if text_col and not full and isinstance(d.get(text_col), str):
            t = d[text_col]
            d[text_col] = t if len(t) <= SNIPPET else t[: SNIPPET - 1] + "\u2026"
        out[int(d[S.ROW_ID])] = d
    return out


def _brief(rec: dict, text_col: str | None) -> dict:
    return {
        S.ROW_ID: rec.get(S.ROW_ID),
        "split": rec.get(S.SPLIT),
        "label": None if rec.get(S.LABEL) is None else str(rec.get(S.LABEL)),
        "text": rec.get(text_col) if text_col else None,
        "has_image": bool(rec.get(S.IMAGE_PATH)),
    }


def neighbours(st, row_id: int, k: int = NEIGHBOURS) -> list[dict]:
    """The row's nearest neighbours in the latest cached kNN graph of the default embedding
    (the graph the audit used), with their labels; [] when no graph holds the row."""
    emb = st.default_embedding()
    if emb is None or not st.table_exists(S.KNN_GRAPHS):
        return []
    keys = [
        r[0]
        for r in st.fetchall(
            f"SELECT key FROM {S.KNN_GRAPHS} WHERE embedding = ? ORDER BY created_at DESC",
            [emb],
        )
    ]
    for key in keys:
        if not st.table_exists(S.knn_table(key)):
            continue
        hit = st.fetchone(
            f"SELECT neighbors, distances FROM {S.quote(S.knn_table(key))} WHERE row_id = ?",
            [int(row_id)],
        )
        if hit is None:
            continue
        ids = [int(x) for x in list(hit[0])[:k]]
        dist = [float(x) for x in list(hit[1])[:k]]
        recs = _sample_rows(st, ids)
        text_col, _ = _content(st)
        return [
            {**_brief(recs[i], text_col), "distance": d} for i, d in zip(ids, dist) if i in recs
        ]
    return []


def _partner_keys() -> dict[str, str]:
    """Auditor name -> the details field listing its partner rows (declared by the auditor)."""
    from ..auditor import load_builtin

    return {n: c.partner_key for n, c in load_builtin().items() if c.partner_key}


def row_detail(st, row_id: int, run: int | None = None) -> dict:
    """Everything about one row: its columns (full text), every auditor's verdict on it in the
    run, its partners (the rows a duplicate, leakage or contamination flag names) side by side,
    its nearest neighbours with their labels, its review decisions and edits."""
    recs = _sample_rows(st, [int(row_id)], full=True)
    if int(row_id) not in recs:
        raise NotFound(f"no row {row_id} in the store", "open a row listed on the issues page")
    rec = recs[int(row_id)]
    text_col, image = _content(st)
    run_id = latest_run(st, run)
    flags = _row_flags(st, run_id, int(row_id)) if run_id is not None else []
    want = sorted({i for f in flags for i in f["_partner_ids"]})
    partners = _sample_rows(st, want)
    for f in flags:
        f["partners"] = [
            _brief(partners[i], text_col) for i in f.pop("_partner_ids") if i in partners
        ]
    return _safe(
        {
            S.ROW_ID: int(row_id),
            "run_id": run_id,
            "row": rec,
            "text_column": text_col,
            "has_image": bool(image and rec.get(S.IMAGE_PATH)),
            "flags": flags,
            "neighbours": neighbours(st, int(row_id)),
            **_row_history(st, int(row_id)),
        }
    )


def _row_flags(st, run_id: int, row_id: int) -> list[dict]:
    """Every auditor's verdict on the row in the run, flags first, with the ids of the rows
    its flag names (`_partner_ids`, at most PARTNERS)."""
    partner_keys = _partner_keys()
    flags = []
    for aud, is_issue, score, det in st.fetchall(
        f"SELECT auditor, is_issue, score, details::VARCHAR FROM {S.ISSUES} "
        "WHERE run_id = ? AND row_id = ? ORDER BY NOT is_issue, score, auditor",
        [run_id, row_id],
    ):
        details = _details(det)
        flags.append(
            {
                "auditor": aud,
                "is_issue": bool(is_issue),
                "score": score,
                "details": _clip(details, items=12, chars=400),
                "suggested_label": _suggested(details),
                "partners": [],
                "_partner_ids": [
                    int(x)
                    for x in (details.get(partner_keys.get(aud, ""), None) or [])
                    if isinstance(x, int) or (isinstance(x, str) and x.isdigit())
                ][:PARTNERS],
            }
        )
    return flags


def _row_history(st, row_id: int) -> dict:
    """The row's review decisions and edits."""
    reviews = [
        {"auditor": a, "decision": d, "new_label": nl, "decided_at": t, "note": n}
        for a, d, nl, t, n in st.fetchall(
            f"SELECT auditor, decision, new_label, decided_at, note FROM {S.REVIEWS} "
            "WHERE row_id = ? ORDER BY auditor",
            [row_id],
        )
    ]
    edits = [
        dict(zip(("edit_id", "action", "new_label", "reason", "auditor", "status"), e))
        for e in st.fetchall(
            f"SELECT edit_id, action, new_label, reason, auditor, status FROM {S.EDITS} "
            "WHERE row_id = ? ORDER BY edit_id",
            [row_id],
        )
    ]
    return {"reviews": reviews, "edits": edits}


def image_path(st, row_id: int) -> str | None:
    """The image file of a row of the store (the only way the app reaches the file system)."""
    if S.IMAGE_PATH not in {c for c, _ in st.columns(S.SAMPLES)}:
        return None
    return st.scalar(f"SELECT {S.IMAGE_PATH} FROM {S.SAMPLES} WHERE {S.ROW_ID} = ?", [int(row_id)])


# --- findings, map, edits ---------------------------------------------------------------------
def findings(st, run_id: int | None) -> dict:
    """Each auditor's dataset-level `info` (clipped) and the run's slices."""
    if run_id is None:
        return {"run_id": None, "auditors": [], "slices": []}
    auds = [
        {"name": a, "score": s, "num_issues": n, "info": _loads(i) or {}}
        for a, s, n, i in st.fetchall(
            f"SELECT auditor, score, num_issues, info FROM {S.ISSUE_SUMMARY} WHERE run_id = ? "
            "ORDER BY auditor",
            [run_id],
        )
    ]
    slices = []
    if st.table_exists(S.SLICES):
        for sid, aud, desc, size, err, members, info in st.fetchall(
            f"SELECT slice_id, auditor, description, size, error_rate, members[1:8], info "
            f"FROM {S.SLICES} WHERE run_id = ? ORDER BY error_rate DESC NULLS LAST, size DESC "
            "LIMIT 100",
            [run_id],
        ):
            slices.append(
                {
                    "slice_id": sid,
                    "auditor": aud,
                    "description": desc,
                    "size": size,
                    "error_rate": err,
                    "members": list(members or []),
                    "info": _clip(_loads(info) or {}),
                }
            )
    return _safe({"run_id": run_id, "auditors": auds, "slices": slices})


def embedding_map(st, run_id: int | None, points: int = 5000) -> dict | None:
    """The report's embedding map (a sampled 2-D projection, coloured by the rarest flag), with
    the row id of each point so a click opens the row."""
    from ..report.embedding_map import embedding_map as draw_map

    return _safe(draw_map(st, run_id, points, seed=0))


def list_edits(st, status: str | None, limit: int = 100, offset: int = 0) -> dict:
    if status not in (None, "", "pending", "accepted", "rejected"):
        raise InputError(f"status={status!r}", "use pending, accepted or rejected")
    limit = max(1, min(int(limit), MAX_PAGE))
    offset = max(0, int(offset))
    where = "WHERE e.status = ?" if status else ""
    params = [status] if status else []
    text_col, _ = _content(st)
    content = f"left(s.{S.quote(text_col)}::VARCHAR, 120)" if text_col else "NULL"
    cur = st.execute(
        f"SELECT e.edit_id, e.row_id, e.action, e.reason, e.auditor, e.status, "
        f"s.{S.SPLIT} AS split, s.{S.LABEL}::VARCHAR AS label, e.new_label, "
        f"{content} AS text FROM {S.EDITS} e LEFT JOIN {S.SAMPLES} s USING ({S.ROW_ID}) "
        f"{where} ORDER BY e.edit_id LIMIT ? OFFSET ?",
        [*params, limit, offset],
    )
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r)) for r in cur.fetchall()]
    total = int(st.scalar(f"SELECT count(*) FROM {S.EDITS} e {where}", params))
    counts = st.fetchall(
        f"SELECT action, status, count(*) FROM {S.EDITS} GROUP BY ALL ORDER BY ALL"
    )
    return _safe(
        {
            "rows": rows,
            "total": total,
            "limit": limit,
            "offset": offset,
            "counts": [{"action": a, "status": s, "n": n} for a, s, n in counts],
        }
    )
