"""Parquet shards beside the store, and the stores a worker opens over them.

Layout: everything the Ray engine writes lives in `<db>.shards/` next to the DuckDB file:

- `embeddings_<key>/part-*.parquet`: vectors (row_id, vector) in row_id ranges, attached to the
  store as the view `embeddings_<key>` over an explicit list of files (a file written by a run
  that did not finish is in no view);
- `knn_<key>/<token>/g*.parquet`: a kNN graph (row_id, neighbors, distances, ...), attached as
  the view `knn_<...>` with its row in `knn_graphs`;
- `work/<token>/...`: a run's scratch (exports, shuffles, per-task outputs), kept while the run
  is unfinished so a rerun resumes task by task, deleted when it commits.

A file is written under a temporary name and renamed when complete, so a reader sees whole
files or none. Views name absolute paths: the `.shards` folder must stay where it is (on a
cluster, on a filesystem every node mounts).

`ShardStore` is a `Store` on an in-memory DuckDB whose `samples` (and embeddings) are views over
shard files: a worker builds an `AuditContext` on it and runs an auditor unchanged on its rows
(smallpond's pattern: one DuckDB per worker over Parquet).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..store import schema as S
from ..store.db import Store

SUFFIX = ".shards"


def shard_root(db_path: str | os.PathLike) -> Path:
    p = Path(db_path).resolve()
    return p.with_name(p.name + SUFFIX)


def sql_list(files: Iterable[str | os.PathLike]) -> str:
    """A DuckDB list literal of file paths."""
    return "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"


def write_table(table: pa.Table, path: str | os.PathLike, row_group_size: int | None = None):
    """Write `table` to `path` atomically (a temporary name, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp, row_group_size=row_group_size)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_ipc(table: pa.Table, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write `table` as an uncompressed Arrow IPC file, atomically: a task's scratch that the
    next stage memory-maps (no decoding, no copy until rows are taken)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if metadata:
        table = table.replace_schema_metadata({k: json.dumps(v) for k, v in metadata.items()})
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_ipc(path: str | os.PathLike) -> tuple[pa.Table, dict]:
    """An Arrow IPC file, memory-mapped, with its metadata."""
    table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    meta = {k.decode(): json.loads(v) for k, v in (table.schema.metadata or {}).items()}
    return table, meta


def write_meta(path: str | os.PathLike, meta: dict) -> None:
    """A task's small result beside its output (`<path>.meta.npz`, arrays and JSON, no pickle),
    written last: its presence marks the task done for a rerun."""
    path = Path(str(path) + ".meta.npz")
    arrays = {k: np.asarray(v) for k, v in meta.items() if isinstance(v, np.ndarray)}
    rest = {k: v for k, v in meta.items() if not isinstance(v, np.ndarray)}
    arrays["__json__"] = np.frombuffer(json.dumps(rest, default=_json_default).encode(), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_meta(path: str | os.PathLike) -> dict | None:
    """The meta of a finished task, or None when it has not finished."""
    path = Path(str(path) + ".meta.npz")
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files if k != "__json__"}
        out.update(json.loads(bytes(z["__json__"]).decode()))
    return out


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON: {type(v)}")


def remove_tree(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)


def vectors_table(row_ids: np.ndarray, vectors: np.ndarray) -> pa.Table:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    d = vectors.shape[1]
    arr = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), d)
    return pa.table({S.ROW_ID: pa.array(np.asarray(row_ids, np.int64)), "vector": arr})


def fixed_list(values: np.ndarray, dtype) -> pa.FixedSizeListArray:
    values = np.ascontiguousarray(values)
    width = values.shape[1] if values.ndim == 2 else 1
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), dtype), width)


def list_column(table: pa.Table, name: str, dtype=np.float32) -> np.ndarray:
    """A fixed-size list column as a 2-D numpy array (zero-copy where possible)."""
    col = table.column(name).combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False)
    width = col.type.list_size if hasattr(col.type, "list_size") else len(flat) // max(len(col), 1)
    return np.asarray(flat, dtype=dtype).reshape(len(col), width)


def read_parquet(files: list[str], columns: list[str] | None = None, where: str = "") -> pa.Table:
    """Files read by a private DuckDB (one thread: a task owns one CPU)."""
    con = duckdb.connect()
    try:
        con.execute("SET threads = 1")
        cols = "*" if columns is None else ", ".join(S.quote(c) for c in columns)
        return con.sql(
            f"SELECT {cols} FROM read_parquet({sql_list(files)}) {where}"
        ).to_arrow_table()
    finally:
        con.close()


# --- views in the store ---------------------------------------------------------------------------
def is_view(store: Store, name: str) -> bool:
    return bool(
        store.scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ? "
            "AND table_type = 'VIEW'",
            [name],
        )
    )


def attach_embedding(
    store: Store,
    key: str,
    files: list[str],
    dim: int,
    model: str,
    column: str | None,
    kind: str,
    normalized: bool,
    info: dict | None = None,
) -> str:
    """Register `embeddings_<key>` as a view over `files` (inside the caller's transaction).
    `info.shards` lists the files, so later runs find them without parsing the view."""
    table = S.embedding_table(key)
    if store.table_exists(table) and not is_view(store, table):
        raise ValueError(f"{table} is a table, not a view")
    info = dict(info or {})
    info["shards"] = [str(f) for f in files]
    info["engine"] = "ray"
    store.execute(
        f"CREATE OR REPLACE VIEW {S.quote(table)} AS SELECT row_id, vector::FLOAT[{int(dim)}] "
        f"AS vector FROM read_parquet({sql_list(files)})"
    )
    store.execute(
        f"INSERT OR REPLACE INTO {S.EMBEDDINGS} VALUES (?, ?, ?, ?, ?, ?, now(), ?)",
        [key, model, column, int(dim), bool(normalized), kind, json.dumps(info)],
    )
    return table


def embedding_info(store: Store, key: str) -> dict:
    row = store.fetchone(f"SELECT info FROM {S.EMBEDDINGS} WHERE key = ?", [key])
    return json.loads(row[0]) if row and row[0] else {}


def embedding_files(store: Store, key: str) -> list[str] | None:
    """The Parquet files behind a view-backed embedding, or None for a table in the store."""
    if not is_view(store, S.embedding_table(key)):
        return None
    return list(embedding_info(store, key).get("shards", [])) or None


def file_ranges(files: list[str]) -> list[tuple[str, int, int, int]]:
    """(file, min row_id, max row_id, rows) of each Parquet file, from its footer."""
    out = []
    for f in files:
        md = pq.ParquetFile(f).metadata
        idx = md.schema.to_arrow_schema().get_field_index(S.ROW_ID)
        lo, hi = None, None
        for g in range(md.num_row_groups):
            st = md.row_group(g).column(idx).statistics
            lo = st.min if lo is None else min(lo, st.min)
            hi = st.max if hi is None else max(hi, st.max)
        if md.num_rows:
            out.append((str(f), int(lo), int(hi), int(md.num_rows)))
    return sorted(out, key=lambda r: r[1])


# --- a store over shards, for a worker ------------------------------------------------------------
class ShardStore(Store):
    """A `Store` on an in-memory DuckDB whose `samples` is a view (`samples_sql`) over shard
    files, with the main store's `meta` and embedding registry and view-backed embeddings.
    Auditors run on it unchanged; what they cache (kNN graphs, predictions) stays in memory."""

    def __init__(
        self,
        samples_sql: str,
        meta: dict,
        embeddings: list[dict] | None = None,
        embedding_files: dict[str, list[str]] | None = None,
        memory_limit: str = "1GB",
    ):
        self.path = Path(f"<shard {uuid.uuid4().hex[:6]}>")
        self.read_only = False
        self._in_tx = False
        self.con = duckdb.connect()
        self.con.execute(f"SET threads = 1; SET memory_limit = '{memory_limit}'")
        self.con.execute(S.DDL)
        for k, v in meta.items():
            self.meta_set(k, v)
        self.con.execute(f"CREATE VIEW {S.SAMPLES} AS {samples_sql}")
        for e in embeddings or []:
            files = (embedding_files or {}).get(e["key"])
            if not files:
                continue
            self.con.execute(
                f"CREATE VIEW {S.quote(S.embedding_table(e['key']))} AS SELECT row_id, "
                f"vector::FLOAT[{int(e['dim'])}] AS vector FROM read_parquet({sql_list(files)})"
            )
            self.execute(
                f"INSERT INTO {S.EMBEDDINGS} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    e["key"],
                    e["model"],
                    e["column_name"],
                    int(e["dim"]),
                    bool(e["normalized"]),
                    e["kind"],
                    e["created_at"],
                    e["info"] if isinstance(e["info"], str) else json.dumps(e["info"] or {}),
                ],
            )


def store_meta(store: Store) -> dict:
    """Every `meta` entry of the store (plain JSON data)."""
    return {k: json.loads(v) for k, v in store.fetchall(f"SELECT key, value FROM {S.META}")}
