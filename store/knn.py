"""k-nearest-neighbour graphs and searches on embeddings, with FAISS.

One module builds every kNN graph in datacure. Vectors are L2-normalised and searched by inner
product, so `distances` are cosine distances (1 - cosine similarity, in [0, 2]).

How an index is chosen (`index="auto"`):

- **exact** (`flat`) below `exact_threshold` rows (50,000): brute force, the true neighbours,
  by FAISS's `knn` (blocked BLAS products with a heap per query; 16 MB of scores at a time),
  called on `EXACT_QUERY_BLOCK` queries at a time so that the result arrays stay bounded.
  FAISS is used rather than datacure's earlier blocked torch products because bench/knn_exact.py
  measured it faster in one process at the same thread count (bench/RESULTS.md). On a GPU
  (`faiss.get_num_gpus() > 0`) exact search is used up to `GPU_EXACT_MAX` rows, with the same
  results as on the CPU.
- **IVF** above it: k-means lists (about 2 * sqrt(n) of them), each query scanning the `nprobe`
  lists nearest to it. Lists and candidates come from a 64-d projection of the vectors (their top
  principal directions) and the candidates are re-ranked by exact inner products in the full
  space, so returned distances are exact; only the candidate set is approximate. The scan runs
  list by list as one matrix product per list (every query that probes a list at once):
  compute-bound BLAS rather than a memory-bound loop per query. It is written here
  (`store/knn_approx.py`) rather than taken from FAISS because that scan, with the base's own
  list assignment reused as the queries' probes for a self-graph, builds the graph faster than
  FAISS's IVF (with or without PCA and re-ranking) and HNSW indexes tuned to the same recall
  (bench/knn.py runs them side by side; bench/RESULTS.md has the figures).
- **adaptive recall**: before the full search, exact neighbours of a random sample of queries
  (1,000, or 500 above 200k rows) give the recall@k each `nprobe` would reach; the smallest
  `nprobe` whose recall, less two standard errors, clears `target_recall` (0.95) by 0.01 is used.
  When none does at a cost below a third of exact search (data with no low-dimensional
  structure, such as isotropic blobs), the search falls back to exact. The measured recall and
  the index kind are returned and recorded in `knn_graphs`.
- `index="hnsw"` (FAISS HNSW32 built with efConstruction 200, efSearch raised until the sample
  recall reaches the target) and `index="ivf"` / `"flat"` force a kind; tests use them with a
  small `exact_threshold`.

Graphs are cached in the store (`cached_knn`), keyed by embedding, metric and scope (the set of
rows and a fingerprint of their vectors); a cached larger k serves a smaller one.

FAISS, the thread budget and the exact path are in `store/knn_exact.py`; the approximate
indexes in `store/knn_approx.py`. Names other layers import stay importable from here.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np

from . import schema as S
from .errors import InputError
from .knn_approx import SearchJob, _hnsw, _ivf
from .knn_exact import (
    _drop_self,
    _exact,
    _threads,
    gpu_available,
    normalize,
    num_threads,  # noqa: F401 - re-exported: generators/, bench/ and tests use it
)

EXACT_THRESHOLD = 50_000  # rows; below this exact search is fast enough on 2 cores
TARGET_RECALL = 0.95  # recall@k of approximate searches against exact search
GPU_EXACT_MAX = 2_000_000  # rows; exact search on a GPU is fast up to here
METRIC = "cosine"
INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")


@dataclass
class KnnGraph:
    """Neighbours of each query, as positions into the rows searched (the base).

    For a graph built on one set of rows (`build_knn`), queries are the rows themselves and a
    row is never its own neighbour."""

    indices: np.ndarray  # int64 [n, k]
    distances: np.ndarray  # float32 [n, k], cosine distance, ascending per row
    index_kind: str = "flat"
    recall: float = 1.0  # recall@k against exact search (1.0 for exact; else a sample estimate)
    seconds: float = 0.0
    info: dict = field(default_factory=dict)  # how the index was chosen (JSON-safe)

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def truncate(self, k: int) -> KnnGraph:
        return KnnGraph(
            self.indices[:, :k],
            self.distances[:, :k],
            self.index_kind,
            self.recall,
            self.seconds,
            self.info,
        )


def _recall(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Mean share of each row's exact neighbours found among its approximate ones."""
    if exact_idx.size == 0:
        return 1.0
    hit = (approx_idx[:, :, None] == exact_idx[:, None, :]).any(axis=1)
    return float(hit.mean())


def recall_at_k(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """recall@k of an approximate result against the exact one (rows aligned, ids compared)."""
    return _recall(np.asarray(approx_idx), np.asarray(exact_idx))


# --- public API ----------------------------------------------------------------------------------
def knn_search(
    base: np.ndarray,
    queries: np.ndarray | None = None,
    k: int = 10,
    *,
    index: str = "auto",
    exact_threshold: int = EXACT_THRESHOLD,
    target_recall: float = TARGET_RECALL,
    use_gpu: bool | None = None,
    seed: int = 0,
) -> KnnGraph:
    """The k nearest rows of `base` for each row of `queries`, by cosine similarity.

    `queries=None` builds the graph of `base` on itself, each row's own position excluded.
    `index`: "auto" (exact below `exact_threshold` rows, else adaptive IVF), "flat", "ivf" or
    "hnsw". Approximate kinds reach `target_recall` (recall@k, estimated on a sample against
    exact search) or fall back to exact; the result says which kind ran and the recall."""
    if index not in INDEX_KINDS:
        raise InputError(
            f"unknown kNN index kind {index!r}", f"use one of {', '.join(INDEX_KINDS)}"
        )
    t0 = time.perf_counter()
    self_graph = queries is None
    base = normalize(base)
    queries = base if self_graph else normalize(queries)
    n, m = len(base), len(queries)
    if self_graph and n < 2:
        raise InputError(
            f"a kNN graph needs at least 2 rows, got {n}", "ingest and embed more data"
        )
    if n == 0:
        raise InputError("cannot search an empty set of rows", "embed the rows to search first")
    k = max(1, min(k, n - 1 if self_graph else n))
    kk = k + 1 if self_graph else k
    gpu = gpu_available() if use_gpu is None else bool(use_gpu)
    info: dict = {"rows": n, "queries": m}
    kind = _index_kind(index, n, m, exact_threshold, gpu)
    result = None
    with _threads() as threads:
        info["threads"] = threads
        job = SearchJob(base, queries, kk, self_graph, target_recall, seed, info)
        if kind == "ivf" and n > kk:
            result = _ivf(job)
        elif kind == "hnsw" and n > kk:
            result = _hnsw(job)
    if result is None:
        with _threads():
            sims, idx = _exact(base, queries, kk, use_gpu=gpu)
        kind, recall = "flat" + ("+gpu" if gpu else ""), 1.0
    else:
        sims, idx, kind, recall = result
    if self_graph:
        idx, sims = _drop_self(idx, sims, k)
    dist = np.clip(1.0 - sims, 0.0, 2.0).astype(np.float32)
    return KnnGraph(idx, dist, kind, recall, time.perf_counter() - t0, info)


def _index_kind(index: str, n: int, m: int, exact_threshold: int, gpu: bool) -> str:
    """The index kind asked for, or for "auto": exact ("flat") for small searches and on a GPU
    up to `GPU_EXACT_MAX` rows, else "ivf"."""
    if index != "auto":
        return index
    if gpu and n <= GPU_EXACT_MAX:
        return "flat"  # exact on the GPU beats building an index at these sizes
    big = n >= exact_threshold and m * n >= exact_threshold**2
    return "ivf" if big else "flat"


def search(
    base: np.ndarray, queries: np.ndarray, k: int, **options
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine search of `queries` against `base`: (indices [m, k], distances [m, k]).

    Exact unless both sets are large (see `knn_search`, whose options it takes); an approximate
    search keeps recall@k >= 0.95 against exact or falls back to exact."""
    g = knn_search(base, queries, k, **options)
    return g.indices, g.distances


def build_knn(vectors: np.ndarray, k: int = 10, **options) -> KnnGraph:
    """The kNN graph of `vectors` (self excluded); options as for `knn_search`."""
    return knn_search(vectors, None, k, **options)


# --- cache in the store --------------------------------------------------------------------------
def scope_fingerprint(row_ids: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(row_ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def _vectors_fingerprint(vectors: np.ndarray) -> str:
    """Cheap fingerprint of the vectors (shape and up to 1,024 evenly spaced rows): a graph
    cached for the same rows of an embedding that was recomputed since is not reused."""
    v = np.asarray(vectors)
    h = hashlib.sha1(str(v.shape).encode())
    if len(v):
        h.update(np.ascontiguousarray(v[np.linspace(0, len(v) - 1, 1024).astype(int)]).tobytes())
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class _GraphKey:
    """Where a graph of `embedding` is cached: `key` names its table and its `knn_graphs` row
    (embedding, metric, rows); `scope` (rows and vectors fingerprints) must match to reuse it."""

    embedding: str
    key: str
    scope: str

    @classmethod
    def of(cls, embedding: str, row_ids: np.ndarray, vectors: np.ndarray) -> _GraphKey:
        rows_fp = scope_fingerprint(row_ids)
        scope = f"{rows_fp}:{_vectors_fingerprint(vectors)}"
        return cls(embedding, f"{embedding}_{METRIC}_{rows_fp}", scope)

    @property
    def table(self) -> str:
        return S.quote(S.knn_table(self.key))


def cached_knn(
    store, embedding: str, row_ids: np.ndarray, vectors: np.ndarray, k: int = 10, **options
) -> KnnGraph:
    """The kNN graph over exactly these rows of `embedding`, from the store's cache when a graph
    with at least k neighbours exists for the same rows and vectors; otherwise built (options
    as for `knn_search`) and cached in `knn_<embedding>_cosine_<scope>` with a row in
    `knn_graphs` (index kind, measured recall, seconds).

    `row_ids` must be sorted (as the audit context's are). Neighbours are stored as row ids
    (stable); returned as positions into `row_ids`."""
    row_ids = np.asarray(row_ids, dtype=np.int64)
    where = _GraphKey.of(embedding, row_ids, vectors)
    graph = _load_graph(store, where, row_ids, min(k, len(row_ids) - 1))
    if graph is not None:
        return graph
    graph = build_knn(vectors, k, **options)
    if not store.read_only:
        _save_graph(store, where, row_ids, graph)
    return graph


def _load_graph(store, where: _GraphKey, row_ids: np.ndarray, kk: int) -> KnnGraph | None:
    """The cached graph truncated to `kk` neighbours, or None when there is none with at least
    `kk` for the same scope."""
    row = None
    if store.table_exists(S.KNN_GRAPHS):
        row = store.fetchone(
            f"SELECT k, index_kind, recall, seconds, scope FROM {S.KNN_GRAPHS} WHERE key = ?",
            [where.key],
        )
    if (
        row is None
        or row[0] < kk
        or row[4] != where.scope
        or not store.table_exists(S.knn_table(where.key))
    ):
        return None
    tbl = store.arrow(f"SELECT neighbors, distances FROM {where.table} ORDER BY row_id")
    kc = int(row[0])
    nb = tbl.column("neighbors").combine_chunks().flatten().to_numpy().reshape(-1, kc)
    ds = tbl.column("distances").combine_chunks().flatten().to_numpy().reshape(-1, kc)
    pos = np.searchsorted(row_ids, nb)
    graph = KnnGraph(pos.astype(np.int64), ds.astype(np.float32), row[1], row[2], row[3])
    graph.info["cached"] = True
    return graph.truncate(kk)


def _save_graph(store, where: _GraphKey, row_ids: np.ndarray, graph: KnnGraph) -> None:
    """The graph's table (neighbours as row ids) and its `knn_graphs` row, in one transaction."""
    import pyarrow as pa

    kc = graph.k
    nb_ids = row_ids[graph.indices]
    tbl = pa.table(
        {
            S.ROW_ID: pa.array(row_ids),
            "neighbors": pa.FixedSizeListArray.from_arrays(pa.array(nb_ids.reshape(-1)), kc),
            "distances": pa.FixedSizeListArray.from_arrays(
                pa.array(graph.distances.reshape(-1).astype(np.float32)), kc
            ),
        }
    )
    with store.transaction():
        with store.registered("_dc_knn", tbl):
            store.execute(f"DROP TABLE IF EXISTS {where.table}")
            store.execute(
                f"CREATE TABLE {where.table} AS SELECT row_id, neighbors::BIGINT[{kc}] AS"
                f" neighbors, distances::FLOAT[{kc}] AS distances FROM _dc_knn"
            )
        store.execute(
            f"INSERT OR REPLACE INTO {S.KNN_GRAPHS} "
            f"VALUES (?, ?, ?, '{METRIC}', ?, ?, ?, ?, ?, now())",
            [
                where.key,
                where.embedding,
                kc,
                where.scope,
                len(row_ids),
                graph.index_kind,
                graph.recall,
                graph.seconds,
            ],
        )
