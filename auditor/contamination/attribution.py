"""Which benchmark items a flagged row is attributed to (see the contamination module doc):
tier 1's items that share the matched passage, the item whose distinctive words a row covers
best among near ties, and the list `benchmark_index` that names them, the named one first.

`texts_of(row_ids)` is the caller's reader of the rows' texts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from .ngrams import NgramIndex


def _sets(pos: np.ndarray, items: np.ndarray) -> pl.DataFrame:
    """(pos, set): the items of each row position, in the order given."""
    return pl.DataFrame({"pos": pos, "set": items}).group_by("pos", maintain_order=True).agg("set")


def _best_first(r: np.ndarray, col: np.ndarray, cov: np.ndarray):
    """Candidates (row r, column col, coverage cov) ordered per row by coverage, then column
    (the earlier candidate); returns the order and a mask of each row's first."""
    order = np.lexsort((col, -cov, r))
    rs = r[order]
    return order, np.r_[True, rs[1:] != rs[:-1]]


def collect_sets(mt, lo: int, min_overlap: float, tie: float = 0.8) -> pl.DataFrame | None:
    """Rows whose best tier-1 item is flagged: (row position, the other items with overlap >=
    min_overlap and at least `tie` x the best item's shared n-grams, best first): items that
    share the matched passage."""
    if not len(mt.pair_row):
        return None
    other = (
        (mt.pair_item != mt.best[mt.pair_row])
        & (mt.pair_overlap >= min_overlap)
        & (mt.pair_shared >= tie * mt.shared[mt.pair_row])
        & (mt.overlap[mt.pair_row] >= min_overlap)
    )
    if not other.any():
        return None
    return _sets(lo + mt.pair_row[other], mt.pair_item[other])


def attribute_sets(texts_of: Callable, row_ids, weights, item1, sets1: pl.DataFrame):
    """Rows whose tier-1 evidence points at several items (a shared passage or premise): the
    item whose distinguishing words match the row best is named (a verbatim copy keeps its own
    item: all of its words are in the row), the rest stay its set."""
    pos = sets1["pos"].to_numpy().astype(np.int64)
    cands = [[int(item1[q]), *map(int, s)] for q, s in zip(pos, sets1["set"].to_list())]
    r = np.repeat(np.arange(len(pos)), [len(c) for c in cands])
    items = np.fromiter((i for c in cands for i in c), np.int64, len(r))
    col = np.concatenate([np.arange(len(c)) for c in cands])
    cov = weights.coverage(texts_of(row_ids[pos]), r, items)
    order, head = _best_first(r, col, cov)  # best match first, ties: tier 1's order
    r, items = r[order], items[order]
    item1 = item1.copy()
    item1[pos[r[head]]] = items[head]
    return item1, _sets(pos[r[~head]], items[~head])


def attribute_nearest(weights, texts_of: Callable, row_ids, top_sim, top_item, floor, margin):
    """Tier 2's named item per row and its near ties (a set), for rows whose similarity is
    at least `floor` (the threshold, or the judge band's lower bound with a judge): among
    candidates within `margin` of the best, the one whose distinctive words the row covers best
    (ties: the more similar)."""
    item2 = top_item[:, 0].astype(np.int64)
    near = (top_sim >= top_sim[:, :1] - margin) & (top_item >= 0)
    rows = np.flatnonzero((top_sim[:, 0] >= floor) & (near.sum(axis=1) > 1))
    if not len(rows):
        return item2, None
    texts = texts_of(row_ids[rows])
    r, c = np.nonzero(near[rows])
    cov = weights.coverage(texts, r, top_item[rows][r, c])
    # per row: highest coverage, then similarity (candidates come best first)
    order, head = _best_first(r, c, cov)
    r, c = r[order], c[order]
    best_c = np.zeros(len(rows), np.int64)
    best_c[r[head]] = c[head]
    item2[rows] = top_item[rows, best_c]
    rest = ~head
    return item2, _sets(rows[r[rest]], top_item[rows[r[rest]], c[rest]])


def text_sharing_pairs(tier1: NgramIndex | None, texts, min_overlap: float) -> set:
    """Pairs of benchmark items (as i * n + j, i < j) that share text: one holds at least
    `min_overlap` of the other's n-grams (a passage, a long common part)."""
    if tier1 is None or texts is None:
        return set()
    mt = tier1.match(texts)
    n = len(texts)
    ok = (mt.pair_item != mt.pair_row) & (mt.pair_overlap >= min_overlap)
    a, b = mt.pair_row[ok], mt.pair_item[ok]
    return set((np.minimum(a, b) * np.int64(n) + np.maximum(a, b)).tolist())


def named_items(flags, item1, item2, sets1, sets2, limit: int = 10) -> pl.Series:
    """Per row: the implicated benchmark items, the named one first (tier 1's item when tier 1
    flagged, else tier 2's), then the rest of its set, then the other tier's item."""
    n = len(item1)
    empty = pl.DataFrame(schema={"pos": pl.Int64, "set": pl.List(pl.Int64)})
    frame = pl.DataFrame({"pos": np.arange(n), "f1": flags[0], "i1": item1, "i2": item2})
    for name, sets in (("s1", sets1), ("s2", sets2)):
        sets = sets if sets is not None and len(sets) else empty
        sets = sets.with_columns(
            pl.col("pos").cast(pl.Int64), pl.col("set").cast(pl.List(pl.Int64))
        )
        frame = frame.join(sets.rename({"set": name}), on="pos", how="left")
    none = pl.lit([], dtype=pl.List(pl.Int64))
    one = pl.concat_list("i1", pl.col("s1").fill_null(none), "i2")
    two = pl.concat_list("i2", pl.col("s2").fill_null(none), "i1")
    return frame.sort("pos").select(
        pl.when(pl.col("f1"))
        .then(one)
        .otherwise(two)
        .list.filter(pl.element() >= 0)
        .list.unique(maintain_order=True)
        .list.head(limit)
        .alias("benchmark_index")
    )["benchmark_index"]
