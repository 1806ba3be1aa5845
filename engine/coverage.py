"""How many partitions a row's search probes and how many candidates it keeps from the
projection, chosen before the search from the exact neighbours of a sample of queries (see
engine/partition.py, steps 4 and 5): the share of those neighbours that w probes would reach
(`choose_width`), the fewer probes that only seed the join (`join_width`), and the share the
scan's candidate sets would hold (`choose_candidates`)."""

from __future__ import annotations

import math

import numpy as np

from ..store.knn_exact import tie_threshold

CANDIDATES = 2  # candidates per neighbour kept from the projection for the exact re-rank ...
CANDIDATE_STEPS = (2, 4)  # ... or 4, as the recall sample says, or none (`choose_candidates`)
CANDIDATE_LOSS = 0.01  # recall the projection may cost against the coverage of the probes
MAX_COST_FRACTION = 1 / 3  # a scan of more rows than this share per query is not worth it
TARGET_RECALL = 0.95
RECALL_Z = 2.0
RECALL_MARGIN = 0.01
JOIN_SEED = 0.65  # coverage the probes reach before the join takes over (`join_width`) ...
JOIN_MIN_PROBES = 4  # ... with at least this many probes
REDO_SHARE = 0.25  # rows a joined graph searches again at most (`choose_redo`) ...
REDO_MIN_GAIN = 0.01  # ... and when that many cannot reach the target, only for this much


def _share_per_query(hit: np.ndarray, places: np.ndarray) -> np.ndarray:
    """Each query's share of its neighbour places that the rows `hit` [m, columns] fill
    (`places`: how many it has, at most k; 1 where it has none) [m]."""
    filled = np.minimum(hit.sum(axis=1), places)
    return np.where(places > 0, filled / np.maximum(places, 1), 1.0)


def _covered(tied: np.ndarray, neighbour_part: np.ndarray, query_probes: np.ndarray) -> np.ndarray:
    """Which counted rows (`tied`: neighbours, or candidates) lie in a partition the query
    probes [m, columns]."""
    return tied & (neighbour_part[:, :, None] == query_probes[:, None, :]).any(axis=2)


def tied_neighbours(sims: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Which of each query's exact candidates (sims, ids [m, >= k], descending) are as near as
    its k-th exact neighbour: the top k and the rows that tie with the k-th [m, columns]."""
    valid = ids >= 0
    _, bar = tie_threshold(sims, valid, k)
    return valid & (sims >= bar[:, None])


def choose_width(
    query_probes: np.ndarray,
    neighbour_part: np.ndarray,
    sizes: np.ndarray,
    k: int,
    tied: np.ndarray | None = None,
    target: float = TARGET_RECALL,
) -> tuple[int, dict]:
    """The smallest number of probes w whose coverage of the sample's exact neighbours (the
    share of a query's k neighbour places that rows in its w nearest partitions can fill, rows
    tied with the k-th exact neighbour counted: `tied`, default the first k), less RECALL_Z
    standard errors, clears `target + RECALL_MARGIN`; the widest affordable one otherwise
    (`coverage_reached` False: the search then joins the graph rows, `local_join`).
    With the curve. `neighbour_part`: each candidate's partition [m, columns], -1 for none."""
    n = max(float(np.sum(sizes)), 1.0)
    if tied is None:
        tied = np.zeros(neighbour_part.shape, bool)
        tied[:, :k] = neighbour_part[:, :k] >= 0
    places = np.minimum(tied.sum(axis=1), k)
    curve, cost_curve = {}, {}
    chosen, reached = None, False
    hit = np.zeros(neighbour_part.shape, bool)
    for w in range(1, query_probes.shape[1] + 1):
        hit |= tied & (neighbour_part == query_probes[:, w - 1 : w])
        per_q = _share_per_query(hit, places)
        mean = float(per_q.mean()) if len(per_q) else 1.0
        se = float(per_q.std(ddof=1) / math.sqrt(len(per_q))) if len(per_q) > 1 else 0.0
        cost = float(sizes[query_probes[:, :w]].sum(axis=1).mean() / n) if len(per_q) else 0.0
        curve[w], cost_curve[w] = round(mean, 4), round(cost, 4)
        if mean - RECALL_Z * se >= target + RECALL_MARGIN or mean >= 0.9999:
            chosen, reached = w, True
            break
        if cost > MAX_COST_FRACTION:
            chosen = w
            break
    return chosen or query_probes.shape[1], {
        "coverage_by_probes": curve,
        "scanned_by_probes": cost_curve,
        "coverage_reached": reached,
    }


def join_width(coverage_by_probes: dict, widest: int, seed: float = JOIN_SEED) -> int:
    """The probes of a search whose graph rows are then joined (no affordable width covers the
    target): the fewest whose coverage (`choose_width`'s curve) reaches `seed`, the widest
    when none does, and at least `JOIN_MIN_PROBES`. The join finds a row's missed neighbours
    through the ones it has, so the probes need only seed most rows with a good share of theirs
    (on templated text at 1M rows: 8 probes, coverage 0.67, joined to recall 0.98; 48 probes,
    0.88, to 0.99, at 3.5x the scan). But coverage alone does not say how far the join gets:
    neighbours found in few partitions lead to few others. At 300k rows 2 probes covered 0.68
    and the join stalled at 0.925 after 5 rounds; 3 probes reached 0.960, 4 (coverage 0.75)
    0.978 in 4 rounds, and the wider seed cost less in all (scan and rounds 25.3 s against
    27.5 s; bench/results/knn_join.json). At 1M with partitions 2x finer, 4 probes covered 0.68 and
    joined to 0.949; 4x finer, 2 covered 0.85 and stalled at 0.925."""
    for w, c in sorted((int(w), float(c)) for w, c in coverage_by_probes.items()):
        if c >= seed:
            return min(max(w, JOIN_MIN_PROBES), widest)
    return widest


def candidate_list_size(k: int) -> int:
    """How many of each recall query's nearest rows in the projection the assign tasks keep
    (`choose_candidates`): as many as the widest step re-ranks."""
    return CANDIDATE_STEPS[-1] * (k + 1)


def choose_candidates(
    z_ids: np.ndarray,
    z_parts: np.ndarray,
    qprobes: np.ndarray,
    own: np.ndarray,
    neighbour_ids: np.ndarray,
    neighbour_part: np.ndarray,
    tied: np.ndarray,
    k: int,
) -> tuple[int, dict]:
    """Candidates per neighbour for a scan in the projection: the fewest of `CANDIDATE_STEPS`
    whose candidate sets hold, on the recall sample, the exact neighbours the probes cover but
    `CANDIDATE_LOSS` of them; 0 when even the widest do not (the projection ranks the true
    neighbours too far down: data without low-dimensional structure, such as isotropic blobs,
    and sentence embeddings of real text (all-MiniLM-L6-v2: 0.75 recall at the old fixed 2
    against 0.97 coverage), and the scan then scores in the full dimension (store/knn_approx.py's
    IVF falls back the same way). Beyond 4 the full dimension is as cheap and loses nothing:
    the heap of c (k + 1) candidates costs more than the wider products (all-MiniLM-L6-v2
    vectors of the shared texts, 50,902 rows, 42 probes, one thread: 2 candidates 1.81 s, 4
    2.18 s, 8 3.50 s, 16 7.45 s, 32 10.8 s; the full 384 dimensions 3.22 s).

    A query's candidates are simulated from its nearest rows in the projection among all rows
    (`z_ids` [m, c], best first, the query's own row `own` among them; `z_parts` their
    partitions): those in the partitions its probes `qprobes` [m, w] scan, in that order, as
    the scan's heap keeps them (c * (k + 1) rows, its own row first). `neighbour_ids`,
    `neighbour_part`, `tied`: the exact neighbours, their partitions, and which count
    (`choose_width`). With the curve {step: recall} and the coverage it is held to."""
    m = len(z_ids)
    if not m:
        return CANDIDATES, {"candidate_recall": {}, "coverage": 1.0}
    places = np.minimum(tied.sum(axis=1), k)

    def share(hit: np.ndarray) -> float:
        return float(_share_per_query(hit, places).mean())

    covered = _covered(tied, neighbour_part, qprobes)
    coverage = share(covered)
    scanned = _covered((z_ids >= 0) & (z_ids != own[:, None]), z_parts, qprobes)
    rank = np.cumsum(scanned, axis=1)  # among the scanned rows other than its own, from 1
    curve = {}
    chosen = 0
    for c in CANDIDATE_STEPS:
        kept = np.where(scanned & (rank <= c * (k + 1) - 1), z_ids, -2)
        hit = covered & (neighbour_ids[:, :, None] == kept[:, None, :]).any(axis=2)
        curve[c] = round(share(hit), 4)
        if curve[c] >= coverage - CANDIDATE_LOSS:
            chosen = c
            break
    return chosen, {"candidate_recall": curve, "coverage": round(coverage, 4)}


def per_query_coverage(
    query_probes: np.ndarray, neighbour_part: np.ndarray, tied: np.ndarray, k: int, w: int
) -> np.ndarray:
    """Each sample query's coverage at `w` probes (`choose_width`'s, per query) [m]."""
    places = np.minimum(tied.sum(axis=1), k)
    return _share_per_query(_covered(tied, neighbour_part, query_probes[:, :w]), places)


def choose_redo(
    score: np.ndarray,
    recall_q: np.ndarray,
    wide_coverage: np.ndarray,
    target: float = TARGET_RECALL,
) -> tuple[float | None, dict]:
    """Which rows of a joined graph to search again with wider probes, from the recall sample:
    (a cut on the rows' mean neighbour distance, None for none; with what it predicts).

    The join finds a row's missed neighbours through the ones it has; a row whose probes found
    none of its own (its cluster's rows all in partitions it did not probe) lists strangers,
    and their neighbours lead it no nearer. Such rows have the longest mean distances after
    the join. On templated text at 300,000 rows seeded with 2 probes the join stalled at
    recall 0.925 (in a scratch run the sample's 5% longest had recall 0.03, the rest 0.976);
    searching again with 48 probes the 4.6% of rows past the cut this sets gave 0.968
    (bench/results/knn_join.json).

    `score`: each sample row's mean distance to its joined neighbours (longer: worse),
    `recall_q` its recall@k against exact search, `wide_coverage` its coverage at the wider
    probes (`per_query_coverage`; the engine's: the most it affords). Rows are taken longest
    first, each predicted to reach the better of its recall and that coverage; the fewest
    whose predicted recall, less RECALL_Z standard errors, clears `target + RECALL_MARGIN`. At
    most `REDO_SHARE` of them: short of the target there, the fewest that gain the most, when
    that is `REDO_MIN_GAIN` or more.
    None when the graph already clears it."""
    m = len(score)
    recall_q = np.asarray(recall_q, np.float64)
    bar = target + RECALL_MARGIN

    def lower(total: np.ndarray, squares: np.ndarray) -> np.ndarray:
        mean = total / m
        var = np.maximum(squares / m - mean**2, 0.0) * m / max(m - 1, 1)
        return mean - RECALL_Z * np.sqrt(var / m)

    if not m:
        return None, {}
    before = float(recall_q.mean())
    info: dict = {"redo_share": 0.0, "redo_predicted": round(before, 4)}
    if lower(np.array([recall_q.sum()]), np.array([(recall_q**2).sum()]))[0] >= bar:
        return None, info
    order = np.argsort(-np.asarray(score, np.float64), kind="stable")  # longest first
    after = np.maximum(recall_q, np.asarray(wide_coverage, np.float64))[order]
    now = recall_q[order]
    total = recall_q.sum() + np.cumsum(after - now)
    squares = (recall_q**2).sum() + np.cumsum(after**2 - now**2)
    cap = max(1, int(REDO_SHARE * m))
    ok = np.flatnonzero(lower(total, squares)[:cap] >= bar)
    # short of the target within the cap: as far as the gains go
    j = int(ok[0]) if len(ok) else int(np.argmax(total[:cap]))
    if not len(ok) and total[j] / m - before < REDO_MIN_GAIN:
        return None, info
    info = {"redo_share": round((j + 1) / m, 4), "redo_predicted": round(float(total[j] / m), 4)}
    return float(np.asarray(score)[order[j]]), info
