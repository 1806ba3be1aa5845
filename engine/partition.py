"""The kNN graph in partitions: the arithmetic, with FAISS, independent of where it runs.

How a graph over rows that never sit in one process is built (the pattern of SemDeDup and NeMo
Curator's semantic dedup, and of FAISS's distributed on-disk IVF):

1. **train** on a uniform sample of the rows: the top `REDUCED_DIM` principal directions of the
   L2-normalised vectors (when the vectors are wider than 1.5x that), then spherical k-means
   centroids in that projection (about 2 sqrt(n) partitions, as store/knn.py's IVF lists);
2. **assign** each row to its nearest centroid (its partition), shard by shard, and write the
   rows grouped: a group is a set of nearby partitions, searched by one worker;
3. **search** a group on a worker: each of its rows (a query) scans the `w` partitions whose
   centroids are nearest to it (IVF's `nprobe`), one matrix product per partition for every
   query that probes it; the `c * (k + 1)` best by inner product in the projection are
   re-ranked by exact inner products of the full vectors, so distances are exact and only the
   candidate set is approximate (c candidates per neighbour: step 4). The partitions a
   group's queries probe outside the group (its halo) are read from the other groups' files,
   only their row groups (the scan itself: engine/scan.py, which also collects leakage's
   nearest rows in other splits from the same products);
4. **choose w** before searching: the exact neighbours of a sample of queries (found during the
   assignment, each shard's top-k merged) say which partitions each query's true neighbours lie
   in, so the share that `w` probes would cover is known for every w; the smallest w whose
   share, less `RECALL_Z` standard errors, clears the target recall by `RECALL_MARGIN` is used
   (store/knn.py's rule for `nprobe`). The same sample's nearest rows in the projection say
   how many candidates per neighbour (c) the scan must keep to lose no more than
   `CANDIDATE_LOSS` of what the probes cover, or that no affordable number does and the scan
   scores in the full dimension (engine/coverage.py). After the search, the recall of the
   graph itself on the same sample is measured and recorded in `knn_graphs.recall`;
5. **join** when no affordable w covers the target (data with more tight clusters than
   partitions: each partition mixes many of them, and a cluster's rows land in many
   partitions): the search probes only the fewest partitions that seed the join (`join_width`),
   then NN-descent's local join (`local_join`: rows that share a neighbour are candidates for
   each other) runs over the whole graph, across tasks (engine/ray/join_tasks.py), and finds
   through the neighbours the probes did reach most of those they missed.

Vectors are searched by cosine similarity (inner products of normalised rows); distances are
1 - similarity, as in store/knn.py, so the graph means the same thing whichever engine made it.
"""

from __future__ import annotations

import math

import numpy as np

from ..store.knn_exact import load_faiss, normalize, recall_per_query, single_blas_thread

# how many probes and candidates a search needs, chosen from the recall sample (re-exported:
# callers read them as partition's)
from .coverage import (  # noqa: F401
    CANDIDATE_LOSS,
    CANDIDATE_STEPS,
    CANDIDATES,
    JOIN_MIN_PROBES,
    JOIN_SEED,
    MAX_COST_FRACTION,
    RECALL_MARGIN,
    RECALL_Z,
    REDO_MIN_GAIN,
    REDO_SHARE,
    TARGET_RECALL,
    candidate_list_size,
    choose_candidates,
    choose_redo,
    choose_width,
    join_width,
    per_query_coverage,
    tied_neighbours,
)
from .scan import SCAN_BLOCK, _best, _inner_products, group_rows, scan  # noqa: F401

REDUCED_DIM = 64  # candidates come from this many principal directions (when d > 1.5x it)
TRAIN_POINTS = 32  # sample rows per centroid for k-means
KMEANS_ITERATIONS = 6  # the partitions need not be optimal: the probes adapt to reach the recall
MAX_PROBES = 48  # partitions a query may probe
RECALL_QUERIES = 1000  # sample queries whose exact neighbours are found (500 above 200k rows)
JOIN_ROUNDS = 5  # local-join rounds at most (when the probes cannot reach the target)
JOIN_STOP = 0.01  # ... stopped when a round changes fewer than this share of the places
EXACT_QUERIES = 4096  # `exact_topk`'s queries per pass over the base rows
JOIN_BLOCK = 16384  # queries joined at once (their candidates: k + 2 k^2 each)


def num_partitions(n: int, rows: int | None = None) -> int:
    """About 2 sqrt(n) partitions (balancing the assignment, which costs n x partitions,
    against the scan, n x rows probed), at least 32 rows each; or one per `rows` rows.

    Twice as many (4 sqrt(n)) scan fewer rows for the same coverage (at 3M rows, one thread,
    bench/results/knn_partitions_3m.json: 7,200 rows against 19,800 for 0.65 on the templated
    text, 15,300 against 20,100 for 0.95 on the low-rank vectors) but assigning a row costs
    1.3-1.4x; at 10M rows the templated text's search scanned 35% fewer rows, but the
    low-rank vectors' needed 51 probes and ran at about half the speed (more, smaller products
    per query, larger halos), so the default stays: README, "Twice the partitions"."""
    if rows:
        return int(max(1, round(n / rows)))
    return int(max(1, min(round(2 * math.sqrt(n)), n // 32)))


def recall_sample_size(n: int) -> int:
    return min(n, RECALL_QUERIES if n <= 200_000 else RECALL_QUERIES // 2)


# --- train and assign -----------------------------------------------------------------------------
def train_basis(sample: np.ndarray, dim: int = REDUCED_DIM) -> np.ndarray | None:
    """Top `dim` eigenvectors of the uncentred second moment of normalised sample rows (the
    projection that keeps inner products best), or None when the vectors are narrow enough."""
    if sample.shape[1] <= 1.5 * dim:
        return None
    x = normalize(sample).astype(np.float64)
    _, vecs = np.linalg.eigh(x.T @ x)
    return np.ascontiguousarray(vecs[:, ::-1][:, :dim], dtype=np.float32)


def project(x: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    """Normalised rows of `x` in the projection (normalised again: the partitions and the
    candidates are chosen by cosine in the projection)."""
    x = normalize(x)
    return x if basis is None else normalize(x @ basis)


def train_centroids(z_sample: np.ndarray, partitions: int, seed: int) -> np.ndarray:
    """Spherical k-means centroids of the projected sample (FAISS)."""
    faiss = load_faiss()
    partitions = int(max(1, min(partitions, len(z_sample))))
    km = faiss.Kmeans(
        z_sample.shape[1],
        partitions,
        niter=KMEANS_ITERATIONS,
        spherical=True,
        seed=seed,
        min_points_per_centroid=1,
        max_points_per_centroid=1 << 30,
        verbose=False,
    )
    km.train(np.ascontiguousarray(z_sample, dtype=np.float32))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def assign(z: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid of each projected row (int32)."""
    faiss = load_faiss()
    if not len(z):
        return np.zeros(0, np.int32)
    _, idx = faiss.knn(np.ascontiguousarray(z), centroids, 1, metric=faiss.METRIC_INNER_PRODUCT)
    return idx[:, 0].astype(np.int32)


def probes(z: np.ndarray, centroids: np.ndarray, w: int) -> np.ndarray:
    """The `w` partitions whose centroids are nearest each projected row [n, w] (int32), nearest
    first: one product of a block of rows with every centroid, small enough for the cache the
    heap then reads it from (`SCAN_BLOCK` similarities), into a FAISS heap, on one thread.
    faiss.knn's own blocks are 16 MB, so two tasks on the two cores of a shared 32 MB cache
    wrote theirs to memory and read them back (bench/assign_blocks.py)."""
    faiss = load_faiss()
    w = int(min(w, len(centroids)))
    n = len(z)
    if not n or not w:
        return np.zeros((n, w), np.int32)
    heap = faiss.ResultHeap(n, w, keep_max=True)
    ct = np.ascontiguousarray(centroids.T, dtype=np.float32)
    cols = np.arange(len(centroids), dtype=np.int64)
    step = max(1, SCAN_BLOCK // len(centroids))
    with single_blas_thread():
        for q0 in range(0, n, step):
            zb = np.asarray(z[q0 : q0 + step], dtype=np.float32)
            heap.add_result_subset(np.arange(q0, q0 + len(zb)), zb @ ct, cols)
    heap.finalize()
    return heap.I.astype(np.int32)


def group_partitions(
    centroids: np.ndarray, sizes: np.ndarray, groups: int, seed: int
) -> np.ndarray:
    """Group id of each partition: `groups` spatially coherent groups (k-means of the centroids,
    weighted by partition size), so most of what a group's rows probe stays inside it. A group
    is one search task; the partitions it probes in other groups are its halo."""
    p = len(centroids)
    groups = int(max(1, min(groups, p)))
    if groups == 1:
        return np.zeros(p, np.int32)
    weights = np.maximum(np.asarray(sizes, dtype=np.float64), 1.0)
    if p < 40 * groups:  # too few partitions for k-means: runs along the main direction
        _, _, vt = np.linalg.svd(centroids - centroids.mean(axis=0), full_matrices=False)
        order = np.argsort(centroids @ vt[0], kind="stable")
        cum = np.cumsum(weights[order]) / weights.sum()
        g = np.empty(p, np.int32)
        g[order] = np.minimum((cum * groups - 1e-9).astype(np.int32), groups - 1)
    else:
        faiss = load_faiss()
        km = faiss.Kmeans(centroids.shape[1], groups, niter=20, spherical=True, seed=seed)
        km.train(centroids, weights=weights.astype(np.float32))
        _, g = faiss.knn(centroids, km.centroids, 1, metric=faiss.METRIC_INNER_PRODUCT)
        g = g[:, 0].astype(np.int32)
    # empty groups are dropped and ids made dense
    _, dense = np.unique(g, return_inverse=True)
    return dense.astype(np.int32)


# --- exact neighbours of the recall sample --------------------------------------------------------
def exact_topk(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of normalised `queries` among normalised `base` rows by inner product:
    (sims [m, k] descending, positions [m, k]; -1 where base has fewer rows). One product per
    block of base rows (any array: a memory-mapped table is read a block at a time) for a block
    of queries, kept in a FAISS heap: for the few hundred or thousand queries it is called with,
    10x faster than faiss.knn on one thread (1,500 queries among 1M rows: 2.9 s against 36.6 s,
    same lists)."""
    faiss = load_faiss()
    m = len(queries)
    if not len(base) or not m:
        return np.full((m, k), -np.inf, np.float32), np.full((m, k), -1, np.int64)
    kk = min(k, len(base))
    sims = np.empty((m, kk), np.float32)
    idx = np.empty((m, kk), np.int64)
    for q0 in range(0, m, EXACT_QUERIES):
        q = np.ascontiguousarray(queries[q0 : q0 + EXACT_QUERIES], dtype=np.float32)
        heap = faiss.ResultHeap(len(q), kk, keep_max=True)
        every = np.arange(len(q))
        step = max(1024, (1 << 22) // len(q))  # 16 MB of similarities per product
        for b0 in range(0, len(base), step):
            xb = np.ascontiguousarray(base[b0 : b0 + step], dtype=np.float32)
            heap.add_result_subset(every, q @ xb.T, np.arange(b0, b0 + len(xb)))
        heap.finalize()
        sims[q0 : q0 + len(q)], idx[q0 : q0 + len(q)] = heap.D, heap.I
    if kk < k:
        sims = np.hstack([sims, np.full((m, k - kk), -np.inf, np.float32)])
        idx = np.hstack([idx, np.full((m, k - kk), -1, np.int64)])
    return sims, idx


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard top-k lists (sims, ids) of the same queries into one top-k."""
    sims = np.hstack([p[0] for p in parts])
    ids = np.hstack([p[1] for p in parts])
    return _best(np.where(ids >= 0, sims, -np.inf), ids, k)


def drop_self(ids: np.ndarray, sims: np.ndarray, own: np.ndarray, k: int):
    """Remove each query's own id from its k+1 results (or the last one when absent)."""
    n = len(ids)
    if not n:
        return ids[:, :k], sims[:, :k]
    hit = ids == own[:, None]
    hit[~hit.any(axis=1), -1] = True
    first = hit.argmax(axis=1)
    keep = np.ones_like(hit)
    keep[np.arange(n), first] = False
    return ids[keep].reshape(n, -1)[:, :k], sims[keep].reshape(n, -1)[:, :k]


def recall(graph_ids: np.ndarray, graph_sims: np.ndarray, exact_sims: np.ndarray) -> float:
    """Mean recall@k of the sample rows' graph rows, ties with the k-th exact neighbour counted
    (store/knn_exact.recall_per_query)."""
    if not exact_sims.size:
        return 1.0
    return float(recall_per_query(graph_ids, graph_sims, exact_sims).mean())


def id_dtype(rows: int):
    """The narrowest integer type for row numbers 0..rows-1 and -1 (the join's lists: half the
    memory, and half the bytes its random lookups read)."""
    return np.int32 if rows < 2**31 else np.int64


def reverse_lists(
    src: np.ndarray, dst: np.ndarray, sim: np.ndarray, rows: int, k: int
) -> np.ndarray:
    """The reverse graph rows: for each row 0..rows-1, the (at most) k rows most similar to it
    that list it, given the edges src -> dst (dst in 0..rows-1) with their similarities
    [rows, k] (-1 where fewer). Sorted by dst, then by similarity, most similar first (ties
    in the edges' order), with one stable sort of a packed key: dst in the high 32 bits, the
    similarity's bits made to order as unsigned integers in the low (faster than np.lexsort of
    the two keys, which sorts twice)."""
    order = np.argsort(_sort_key(dst, sim), kind="stable")
    src, dst = src[order], dst[order]
    listed, start, count = np.unique(dst, return_index=True, return_counts=True)
    rank = np.arange(len(dst)) - np.repeat(start, count)
    keep = rank < k
    rev = np.full((rows, k), -1, id_dtype(rows))
    rev[dst[keep], rank[keep]] = src[keep]
    return rev


def _sort_key(dst: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """uint64 keys that order as (dst ascending, similarity descending): the float32 bits of
    -sim flipped so that unsigned order is float order (-0.0 counted as 0.0)."""
    bits = ((-np.asarray(sim, np.float32)) + np.float32(0.0)).view(np.uint32).astype(np.uint64)
    bits = np.where(bits & 0x80000000, ~bits & 0xFFFFFFFF, bits | 0x80000000)
    return (np.asarray(dst).astype(np.uint64) << np.uint64(32)) | bits


def join_candidates(
    p: np.ndarray,
    fwd: np.ndarray,
    rev: np.ndarray,
    self_ids: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """The local join's candidates of a block of queries (ids `self_ids`): their neighbours
    `p` [b, k], their neighbours' neighbours `fwd` [b, k * k] and, for each neighbour, the rows
    that list it `rev` [b, k * k]; sorted, each once, the query itself and repeats -1.

    `seen` (NN-descent's incremental search): which neighbours the query's list held the round
    before [b, k], and which rows of each neighbour's list and reverse list those held then
    [b, k, k] each. A row reached through a neighbour that both held was a candidate of the
    query then, and lost to its list; the list has only grown nearer since, so it would lose
    again: it is dropped, and the lists come out the same for fewer products."""
    if seen is not None:
        held, fwd_held, rev_held = seen
        fwd = np.where(held[:, :, None] & fwd_held.reshape(fwd.shape), -1, fwd)
        rev = np.where(held[:, :, None] & rev_held.reshape(rev.shape), -1, rev)
    cand = np.hstack([p, fwd.reshape(len(p), -1), rev.reshape(len(p), -1)])
    cand[cand == self_ids[:, None]] = -1
    cand.sort(axis=1)
    cand[:, 1:][cand[:, 1:] == cand[:, :-1]] = -1  # each candidate once
    # the -1s first, and only as many columns as the fullest row fills (at least k): the
    # products and the choice of the best read no more (the rows stay in id order)
    cand.sort(axis=1)
    width = min(cand.shape[1], max(int((cand >= 0).sum(axis=1).max(initial=0)), p.shape[1]))
    return cand[:, cand.shape[1] - width :]


def lists_of(table: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The rows of `table` [n, k] at the ids `p` (any shape), -1 where an id is -1
    [*p.shape, k]."""
    valid = p >= 0
    return np.where(valid[..., None], table[np.where(valid, p, 0)], -1)


def new_places(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Which places of the lists `new` hold a row the lists `old` did not ([q, k] each; -1
    places are not new) [q, k]."""
    out = np.empty(new.shape, bool)
    for lo in range(0, len(new), JOIN_BLOCK):  # a block at a time: the comparison is [b, k, k]
        a, b = new[lo : lo + JOIN_BLOCK], old[lo : lo + JOIN_BLOCK]
        out[lo : lo + JOIN_BLOCK] = (a >= 0) & ~(a[:, :, None] == b[:, None, :]).any(axis=2)
    return out


def join_block(x, lists, rev, p, ids, fresh=None, lap=None):
    """One block of a join round, as `local_join` and the Ray rounds (engine/ray/join_tasks.py)
    run it: the queries `ids` (row numbers of `x`) whose lists are `p` [b, k] take candidates
    from `lists` and `rev`, the lists and reverse lists of every row [n, k], and keep the k
    most similar. After the first round `fresh` holds which places of those tables are new
    (`new_places`): a candidate reached through a place the query's list held the round
    before, from a place of the neighbour's lists that was not new, is not scored again
    (`join_candidates`' `seen`). `lap(name)` is called once the candidates are drawn.
    Returns (the new lists, their similarities, which of their places are new, the candidates
    scored)."""
    seen = None
    if fresh is not None:
        fwd_new, rev_new = fresh
        at = np.where(p >= 0, p, 0)  # a -1 neighbour's rows are -1 whatever it says
        seen = (~np.asarray(fwd_new[ids]), ~fwd_new[at], ~rev_new[at])
    cand = join_candidates(p, lists_of(lists, p), lists_of(rev, p), ids, seen)
    if lap is not None:
        lap("candidates")
    s, c = _best(_inner_products(x, ids, cand), cand, p.shape[1])
    return c, s, new_places(c, p), int((cand >= 0).sum())


def local_join(
    x: np.ndarray,
    qpos: np.ndarray,
    pos: np.ndarray,
    sim: np.ndarray,
    rounds: int = JOIN_ROUNDS,
    stop: float = JOIN_STOP,
    incremental: bool = True,
    each_round=None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """NN-descent's local join (Dong et al., 2011) on the graph rows of the queries `qpos`
    (positions into `x`, the normalised vectors; `pos`, `sim` [q, k] from `scan`), in one
    process: rows that share a neighbour are candidates for each other. Each query's
    candidates are its neighbours' own rows (where the neighbour is a query) and, for each
    neighbour, the k queries nearest to it that list it (`reverse_lists`); their exact
    similarities replace any neighbour they beat. Repeated while more than `stop` of the places
    change, at most `rounds` times. After the first round only the candidates the round before
    did not score are scored (`incremental`, `join_candidates`' `seen`: the same lists; False
    scores all, the reference that shows it). The Ray engine runs the same rounds over rows
    spread across tasks (engine/ray/join_tasks.py); this is their reference. For the
    partitions that split clusters (more clusters than partitions hold apart) a row's
    neighbours found by the probes lead to the ones they missed. `each_round(pos, sim)` is
    called after each round.
    Returns (pos, sim, {"rounds", "changed": share of places changed in each round, "scored":
    candidates scored in each round})."""
    nq, k = pos.shape
    changed: list[float] = []
    scored: list[int] = []
    if not nq or not k:
        return pos, sim, {"rounds": 0, "changed": changed, "scored": scored}
    pos, sim = pos.copy(), sim.copy()
    # every row of x may be listed; only queries have graph rows (the others: none)
    table = np.full((len(x), k), -1, id_dtype(len(x)))
    fresh = rev = None  # which places of the lists are new; the reverse lists
    for _ in range(rounds):
        valid = pos >= 0
        table[qpos] = pos
        src = np.repeat(qpos, k)[valid.ravel()]
        rev_before, rev = rev, reverse_lists(src, pos[valid], sim[valid], len(x), k)
        known = None  # after the first round: which places are new, of both
        if incremental and fresh is not None:
            known = (fresh, new_places(rev, rev_before))
        new_pos, new_sim = np.empty_like(pos), np.empty_like(sim)
        new_fresh = np.zeros((len(x), k), bool)
        count = 0
        for lo in range(0, nq, JOIN_BLOCK):
            b = slice(lo, min(nq, lo + JOIN_BLOCK))
            new_pos[b], new_sim[b], new_fresh[qpos[b]], n_scored = join_block(
                x, table, rev, pos[b], qpos[b], known
            )
            count += n_scored
        moved = int(new_fresh.sum())
        pos, sim, fresh = new_pos, new_sim, new_fresh
        changed.append(round(moved / pos.size, 4))
        scored.append(count)
        if each_round is not None:
            each_round(pos, sim)
        if changed[-1] <= stop:
            break
    return pos, sim, {"rounds": len(changed), "changed": changed, "scored": scored}


def exact_rows(
    x: np.ndarray, qpos: np.ndarray, base: np.ndarray, k: int, exclude_self: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of the rows `qpos` among `base` (for the few queries a scan left short)."""
    kk = k + 1 if exclude_self else k
    sims, pos = exact_topk(np.ascontiguousarray(x[qpos]), np.ascontiguousarray(x[base]), kk)
    cand = np.where(pos >= 0, base[np.maximum(pos, 0)], -1)
    if exclude_self:
        sims = np.where(cand == qpos[:, None], -np.inf, sims)
    s, c = _best(sims, cand, k)
    return c, s
