"""`exact_duplicate` and `near_duplicate`: rows that repeat other rows of the same split.

Both report sets: every member of a set is flagged, `details.set_id` is the smallest row_id in
the set (the one a repair keeps by default) and `details.members` lists the set's other row_ids,
so sets are symmetric by construction (connected components of the "is a copy of" relation).
Pairs across splits are train/test leakage and belong to the `leakage` auditor, not here.

`exact_duplicate` compares content, not embeddings: the text folded to a key (Unicode NFKC,
lower case, punctuation and symbols removed, runs of whitespace collapsed), or for images two
keys, the SHA-1 of the file bytes and the SHA-1 of the decoded RGB pixels (so a PNG re-encoded
with other settings still matches). Rows with an empty key (no text, unreadable image) are left
to the `null` auditor. Score: 1 / set size for members, 1 otherwise.

`near_duplicate` is cleanlab's near-duplicate check on the shared kNN graph, judged against the
data's own spacing: a pair is near when its cosine distance is below `threshold` (cleanlab's
default 0.13) times the median distance between a row and its nearest other row of the same split
(exact copies, at distance 0, left out of that median: they are `exact_duplicate`'s), or below
`max_distance` when given. So a weak embedding, where every row sits close to its neighbours,
raises the bar instead of flooding. Sets are connected components of near pairs. `details`:
`nearest_row_id`, `similarity` (cosine), and `tail_share`, how unusual that similarity is here:
the share of the audited rows whose nearest same-split neighbour is at least as close. Score:
`1 - exp(-d_nn / median_nn)` with `d_nn` the distance to the nearest same-split neighbour
(cleanlab's form).

Recorded copies are not duplicates: in a re-ingested datacure export, rows that share
`datacure_row_id` are one row oversampled on purpose (`ctx.copy_groups`); a set needs rows of at
least two different originals, in both auditors.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from pydantic import Field

from ..store import schema as S
from .base import (
    KEEP_ONE,
    Auditor,
    AuditResult,
    Params,
    RepairAction,
    Requires,
    register,
)

if TYPE_CHECKING:
    from .context import AuditContext

EPS = 100 * np.finfo(np.float64).eps


def normalize_text(col: pl.Expr) -> pl.Expr:
    """The exact-duplicate key of a text: case, width, punctuation and whitespace folded."""
    return (
        col.cast(pl.Utf8)
        .str.normalize("NFKC")
        .str.to_lowercase()
        .str.replace_all(r"[\p{P}\p{S}]+", "")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def _image_keys(paths: np.ndarray) -> tuple[list[str | None], list[str | None]]:
    """(SHA-1 of file bytes, SHA-1 of decoded RGB pixels and size) per path; None if unreadable."""
    from PIL import Image

    byte_keys: list[str | None] = []
    pixel_keys: list[str | None] = []
    for p in paths:  # one file read per image: unavoidable I/O
        raw_key = pix_key = None
        if p is not None:
            try:
                with open(p, "rb") as fh:
                    raw = fh.read()
                raw_key = hashlib.sha1(raw).hexdigest()
                with Image.open(p) as im:
                    arr = np.ascontiguousarray(np.asarray(im.convert("RGB")))
                h = hashlib.sha1(str(arr.shape).encode())
                h.update(arr.tobytes())
                pix_key = h.hexdigest()
            except (OSError, ValueError, SyntaxError):  # PIL raises these on corrupt files
                pass
        byte_keys.append(raw_key)
        pixel_keys.append(pix_key)
    return byte_keys, pixel_keys


def components(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Connected-component id of each of n nodes given undirected edges (src[i], dst[i])."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n)).tocsr()
    _, comp = connected_components(g, directed=False)
    return comp


def _key_edges(keys: pl.Series, split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges joining each row to the first row with the same (split, key); null keys join none."""
    df = pl.DataFrame({"pos": np.arange(len(keys)), "split": split, "key": keys})
    df = df.filter(pl.col("key").is_not_null())
    first = df.group_by("split", "key").agg(pl.col("pos").min().alias("first"))
    df = df.join(first, on=["split", "key"]).filter(pl.col("pos") != pl.col("first"))
    return df["pos"].to_numpy(), df["first"].to_numpy()


def duplicate_sets(comp: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Rows in a duplicate set: their component holds rows of at least two copy groups (rows
    without a recorded original are each their own group)."""
    n = len(comp)
    if groups is None:
        return np.bincount(comp, minlength=n)[comp] > 1
    pairs = np.unique(np.stack([comp, groups], axis=1), axis=0)
    distinct = np.bincount(pairs[:, 0], minlength=n)
    return distinct[comp] > 1


def same_split_nn(indices: np.ndarray, distances: np.ndarray, split: np.ndarray):
    """Per row of a kNN graph: (distance to, position of) its nearest neighbour in its own split;
    NaN and -1 where none of its neighbours is (rows are ascending by distance)."""
    n = len(indices)
    valid = indices >= 0
    same = valid & (split[np.where(valid, indices, 0)] == split[:, None])
    first = np.argmax(same, axis=1)
    has = same.any(axis=1)
    rows = np.arange(n)
    nn_dist = np.where(has, distances[rows, first].astype(np.float64), np.nan)
    nn_pos = np.where(has, indices[rows, first], -1)
    return nn_dist, nn_pos


def typical_nn_distance(nn_dist: np.ndarray) -> float:
    """The median nearest-neighbour distance of the rows that have one, exact copies (distance
    0) left out: the spacing of distinct rows in this embedding."""
    d = nn_dist[np.isfinite(nn_dist) & (nn_dist > EPS)]
    return max(float(np.median(d)) if len(d) else 0.0, EPS)


def tail_share(reference: np.ndarray, d: np.ndarray) -> np.ndarray:
    """How unusual a distance `d` is among `reference` nearest-neighbour distances: the share of
    them at or below it, (count + 1) / (len + 1) (a conformal p-value; small = unusually close)."""
    ref = np.sort(reference[np.isfinite(reference)])
    d = np.asarray(d, dtype=np.float64)
    out = (np.searchsorted(ref, np.nan_to_num(d, nan=np.inf), side="right") + 1) / (len(ref) + 1)
    return np.where(np.isfinite(d), np.minimum(out, 1.0), np.nan)


def set_frame(row_ids: np.ndarray, comp: np.ndarray, in_set: np.ndarray) -> pl.DataFrame:
    """Per row: set_id (smallest row_id of its set, null if alone), members (other row_ids),
    set_size (1 if alone)."""
    df = pl.DataFrame({S.ROW_ID: row_ids, "comp": comp, "in_set": in_set})
    sets = (
        df.filter(pl.col("in_set"))
        .group_by("comp")
        .agg(pl.col(S.ROW_ID).min().alias("set_id"), pl.col(S.ROW_ID).sort().alias("_all"))
    )
    out = df.join(sets, on="comp", how="left", maintain_order="left").with_columns(
        pl.col("_all")
        .list.set_difference(pl.concat_list(pl.col(S.ROW_ID)))
        .list.sort()
        .fill_null(pl.lit([], dtype=pl.List(pl.Int64)))
        .alias("members"),
    )
    out = out.with_columns((pl.col("members").list.len() + 1).alias("set_size"))
    return out.select("set_id", "members", "set_size")


class ExactParams(Params):
    pass


@register
class ExactDuplicateAuditor(Auditor):
    name = "exact_duplicate"
    details = {"members": pl.List(pl.Int64)}
    partner_key = "members"
    repair = RepairAction(
        KEEP_ONE,
        planned=lambda p: p.duplicates in ("both", "exact"),
        set_key="members",
        priority=30,
        keeps_content=True,
    )
    description = "rows whose normalised text, image bytes or decoded pixels repeat another row"
    requires = frozenset()
    Params = ExactParams

    def skip_reason(self, ctx: AuditContext) -> str | None:
        if ctx.texts is None and ctx.image_paths is None:
            return "needs a text or image column"
        return None

    def audit(self, ctx: AuditContext) -> AuditResult:
        split = ctx.split_of.astype(str)
        if ctx.texts is not None:
            keys = ctx.frame.select(normalize_text(pl.col(ctx.text_column)).alias("k"))["k"]
            keys = keys.set(keys == "", None) if len(keys) else keys
            edge_sets = [_key_edges(keys, split)]
            kind = "text"
        else:
            byte_keys, pixel_keys = _image_keys(ctx.image_paths)
            edge_sets = [
                _key_edges(pl.Series(byte_keys, dtype=pl.Utf8), split),
                _key_edges(pl.Series(pixel_keys, dtype=pl.Utf8), split),
            ]
            kind = "image"
        src = np.concatenate([e[0] for e in edge_sets]).astype(np.int64)
        dst = np.concatenate([e[1] for e in edge_sets]).astype(np.int64)
        comp = components(ctx.n, src, dst)
        in_set = duplicate_sets(comp, ctx.copy_groups)
        sets = set_frame(ctx.row_ids, comp, in_set)
        size = sets["set_size"].to_numpy()
        score = np.where(in_set, 1.0 / size, 1.0)
        rows = pl.DataFrame({S.ROW_ID: ctx.row_ids, "is_issue": in_set, "score": score}).hstack(
            sets.select("set_id", "members")
        )
        num_sets = int(sets.filter(pl.col("set_id").is_not_null())["set_id"].n_unique())
        return AuditResult(
            rows,
            score=float(1.0 - in_set.mean()) if ctx.n else 1.0,
            info={
                "key": kind,
                "num_sets": num_sets,
                "num_rows_in_sets": int(in_set.sum()),
                "removable": int(in_set.sum()) - num_sets,
            },
        )


class NearParams(Params):
    threshold: float = Field(
        0.13, ge=0, description="near when distance < threshold * median nearest-neighbour distance"
    )
    max_distance: float | None = Field(
        None, ge=0, le=2, description="absolute cosine-distance radius (overrides threshold)"
    )
    k: int | None = Field(None, ge=1, description="neighbours searched (default: the run's k)")


@register
class NearDuplicateAuditor(Auditor):
    name = "near_duplicate"
    details = {"members": pl.List(pl.Int64), "similarity": pl.Float64}
    partner_key = "members"
    repair = RepairAction(
        KEEP_ONE, planned=lambda p: p.duplicates in ("both", "near"), set_key="members", priority=40
    )
    description = "rows within a small radius of another row of the same split (kNN graph)"
    requires = frozenset({Requires.EMBEDDINGS})
    Params = NearParams

    def skip_reason(self, ctx: AuditContext) -> str | None:
        return "needs at least 2 rows" if ctx.n < 2 else None

    def audit(self, ctx: AuditContext) -> AuditResult:
        graph = ctx.knn(self.params.k)
        idx = graph.indices
        split = ctx.split_of
        valid = idx >= 0
        same = valid & (split[np.where(valid, idx, 0)] == split[:, None])
        dist = np.where(same, graph.distances.astype(np.float64), np.inf)
        nn_dist, nn_pos = same_split_nn(idx, graph.distances, split)
        has_nn = nn_pos >= 0
        median_nn = typical_nn_distance(nn_dist)
        if self.params.max_distance is not None:
            radius = float(self.params.max_distance)
        else:
            radius = self.params.threshold * median_nn
        near = dist < radius
        src, col = np.nonzero(near)
        dst = idx[src, col]
        comp = components(ctx.n, src, dst)
        in_set = duplicate_sets(comp, ctx.copy_groups)
        sets = set_frame(ctx.row_ids, comp, in_set)
        score = np.where(has_nn, 1.0 - np.exp(-np.nan_to_num(nn_dist) / median_nn), 1.0)
        rows = pl.DataFrame(
            {
                S.ROW_ID: ctx.row_ids,
                "is_issue": in_set,
                "score": np.clip(score, 0.0, 1.0),
            }
        ).hstack(sets.select("set_id", "members"))
        has = pl.lit(pl.Series(has_nn))
        rows = rows.with_columns(
            pl.when(has)
            .then(pl.lit(pl.Series(ctx.row_ids[np.maximum(nn_pos, 0)])))
            .alias("nearest_row_id"),
            pl.when(has)
            .then(pl.lit(pl.Series(np.clip(1.0 - np.nan_to_num(nn_dist), -1.0, 1.0))))
            .alias("similarity"),
            pl.when(has)
            .then(pl.lit(pl.Series(np.nan_to_num(tail_share(nn_dist, nn_dist), nan=1.0))))
            .alias("tail_share"),
        )
        num_sets = int(sets.filter(pl.col("set_id").is_not_null())["set_id"].n_unique())
        return AuditResult(
            rows,
            score=float(score.mean()) if ctx.n else 1.0,
            info={
                "k": graph.k,
                "metric": "cosine",
                "threshold": self.params.threshold,
                "max_distance": self.params.max_distance,
                "radius": radius,
                "median_nn_distance": median_nn,
                "min_similarity": 1.0 - radius,
                "num_sets": num_sets,
                "num_rows_in_sets": int(in_set.sum()),
            },
        )
