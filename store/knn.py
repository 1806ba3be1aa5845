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
  compute-bound BLAS rather than a memory-bound loop per query. It is written here rather than
  taken from FAISS because that scan, with the base's own list assignment reused as the
  queries' probes for a self-graph, builds the graph faster than FAISS's IVF (with or without
  PCA and re-ranking) and HNSW indexes tuned to the same recall (bench/knn.py runs them side
  by side; bench/RESULTS.md has the figures).
- **adaptive recall**: before the full search, exact neighbours of a random sample of queries
  (1,000, or 500 above 200k rows) give the recall@k each `nprobe` would reach; the smallest
  `nprobe` whose recall, less two standard errors, clears `target_recall` (0.95) by 0.01 is used.
  When none does at a cost below a third of exact search (data with no low-dimensional
  structure, such as isotropic blobs), the search falls back to exact. The measured recall and
  the index kind are returned and recorded in `knn_graphs`.
- `index="hnsw"` (FAISS HNSW32, efSearch raised until the sample recall reaches the target) and
  `index="ivf"` / `"flat"` force a kind; tests use them with a small `exact_threshold`.

Graphs are cached in the store (`cached_knn`), keyed by embedding, metric and scope (the set of
rows and a fingerprint of their vectors); a cached larger k serves a smaller one.

FAISS, the thread budget and the exact path are in `store/knn_exact.py`; the approximate
indexes in `store/knn_approx.py`. Names other layers import stay importable from here.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import schema as S
from .errors import InputError
from .knn_exact import (
    _drop_self,
    _exact,
    _faiss,
    _threads,
    gpu_available,
    normalize,
    num_threads,  # noqa: F401 - re-exported: generators/, bench/ and tests use it
)

EXACT_THRESHOLD = 50_000  # rows; below this exact search is fast enough on 2 cores
TARGET_RECALL = 0.95  # recall@k of approximate searches against exact search
# The sample's recall, less RECALL_Z standard errors (of the mean of per-query recalls), must
# clear the target by RECALL_MARGIN: the smallest nprobe that passes lands near the bar, and a
# 1M-row graph whose sample estimate alone passed measured just under the bar on other queries.
RECALL_Z = 2.0
RECALL_MARGIN = 0.01
MAX_COST_FRACTION = 1 / 3  # an approximate scan costlier than this share of exact is not worth it
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


def _recall_lower(approx_idx: np.ndarray, exact_idx: np.ndarray) -> tuple[float, float]:
    """(mean recall, its lower confidence bound) over the sample's queries."""
    hit = (approx_idx[:, :, None] == exact_idx[:, None, :]).any(axis=1).mean(axis=1)
    se = float(hit.std(ddof=1) / np.sqrt(len(hit))) if len(hit) > 1 else 0.0
    return float(hit.mean()), float(hit.mean()) - RECALL_Z * se


def _recall(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Mean share of each row's exact neighbours found among its approximate ones."""
    if exact_idx.size == 0:
        return 1.0
    hit = (approx_idx[:, :, None] == exact_idx[:, None, :]).any(axis=1)
    return float(hit.mean())


def recall_at_k(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """recall@k of an approximate result against the exact one (rows aligned, ids compared)."""
    return _recall(np.asarray(approx_idx), np.asarray(exact_idx))


def _sample(m: int, seed: int) -> np.ndarray:
    size = 1000 if m <= 200_000 else 500
    rng = np.random.default_rng(seed + 1)
    return np.sort(rng.choice(m, size=min(size, m), replace=False))


def _nlist(n: int) -> int:
    # about 2 sqrt(n) lists (balancing k-means and assignment against the scan), with at least
    # 32 training points per list
    return int(max(1, min(round(2 * math.sqrt(n)), n // 32)))


# --- IVF ---------------------------------------------------------------------------------------
REDUCED_DIM = 64  # candidate generation runs in this many dimensions when d is larger
CANDIDATES = 2  # candidates per neighbour kept from the reduced space for exact re-ranking
NPROBES = (1, 2, 3, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 64, 96, 128, 192, 256)


def _basis(base: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Top `dim` eigenvectors of the (uncentred) second-moment matrix of a sample of `base`:
    projecting on them keeps inner products as well as any `dim`-dimensional map can."""
    rng = np.random.default_rng(seed + 2)
    xs = base[np.sort(rng.choice(len(base), size=min(len(base), 20_000), replace=False))]
    _, vecs = np.linalg.eigh((xs.T @ xs).astype(np.float64))
    return np.ascontiguousarray(vecs[:, ::-1][:, :dim], dtype=np.float32)


def _project(x: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    if basis is None:
        return x
    out = np.empty((len(x), basis.shape[1]), dtype=np.float32)
    for i in range(0, len(x), 1 << 16):
        out[i : i + (1 << 16)] = x[i : i + (1 << 16)] @ basis
    return out


class _Lists:
    """Inverted lists: base rows grouped by their nearest centroid."""

    def __init__(self, prim: np.ndarray, nlist: int):
        self.nlist = nlist
        self.order = np.argsort(prim, kind="stable")
        self.starts = np.searchsorted(prim[self.order], np.arange(nlist + 1))
        self.sizes = np.diff(self.starts)

    def scan(self, zb, zq, qrows, probes, kk):
        """Top-kk of each query row `qrows` among the members of its probed lists, list by list:
        every query probing a list is multiplied with the list's members in one product (BLAS),
        not one query at a time. Returns (sims [len(qrows), kk], ids, -1 where short)."""
        faiss = _faiss()
        p = probes.shape[1]
        flat = probes.reshape(-1)
        pair_order = np.argsort(flat, kind="stable")
        pair_row = (pair_order // p).astype(np.int64)  # position into qrows
        qstarts = np.searchsorted(flat[pair_order], np.arange(self.nlist + 1))
        del flat, pair_order
        heap = faiss.ResultHeap(len(qrows), kk, keep_max=True)
        block = 1 << 22  # similarity entries per product (16 MB)
        for lst in np.flatnonzero((self.sizes > 0) & (np.diff(qstarts) > 0)):
            mem = self.order[self.starts[lst] : self.starts[lst + 1]]
            rows = pair_row[qstarts[lst] : qstarts[lst + 1]]
            for b0 in range(0, len(mem), 1 << 16):
                mb = mem[b0 : b0 + (1 << 16)]
                xb = zb[mb]
                step = max(1, block // len(mb))
                for q0 in range(0, len(rows), step):
                    rb = rows[q0 : q0 + step]
                    heap.add_result_subset(rb, zq[qrows[rb]] @ xb.T, mb)
        heap.finalize()
        return heap.D, heap.I


def _rerank(base: np.ndarray, qvecs: np.ndarray, cand: np.ndarray, kk: int, order=None):
    """Exact inner products of each query (`qvecs`, aligned with the rows of `cand`) with its
    candidates, computed by FAISS in place (no gathered copy); the top kk (sims, ids).

    `order`: the rows taken in this order, in blocks: queries of the same list share most of
    their candidates, so in list order the candidates are read from cache, not memory."""
    faiss = _faiss()
    cand = np.ascontiguousarray(cand, dtype=np.int64)
    sims = np.empty((len(cand), kk), dtype=np.float32)
    ids = np.empty((len(cand), kk), dtype=np.int64)
    order = np.arange(len(cand)) if order is None else order
    for b0 in range(0, len(order), 1 << 16):
        pos = order[b0 : b0 + (1 << 16)]
        c = cand[pos]
        valid = c >= 0
        safe = np.where(valid, c, 0)
        q = np.ascontiguousarray(qvecs[pos], dtype=np.float32)
        s = np.empty(c.shape, dtype=np.float32)
        faiss.fvec_inner_products_by_idx(
            faiss.swig_ptr(s),
            faiss.swig_ptr(q),
            faiss.swig_ptr(base),
            faiss.swig_ptr(safe),
            base.shape[1],
            len(c),
            c.shape[1],
        )
        s[~valid] = -np.inf
        top = np.argsort(-s, axis=1)[:, :kk]
        top_s = np.take_along_axis(s, top, axis=1)
        sims[pos] = top_s
        ids[pos] = np.where(np.isfinite(top_s), np.take_along_axis(c, top, axis=1), -1)
    return sims, ids


def _ivf(base, queries, kk, self_graph, target, seed, info, reduce=True):
    """Adaptive IVF search; returns (sims, idx, kind, recall) or None to fall back to exact.

    Lists and candidates come from a `REDUCED_DIM`-dimensional projection when the vectors have
    more dimensions (6x less work on 384-d vectors); candidates are then re-ranked by exact
    inner products in the full space. The recall of this whole pipeline is measured on a sample
    of queries for increasing `nprobe`; the smallest one reaching the target is used. When the
    projection caps recall below the target, the same search runs in the full space."""
    faiss = _faiss()
    t = time.perf_counter()
    n, d = base.shape
    m = len(queries)
    reduced = reduce and d > 1.5 * REDUCED_DIM
    basis = _basis(base, REDUCED_DIM, seed) if reduced else None
    zb = _project(base, basis)
    zq = zb if self_graph else _project(queries, basis)
    dz = zb.shape[1]
    kc = CANDIDATES * kk if reduced else kk
    nlist = _nlist(n)
    rng = np.random.default_rng(seed)
    km = faiss.Kmeans(
        dz,
        nlist,
        niter=10,
        spherical=True,
        seed=seed,
        min_points_per_centroid=1,
        max_points_per_centroid=1 << 30,
        verbose=False,
    )
    km.train(zb[np.sort(rng.choice(n, size=min(n, 32 * nlist), replace=False))])
    cent = km.centroids
    info["seconds_train"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    ip = faiss.METRIC_INNER_PRODUCT
    p_first = min(nlist, 48)
    # one assignment pass for the base (and for the queries, when they are the base)
    _, base_probes = faiss.knn(zb, cent, p_first if self_graph else 1, metric=ip)
    lists = _Lists(base_probes[:, 0].astype(np.int64), nlist)
    info["seconds_assign"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()

    # the recall each nprobe reaches, on a sample of queries against exact search
    qs = _sample(m, seed)
    ex_sims, ex_idx = _exact(base, queries[qs], kk, use_gpu=False)
    k = kk - 1 if self_graph else kk
    if self_graph:
        ex_idx, ex_sims = _drop_self(ex_idx, ex_sims, k, qpos=qs)
    if self_graph:
        sample_probes = base_probes[qs]
    else:
        _, sample_probes = faiss.knn(zq[qs], cent, min(nlist, max(NPROBES)), metric=ip)
    curve, chosen = {}, None
    for p in NPROBES:
        if p > sample_probes.shape[1]:
            if self_graph and p <= nlist:  # look further for the sample only (cheap)
                _, sample_probes = faiss.knn(zq[qs], cent, min(nlist, max(NPROBES)), metric=ip)
            else:
                break
        probes = sample_probes[:, :p]
        cost = float(lists.sizes[probes].sum(axis=1).mean() / n)
        if cost > MAX_COST_FRACTION:
            break
        sims, ids = lists.scan(zb, zq, qs, probes, kc)
        if reduced:
            sims, ids = _rerank(base, queries[qs], ids, kk)
        if self_graph:
            ids, sims = _drop_self(ids, sims, k, qpos=qs)
        rec, low = _recall_lower(ids, ex_idx)
        curve[p] = (round(rec, 4), round(cost, 4))
        if low >= target + RECALL_MARGIN:
            chosen = p
            break
        if rec >= 0.999:  # the projection, not nprobe, is what limits recall
            break
    info.update(
        nlist=nlist,
        dim=dz,
        sample=len(qs),
        recall_by_nprobe={p: r for p, (r, _) in curve.items()},
        seconds_sample=round(time.perf_counter() - t, 2),
    )
    if chosen is None:
        best = max(curve.items(), key=lambda kv: kv[1][0]) if curve else (0, (0.0, 0.0))
        note = (
            f"IVF in {dz} dimensions reached recall {best[1][0]:.3f} at nprobe {best[0]} "
            f"(scanning {best[1][1]:.1%} of the rows), below the target {target}"
        )
        info.setdefault("notes", []).append(note)
        if reduced and best[1][1] <= MAX_COST_FRACTION / 4:
            return _ivf(base, queries, kk, self_graph, target, seed, info, reduce=False)
        info["fallback"] = "exact search"
        return None
    p = chosen
    info.update(nprobe=p, scanned=curve[p][1])
    t = time.perf_counter()
    if self_graph and p <= base_probes.shape[1]:
        probes = base_probes[:, :p]
    else:
        _, probes = faiss.knn(zq, cent, p, metric=ip)
    del base_probes
    first_list = probes[:, 0].copy()
    allq = np.arange(m)
    sims, idx = lists.scan(zb, zq, allq, probes, kc)
    del probes
    info["seconds_scan"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    if reduced:
        # in the order of each query's nearest list (the base's lists when queries are the base)
        qorder = lists.order if self_graph else np.argsort(first_list, kind="stable")
        sims, idx = _rerank(base, queries, idx, kk, qorder)
        info["seconds_rerank"] = round(time.perf_counter() - t, 2)
    short = np.flatnonzero((idx < 0).any(axis=1))
    if len(short):  # fewer candidates than k in the probed lists: search those rows exactly
        sims[short], idx[short] = _exact(base, queries[short], kk, use_gpu=False)
        info["exact_rows"] = len(short)
    kind = f"ivf(nlist={nlist},nprobe={p}" + (f",dim={dz})" if reduced else ")")
    return sims, idx, kind, float(curve[p][0])


# --- HNSW --------------------------------------------------------------------------------------
def _hnsw(base, queries, kk, self_graph, target, seed, info):
    """Adaptive HNSW search; returns (sims, idx, kind, recall) or None to fall back to exact."""
    faiss = _faiss()
    d = base.shape[1]
    index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 40
    index.add(base)
    qs = _sample(len(queries), seed)
    ex_sims, ex_idx = _exact(base, queries[qs], kk, use_gpu=False)
    k = kk - 1 if self_graph else kk
    if self_graph:
        ex_idx, _ = _drop_self(ex_idx, ex_sims, k, qpos=qs)
    curve = {}
    for ef in (16, 32, 64, 128, 256, 512, 1024):
        index.hnsw.efSearch = max(ef, kk)
        s, i = index.search(queries[qs], kk)
        if self_graph:
            i, s = _drop_self(i.astype(np.int64), s, k, qpos=qs)
        curve[ef], low = _recall_lower(i, ex_idx)
        if low >= target + RECALL_MARGIN:
            break
    info.update(sample=len(qs), recall_by_efsearch={int(e): round(r, 4) for e, r in curve.items()})
    ef, rec = list(curve.items())[-1]
    if low < target + RECALL_MARGIN:
        info["fallback"] = f"HNSW reached recall {rec:.3f} at efSearch {ef}: exact search instead"
        return None
    index.hnsw.efSearch = max(ef, kk)
    sims, idx = index.search(queries, kk)
    idx = idx.astype(np.int64)
    short = np.flatnonzero((idx < 0).any(axis=1))
    if len(short):
        sims[short], idx[short] = _exact(base, queries[short], kk, use_gpu=False)
    info["efSearch"] = int(ef)
    return sims, idx, f"hnsw(M=32,efSearch={ef})", float(rec)


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
    kind = index
    if index == "auto":
        big = n >= exact_threshold and m * n >= exact_threshold**2
        if gpu and n <= GPU_EXACT_MAX:
            kind = "flat"  # exact on the GPU beats building an index at these sizes
        else:
            kind = "ivf" if big else "flat"
    result = None
    with _threads() as threads:
        info["threads"] = threads
        if kind == "ivf" and n > kk:
            result = _ivf(base, queries, kk, self_graph, target_recall, seed, info)
        elif kind == "hnsw" and n > kk:
            result = _hnsw(base, queries, kk, self_graph, target_recall, seed, info)
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
    rows_fp = scope_fingerprint(row_ids)
    scope = f"{rows_fp}:{_vectors_fingerprint(vectors)}"
    key = f"{embedding}_{METRIC}_{rows_fp}"
    table = S.quote(S.knn_table(key))
    row = None
    if store.table_exists(S.KNN_GRAPHS):
        row = store.fetchone(
            f"SELECT k, index_kind, recall, seconds, scope FROM {S.KNN_GRAPHS} WHERE key = ?",
            [key],
        )
    kk = min(k, len(row_ids) - 1)
    if (
        row is not None
        and row[0] >= kk
        and row[4] == scope
        and store.table_exists(S.knn_table(key))
    ):
        tbl = store.arrow(f"SELECT neighbors, distances FROM {table} ORDER BY row_id")
        kc = int(row[0])
        nb = tbl.column("neighbors").combine_chunks().flatten().to_numpy().reshape(-1, kc)
        ds = tbl.column("distances").combine_chunks().flatten().to_numpy().reshape(-1, kc)
        pos = np.searchsorted(row_ids, nb)
        graph = KnnGraph(pos.astype(np.int64), ds.astype(np.float32), row[1], row[2], row[3])
        graph.info["cached"] = True
        return graph.truncate(kk)
    graph = build_knn(vectors, k, **options)
    if not store.read_only:
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
                f"INSERT OR REPLACE INTO {S.KNN_GRAPHS} "
                f"VALUES (?, ?, ?, '{METRIC}', ?, ?, ?, ?, ?, now())",
                [
                    key,
                    embedding,
                    kc,
                    scope,
                    len(row_ids),
                    graph.index_kind,
                    graph.recall,
                    graph.seconds,
                ],
            )
    return graph
