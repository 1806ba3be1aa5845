"""Looking at the store: SQL (read-only unless asked) and a one-screen summary."""

from __future__ import annotations

import warnings

import duckdb
import polars as pl

from . import schema as S
from .db import Store
from .errors import DatacureError, InputError


def run_sql(db: str, query: str, write: bool = False, limit: int = 10_000) -> pl.DataFrame | None:
    """Run SQL on the store and return the last statement's rows (at most `limit`; 0 = all).

    Read-only by default: the store is opened read-only, so a write fails in DuckDB (its message
    is shown, with the fix: `--write`) and nothing changes; other processes may read meanwhile.
    With `write`, every statement runs in one transaction: a failing statement rolls back the
    ones before it. BEGIN/COMMIT/ROLLBACK are refused with `write` (they would split that
    transaction and leave part of the SQL applied)."""
    if not query.strip():
        raise InputError(
            "the SQL query is empty", "pass a query, e.g. `SELECT * FROM samples LIMIT 5`"
        )
    with Store(db, read_only=not write) as st:
        tbl = _execute(st, query, write=write, limit=limit)
    return _frame(tbl, limit)


def read_query(st: Store, query: str, limit: int = 10_000, offset: int = 0) -> pl.DataFrame | None:
    """`run_sql`'s read-only path on a store opened read-only by the caller (the browser app's
    console): rows `offset` to `offset + limit` of the last statement's result; the same errors
    and fixes as `datacure sql`."""
    if not query.strip():
        raise InputError(
            "the SQL query is empty", "pass a query, e.g. `SELECT * FROM samples LIMIT 5`"
        )
    if not st.read_only:
        raise DatacureError("read_query needs a store opened read-only", "open it read_only=True")
    return _frame(_execute(st, query, write=False, limit=limit, offset=offset), limit)


def _execute(st: Store, query: str, write: bool, limit: int, offset: int = 0):
    """Run the SQL (see run_sql); the last statement's rows as Arrow, or None."""
    st.ensure_columns_view()  # an old store opened read-only still shows `columns`
    try:
        if write:
            kinds = {str(x.type).rsplit(".", 1)[-1] for x in st.con.extract_statements(query)}
            if "TRANSACTION" in kinds:
                raise InputError(
                    "`datacure sql --write` runs the SQL in one transaction of its own; "
                    "BEGIN/COMMIT/ROLLBACK inside it are not allowed",
                    "leave them out: all statements are committed together, or none",
                )
            with st.transaction():
                cur = st.execute(query)
                tbl = None
                if cur.description:
                    with warnings.catch_warnings():  # the copy DuckDB warns about is small
                        warnings.simplefilter("ignore", UserWarning)
                        tbl = cur.to_arrow_table()
        else:
            # A relation (not a DB-API cursor): the LIMIT is pushed into DuckDB, so a
            # `SELECT *` over a big table reads only what is printed.
            rel = st.con.sql(query)
            tbl = None
            if rel is not None:
                tbl = (rel.limit(limit, offset) if limit else rel).to_arrow_table()
    except duckdb.Error as exc:
        msg = str(exc).strip()
        fix = "check the SQL against the tables listed by `datacure info`"
        if not write and ("read-only" in msg.lower() or "read only" in msg.lower()):
            fix = "the store is opened read-only by `datacure sql`; add --write to change it"
        elif write:
            fix += " (nothing was changed: the statements were rolled back)"
        raise DatacureError(f"SQL error: {msg}", fix) from None
    return tbl


def _frame(tbl, limit: int) -> pl.DataFrame | None:
    if tbl is None:
        return None
    if limit:
        tbl = tbl.slice(0, limit)
    names = list(tbl.column_names)
    if len(set(names)) != len(names):  # `SELECT 1 AS a, 2 AS a`: polars needs unique names
        used: set[str] = set()
        uniq = []
        for n in names:
            cand, i = n, 0
            while cand in used:
                i += 1
                cand = f"{n}_{i}"
            used.add(cand)
            uniq.append(cand)
        tbl = tbl.rename_columns(uniq)
    return to_polars(tbl)


def _polars_can_import(t) -> bool:
    """False for Arrow types polars refuses (or panics on), at any depth: INTERVAL, UNION,
    extension types such as DuckDB's BIGNUM."""
    import pyarrow as pa

    if pa.types.is_interval(t) or pa.types.is_union(t) or isinstance(t, pa.ExtensionType):
        return False
    if isinstance(t, pa.BaseExtensionType):
        return False
    if pa.types.is_struct(t):
        return all(_polars_can_import(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return _polars_can_import(t.key_type) and _polars_can_import(t.item_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _polars_can_import(t.value_type)
    return True


def to_polars(tbl) -> pl.DataFrame:
    """A DuckDB result (Arrow) as a polars frame. Columns polars cannot import (INTERVAL,
    UNION, BIGNUM, ...) are cast to text by DuckDB instead of failing the whole query."""
    bad = [f.name for f in tbl.schema if not _polars_can_import(f.type)]
    if bad:
        con = duckdb.connect()
        try:
            con.register("_dc_out", tbl)
            cols = ", ".join(
                f"CAST({S.quote(c)} AS VARCHAR) AS {S.quote(c)}" if c in bad else S.quote(c)
                for c in tbl.column_names
            )
            tbl = con.sql(f"SELECT {cols} FROM _dc_out").to_arrow_table()
        finally:
            con.close()
    df = pl.from_arrow(tbl)
    if isinstance(df, pl.Series):
        df = df.to_frame()
    return df


def store_info(st: Store) -> str:
    """Tables, splits, counts, label and content columns, embeddings, runs."""
    lines = [f"store: {st.path}"]
    counts = st.split_counts()
    if not counts:
        lines.append(f"  no samples yet: `datacure ingest SOURCE --db {st.path}`")
    else:
        total = sum(counts.values())
        lines.append(f"samples: {total} rows")
        labelled = (
            dict(st.fetchall(f"SELECT split, count(label) FROM {S.SAMPLES} GROUP BY 1"))
            if S.LABEL in [c for c, _ in st.columns(S.SAMPLES)]
            else {}
        )
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
            f"  {S.embedding_table(e['key'])}: {n} rows x {e['dim']} "
            f"({e['model']}, column {e['column_name']})"
        )
    runs = (
        st.fetchall(f"SELECT run_id, finished_at FROM {S.RUNS} ORDER BY run_id DESC LIMIT 3")
        if st.table_exists(S.RUNS)
        else []
    )
    lines.append(f"audit runs: {st.scalar(f'SELECT count(*) FROM {S.RUNS}') if runs else 0}")
    for rid, when in runs:
        lines.append(f"  run {rid} at {when}")
    lines.append("tables: " + ", ".join(sorted(st.tables())))
    return "\n".join(lines)
