"""The approximate kNN indexes behind `store/knn.py`: adaptive IVF (k-means lists scanned list
by list in a low-dimensional projection, candidates re-ranked exactly) and FAISS HNSW, each with
its recall@k measured on a sample of queries against exact search, raised until it clears the
target or given up for exact search. How and why: the module docstring of `store/knn.py`.
"""

from __future__ import annotations

import math
import time

import numpy as np

from .knn_exact import _drop_self, _exact, _faiss

# The sample's recall, less RECALL_Z standard errors (of the mean of per-query recalls), must
# clear the target by RECALL_MARGIN: the smallest nprobe that passes lands near the bar, and a
# 1M-row graph whose sample estimate alone passed measured just under the bar on other queries.
RECALL_Z = 2.0
RECALL_MARGIN = 0.01
MAX_COST_FRACTION = 1 / 3  # an approximate scan costlier than this share of exact is not worth it


def _recall_lower(approx_idx: np.ndarray, exact_idx: np.ndarray) -> tuple[float, float]:
    """(mean recall, its lower confidence bound) over the sample's queries."""
    hit = (approx_idx[:, :, None] == exact_idx[:, None, :]).any(axis=1).mean(axis=1)
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
