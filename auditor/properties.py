"""Derived properties of each row, and the discretisation that turns any attribute into groups.

Text: `text_length` (characters), `digit_share` (digits / characters), `upper_share` (upper-case
letters / letters). Computed with polars string kernels, no loop per row.

Images, as cleanvision measures them (so figures compare with its reports):
`brightness` = sqrt(0.241 R^2 + 0.691 G^2 + 0.068 B^2) / 255 of the mean channel values;
`red`, `green`, `blue` = mean channel value / 255 (the per-channel colour);
`contrast` = standard deviation of the grey image / 255 (RMS contrast; cleanvision has none);
`blurriness` = standard deviation of PIL's FIND_EDGES on the grey image after scaling the longer
side down to 64 pixels (cleanvision's `blurriness`: low = blurry);
`width`, `height`, `size` = sqrt(width * height), `aspect_ratio` = min(w/h, h/w).
Files are decoded in a thread pool (PIL releases the GIL while decoding and filtering); each
worker reduces an image to a few channel statistics, and the properties are derived from those
statistics for all images at once. An unreadable file gives nulls, never an exception.

`discretize` turns a categorical or numeric column into integer groups: categories as they are
(the most frequent ones, the rest pooled), numbers into quantile bins, nulls into their own group.
"""

from __future__ import annotations

import math
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

TEXT_PROPERTIES = ("text_length", "digit_share", "upper_share")
IMAGE_PROPERTIES = (
    "brightness",
    "contrast",
    "red",
    "green",
    "blue",
    "blurriness",
    "width",
    "height",
    "size",
    "aspect_ratio",
)
BLUR_MAX_RESOLUTION = 64  # cleanvision's MAX_RESOLUTION_FOR_BLURRY_DETECTION
MISSING = "(missing)"
OTHER = "(other)"


def text_properties(texts) -> pl.DataFrame:
    """One row per text: `text_length`, `digit_share`, `upper_share` (floats; 0 for empty)."""
    s = pl.Series("t", texts, dtype=pl.Utf8).fill_null("")
    f = pl.DataFrame({"t": s}).select(
        pl.col("t").str.len_chars().cast(pl.Float64).alias("n"),
        pl.col("t").str.count_matches(r"\d").cast(pl.Float64).alias("d"),
        pl.col("t").str.count_matches(r"\p{Lu}").cast(pl.Float64).alias("u"),
        pl.col("t").str.count_matches(r"\p{L}").cast(pl.Float64).alias("l"),
    )
    return f.select(
        pl.col("n").alias("text_length"),
        pl.when(pl.col("n") > 0)
        .then(pl.col("d") / pl.col("n"))
        .otherwise(0.0)
        .alias("digit_share"),
        pl.when(pl.col("l") > 0)
        .then(pl.col("u") / pl.col("l"))
        .otherwise(0.0)
        .alias("upper_share"),
    )


def _image_stats(path) -> tuple:
    """(width, height, mean R, G, B, grey std, edge std) of one file; NaNs when unreadable."""
    from PIL import Image, ImageFilter, ImageStat

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except Exception:  # noqa: BLE001 - any unreadable file becomes a missing value, by design
        return (math.nan,) * 7
    w, h = im.size
    r, g, b = ImageStat.Stat(im).mean
    grey = im.convert("L")
    grey_std = ImageStat.Stat(grey).stddev[0]
    ratio = max(w, h) / BLUR_MAX_RESOLUTION
    small = im.resize((int(w // ratio), int(h // ratio))) if ratio > 1 else im
    edges = small.convert("L").filter(ImageFilter.FIND_EDGES)
    edge_std = math.sqrt(ImageStat.Stat(edges).var[0])
    return (w, h, r, g, b, grey_std, edge_std)


def image_properties(paths, workers: int = 8) -> pl.DataFrame:
    """One row per path with the columns of IMAGE_PROPERTIES (nulls for unreadable files)."""
    paths = list(paths)
    if not paths:
        return pl.DataFrame({k: pl.Series([], dtype=pl.Float64) for k in IMAGE_PROPERTIES})
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        stats = np.array(list(pool.map(_image_stats, paths)), dtype=np.float64)
    w, h, r, g, b, grey_std, edge_std = stats.T
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "brightness": np.sqrt(0.241 * r * r + 0.691 * g * g + 0.068 * b * b) / 255.0,
            "contrast": grey_std / 255.0,
            "red": r / 255.0,
            "green": g / 255.0,
            "blue": b / 255.0,
            "blurriness": edge_std,
            "width": w,
            "height": h,
            "size": np.sqrt(w * h),
            "aspect_ratio": np.minimum(w / h, h / w),
        }
    return pl.DataFrame(out).fill_nan(None)


# Derived properties of one context, computed once and shared by the auditors of a run.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def context_properties(ctx, workers: int = 8) -> pl.DataFrame:
    """Derived properties of the audited rows of `ctx` (aligned with `ctx.row_ids`): text
    properties when the store has a text column, image properties when it has image paths.
    Cached per context, so `spurious_attribute` and `slice` read each image once per run."""
    try:
        return _CACHE[ctx]
    except (KeyError, TypeError):
        pass
    parts = []
    if ctx.texts is not None:
        parts.append(text_properties(ctx.texts))
    if ctx.image_paths is not None:
        parts.append(image_properties(ctx.image_paths, workers=workers))
    frame = pl.concat(parts, how="horizontal") if parts else pl.DataFrame()
    try:
        _CACHE[ctx] = frame
    except TypeError:  # pragma: no cover - a context that cannot be weakly referenced
        pass
    return frame


@dataclass
class Groups:
    """An attribute turned into groups: `codes[i]` indexes `levels` (every row has a group)."""

    name: str
    kind: str  # "categorical" | "numeric"
    codes: np.ndarray
    levels: list[str]

    @property
    def num_levels(self) -> int:
        return len(self.levels)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def discretize(
    values: pl.Series,
    bins: int = 5,
    max_levels: int = 20,
    name: str | None = None,
    numeric: bool | None = None,
) -> Groups | None:
    """Groups of a column, or None when it has fewer than two groups.

    `numeric`: whether the column is a number (a source column's type in the data definition;
    None, for a computed property, reads the dtype). Numbers with more than `max_levels`
    distinct values go into up to `bins` quantile bins (labelled "[lo, hi)"); anything else is
    grouped by value, keeping the `max_levels - 1` most frequent values and pooling the rest as
    "(other)". Nulls and NaNs form "(missing)"."""
    name = name or values.name
    s = values
    if s.dtype.is_float():
        s = s.fill_nan(None)
    n = len(s)
    if numeric is None:
        numeric = s.dtype.is_numeric() and s.dtype != pl.Boolean
    if numeric and s.n_unique() > max_levels:
        v = s.cast(pl.Float64).to_numpy()
        ok = ~np.isnan(v)
        edges = np.unique(np.quantile(v[ok], np.linspace(0, 1, bins + 1)))
        if len(edges) < 2:
            return None
        inner = edges[1:-1]
        codes = np.searchsorted(inner, np.where(ok, v, 0.0), side="right").astype(np.int64)
        nb = len(edges) - 1
        levels = [
            f"[{_fmt(edges[i])}, {_fmt(edges[i + 1])}{']' if i == nb - 1 else ')'}"
            for i in range(nb)
        ]
        if not ok.all():
            codes[~ok] = nb
            levels.append(MISSING)
        used = np.bincount(codes, minlength=len(levels)) > 0
        if used.sum() < 2:
            return None
        return Groups(name, "numeric", codes, levels)
    text = s.cast(pl.Utf8) if s.dtype != pl.Boolean else s.cast(pl.Utf8).str.to_lowercase()
    text = text.fill_null(MISSING)
    counts = text.value_counts(name="_n").sort(["_n", text.name], descending=[True, False])
    if len(counts) < 2:
        return None
    keep = counts[: max_levels - 1][text.name].to_list() if len(counts) > max_levels else None
    if keep is not None:
        text = pl.Series(text.name, np.where(text.is_in(keep).to_numpy(), text.to_numpy(), OTHER))
    levels = sorted(set(text.unique().to_list()), key=lambda x: (x in (OTHER, MISSING), x))
    mapping = pl.DataFrame({"_v": levels, "_c": np.arange(len(levels), dtype=np.int64)})
    codes = (
        pl.DataFrame({"_v": text})
        .join(mapping, on="_v", how="left", maintain_order="left")["_c"]
        .to_numpy()
    )
    assert len(codes) == n
    return Groups(name, "categorical", codes.astype(np.int64), [str(x) for x in levels])
