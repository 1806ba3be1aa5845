"""Looking at the store: SQL (read-only unless asked) and a one-screen summary."""

from __future__ import annotations

import duckdb
import polars as pl

from store import schema as S
from store.db import Store
from store.errors import DatacureError, InputError


def run_sql(db: str, query: str, write: bool = False, limit: int = 10_000) -> pl.DataFrame | None:
    """Run one SQL statement. Read-only by default: the store is opened read-only, so a write
    fails in DuckDB and nothing changes. With `write`, the statement runs in a transaction."""
    if not query.strip():
        raise InputError("the SQL query is empty", "pass a query, e.g. `SELECT * FROM samples LIMIT 5`")
    with Store(db, read_only=not write) as st:
        try:
            if write:
                with st.transaction():
                    cur = st.execute(query)
                    tbl = cur.to_arrow_table() if cur.description else None
            else:
                cur = st.execute(query)
                tbl = cur.to_arrow_table() if cur.description else None
        except duckdb.Error as exc:
            msg = str(exc).strip()
            fix = "check the SQL against the tables listed by `datacure info`"
            if not write and ("read-only" in msg.lower() or "read only" in msg.lower()):
                fix = "the store is opened read-only by `datacure sql`; add --write to change it"
            raise DatacureError(f"SQL error: {msg}", fix) from None
    if tbl is None:
        return None
    df = pl.from_arrow(tbl)
    if isinstance(df, pl.Series):
        df = df.to_frame()
    return df.head(limit) if limit else df


def store_info(st: Store) -> str:
    """Tables, splits, counts, label and content columns, embeddings, runs."""
    lines = [f"store: {st.path}"]
    counts = st.split_counts()
    if not counts:
        lines.append("  no samples yet: `datacure ingest SOURCE --db " f"{st.path}`")
    else:
        total = sum(counts.values())
        lines.append(f"samples: {total} rows")
        labelled = dict(
            st.fetchall(f"SELECT split, count(label) FROM {S.SAMPLES} GROUP BY 1")
        ) if S.LABEL in [c for c, _ in st.columns(S.SAMPLES)] else {}
        for sp, n in counts.items():
            lines.append(f"  split {sp}: {n} rows, {labelled.get(sp, 0)} labelled")
        lines.append(
            f"  text column: {st.text_column() or '-'}; image column: {st.image_column() or '-'}"
        )
    embs = st.embedding_keys()
    lines.append(f"embeddings: {len(embs)}")
    for e in embs:
        n = st.scalar(f"SELECT count(*) FROM {S.quote(S.embedding_table(e['key']))}")
        lines.append(
            f"  {S.embedding_table(e['key'])}: {n} rows x {e['dim']} ({e['model']}, column {e['column_name']})"
        )
    runs = st.fetchall(f"SELECT run_id, finished_at FROM {S.RUNS} ORDER BY run_id DESC LIMIT 3") if st.table_exists(S.RUNS) else []
    lines.append(f"audit runs: {st.scalar(f'SELECT count(*) FROM {S.RUNS}') if runs else 0}")
    for rid, when in runs:
        lines.append(f"  run {rid} at {when}")
    lines.append("tables: " + ", ".join(sorted(st.tables())))
    return "\n".join(lines)
