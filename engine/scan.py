"""The scan of a group of partitions (engine/partition.py, step 3): each query's inner products
with the rows of the partitions it probes, one matrix product per partition for every query
that probes it, the best candidates kept in FAISS heaps, then an exact re-rank.

One scan can collect several top-k lists from the same products (`Want`): the Ray engine's
search collects each row's neighbours among the audited rows and, for the rows of the splits
leakage examines, their nearest rows in other splits. Both probe the same partitions, so the
products (the scan's cost) are shared, and each list is the one a scan of its own would give:
a heap sees the same values in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..store.knn_exact import load_faiss, single_blas_thread
from .coverage import CANDIDATES

SPARSE_PAIRS = 0.75  # `_inner_products` scores indexed pairs when fewer candidates are valid
SCAN_BLOCK = 1 << 20  # similarity entries per product (4 MB: the heaps read it from cache)


@dataclass
class Want:
    """One top-k list a scan collects: the `k` nearest rows of the queries `rows` (a mask over
    the scan's queries; None: all) among the scanned rows that `cols` allows (a mask over all
    rows; None: all) and, with `split` (every row's split), only rows of another split than the
    query's own. `exclude_self`: a query is not its own neighbour."""

    k: int
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None
    split: np.ndarray | None = None
    exclude_self: bool = True


def group_rows(part: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows `base` in partition order (stable) and their partitions: what `scan` walks,
    computed once where one task scans the same rows for many groups of queries."""
    bpart = part[base]
    order = np.argsort(bpart, kind="stable")
    return base[order], bpart[order]


def scan(
    x: np.ndarray,
    z: np.ndarray,
    part: np.ndarray,
    base: np.ndarray,
    qpos: np.ndarray,
    qprobes: np.ndarray,
    k: int,
    exclude_self: bool = True,
    candidates: int = CANDIDATES,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of the rows `qpos` among the rows `base` (positions into `x` / `z`, the normalised
    full and projected vectors of the rows a task holds; `part` their partitions), each query
    scanning the partitions `qprobes` lists for it: one product per partition for all the
    queries that probe it, the running best `candidates * k` kept in a FAISS heap, then an
    exact re-rank. Returns (positions [q, k], -1 where fewer; sims [q, k], -inf there)."""
    want = Want(k, exclude_self=exclude_self)
    return scan_wants(x, z, group_rows(part, base), qpos, qprobes, [want], candidates)[0]


def scan_wants(
    x: np.ndarray,
    z: np.ndarray,
    grouped: tuple[np.ndarray, np.ndarray],
    qpos: np.ndarray,
    qprobes: np.ndarray,
    wants: list[Want],
    candidates: int = CANDIDATES,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`scan` collecting every list of `wants` from one pass over the products: the rows
    `grouped` (`group_rows`) of each probed partition multiplied once by all the queries that
    probe it, each list's heap fed its queries and allowed columns of that product. Returns
    (positions, sims) of each want, [its queries, its k]."""
    members, plist = grouped
    nq, w = qprobes.shape
    reduced = z.shape[1] != x.shape[1]
    heaps = [_Heap(want, qpos, members, reduced, candidates) for want in wants]
    live = [h for h in heaps if h.heap is not None]
    if live and w:
        flat = qprobes.reshape(-1)
        pair_q = np.repeat(np.arange(nq), w)
        po = np.argsort(flat, kind="stable")
        flat, pair_q = flat[po], pair_q[po]
        zq = z[qpos]
        lists = np.unique(flat)
        lo = np.searchsorted(plist, lists)
        hi = np.searchsorted(plist, lists, side="right")
        qlo = np.searchsorted(flat, lists)
        qhi = np.searchsorted(flat, lists, side="right")
        with single_blas_thread():  # one small product per partition (see store/knn_approx.py)
            for i in np.flatnonzero(hi > lo):
                mem = members[lo[i] : hi[i]]
                rows = pair_q[qlo[i] : qhi[i]]
                zb = np.ascontiguousarray(z[mem]).T
                step = max(1, SCAN_BLOCK // len(mem))
                for q0 in range(0, len(rows), step):
                    rb = rows[q0 : q0 + step]
                    sims = zq[rb] @ zb
                    for h in live:
                        h.add(rb, sims, mem)
    return [h.result(x) for h in heaps]


class _Heap:
    """One `Want`'s running candidates during a scan, then its exact re-rank."""

    def __init__(self, want: Want, qpos, members, reduced: bool, candidates: int):
        self.want, self.qpos = want, qpos
        self.slot = None  # the heap row of each scan query (want.rows given)
        self.qsplit = None if want.split is None else want.split[qpos]  # the queries' splits
        if want.rows is not None:
            self.slot = np.cumsum(want.rows) - 1
            self.qpos = qpos[want.rows]
        allowed = len(members) if want.cols is None else int(want.cols[members].sum())
        kk = want.k + 1 if want.exclude_self else want.k
        self.kc = min(allowed, candidates * kk if reduced else kk)
        self.heap = None
        if len(self.qpos) and allowed:
            self.heap = load_faiss().ResultHeap(len(self.qpos), self.kc, keep_max=True)

    def add(self, rb: np.ndarray, sims: np.ndarray, mem: np.ndarray) -> None:
        """The product `sims` of the scan queries `rb` with the rows `mem`: its part this list
        may hold (its queries, its columns) added to the heap, in the same column order."""
        want = self.want
        shared = True  # `sims` is the scan's product, which the other lists read too
        if want.rows is not None:
            take = want.rows[rb]
            if not take.any():
                return
            rb, sims, shared = rb[take], sims[take], False
        if want.cols is not None:
            keep = want.cols[mem]
            if not keep.all():
                if not keep.any():
                    return
                mem, sims, shared = mem[keep], sims[:, keep], False
        if want.split is not None:  # rows of the query's own split are not candidates
            own = self.qsplit[rb][:, None] == want.split[mem][None, :]
            if own.any():
                sims = sims.copy() if shared else sims
                np.putmask(sims, own, -np.inf)
        self.heap.add_result_subset(self.slot[rb] if self.slot is not None else rb, sims, mem)

    def result(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions [q, k], -1 where fewer; sims [q, k], -inf there), re-ranked exactly."""
        k, nq = self.want.k, len(self.qpos)
        out_pos = np.full((nq, k), -1, np.int64)
        out_sim = np.full((nq, k), -np.inf, np.float32)
        if self.heap is None:
            return out_pos, out_sim
        self.heap.finalize()
        cand = np.where(self.heap.I >= 0, self.heap.I, -1)
        sims = _inner_products(x, self.qpos, cand)
        if self.want.exclude_self:
            sims[cand == self.qpos[:, None]] = -np.inf
        s, c = _best(sims, cand, k)
        out_sim[:, : s.shape[1]], out_pos[:, : c.shape[1]] = s, c
        return out_pos, out_sim


def _inner_products(
    x: np.ndarray, qpos: np.ndarray, cand: np.ndarray, base: np.ndarray | None = None
) -> np.ndarray:
    """x[qpos[i]] . base[cand[i, j]] for every candidate (`base` default `x`; FAISS, no
    [m, c, d] gather); -inf where a candidate is -1. Where many are -1 (the join's candidates,
    repeats and the query itself removed) only the others are computed, as indexed pairs."""
    faiss = load_faiss()
    base = np.ascontiguousarray(x if base is None else base, dtype=np.float32)
    out = np.full(cand.shape, -np.inf, dtype=np.float32)
    if not cand.size:
        return out
    valid = cand >= 0
    if valid.mean() < SPARSE_PAIRS:
        r, c = np.nonzero(valid)
        qi = np.ascontiguousarray(np.asarray(qpos)[r], dtype=np.int64)
        bi = np.ascontiguousarray(cand[r, c], dtype=np.int64)
        s = np.empty(len(r), dtype=np.float32)
        faiss.pairwise_indexed_inner_product(
            x.shape[1],
            len(r),
            faiss.swig_ptr(np.ascontiguousarray(x, dtype=np.float32)),
            faiss.swig_ptr(qi),
            faiss.swig_ptr(base),
            faiss.swig_ptr(bi),
            faiss.swig_ptr(s),
        )
        out[r, c] = s
        return out
    safe = np.ascontiguousarray(np.where(valid, cand, 0), dtype=np.int64)
    q = np.ascontiguousarray(x[qpos], dtype=np.float32)
    faiss.fvec_inner_products_by_idx(
        faiss.swig_ptr(out),
        faiss.swig_ptr(q),
        faiss.swig_ptr(base),
        faiss.swig_ptr(safe),
        x.shape[1],
        len(qpos),
        cand.shape[1],
    )
    out[~valid] = -np.inf
    return out


def _best(sims: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar of each row's candidates (stable: the earlier column wins a tie):
    (sims [m, <= k] descending, candidates, -1 where the similarity is -inf: none). Every
    entry above the row's k-th value, then its earliest columns equal to it, then those k
    sorted: a partition, not a sort of every candidate (the join's 210 a row)."""
    m, c = sims.shape
    if c <= k:
        top = np.argsort(-sims, axis=1, kind="stable")
    else:
        kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1 : k]
        above = sims > kth
        tie = sims == kth
        need = k - above.sum(axis=1, keepdims=True)
        chosen = above | (tie & (np.cumsum(tie, axis=1) <= need))
        cols = np.nonzero(chosen)[1].reshape(m, k)  # exactly k a row, in column order
        order = np.argsort(-np.take_along_axis(sims, cols, 1), axis=1, kind="stable")
        top = np.take_along_axis(cols, order, 1)
    s = np.take_along_axis(sims, top, 1)
    return s, np.where(np.isfinite(s), np.take_along_axis(cand, top, 1), -1)
