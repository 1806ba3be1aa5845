"""The store: one DuckDB file per dataset project.

`Store` owns the connection and the bookkeeping every other module relies on: the schema, one
transaction per operation (a failed ingest or audit leaves the file as it was), the row-id
counter, project settings in `meta`, and reading and writing embedding tables in bulk (Arrow, no
Python loop per row). Higher layers (auditor/, generators/) talk to DuckDB through a Store.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from . import schema as S
from .errors import DatacureError, InputError, StoreBusyError

DEFAULT_DB = "datacure.duckdb"


# Seconds to wait for another process's lock on the store before giving up with
# StoreBusyError (default 0: fail at once, so scripts never hang silently).
LOCK_TIMEOUT_ENV = "DATACURE_LOCK_TIMEOUT"


def _is_lock_error(exc: Exception) -> bool:
    msg = str(exc).lower()
    return "lock" in msg and ("conflicting" in msg or "could not set" in msg)


def _lock_timeout() -> float:
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        val = float(raw)
    except ValueError:
        raise InputError(
            f"{LOCK_TIMEOUT_ENV}={raw!r} is not a number of seconds",
            f"set {LOCK_TIMEOUT_ENV} to e.g. 30, "
            "or unset it to fail at once when the store is busy",
        ) from None
    return max(val, 0.0)


def _busy_error(path: Path, read_only: bool, exc: Exception, waited: float) -> StoreBusyError:
    """Name who holds the lock (DuckDB's message carries the PID) and what to do."""
    msg = str(exc)
    m = re.search(r"PID (\d+)", msg)
    who = f"process {m.group(1)}" if m else "another process"
    # DuckDB adds "you would be able to open this database in read-only mode" when the holder
    # only reads; otherwise the holder is a writer.
    if read_only:
        doing = "is writing it (a store being written cannot be read until the writer ends)"
    elif "read-only mode" in msg:
        doing = "has it open for reading"
    else:
        doing = "is writing it"
    waited_s = f" (waited {waited:.0f} s)" if waited else ""
    return StoreBusyError(
        f"store is busy: {who} {doing}: {path}{waited_s}",
        "wait for that command to finish, then run this one again; or set "
        f"{LOCK_TIMEOUT_ENV}=SECONDS to wait for the lock",
    )


class Store:
    """A datacure project in one DuckDB file.

    Open read-only for looking (`sql`, `issues`, `report`): many readers may share a file. A writer
    holds DuckDB's file lock; a second writer gets `StoreBusyError` rather than a crash.
    """

    # transactions committed in this process, by any store: the command line tells an interrupt
    # that came after its command's changes were saved from one that left the store as it was
    commits = 0

    def __init__(
        self,
        path: str | os.PathLike = DEFAULT_DB,
        read_only: bool = False,
        create: bool = True,
        config: dict | None = None,
    ):
        """Open the store at `path`. A missing file is created only when `create` (and not
        `read_only`); otherwise it is an InputError naming the path, and no file is left.
        `config` is passed to DuckDB (the browser app opens its read-only connections with
        `enable_external_access` off)."""
        self.path = Path(path)
        self.read_only = read_only
        self._config = dict(config or {})
        if (read_only or not create) and not self.path.exists():
            raise InputError(
                f"no store at {self.path}",
                "create one with `datacure ingest SOURCE --db "
                f"{self.path}`, or point --db at an existing store",
            )
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = self._connect(read_only)
        # DuckDB opens an existing CSV/Parquet/JSON file given as the database as an in-memory
        # database over it: writes would vanish at exit. `--db train.csv` is a slip, refuse it.
        if self.path.exists() and not self.fetchall(
            "SELECT path FROM duckdb_databases() WHERE database_name = current_database() "
            "AND path IS NOT NULL"
        ):
            self.close()
            raise InputError(
                f"--db {self.path} is not a DuckDB store (DuckDB would read it as a data file "
                "and keep nothing)",
                "pass the data file as SOURCE and a new or existing .duckdb file as --db",
            )
        if not read_only:
            self.con.execute(S.DDL)
        self._in_tx = False
        if not read_only:
            from . import datadef

            datadef.migrate(self)  # a store written before the DataDefinition existed

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """Open the file; a lock held by another process is StoreBusyError, after waiting up to
        DATACURE_LOCK_TIMEOUT seconds (polling) when that is set."""
        timeout = _lock_timeout()
        t0 = time.monotonic()
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only, config=self._config)
            except duckdb.IOException as exc:
                if _is_lock_error(exc):
                    waited = time.monotonic() - t0
                    if waited < timeout:
                        time.sleep(min(delay, max(timeout - waited, 0.01)))
                        delay = min(delay * 2, 1.0)
                        continue
                    raise _busy_error(
                        self.path, read_only, exc, waited if timeout else 0.0
                    ) from None
                raise InputError(
                    f"cannot open store {self.path}: {exc}",
                    "check that --db points at a datacure DuckDB file you can read and write",
                ) from None
            except duckdb.Error as exc:
                raise InputError(
                    f"{self.path} is not a readable DuckDB store: {exc}",
                    "point --db at a datacure store, or at a new path to create one",
                ) from None

    # --- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One all-or-nothing unit of work. Nested use joins the outer transaction."""
        if self.read_only:
            raise DatacureError(
                "the store was opened read-only", "open it without read_only to change it"
            )
        if self._in_tx:
            yield self.con
            return
        self.con.execute("BEGIN TRANSACTION")
        self._in_tx = True
        try:
            yield self.con
        except BaseException:
            self._in_tx = False
            with contextlib.suppress(Exception):
                self.con.execute("ROLLBACK")
            raise
        else:
            self._in_tx = False
            self.con.execute("COMMIT")
            Store.commits += 1

    @contextlib.contextmanager
    def registered(self, name: str, table: Any) -> Iterator[str]:
        """`table` (Arrow, polars or pandas) visible to SQL as `name` inside the block, and gone
        after it, also when the block fails."""
        self.con.register(name, table)
        try:
            yield name
        finally:
            self.con.unregister(name)

    # --- plain SQL helpers --------------------------------------------------------------------
    def execute(self, sql: str, params: list | tuple | None = None):
        return self.con.execute(sql, params or [])

    def fetchall(self, sql: str, params: list | tuple | None = None) -> list[tuple]:
        return self.con.execute(sql, params or []).fetchall()

    def arrow(self, sql: str, params: list | tuple | None = None):
        """Run a query and return a pyarrow Table (duckdb 2.0: `to_arrow_table`)."""
        return self.con.sql(sql, params=params or None).to_arrow_table()

    def polars(self, sql: str, params: list | tuple | None = None):
        import polars as pl

        return pl.from_arrow(self.arrow(sql, params))

    def scalar(self, sql: str, params: list | tuple | None = None) -> Any:
        rows = self.con.execute(sql, params or []).fetchall()  # fetchone leaves the result open
        return rows[0][0] if rows else None

    def fetchone(self, sql: str, params: list | tuple | None = None) -> tuple | None:
        """First row or None. (duckdb 2.0: a result not fetched to the end blocks the
        connection, so never call `.fetchone()` on a cursor directly.)"""
        rows = self.con.execute(sql, params or []).fetchall()
        return rows[0] if rows else None

    def table_exists(self, name: str) -> bool:
        return bool(
            self.scalar(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
            )
        )

    def columns(self, table: str) -> list[tuple[str, str]]:
        """(name, DuckDB type) of a table's columns, in order."""
        return [
            (r[0], r[1])
            for r in self.fetchall(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = ? ORDER BY ordinal_position",
                [table],
            )
        ]

    def tables(self) -> list[str]:
        return [r[0] for r in self.fetchall("SELECT table_name FROM information_schema.tables")]

    # --- project settings -----------------------------------------------------------------------
    def meta_get(self, key: str, default: Any = None) -> Any:
        if not self.table_exists(S.META):
            return default
        v = self.scalar(f"SELECT value FROM {S.META} WHERE key = ?", [key])
        return default if v is None else json.loads(v)

    def meta_set(self, key: str, value: Any) -> None:
        self.execute(
            f"INSERT OR REPLACE INTO {S.META} VALUES (?, ?)", [key, json.dumps(value, default=str)]
        )

    # --- samples ------------------------------------------------------------------------------
    def has_samples(self) -> bool:
        return self.table_exists(S.SAMPLES) and bool(
            self.scalar(f"SELECT count(*) FROM {S.SAMPLES}")
        )

    def require_samples(self) -> None:
        if not self.has_samples():
            raise InputError(
                f"the store {self.path} holds no samples",
                f"ingest data first: `datacure ingest SOURCE --db {self.path}`",
            )

    def splits(self) -> list[str]:
        if not self.table_exists(S.SAMPLES):
            return []
        return [r[0] for r in self.fetchall(f"SELECT DISTINCT split FROM {S.SAMPLES} ORDER BY 1")]

    def split_counts(self) -> dict[str, int]:
        if not self.table_exists(S.SAMPLES):
            return {}
        return dict(self.fetchall(f"SELECT split, count(*) FROM {S.SAMPLES} GROUP BY 1 ORDER BY 1"))

    def data_definition(self):
        """The role and type of every column of `samples` (`store.datadef.DataDefinition`):
        the one ingest wrote, else, for a store written before, one derived from its old keys."""
        from . import datadef

        if not self.read_only:
            return datadef.load(self)
        # read-only: no writer can change the file while it is open (DuckDB's lock), and an old
        # store's definition is derived with a query over samples: keep it
        if getattr(self, "_definition", None) is None:
            self._definition = datadef.load(self)
        return self._definition

    def ensure_columns_view(self) -> None:
        """Make the `columns` view readable on a store opened read-only that was written before
        the view existed: DuckDB cannot create it in a read-only file, so the derived definition
        is registered as a view of this connection only (nothing is written)."""
        if not self.read_only or self.table_exists(S.COLUMNS):
            return
        import pyarrow as pa

        cols = self.data_definition().columns
        fields = ("name", "role", "type", "dtype", "source")
        table = pa.table(
            {f: pa.array([getattr(c, f) for c in cols], type=pa.string()) for f in fields}
        )
        self.con.register(S.COLUMNS, table)

    def text_column(self) -> str | None:
        return self.data_definition().text_column

    def image_column(self) -> str | None:
        return self.data_definition().image_column

    def label_column(self) -> str | None:
        """The stored column the labels came from (`label`, or the user's own, e.g. `category`)."""
        return self.data_definition().label_column

    def modality(self) -> str | None:
        return self.data_definition().modality

    def source_columns(self) -> list[str]:
        """Columns of `samples` that came from the user's data (not datacure's own)."""
        return self.data_definition().source_columns

    def export_columns(self) -> list[str]:
        """The columns of `samples` that a datacure export added (`S.EXPORT_COLUMNS`), when the
        samples are a re-ingested export (they carry both `synthetic` and `datacure_row_id`)."""
        return self.data_definition().export_columns

    def reserve_row_ids(self, n: int) -> int:
        """Reserve `n` fresh row ids and return the first. Ids are never reused."""
        start = int(self.meta_get("next_row_id", 0))
        self.meta_set("next_row_id", start + int(n))
        return start

    # --- embeddings ---------------------------------------------------------------------------
    def embedding_keys(self) -> list[dict]:
        if not self.table_exists(S.EMBEDDINGS):
            return []
        cur = self.execute(f"SELECT * FROM {S.EMBEDDINGS} ORDER BY created_at")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def default_embedding(self) -> str | None:
        """The embedding auditors use unless told otherwise: the one named in meta, else the
        most recent."""
        keys = [e["key"] for e in self.embedding_keys()]
        if not keys:
            return None
        chosen = self.meta_get("default_embedding")
        return chosen if chosen in keys else keys[-1]

    def register_embedding(
        self,
        key: str,
        dim: int,
        model: str,
        column: str | None,
        kind: str,
        normalized: bool,
        info: dict | None = None,
    ) -> str:
        """Create `embeddings_<key>` if needed and record it. Returns the table name."""
        table = S.embedding_table(key)
        existing = {e["key"]: e for e in self.embedding_keys()}
        if key in existing and int(existing[key]["dim"]) != int(dim):
            raise InputError(
                f"embedding {key!r} has dimension {existing[key]['dim']}, not {dim}",
                f"drop it first (`datacure sql 'DROP TABLE {table}' --write`) or use another model",
            )
        self.execute(
            f"CREATE TABLE IF NOT EXISTS {S.quote(table)} (row_id BIGINT, vector FLOAT[{int(dim)}])"
        )
        self.execute(
            f"INSERT OR REPLACE INTO {S.EMBEDDINGS} VALUES (?, ?, ?, ?, ?, ?, now(), ?)",
            [key, model, column, int(dim), bool(normalized), kind, json.dumps(info or {})],
        )
        return table

    def append_embeddings(self, key: str, row_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Append one batch of vectors (bulk, through Arrow)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, d = vectors.shape
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        arr = pa.FixedSizeListArray.from_arrays(flat, d)
        batch = pa.table({S.ROW_ID: pa.array(np.asarray(row_ids, dtype=np.int64)), "vector": arr})
        with self.registered("_dc_batch", batch):
            self.execute(
                f"INSERT INTO {S.quote(S.embedding_table(key))} "
                f"SELECT row_id, vector::FLOAT[{d}] FROM _dc_batch"
            )

    def load_embeddings(
        self, key: str | None = None, row_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(row_ids, vectors float32 [n, d]) ordered by row_id; restricted to `row_ids` if given
        (rows without a vector are left out: compare lengths to find them)."""
        key = key or self.default_embedding()
        if key is None:
            raise InputError(
                "the store has no embeddings", f"run `datacure embed --db {self.path}` first"
            )
        table = S.quote(S.embedding_table(key))
        if row_ids is None:
            tbl = self.arrow(f"SELECT row_id, vector FROM {table} ORDER BY row_id")
        else:
            ids = pa.table({S.ROW_ID: pa.array(np.asarray(row_ids, dtype=np.int64))})
            with self.registered("_dc_ids", ids):
                tbl = self.arrow(
                    f"SELECT e.row_id, e.vector FROM {table} e JOIN _dc_ids USING (row_id) "
                    "ORDER BY e.row_id"
                )
        rid = tbl.column(S.ROW_ID).to_numpy()
        col = tbl.column("vector").combine_chunks()
        if len(col) == 0:
            dim = int(self.scalar(f"SELECT dim FROM {S.EMBEDDINGS} WHERE key = ?", [key]) or 0)
            return rid.astype(np.int64), np.zeros((0, dim), dtype=np.float32)
        d = col.type.list_size
        vec = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        return rid.astype(np.int64), vec.reshape(-1, d)

    # --- runs -----------------------------------------------------------------------------------
    def latest_run_id(self) -> int | None:
        if not self.table_exists(S.RUNS):
            return None
        return self.scalar(f"SELECT max(run_id) FROM {S.RUNS} WHERE status = 'ok'")


def open_store(
    path: str | os.PathLike = DEFAULT_DB, read_only: bool = False, create: bool = True
) -> Store:
    return Store(path, read_only=read_only, create=create)


_UNITS = {
    "": 1,
    "B": 1,
    "BYTES": 1,
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
    "TB": 1e12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


@contextlib.contextmanager
def capped_memory(store: Store, limit: int):
    """DuckDB's memory limit lowered to `limit` bytes (if it is higher) inside the block: its
    buffer pool otherwise keeps the blocks written, so a process that writes a big table grows
    with it (embedding, the Ray driver's commit). DuckDB spills to disk beyond the limit; the
    user's setting is restored after."""
    before = str(store.scalar("SELECT current_setting('memory_limit')"))
    m = re.fullmatch(r"\s*([\d.]+)\s*([A-Za-z]*)\s*", before)
    current = float(m.group(1)) * _UNITS.get(m.group(2).upper(), 1) if m else float("inf")
    if current <= limit:
        yield
        return
    store.execute(f"SET memory_limit = '{int(limit)}B'")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            store.execute(f"SET memory_limit = '{before}'")
