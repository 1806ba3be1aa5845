"""`non_iid`: is the row order independent of the content?

The kNN test of "Detecting Dataset Drift and Non-IID Sampling via k-Nearest Neighbors" (Cummings,
Snorrason, Mueller, 2023), as cleanlab Datalab's `non_iid` check implements it. Within each split,
rows are ordered by row_id (the order of the source file). If the order carries no information,
the index distance |i - j| between a row and its kNN neighbour follows the distribution of the
index distance between two random rows. The statistic is the Kolmogorov-Smirnov distance between
the empirical CDF of neighbour index distances and that background CDF; its null distribution
comes from `num_permutations` random re-orderings, smoothed by a Gaussian KDE, giving `p_value`.
With 25 re-orderings (Datalab's default) that p-value moves with the permutation seed alone
(bench/non_iid.py measures by how much). So a p-value that lands near the decision (between a
tenth of `significance_threshold` and four times it) is refined: the same permutation stream is
extended to `max_permutations` (200) and the p-value recomputed. Clear results cost nothing
extra.

Per-row scores are Datalab's: the area between the row's own neighbour-distance CDF and its
background CDF, normalised and mapped to [0, 1] by `1 - tanh(.)`; low scores mark rows whose
neighbours sit unusually close in the order. As in Datalab, when the p-value is below
`significance_threshold`, the single lowest-scoring row is flagged (the finding is about the
dataset; the scores say where). With several splits each is tested on its own (neighbours in
other splits are ignored) and the reported `p_value` is the smallest, Bonferroni-corrected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from ..store import schema as S
from .base import FINDING, Auditor, AuditResult, Params, Requires, register

if TYPE_CHECKING:
    from .context import AuditContext

_CHUNK = 200_000  # rows scored at a time: bounds memory at 1M rows


class NonIIDParams(Params):
    k: int | None = Field(None, ge=1, description="neighbours per row (default: the run's k)")
    num_permutations: int = Field(25, ge=2, description="random orders in the permutation test")
    max_permutations: int = Field(
        200, ge=2, description="random orders when the p-value lands near the threshold"
    )
    significance_threshold: float = Field(0.05, gt=0, lt=1)
    seed: int = 0


def ks_statistic(index_distances: np.ndarray, n: int) -> float:
    """KS distance between the ECDF of the given index distances (values in 1..n-1) and the CDF of
    |i - j| for two distinct random positions of n. Equals cleanlab's `_get_statistics`, computed
    from counts in O(n + m) instead of by sorting."""
    d = np.clip(np.asarray(index_distances).ravel(), 1, n - 1)
    m = len(d) + 1  # cleanlab appends n - 1 to the sorted sample
    counts = np.bincount(d, minlength=n)[:n]
    counts[n - 1] += 1
    values = np.flatnonzero(counts)
    le = np.cumsum(counts)[values]  # number of sample points <= v
    lt = le - counts[values]
    # background CDF at v - 1 (cleanlab indexes background_cdf[v - 1])
    background = np.cumsum((n - np.arange(1, n)) / (n * (n - 1) / 2))
    b = background[values - 1]
    # the ECDF takes values j / (m - 1) for positions j in [lt, le - 1]; the maximum of |. - b|
    # over that run is at one of its ends
    lo = np.abs(lt / (m - 1) - b)
    hi = np.abs((le - 1) / (m - 1) - b)
    return float(max(lo.max(), hi.max()))


def _p_value(stat: float, null_stats: np.ndarray) -> float:
    from scipy.stats import gaussian_kde

    if np.ptp(null_stats) <= 1e-12:
        return 0.0 if stat > null_stats[0] + 1e-12 else 1.0
    return float(np.clip(gaussian_kde(null_stats).integrate_box(stat, 100), 0.0, 1.0))


def _row_scores(sorted_dist: np.ndarray, positions: np.ndarray, n: int) -> np.ndarray:
    """Datalab's per-row score for rows at `positions` (0..n-1) given their sorted neighbour
    index distances [m, k]: 1 - tanh(area between foreground and background CDFs / normaliser)."""
    rows = len(positions)
    sn = np.hstack([sorted_dist, np.full((rows, 1), n - 1)]).astype(np.int64)
    middle = (n - 1) // 2
    dd = positions.reshape(rows, 1).astype(np.int64).copy()
    dd[dd > middle] -= n - 1
    dd = np.abs(dd)
    beginning = sn <= dd
    mid = (sn > dd) & (sn <= n - dd - 1)
    end = sn > n - dd - 1
    shifted = np.zeros(sn.shape)
    shifted[:, 1:] = sn[:, :-1]
    diffs = sn - shifted
    area_beginning = dd**2 / (n - 1)
    length = n - 2 * dd - 1
    a = 2 * dd / (n - 1)
    area_middle = 0.5 * (a + 1) * length
    bg = np.zeros(sn.shape)
    bg[beginning] = (sn**2 / (n - 1))[beginning]
    bg[mid] = (area_beginning + 0.5 * ((sn + 3 * dd) * (sn - dd) / (n - 1)))[mid]
    bg[end] = (area_beginning + area_middle + (sn - (n - dd - 1) * 1.0))[end]
    bg_shift = np.zeros(bg.shape)
    bg_shift[:, 1:] = bg[:, :-1]
    bg_diffs = bg - bg_shift
    fg_cdf = np.arange(sn.shape[1]) / (sn.shape[1] - 1)
    stats = np.abs(fg_cdf.reshape(1, -1) * diffs - bg_diffs).sum(axis=1)
    reverse = n - positions
    normaliser = np.where(positions > reverse, positions, reverse)
    return np.tanh(-stats / normaliser) + 1.0


def knn_order_test(
    nbr: np.ndarray,
    valid: np.ndarray,
    num_permutations: int,
    seed: int,
    refine: tuple[float, float] | None = None,
    max_permutations: int = 200,
) -> tuple[float, float, np.ndarray, int]:
    """(KS statistic, p-value, per-row scores, permutations used) for one split whose rows are in
    order 0..n-1.

    nbr: [n, k] neighbour positions within the split; valid: [n, k] which of them to use.
    refine: (low, high); a p-value in that band after `num_permutations` is recomputed with the
    null extended (same random stream) to `max_permutations`."""
    n = len(nbr)
    # int32 halves the memory traffic of the n * k gathers below (positions < 2**31)
    itype = np.int32 if n < 2**31 - 1 else np.int64
    nbr = nbr.astype(itype, copy=False)
    everything = bool(valid.all())

    def used(a: np.ndarray) -> np.ndarray:
        return a.ravel() if everything else a[valid]

    dist = np.abs(np.arange(n, dtype=itype)[:, None] - nbr)
    stat = ks_statistic(used(dist), n)
    rng = np.random.default_rng(seed)

    def null_stats(count: int) -> np.ndarray:
        out = np.empty(count)
        for t in range(count):  # one permutation at a time keeps memory at O(n k)
            perm = rng.permutation(n).astype(itype)
            out[t] = ks_statistic(used(np.abs(perm[:, None] - perm[nbr])), n)
        return out

    null = null_stats(num_permutations)
    p = _p_value(stat, null)
    if refine is not None and refine[0] <= p <= refine[1] and max_permutations > len(null):
        null = np.concatenate([null, null_stats(max_permutations - len(null))])
        p = _p_value(stat, null)
    scores = np.ones(n)
    counts = valid.sum(axis=1)
    # rows with the same number of usable neighbours are scored together (vectorised)
    for c in np.unique(counts):
        if c == 0:
            continue
        rows = np.flatnonzero(counts == c)
        for lo in range(0, len(rows), _CHUNK):
            r = rows[lo : lo + _CHUNK]
            d = np.sort(np.where(valid[r], dist[r], np.iinfo(itype).max), axis=1)[:, :c]
            scores[r] = _row_scores(d, r, n)
    return stat, p, np.clip(scores, 0.0, 1.0), len(null)


@register
class NonIIDAuditor(Auditor):
    name = "non_iid"
    kind = FINDING
    description = "row order that is not independent of content (kNN permutation test)"
    requires = frozenset({Requires.EMBEDDINGS})
    Params = NonIIDParams

    def skip_reason(self, ctx: AuditContext) -> str | None:
        return "needs at least 4 rows" if ctx.n < 4 else None

    def audit(self, ctx: AuditContext) -> AuditResult:
        graph = ctx.knn(self.params.k)
        idx = graph.indices
        split = ctx.split_of
        names = list(dict.fromkeys(split.tolist()))
        # position of each row within its split, in row_id order (ctx rows are sorted by row_id)
        within = np.empty(ctx.n, dtype=np.int64)
        for s in names:
            m = split == s
            within[m] = np.arange(int(m.sum()))
        scores = np.ones(ctx.n)
        per_split: dict[str, dict] = {}
        for s in names:
            rows = np.flatnonzero(split == s)
            if len(rows) < 4:
                per_split[s] = {"rows": len(rows), "p_value": None, "statistic": None}
                continue
            nb = idx[rows]
            valid = nb >= 0
            safe = np.where(valid, nb, 0)
            valid &= split[safe] == s
            nbr = np.where(valid, within[safe], 0)  # other splits' rows: masked, any index
            alpha = self.params.significance_threshold
            stat, p, sc, n_perm = knn_order_test(
                nbr,
                valid,
                self.params.num_permutations,
                self.params.seed,
                refine=(alpha / 10, 4 * alpha),
                max_permutations=self.params.max_permutations,
            )
            scores[rows] = sc
            per_split[s] = {
                "rows": len(rows),
                "p_value": p,
                "statistic": stat,
                "permutations": n_perm,
            }
        tested = {s: v for s, v in per_split.items() if v["p_value"] is not None}
        p_value = (
            min(1.0, min(v["p_value"] for v in tested.values()) * len(tested)) if tested else 1.0
        )
        is_issue = np.zeros(ctx.n, dtype=bool)
        if p_value < self.params.significance_threshold:
            is_issue[int(np.argmin(scores))] = True
        return AuditResult(
            {S.ROW_ID: ctx.row_ids, "is_issue": is_issue, "score": scores},
            score=p_value,
            info={
                "p_value": p_value,
                "non_iid": bool(p_value < self.params.significance_threshold),
                "k": graph.k,
                "num_permutations": self.params.num_permutations,
                "significance_threshold": self.params.significance_threshold,
                "splits": per_split,
                "order": "row_id within each split",
            },
        )
