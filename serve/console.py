"""The SQL console's reads: one page of a read-only query (the console's table), or the whole
result as CSV (its download). Both go through `datacure sql`'s read path (store/query.py)."""

from __future__ import annotations

import json
from typing import Any

from ..report.summary import _safe
from .queries import MAX_PAGE


def sql_page(st, query: str, limit: int = 100, offset: int = 0) -> dict:
    """One page of a read-only query (`datacure sql`'s read path): columns, rows, and whether
    more rows follow."""
    from ..store.query import read_query

    limit = max(1, min(int(limit), MAX_PAGE))
    offset = max(0, int(offset))
    df = read_query(st, query, limit=limit + 1, offset=offset)
    if df is None:
        return {"columns": [], "rows": [], "offset": offset, "limit": limit, "more": False}
    more = df.height > limit
    df = df.head(limit)
    rows = [[_cell(v) for v in r] for r in df.iter_rows()]
    return {
        "columns": list(df.columns),
        "rows": rows,
        "offset": offset,
        "limit": limit,
        "more": more,
    }


def _cell(v: Any) -> Any:
    v = _safe(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(v))} bytes>"
    if isinstance(v, (dict, list, str, int, float, bool)) or v is None:
        return v
    return str(v)


def sql_csv(st, query: str, max_rows: int = 1_000_000) -> str:
    """The whole result as CSV (up to `max_rows`), cells nested or binary written as JSON."""
    import polars as pl

    from ..store.query import read_query

    df = read_query(st, query, limit=max_rows)
    if df is None:
        return ""
    flat = (pl.String, pl.Boolean, pl.Date, pl.Datetime, pl.Time, pl.Duration, pl.Null)
    odd = [c for c, t in df.schema.items() if not (t.is_numeric() or isinstance(t, flat))]
    if odd:
        df = df.with_columns(
            pl.col(c).map_elements(
                lambda v: json.dumps(_safe(v), default=str, ensure_ascii=False),
                return_dtype=pl.String,
                skip_nulls=True,
            )
            for c in odd
        )
    return df.write_csv()
