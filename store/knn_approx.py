"""The approximate kNN indexes behind `store/knn.py`: adaptive IVF (k-means lists scanned list
by list in a low-dimensional projection, candidates re-ranked exactly) and FAISS HNSW, each with
its recall@k measured on a sample of queries against exact search, raised until it clears the
target or given up for exact search. How and why: the module docstring of `store/knn.py`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from .knn_exact import _drop_self, _exact, load_faiss, recall_per_query, single_blas_thread

# The sample's recall, less RECALL_Z standard errors (of the mean of per-query recalls), must
# clear the target by RECALL_MARGIN: the smallest nprobe that passes lands near the bar, and a
# 1M-row graph whose sample estimate alone passed measured just under the bar on other queries.
RECALL_Z = 2.0
RECALL_MARGIN = 0.01
MAX_COST_FRACTION = 1 / 3  # an approximate scan costlier than this share of exact is not worth it


def _recall_lower(ids: np.ndarray, sims: np.ndarray, exact_sims: np.ndarray) -> tuple[float, float]:
    """(mean recall, its lower confidence bound) over the sample's queries, ties counted
    (`recall_per_query`)."""
    hit = recall_per_query(ids, sims, exact_sims)
    se = float(hit.std(ddof=1) / np.sqrt(len(hit))) if len(hit) > 1 else 0.0
    return float(hit.mean()), float(hit.mean()) - RECALL_Z * se


def _sample(m: int, seed: int) -> np.ndarray:
    size = 1000 if m <= 200_000 else 500
    rng = np.random.default_rng(seed + 1)
    return np.sort(rng.choice(m, size=min(size, m), replace=False))


def _nlist(n: int) -> int:
    # about 2 sqrt(n) lists (balancing k-means and assignment against the scan), with at least
    # 32 training points per list
    return int(max(1, min(round(2 * math.sqrt(n)), n // 32)))


@dataclass
class SearchJob:
    """One approximate search, shared by its steps: unit vectors, the k asked of the index
    (`kk`: k + 1 for a self-graph, whose own row is dropped later), the recall bar, the seed, and
    `info`, where each step records what it measured and chose (JSON-safe)."""

    base: np.ndarray
    queries: np.ndarray
    kk: int
    self_graph: bool
    target: float
    seed: int
    info: dict

    @property
    def k(self) -> int:
        """Neighbours per row once a self-graph has dropped each row's own position."""
        return self.kk - 1 if self.self_graph else self.kk

    def exact_sample(self) -> tuple[np.ndarray, np.ndarray]:
        """A seeded sample of query positions and their exact neighbours' similarities (own row
        dropped)."""
        qs = _sample(len(self.queries), self.seed)
        ex_sims, ex_idx = _exact(self.base, self.queries[qs], self.kk, use_gpu=False)
        if self.self_graph:
            ex_idx, ex_sims = _drop_self(ex_idx, ex_sims, self.k, qpos=qs)
        return qs, ex_sims

    def sample_recall(self, qs, ids, sims, ex_sims) -> tuple[float, float]:
        """(recall, its lower bound) of the sample queries `qs`' approximate neighbours (their
        exact similarities `sims`), ties with the k-th exact neighbour counted as found."""
        if self.self_graph:
            ids, sims = _drop_self(ids, sims, self.k, qpos=qs)
        return _recall_lower(ids, sims, ex_sims)

    def passes(self, low: float) -> bool:
        """Whether a recall's lower bound clears the target by the margin."""
        return low >= self.target + RECALL_MARGIN

    def fill_short(self, sims: np.ndarray, idx: np.ndarray) -> int:
        """Rows with fewer than kk candidates (ids -1) searched exactly, in place; how many."""
        short = np.flatnonzero((idx < 0).any(axis=1))
        if len(short):
            sims[short], idx[short] = _exact(self.base, self.queries[short], self.kk, use_gpu=False)
        return len(short)


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
        faiss = load_faiss()
        p = probes.shape[1]
        flat = probes.reshape(-1)
        pair_order = np.argsort(flat, kind="stable")
        pair_row = (pair_order // p).astype(np.int64)  # position into qrows
        qstarts = np.searchsorted(flat[pair_order], np.arange(self.nlist + 1))
        del flat, pair_order
        heap = faiss.ResultHeap(len(qrows), kk, keep_max=True)
        block = 1 << 22  # similarity entries per product (16 MB)
        with single_blas_thread():  # one small product per list: threads only wait on each other
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
    faiss = load_faiss()
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


@dataclass
class _Ivf:
    """The IVF index of one search: base and queries in the space the lists live in (projected
    or not), the lists' centroids, the lists, the base's nearest lists (its first 48 for a
    self-graph, where they are also the queries' probes), and candidates kept per query."""

    reduced: bool
    zb: np.ndarray
    zq: np.ndarray
    cent: np.ndarray
    lists: _Lists
    base_probes: np.ndarray | None
    kc: int

    @property
    def dz(self) -> int:
        return int(self.zb.shape[1])

    @property
    def nlist(self) -> int:
        return self.lists.nlist

    def nearest_lists(self, rows: np.ndarray | None, p: int) -> np.ndarray:
        """The `p` lists nearest to each query of `rows` (all queries for None)."""
        faiss = load_faiss()
        zq = self.zq if rows is None else self.zq[rows]
        _, probes = faiss.knn(zq, self.cent, p, metric=faiss.METRIC_INNER_PRODUCT)
        return probes


def _ivf(job: SearchJob, reduce: bool = True):
    """Adaptive IVF search; returns (sims, idx, kind, recall) or None to fall back to exact.

    Lists and candidates come from a `REDUCED_DIM`-dimensional projection when the vectors have
    more dimensions (6x less work on 384-d vectors); candidates are then re-ranked by exact
    inner products in the full space. The recall of this whole pipeline is measured on a sample
    of queries for increasing `nprobe`; the smallest one reaching the target is used. When the
    projection caps recall below the target, the same search runs in the full space."""
    ivf = _ivf_build(job, reduce)
    p, curve = _choose_nprobe(job, ivf)
    if p is None:
        return _ivf_short_of_target(job, ivf, curve)
    job.info.update(nprobe=p, scanned=curve[p][1])
    sims, idx = _ivf_scan(job, ivf, p)
    short = job.fill_short(sims, idx)
    if short:  # fewer candidates than k in the probed lists: those rows were searched exactly
        job.info["exact_rows"] = short
    kind = f"ivf(nlist={ivf.nlist},nprobe={p}" + (f",dim={ivf.dz})" if ivf.reduced else ")")
    return sims, idx, kind, float(curve[p][0])


def _ivf_build(job: SearchJob, reduce: bool) -> _Ivf:
    """Project the vectors (when `reduce` and they are wide), train spherical k-means lists on a
    seeded sample of the base, and assign the base to them in one pass."""
    faiss = load_faiss()
    info = job.info
    t = time.perf_counter()
    n, d = job.base.shape
    reduced = reduce and d > 1.5 * REDUCED_DIM
    basis = _basis(job.base, REDUCED_DIM, job.seed) if reduced else None
    zb = _project(job.base, basis)
    zq = zb if job.self_graph else _project(job.queries, basis)
    dz = zb.shape[1]
    nlist = _nlist(n)
    rng = np.random.default_rng(job.seed)
    km = faiss.Kmeans(
        dz,
        nlist,
        niter=10,
        spherical=True,
        seed=job.seed,
        min_points_per_centroid=1,
        max_points_per_centroid=1 << 30,
        verbose=False,
    )
    km.train(zb[np.sort(rng.choice(n, size=min(n, 32 * nlist), replace=False))])
    cent = km.centroids
    info["seconds_train"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    p_first = min(nlist, 48)
    # one assignment pass for the base (and for the queries, when they are the base)
    _, base_probes = faiss.knn(
        zb, cent, p_first if job.self_graph else 1, metric=faiss.METRIC_INNER_PRODUCT
    )
    lists = _Lists(base_probes[:, 0].astype(np.int64), nlist)
    info["seconds_assign"] = round(time.perf_counter() - t, 2)
    kc = CANDIDATES * job.kk if reduced else job.kk
    return _Ivf(reduced, zb, zq, cent, lists, base_probes, kc)


def _choose_nprobe(job: SearchJob, ivf: _Ivf) -> tuple[int | None, dict]:
    """The recall each nprobe reaches, on a sample of queries against exact search: the smallest
    nprobe of `NPROBES` that clears the bar (None when none does within `MAX_COST_FRACTION` of
    the rows), and the curve {nprobe: (recall, share of rows scanned)}."""
    t = time.perf_counter()
    qs, ex_sims = job.exact_sample()
    widest = min(ivf.nlist, max(NPROBES))
    sample_probes = ivf.base_probes[qs] if job.self_graph else ivf.nearest_lists(qs, widest)
    curve, chosen = {}, None
    for p in NPROBES:
        if p > sample_probes.shape[1]:
            if job.self_graph and p <= ivf.nlist:  # look further for the sample only (cheap)
                sample_probes = ivf.nearest_lists(qs, widest)
            else:
                break
        probes = sample_probes[:, :p]
        cost = float(ivf.lists.sizes[probes].sum(axis=1).mean() / len(job.base))
        if cost > MAX_COST_FRACTION:
            break
        sims, ids = ivf.lists.scan(ivf.zb, ivf.zq, qs, probes, ivf.kc)
        if ivf.reduced:
            sims, ids = _rerank(job.base, job.queries[qs], ids, job.kk)
        rec, low = job.sample_recall(qs, ids, sims, ex_sims)
        curve[p] = (round(rec, 4), round(cost, 4))
        if job.passes(low):
            chosen = p
            break
        if rec >= 0.999:  # the projection, not nprobe, is what limits recall
            break
    job.info.update(
        nlist=ivf.nlist,
        dim=ivf.dz,
        sample=len(qs),
        recall_by_nprobe={p: r for p, (r, _) in curve.items()},
        seconds_sample=round(time.perf_counter() - t, 2),
    )
    return chosen, curve


def _ivf_short_of_target(job: SearchJob, ivf: _Ivf, curve: dict):
    """No nprobe reached the target: a note on how close IVF came, then the same search in the
    full space when the projection capped recall at a low cost, else None (exact search)."""
    best = max(curve.items(), key=lambda kv: kv[1][0]) if curve else (0, (0.0, 0.0))
    note = (
        f"IVF in {ivf.dz} dimensions reached recall {best[1][0]:.3f} at nprobe {best[0]} "
        f"(scanning {best[1][1]:.1%} of the rows), below the target {job.target}"
    )
    job.info.setdefault("notes", []).append(note)
    if ivf.reduced and best[1][1] <= MAX_COST_FRACTION / 4:
        return _ivf(job, reduce=False)
    job.info["fallback"] = "exact search"
    return None


def _ivf_scan(job: SearchJob, ivf: _Ivf, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Every query's candidates in its `p` nearest lists, re-ranked in the full space when the
    lists live in the projection: (sims, ids), ids -1 where a row found fewer than kk."""
    t = time.perf_counter()
    if job.self_graph and p <= ivf.base_probes.shape[1]:
        probes = ivf.base_probes[:, :p]
    else:
        probes = ivf.nearest_lists(None, p)
    ivf.base_probes = None
    first_list = probes[:, 0].copy()
    sims, idx = ivf.lists.scan(ivf.zb, ivf.zq, np.arange(len(job.queries)), probes, ivf.kc)
    del probes
    job.info["seconds_scan"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    if ivf.reduced:
        # in the order of each query's nearest list (the base's lists when queries are the base)
        qorder = ivf.lists.order if job.self_graph else np.argsort(first_list, kind="stable")
        sims, idx = _rerank(job.base, job.queries, idx, job.kk, qorder)
        job.info["seconds_rerank"] = round(time.perf_counter() - t, 2)
    return sims, idx


# --- HNSW --------------------------------------------------------------------------------------
HNSW_EF_CONSTRUCTION = 200
M_HNSW = 32


def _hnsw(job: SearchJob):
    """Adaptive HNSW search; returns (sims, idx, kind, recall) or None to fall back to exact."""
    faiss = load_faiss()
    index = faiss.IndexHNSWFlat(job.base.shape[1], M_HNSW, faiss.METRIC_INNER_PRODUCT)
    # a wider build search than FAISS's default 40: with the default the graph's recall stops
    # short of the target at 1M embedding-like rows whatever efSearch is (bench/knn.py's 1M runs)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(job.base)
    qs, ex_sims = job.exact_sample()
    curve = {}
    for ef in (16, 32, 64, 128, 256, 512, 1024):
        index.hnsw.efSearch = max(ef, job.kk)
        s, i = index.search(job.queries[qs], job.kk)
        curve[ef], low = job.sample_recall(qs, i.astype(np.int64), s, ex_sims)
        if job.passes(low):
            break
    job.info.update(
        sample=len(qs), recall_by_efsearch={int(e): round(r, 4) for e, r in curve.items()}
    )
    ef, rec = list(curve.items())[-1]
    if not job.passes(low):
        job.info["fallback"] = (
            f"HNSW reached recall {rec:.3f} at efSearch {ef}: exact search instead"
        )
        return None
    index.hnsw.efSearch = max(ef, job.kk)
    sims, idx = index.search(job.queries, job.kk)
    idx = idx.astype(np.int64)
    job.fill_short(sims, idx)
    job.info["efSearch"] = int(ef)
    return sims, idx, f"hnsw(M={M_HNSW},efC={HNSW_EF_CONSTRUCTION},efSearch={ef})", float(rec)
