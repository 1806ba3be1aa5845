"""Tier 2 of `contamination`: embedding similarity, its calibrated threshold, and attribution.

Search: each examined row against every benchmark vector (items and the chunks of long items),
keeping its `candidates` nearest distinct items. Exact search while rows x vectors stay below
`EXACT_PAIRS`; above it, store.knn's adaptive IVF (recall@1 checked against exact search on a
sample, exact as the fallback).

Calibration (`calibrate`): the threshold comes from two statistics, both in `info`:

- `rows`: the distribution of every examined row's best similarity to the benchmark. Almost
  every row is clean, so the clean rows are its bulk and copies are its upper tail. The bulk's
  median m and its upper spread s = q90 - m (robust while fewer than 10% of rows are
  contaminated) place the threshold at m + `tail_spreads` x s (2.5): a row's best similarity is
  a maximum over many items, whose tail is Gumbel-like, and a Gumbel variable exceeds its median
  plus 2.5 such spreads with probability 0.6% (a Gaussian one 0.07%), whatever the benchmark's
  items look like to each other.
- `benchmark`: each item's similarity to its nearest other item, leaving out the items it
  shares text with (a passage, an identical vector), at the `calibration_quantile` (0.99): a
  clean row drawn like the benchmark passes it about 1% of the time.

The threshold is the lower of the two (each clipped to [`min_similarity`, `max_similarity`]):
the benchmark statistic collapses to its cap when items are look-alikes (templates, shared
passages), the row statistic needs enough rows (`min_rows_for_tail`) and can only be too high
(a large contaminated share widens the spread). A threshold at a cap is reported as a warning.

Attribution: among a row's candidates within `attribution_margin` of its best similarity (items
sharing a passage, template items differing by a number), the named item is the one whose
words match the row's best (weighted Jaccard overlap of distinct words, weighted by inverse
document frequency in the benchmark); the others within the margin are reported with it as a
set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from ...store import schema as S
from ..textnorm import token_hashes

if TYPE_CHECKING:
    from ..context import AuditContext

# Above this many (row, benchmark vector) pairs per chunk, tier 2 uses an approximate index.
EXACT_PAIRS = 500_000_000


def nearest_items(
    ctx: AuditContext,
    space: np.ndarray,
    owner: np.ndarray,
    chunk: np.ndarray,
    k: int,
    info: dict,
    exact_pairs: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(similarity [m, k], item [m, k]) of the k nearest distinct benchmark items to each row of
    `chunk` (sorted row_ids), best first; NaN / -1 where there is none (no vector, or fewer
    items). Vectors are read for the chunk's row_id range only."""
    from ...store.knn import knn_search

    table = S.quote(S.embedding_table(ctx.embedding_key))
    tbl = ctx.store.arrow(
        f"SELECT row_id, vector FROM {table} WHERE row_id BETWEEN ? AND ? ORDER BY row_id",
        [int(chunk[0]), int(chunk[-1])],
    )
    sim = np.full((len(chunk), k), np.nan)
    idx = np.full((len(chunk), k), -1, np.int64)
    rid = tbl.column(S.ROW_ID).to_numpy()
    if not len(rid):
        return sim, idx
    col = tbl.column("vector").combine_chunks()
    vec = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(rid), -1)
    del tbl, col
    pos = np.searchsorted(rid, chunk)
    pos[pos == len(rid)] = 0
    have = rid[pos] == chunk
    if not have.any():
        return sim, idx
    q = vec[pos[have]]
    del vec
    extra = len(space) - int(owner.max()) - 1  # vectors beyond one per item: chunks
    kk = min(len(space), k + min(extra, 3 * k))
    kind = "ivf" if len(q) * len(space) > exact_pairs else "flat"
    g = knn_search(space, q, kk, index=kind, seed=ctx.seed)
    s, it = top_distinct(1.0 - g.distances.astype(np.float64), owner[g.indices], k)
    sim[have], idx[have] = s, it
    info["index"] = g.index_kind
    info["recall_at_1"] = round(float(g.recall), 4)
    info["seconds"] = round(info.get("seconds", 0.0) + g.seconds, 3)
    return sim, idx


def top_distinct(sim: np.ndarray, item: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ([m, kk] similarities, their items), the k best distinct items (an item with
    several chunks counts once, at its best chunk), best first; NaN / -1 pads."""
    m, kk = sim.shape
    rows = np.repeat(np.arange(m), kk)
    s, it = sim.ravel(), item.ravel()
    order = np.lexsort((-s, it, rows))  # per row and item, best chunk first
    rows, s, it = rows[order], s[order], it[order]
    first = np.r_[True, (rows[1:] != rows[:-1]) | (it[1:] != it[:-1])]
    rows, s, it = rows[first], s[first], it[first]
    order = np.lexsort((it, -s, rows))
    rows, s, it = rows[order], s[order], it[order]
    start = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    rank = np.arange(len(rows)) - np.repeat(start, np.diff(np.r_[start, len(rows)]))
    keep = rank < k
    out_s = np.full((m, k), np.nan)
    out_i = np.full((m, k), -1, np.int64)
    out_s[rows[keep], rank[keep]] = s[keep]
    out_i[rows[keep], rank[keep]] = it[keep]
    return out_s, out_i


def benchmark_nn(
    space: np.ndarray, owner: np.ndarray, n_items: int, shares_text: set, k: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Each item's similarity to its nearest other item that shares no text with it (NaN when
    all of its k nearest share text), and a flag for items that had to skip one."""
    from ...store.knn import search

    kk = min(len(space), k + 1 + min(len(space) - n_items, 3 * k))
    idx, dist = search(space, space[:n_items], kk)
    s, it = top_distinct(1.0 - dist.astype(np.float64), owner[idx], k + 1)
    me = np.arange(n_items)[:, None]
    key = np.minimum(me, it) * np.int64(n_items) + np.maximum(me, it)
    shared = np.isin(key, np.fromiter(shares_text, np.int64, len(shares_text)))
    shared |= s >= 0.9999  # an identical vector: the same text as the encoder reads it
    ok = (it >= 0) & (it != me) & ~shared
    first = np.where(ok.any(axis=1), ok.argmax(axis=1), -1)
    nn = np.where(first >= 0, s[np.arange(n_items), np.maximum(first, 0)], np.nan)
    skipped = ((it != me) & (it >= 0) & shared).any(axis=1)
    return nn, skipped


def calibrate(row_best: np.ndarray, bench_nn: np.ndarray | None, p) -> tuple[float, dict, list]:
    """(threshold, calibration info, warnings); see the module docstring."""
    info: dict = {}
    warnings: list[str] = []
    cands = {}
    r = row_best[~np.isnan(row_best)]
    if len(r) >= p.min_rows_for_tail:
        med, q90, q99 = (float(x) for x in np.quantile(r, [0.5, 0.9, 0.99]))
        spread = max(q90 - med, 1e-3)
        raw = med + p.tail_spreads * spread
        cands["rows"] = raw
        info["rows"] = {
            "n": len(r),
            "median": round(med, 4),
            "q90": round(q90, 4),
            "q99": round(q99, 4),
            "tail_spreads": p.tail_spreads,
            "threshold": round(raw, 4),
        }
    else:
        info["rows"] = {"n": len(r), "skipped": f"fewer than {p.min_rows_for_tail} rows"}
    if bench_nn is not None and np.isfinite(bench_nn).sum() >= 3:
        b = bench_nn[np.isfinite(bench_nn)]
        raw = float(np.quantile(b, p.calibration_quantile))
        cands["benchmark"] = raw
        info["benchmark"] = {
            "items": len(b),
            "median": round(float(np.median(b)), 4),
            f"q{p.calibration_quantile:g}": round(raw, 4),
        }
    if p.similarity_threshold is not None:
        return float(p.similarity_threshold), {"method": "fixed", **info}, warnings
    if not cands:
        thr = p.min_similarity
        method = "floor (nothing to calibrate on)"
    else:
        method = min(cands, key=cands.get)
        thr = float(np.clip(cands[method], p.min_similarity, p.max_similarity))
    for name, raw in cands.items():
        info[name]["clipped"] = round(float(np.clip(raw, p.min_similarity, p.max_similarity)), 4)
    if thr >= p.max_similarity:
        warnings.append(
            f"the tier-2 threshold sits at its cap {p.max_similarity} ({_why(info)}): "
            "rephrasings below it are missed. Set `similarity_threshold` (e.g. 0.85) in the "
            "audit config, or give a judge (--judge-url, --judge-model) to review the rows "
            "just below it"
        )
    return thr, {"method": method, **info}, warnings


def _why(info: dict) -> str:
    parts = []
    if "q90" in info.get("rows", {}):
        parts.append(f"rows' best similarity: median {info['rows']['median']}")
    if "benchmark" in info:
        parts.append(f"benchmark items' nearest other item: median {info['benchmark']['median']}")
    return "; ".join(parts) or "no statistics"


# --- attribution ---------------------------------------------------------------------------------
class WordWeights:
    """The benchmark's distinct words per item, with inverse document frequency weights."""

    def __init__(self, texts):
        tok, doc = token_hashes(texts)
        frame = pl.DataFrame({"item": doc, "tok": tok}).unique()
        n = max(len(texts), 1)
        df = frame.group_by("tok").len("df")
        self.items = frame.join(df, on="tok").with_columns(
            ((pl.lit(float(n)) / pl.col("df")).log() + 1e-3).alias("w")
        )
        mass = self.items.group_by("item").agg(pl.col("w").sum().alias("mass"))
        self.mass = np.zeros(n)
        self.mass[mass["item"].to_numpy()] = mass["mass"].to_numpy()

    def coverage(self, row_texts, pair_row: np.ndarray, pair_item: np.ndarray) -> np.ndarray:
        """For each (row position in `row_texts`, candidate item) pair: the weighted Jaccard
        overlap of their distinct words, leaving out the words every candidate of that row holds
        (a shared passage, a premise, a template's fixed words: they cannot tell the candidates
        apart). Symmetric on purpose: an item whose words are all in the row (a sibling on the
        row's passage) still loses to the item that also holds the row's other words (its
        question, options, numbers). A word the benchmark never uses weighs as one in a single
        item."""
        if not len(pair_row):
            return np.zeros(0)
        pairs = pl.DataFrame(
            {"row": np.asarray(pair_row, np.int64), "item": np.asarray(pair_item, np.int64)}
        ).with_row_index("pair")
        tok, doc = token_hashes(row_texts)
        n = max(len(self.mass), 1)
        weights = self.items.select("tok", "w").unique("tok")
        rows = (
            pl.DataFrame({"row": doc, "tok": tok})
            .unique()
            .join(weights, on="tok", how="left")
            .with_columns(pl.col("w").fill_null(float(np.log(n)) + 1e-3))
        )
        cand = pairs.join(self.items.select("item", "tok", "w"), on="item")
        per_row = pairs.group_by("row").len("k")
        common = (
            cand.group_by("row", "tok")
            .len("c")
            .join(per_row, on="row")
            .filter(pl.col("c") == pl.col("k"))
            .select("row", "tok")
        )
        cand = cand.join(common, on=["row", "tok"], how="anti")
        rows = rows.join(common, on=["row", "tok"], how="anti")
        item_mass = cand.group_by("pair").agg(pl.col("w").sum().alias("im"))
        row_mass = rows.group_by("row").agg(pl.col("w").sum().alias("rm"))
        shared = (
            cand.join(rows.select("row", "tok"), on=["row", "tok"])
            .group_by("pair")
            .agg(pl.col("w").sum().alias("sh"))
        )
        out = (
            pairs.join(item_mass, on="pair", how="left")
            .join(row_mass, on="row", how="left")
            .join(shared, on="pair", how="left")
            .fill_null(0.0)
            .sort("pair")
        )
        union = out["im"].to_numpy() + out["rm"].to_numpy() - out["sh"].to_numpy()
        return out["sh"].to_numpy() / np.maximum(union, 1e-9)
