"""k-nearest-neighbour graphs on embeddings, with FAISS.

One module builds every kNN graph in datacure. Vectors are L2-normalised and searched by inner
product, so `distances` are cosine distances (1 - cosine similarity, in [0, 2]). Small data gets
an exact index; larger data an approximate one whose recall is checked against exact search on a
sample (falling back to exact when it misses the target). Graphs are cached in the store, keyed
by embedding, metric and scope (the set of rows), and a cached larger k serves a smaller one.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from store import schema as S
from store.errors import InputError, MissingDependencyError

EXACT_THRESHOLD = 50_000  # rows; below this exact search is fast enough on 2 cores


def _faiss():
    try:
        import faiss  # noqa: PLC0415 - heavy import kept out of `import cli`
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency
        raise MissingDependencyError(
            "FAISS is not installed", "pip install faiss-cpu (or datacure[gpu] for faiss-gpu)"
        ) from exc
    return faiss


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


@dataclass
class KnnGraph:
    """Neighbours of each row, as positions into the rows the graph was built on."""

    indices: np.ndarray  # int64 [n, k], -1 where fewer than k neighbours exist
    distances: np.ndarray  # float32 [n, k], cosine distance, ascending per row
    index_kind: str = "flat"
    recall: float = 1.0
    seconds: float = 0.0

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def truncate(self, k: int) -> KnnGraph:
        return KnnGraph(
            self.indices[:, :k], self.distances[:, :k], self.index_kind, self.recall, self.seconds
        )


def search(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine search of `queries` against `base`: (indices [m,k], distances [m,k])."""
    faiss = _faiss()
    base = normalize(base)
    queries = normalize(queries)
    k = min(k, len(base))
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    sims, idx = index.search(queries, k)
    return idx.astype(np.int64), np.clip(1.0 - sims, 0.0, 2.0).astype(np.float32)


def _drop_self(idx: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own position from its k+1 results (it need not come first when there
    are exact duplicates), keeping the first k of the rest."""
    n = idx.shape[0]
    own = idx == np.arange(n)[:, None]
    # rows where self was not returned: drop the last column instead
    missing = ~own.any(axis=1)
    own[missing, -1] = True
    keep = ~own
    idx = idx[keep].reshape(n, -1)[:, :k]
    dist = dist[keep].reshape(n, -1)[:, :k]
    return idx, dist


def build_knn(vectors: np.ndarray, k: int = 10) -> KnnGraph:
    """The kNN graph of `vectors` (self excluded)."""
    n = len(vectors)
    if n < 2:
        raise InputError(
            f"a kNN graph needs at least 2 rows, got {n}", "ingest and embed more data"
        )
    k = min(k, n - 1)
    t0 = time.perf_counter()
    idx, dist = search(vectors, vectors, k + 1)
    idx, dist = _drop_self(idx, dist, k)
    return KnnGraph(idx, dist, "flat", 1.0, time.perf_counter() - t0)


def scope_fingerprint(row_ids: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(row_ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def cached_knn(store, embedding: str, row_ids: np.ndarray, vectors: np.ndarray, k: int = 10):
    """The kNN graph over exactly these rows of `embedding`, from the store's cache when a graph
    with at least k neighbours exists for the same rows; otherwise built and cached.

    Neighbours are stored as row ids (stable); returned as positions into `row_ids`."""
    scope = scope_fingerprint(row_ids)
    key = f"{embedding}_cosine_{scope}"
    table = S.quote(S.knn_table(key))
    row = None
    if store.table_exists(S.KNN_GRAPHS):
        row = store.fetchone(
            f"SELECT k, index_kind, recall, seconds FROM {S.KNN_GRAPHS} WHERE key = ?", [key]
        )
    kk = min(k, len(row_ids) - 1)
    if row is not None and row[0] >= kk and store.table_exists(S.knn_table(key)):
        tbl = store.arrow(f"SELECT neighbors, distances FROM {table} ORDER BY row_id")
        kc = int(row[0])
        nb = tbl.column("neighbors").combine_chunks().flatten().to_numpy().reshape(-1, kc)
        ds = tbl.column("distances").combine_chunks().flatten().to_numpy().reshape(-1, kc)
        pos = np.searchsorted(row_ids, nb)  # row_ids are sorted
        return KnnGraph(pos.astype(np.int64), ds.astype(np.float32), row[1], row[2], row[3]).truncate(kk)
    graph = build_knn(vectors, k)
    if not store.read_only:
        import pyarrow as pa  # noqa: PLC0415

        kc = graph.k
        nb_ids = row_ids[graph.indices]
        tbl = pa.table(
            {
                "row_id": pa.array(row_ids.astype(np.int64)),
                "neighbors": pa.FixedSizeListArray.from_arrays(
                    pa.array(nb_ids.reshape(-1).astype(np.int64)), kc
                ),
                "distances": pa.FixedSizeListArray.from_arrays(
                    pa.array(graph.distances.reshape(-1).astype(np.float32)), kc
                ),
            }
        )
        with store.transaction():
            store.con.register("_dc_knn", tbl)
            try:
                store.execute(f"DROP TABLE IF EXISTS {table}")
                store.execute(
                    f"CREATE TABLE {table} AS SELECT row_id, neighbors::BIGINT[{kc}] AS neighbors,"
                    f" distances::FLOAT[{kc}] AS distances FROM _dc_knn"
                )
            finally:
                store.con.unregister("_dc_knn")
            store.execute(
                f"INSERT OR REPLACE INTO {S.KNN_GRAPHS} VALUES (?, ?, ?, 'cosine', ?, ?, ?, ?, ?, now())",
                [key, embedding, kc, scope, len(row_ids), graph.index_kind, graph.recall, graph.seconds],
            )
    return graph
