"""`leakage`: rows of one split that also occur in another split (train/test leakage).

Examined rows: the audited rows outside the reference split (default `train`, `--reference`),
or the reference's own rows when it is the only split audited. Each is compared with every row
of every *other* split in the store (not only the audited ones), so a test row copied from
train and a validation row copied into test are both found.

Two kinds of match, both recorded with their evidence:

- exact: the same content. Text: the normalised text (`auditor.textnorm`: NFKC, lower case,
  punctuation folded to spaces, whitespace collapsed) hashes equal. Images: the decoded pixels
  hash equal (a re-encoded file still matches). Tables without text or images: every metadata
  source column equal (the label is left out: a copied row with another label still leaks).
- near: a row of another split, among the row's `k` nearest neighbours there, closer than the
  data's own spacing allows for distinct rows: cosine distance below `threshold` (0.13, the
  `near_duplicate` rule) times the median distance between a row and its nearest other row of
  its own split, measured in the splits the row is compared with (exact copies left out of that
  median). The bar is set by the embedding in use: on a weak embedding (pixel PCA) where every
  image sits close to its neighbours it rises, so two random halves of one set show no leakage.
  `near_threshold` (an absolute cosine similarity) overrides it.

Per examined row, `details` has `partners` (row_ids in other splits, most similar first, at most
`max_partners`), `partner_splits`, `similarity` (1.0 for exact partners), `kind` (`exact` when
any partner is exact, else `near`, null when the row is clean), `nearest_similarity` (cosine
to the nearest row of another split, flagged or not) and `tail_share`, how unusual the
row's best similarity is here: the share of rows of the compared splits whose nearest neighbour
in their own split is at least as close (a conformal p-value; about 0.5 for an ordinary row).
Score: `1 - exp(-d / median)` with `d` the cosine distance to the nearest row of another split
and `median` the within-split median above (0 for an exact copy, about 0.63 for a row as far from
the other splits as rows are from each other); without embeddings, 0 for exact copies and 1
otherwise. Dataset score: 1 - share of examined rows leaked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from pydantic import Field

from ..store import schema as S
from ..store.errors import InputError
from .base import (
    DROP,
    Auditor,
    AuditResult,
    Params,
    RepairAction,
    Requires,
    register,
)
from .duplicates import same_split_nn, tail_share, typical_nn_distance
from .textnorm import text_hashes

if TYPE_CHECKING:
    from .context import AuditContext


def examined_splits(ctx: AuditContext) -> list[str]:
    """Audited splits other than the reference; the reference alone when nothing else is."""
    others = [s for s in ctx.splits if s != ctx.reference]
    return others or [ctx.reference]


def read_columns(ctx: AuditContext, columns: list[str], splits: list[str]) -> pl.DataFrame:
    """row_id, split and `columns` of the rows of `splits`, ordered by row_id (no other columns
    are read, so a wide or large store stays cheap)."""
    cols = ", ".join([S.ROW_ID, S.SPLIT] + [S.quote(c) for c in columns])
    marks = ", ".join("?" for _ in splits)
    return ctx.store.polars(
        f"SELECT {cols} FROM {S.SAMPLES} WHERE split IN ({marks}) ORDER BY row_id", list(splits)
    )


def content_keys(ctx: AuditContext, frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, str]:
    """(key uint64 [n], usable bool [n], what the key is) for the rows of `frame`, which holds
    the columns `read_columns` returned for `key_columns(ctx)`."""
    if ctx.text_column:
        texts = frame[ctx.text_column].cast(pl.Utf8)
        usable = (texts.fill_null("").str.strip_chars().str.len_bytes() > 0).to_numpy()
        return text_hashes(texts), usable, "normalised text"
    if ctx.image_column and S.IMAGE_PATH in frame.columns:
        from .contamination import image_hashes

        pix, _, _, ok = image_hashes(frame[S.IMAGE_PATH].to_numpy())
        return pix, ok, "decoded image pixels"
    cols = feature_columns(ctx)
    if not cols:
        return np.zeros(len(frame), np.uint64), np.zeros(len(frame), bool), "none"
    key = frame.select(pl.struct([pl.col(c) for c in cols]).hash(seed=7))[:, 0]
    return key.to_numpy().astype(np.uint64), np.ones(len(frame), bool), "all metadata columns"


def key_columns(ctx: AuditContext) -> list[str]:
    if ctx.text_column:
        return [ctx.text_column]
    if ctx.image_column:
        return [S.IMAGE_PATH]
    return feature_columns(ctx)


def feature_columns(ctx: AuditContext) -> list[str]:
    """`ctx.metadata_columns` without the source column the split came from (`--split-column`
    keeps it in `samples`): a column with one value per split, different across splits, says
    nothing about a row beyond its split and would make every comparison across splits differ."""
    cols = list(ctx.metadata_columns)
    if not cols:
        return cols
    marks = ", ".join(
        f"count(DISTINCT {S.quote(c)}) = 1 AND count({S.quote(c)}) = count(*)" for c in cols
    )
    per_split = ctx.store.fetchall(f"SELECT {marks} FROM {S.SAMPLES} GROUP BY split")
    if len(per_split) < 2:
        return cols
    distinct = ctx.store.fetchone(
        "SELECT " + ", ".join(f"count(DISTINCT {S.quote(c)})" for c in cols) + f" FROM {S.SAMPLES}"
    )
    return [
        c
        for i, c in enumerate(cols)
        if not (all(r[i] for r in per_split) and distinct[i] == len(per_split))
    ]


# A leak pair: an examined row, its partner in another split, their similarity, exact or not.
PAIR_SCHEMA = {
    S.ROW_ID: pl.Int64,
    "partner": pl.Int64,
    "partner_split": pl.Utf8,
    "similarity": pl.Float64,
    "exact": pl.Boolean,
}


def exact_pairs(rid, split, keys, usable, examined) -> pl.DataFrame:
    """Pairs of rows with the same content key in different splits, the first of each pair an
    `examined` row (a join on the key, no loop per row); `usable`: rows with a key."""
    kf = pl.DataFrame({S.ROW_ID: rid, "split": split, "key": keys}).filter(pl.Series(usable))
    return (
        kf.filter(pl.Series(examined[usable]))
        .join(kf, on="key", suffix="_p")
        .filter(pl.col("split") != pl.col("split_p"))
        .select(
            S.ROW_ID,
            pl.col("row_id_p").alias("partner"),
            pl.col("split_p").alias("partner_split"),
            pl.lit(1.0).alias("similarity"),
            pl.lit(True).alias("exact"),
        )
    )


def near_radius(nn_dist, other_splits, threshold: float, near_threshold: float | None) -> tuple:
    """(reference distances, their typical value, the near radius) for one examined split:
    the nearest same-split distances `nn_dist` of the rows of the other splits (all rows when
    none of those is finite); the radius is 1 - `near_threshold` when set, else `threshold`
    times the typical distance."""
    ref = nn_dist[other_splits]
    if not np.isfinite(ref).any():
        ref = nn_dist
    median = typical_nn_distance(ref)
    radius = 1.0 - near_threshold if near_threshold is not None else threshold * median
    return ref, median, radius


def merge_pairs(exact: pl.DataFrame, near: pl.DataFrame) -> pl.DataFrame:
    """Exact and near pairs as one frame: one pair per (row, partner), the exact one when both,
    each row's partners most similar first."""
    return (
        pl.concat([exact, near])
        .sort([S.ROW_ID, "exact", "similarity"], descending=[False, True, True])
        .unique([S.ROW_ID, "partner"], keep="first", maintain_order=True)
        .sort([S.ROW_ID, "similarity"], descending=[False, True])
    )


def by_split_pair(pairs: pl.DataFrame) -> list[dict]:
    """Rows with a partner (and with an exact one) per (split, partner split), from the pairs
    joined with their row's `split`."""
    if pairs.is_empty():
        return []
    return (
        pairs.group_by("split", "partner_split")
        .agg(
            pl.col(S.ROW_ID).filter(pl.col("exact")).n_unique().alias("exact_rows"),
            pl.col(S.ROW_ID).n_unique().alias("rows"),
        )
        .sort("split", "partner_split")
        .to_dicts()
    )


def leak_rows(
    examined: pl.DataFrame,
    pairs: pl.DataFrame,
    best: np.ndarray,
    scale: np.ndarray,
    tail: np.ndarray,
    max_partners: int,
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """The leakage rows of the examined rows (a `row_id` column; `best`, `scale` and `tail` in
    its order: the distance to the nearest row of another split, NaN if none, the split's
    calibration scale and tail share), from their pairs (row_id, partner, partner_split,
    similarity, exact), best first. Shared by the local and the Ray engine.
    Returns (rows, leaked, any_exact)."""
    grouped = pairs.group_by(S.ROW_ID, maintain_order=True).agg(
        pl.col("partner").head(max_partners).alias("partners"),
        pl.col("partner_split").head(max_partners).alias("partner_splits"),
        pl.col("similarity").head(max_partners).alias("similarity"),
        pl.col("exact").any().alias("_any_exact"),
    )
    out = examined.join(grouped, on=S.ROW_ID, how="left", maintain_order="left").with_columns(
        pl.col("partners").fill_null([]),
        pl.col("partner_splits").fill_null([]),
        pl.col("similarity").fill_null([]),
        pl.col("_any_exact").fill_null(False),
    )
    leaked = out["partners"].list.len().to_numpy() > 0
    any_exact = out["_any_exact"].to_numpy()
    with np.errstate(invalid="ignore"):
        calibrated = 1.0 - np.exp(-np.maximum(best, 0.0) / scale)
    score = np.where(np.isnan(best), np.where(any_exact, 0.0, 1.0), calibrated)
    score = np.where(any_exact, 0.0, np.clip(score, 0.0, 1.0))
    kind = np.where(any_exact, "exact", np.where(leaked, "near", None))
    tail = np.where(any_exact & np.isnan(tail), 0.0, tail)
    rows = out.select(S.ROW_ID, "partners", "partner_splits", "similarity").with_columns(
        pl.Series("is_issue", leaked),
        pl.Series("score", score.astype(np.float64)),
        pl.Series("kind", kind.tolist(), dtype=pl.Utf8),
        pl.Series("tail_share", tail, dtype=pl.Float64).fill_nan(None),
        pl.Series("nearest_similarity", 1.0 - best, dtype=pl.Float64).fill_nan(None),
    )
    return rows, leaked, any_exact


@register
class Leakage(Auditor):
    name = "leakage"
    details = {"partners": pl.List(pl.Int64), "kind": pl.Utf8, "similarity": pl.List(pl.Float64)}
    partner_key = "partners"
    repair = RepairAction(
        DROP,
        planned=lambda p: p.leakage,
        set_key="partners",
        evidence={"kind": "VARCHAR", "similarity": "FIRST DOUBLE"},
        priority=10,
    )
    description = "Rows of one split that occur in another split, exactly or nearly."
    requires = frozenset({Requires.SPLITS})

    class Params(Params):
        threshold: float = Field(
            0.13,
            gt=0.0,
            le=1.0,
            description="near when the cosine distance is below threshold x the median distance "
            "of a row to its nearest other row of its own split",
        )
        near_threshold: float | None = Field(
            None, gt=0.0, le=1.0, description="absolute cosine similarity (overrides threshold)"
        )
        calibration_rows: int = Field(
            5000, ge=10, description="rows per split searched for the within-split spacing"
        )
        k: int = Field(10, ge=1, le=1000)
        max_partners: int = Field(20, ge=1)
        near: bool = True

    def skip_reason(self, ctx: AuditContext) -> str | None:
        if not key_columns(ctx) and ctx.embedding_key is None:
            return "needs text, images, metadata columns or embeddings to compare rows"
        return None

    def audit(self, ctx: AuditContext) -> AuditResult:
        p = self.params
        examined = examined_splits(ctx)
        all_splits = ctx.store.splits()
        frame = read_columns(ctx, key_columns(ctx), all_splits)
        rid = frame[S.ROW_ID].to_numpy().astype(np.int64)
        split = frame[S.SPLIT].to_numpy()
        is_ex = np.isin(split, examined)
        keys, usable, key_kind = content_keys(ctx, frame)

        exact = exact_pairs(rid, split, keys, usable, is_ex)

        ex_rid = rid[is_ex]
        best_dist = np.full(len(ex_rid), np.nan)
        scale = np.full(len(ex_rid), np.nan)
        tail = np.full(len(ex_rid), np.nan)
        near = exact.clear()
        near_note = None
        calibration: list[dict] = []
        if p.near and ctx.embedding_key is not None:
            near, best_dist, scale, tail, near_note, calibration = self._near_pairs(
                ctx, rid, split, ex_rid, examined
            )
        elif p.near:
            near_note = "no embedding: near matches not searched"

        pairs = merge_pairs(exact, near)
        rows, leaked, any_exact = leak_rows(
            pl.DataFrame({S.ROW_ID: ex_rid}), pairs, best_dist, scale, tail, p.max_partners
        )

        by_pair = pairs.join(pl.DataFrame({S.ROW_ID: ex_rid, "split": split[is_ex]}), on=S.ROW_ID)
        info = {
            "examined_splits": examined,
            "reference": ctx.reference,
            "exact_key": key_kind,
            "threshold": p.threshold,
            "near_threshold": p.near_threshold,
            "calibration": calibration,
            "num_examined": len(ex_rid),
            "num_exact": int(any_exact.sum()),
            "num_near_only": int((leaked & ~any_exact).sum()),
            "by_split_pair": by_split_pair(by_pair),
        }
        if near_note:
            info["note"] = near_note
        n = max(len(ex_rid), 1)
        return AuditResult(rows, score=1.0 - float(leaked.sum()) / n, info=info)

    def _near_pairs(self, ctx, rid, split, ex_rid, examined):
        """kNN of each examined split's rows among all rows of the other splits, judged against
        the within-split nearest-neighbour spacing of those other splits."""
        from ..store.knn import search

        p = self.params
        vid, vec = ctx.store.load_embeddings(ctx.embedding_key)
        has = np.isin(rid, vid)
        vsplit = split[has]
        pos = np.searchsorted(vid, rid[has])  # vid is sorted, rid[has] all present
        vrid, vvec = vid[pos], vec[pos]
        ref_dist, ref_split = self._within_split_nn(ctx, vsplit, vvec)
        best = np.full(len(ex_rid), np.nan)
        scale = np.full(len(ex_rid), np.nan)
        tail = np.full(len(ex_rid), np.nan)
        parts, calibration = [], []
        for s in examined:
            q = vsplit == s
            base = ~q
            if not q.any() or not base.any():
                continue
            ref, median, radius = near_radius(
                ref_dist, ref_split != s, p.threshold, p.near_threshold
            )
            calibration.append(
                {
                    "split": str(s),
                    "reference_rows": int(np.isfinite(ref).sum()),
                    "median_nn_similarity": 1.0 - median,
                    "min_similarity": 1.0 - radius,
                }
            )
            idx, dist = search(vvec[base], vvec[q], p.k)
            dist = dist.astype(np.float64)
            qrid = vrid[q]
            brid, bsplit = vrid[base], vsplit[base]
            at = np.searchsorted(ex_rid, qrid)
            best[at] = dist[:, 0]
            scale[at] = median
            tail[at] = tail_share(ref, dist[:, 0])
            r, c = np.nonzero((dist < radius) & (idx >= 0))
            parts.append(
                pl.DataFrame(
                    {
                        S.ROW_ID: qrid[r],
                        "partner": brid[idx[r, c]],
                        "partner_split": bsplit[idx[r, c]].astype(str),
                        "similarity": np.round(1.0 - dist[r, c], 6),
                        "exact": np.zeros(len(r), bool),
                    },
                    schema=PAIR_SCHEMA,
                )
            )
        missing = int((~np.isin(ex_rid, vrid)).sum())
        note = (
            f"{missing} examined rows have no vector: near matches not searched for them"
            if missing
            else None
        )
        pairs = pl.concat(parts) if parts else _empty_pairs()
        return pairs, best, scale, tail, note, calibration

    def _within_split_nn(self, ctx, vsplit, vvec) -> tuple[np.ndarray, np.ndarray]:
        """(distance of a row to its nearest other row of its own split, the row's split) for a
        sample of rows: from the run's shared kNN graph when it covers the audited rows (no
        extra search), else by searching at most `calibration_rows` rows of each split."""
        from ..store.knn import search

        if ctx.embedding_key is not None and ctx.missing(frozenset({Requires.EMBEDDINGS})) is None:
            try:
                graph = ctx.knn()
            except InputError:
                graph = None
            if graph is not None:
                nn_dist, _ = same_split_nn(graph.indices, graph.distances, ctx.split_of)
                if len(set(ctx.split_of.tolist())) > 1 and np.isfinite(nn_dist).any():
                    return nn_dist, ctx.split_of
        rng = np.random.default_rng(ctx.seed)
        dists, splits = [], []
        for s in np.unique(vsplit):
            rows = np.flatnonzero(vsplit == s)
            if len(rows) < 2:
                continue
            q = rows
            if len(rows) > self.params.calibration_rows:
                q = np.sort(rng.choice(rows, self.params.calibration_rows, replace=False))
            idx, dist = search(vvec[rows], vvec[q], 2)
            own = np.searchsorted(rows, q)
            first_is_self = idx[:, 0] == own
            d = np.where(first_is_self, dist[:, 1], dist[:, 0]).astype(np.float64)
            dists.append(np.where(np.where(first_is_self, idx[:, 1], idx[:, 0]) >= 0, d, np.nan))
            splits.append(np.full(len(q), s, dtype=object))
        if not dists:
            return np.array([np.nan]), np.array([None], dtype=object)
        return np.concatenate(dists), np.concatenate(splits)


def _empty_pairs() -> pl.DataFrame:
    return pl.DataFrame(schema=PAIR_SCHEMA)
