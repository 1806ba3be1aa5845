"""Checks of the columns a source gives a role: which column holds the text or the images
(inference), a `--vector` column (one length, numbers, no nulls), and image files (inside the
source's folder, present, readable, not decompression bombs). Vectorised over Arrow; image
files are opened once each, in a thread pool.
"""

from __future__ import annotations

import functools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from . import schema as S
from .db import Store
from .errors import InputError
from .sources import IMAGE_EXTENSIONS

# Pillow refuses images with more pixels than this (decompression bombs); override with
# DATACURE_MAX_IMAGE_PIXELS.
MAX_IMAGE_PIXELS = int(os.environ.get("DATACURE_MAX_IMAGE_PIXELS", "100000000"))
_SHOW = 5  # how many bad rows or files an error names


def _np_arrow(a: np.ndarray) -> pa.Array:
    """A numeric numpy array as Arrow, zero-copy. (`pa.array` would import pandas, about half
    a second, on its first call in a process.)"""
    a = np.ascontiguousarray(a)
    kind = {"i8": pa.int64(), "u8": pa.uint64(), "f4": pa.float32(), "f8": pa.float64()}
    return pa.Array.from_buffers(kind[a.dtype.str[1:]], len(a), [None, pa.py_buffer(a)])


def _rows(positions) -> str:
    return ", ".join(str(int(p) + 1) for p in positions)


def _infer_content(
    store: Store,
    cols: list[str],
    taken: set,
    root: Path,
    notes: list[str],
    no_text: bool = False,
    no_image: bool = False,
) -> tuple[str | None, str | None]:
    """(text, image) columns when exactly one candidate of a kind exists (on a 10k-row sample).

    Image: a string column whose values all end in an image extension and whose files exist
    (the first 50 values checked, relative to `root`): a column of file names with no files
    beside the table is metadata, and a note says so (pass --image COL to insist). Text: a
    string column of mean length >= 10 where most values contain a space. `no_text` /
    `no_image` (`--text none` / `--image none`) switch a kind off."""
    types = {r[0]: r[1] for r in store.fetchall("DESCRIBE SELECT * FROM _dc_src")}
    strs = [c for c in cols if types.get(c) == "VARCHAR" and c not in taken]
    if not strs:
        return None, None
    ext = "|".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    aggs = []
    for c in strs:
        q = S.quote(c)
        aggs += [
            f"avg(length({q}))",
            f"avg(CASE WHEN {q} LIKE '% %' THEN 1.0 ELSE 0.0 END)",
            f"count({q})",
            f"count(*) FILTER (WHERE regexp_matches(lower({q}), '\\.({ext})$'))",
        ]
    row = store.fetchone(f"SELECT {', '.join(aggs)} FROM (SELECT * FROM _dc_src LIMIT 10000)")
    stats = {c: row[4 * i : 4 * i + 4] for i, c in enumerate(strs)}
    named = [c for c, (_, _, nn, ni) in stats.items() if nn and ni == nn]
    images = []
    for c in [] if no_image else named:
        sample = [
            r[0]
            for r in store.fetchall(
                f"SELECT {S.quote(c)} FROM _dc_src WHERE {S.quote(c)} IS NOT NULL LIMIT 50"
            )
        ]
        missing = [v for v in sample if not (root / str(v)).is_file()]
        if missing:
            notes.append(
                f"column {c!r} holds image file names, but {len(missing)} of the first "
                f"{len(sample)} are not files under {root} (e.g. {missing[0]!r}): kept as "
                f"metadata, not images; pass --image {c} if they are images"
            )
        else:
            images.append(c)
    if len(images) > 1:
        raise InputError(
            f"several columns could hold image paths: {', '.join(images)}",
            "pass --image COL (or --image none)",
        )
    if images:
        return None, images[0]
    if no_text:
        return None, None
    texts = [c for c, (ml, sp, nn, _) in stats.items() if nn and ml and ml >= 10 and sp >= 0.5]
    if len(texts) > 1:
        desc = ", ".join(f"{c} (mean {stats[c][0]:.0f} chars)" for c in texts)
        raise InputError(
            f"several columns could be the text: {desc}",
            "pass --text COL to choose one (or --text none)",
        )
    return (texts[0] if texts else None), None


def _check_vectors(store: Store, tbl: pa.Table, col: str, dtype: str, name: str):
    """Validate a vector column (same length everywhere, numbers, no nulls); returns the table
    with the column as list<float32> and the dimension."""
    arr = tbl.column(col)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = _parse_text_vectors(store, arr, col)
    t = arr.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise InputError(
            f"--vector {col!r} is {dtype}, not a list of numbers",
            "point --vector at a list/array column (one vector per row)",
        )
    if not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
        raise InputError(f"--vector {col!r} holds {t.value_type}, not numbers", "store numbers")
    # Chunk by chunk, zero-copy: the column can be most of the data (1M x 384 floats = 1.5 GB).
    chunks = list(arr.chunks) if isinstance(arr, pa.ChunkedArray) else [arr]
    nulls = sum(c.null_count for c in chunks)
    if nulls:
        isnull = np.concatenate([c.is_null().to_numpy(zero_copy_only=False) for c in chunks])
        raise InputError(
            f"--vector {col!r} is empty in {nulls} rows "
            f"(rows {_rows(np.flatnonzero(isnull)[:_SHOW])})",
            "drop those rows or fill in their vectors",
        )
    lengths = np.concatenate(
        [pc.list_value_length(c).to_numpy(zero_copy_only=False) for c in chunks]
    )
    uniq, counts = np.unique(lengths, return_counts=True)
    if len(uniq) > 1:
        common = uniq[np.argmax(counts)]
        odd = np.flatnonzero(lengths != common)
        desc = ", ".join(f"{int(u)} ({int(c)} rows)" for u, c in zip(uniq[:5], counts[:5]))
        raise InputError(
            f"--vector {col!r} has vectors of mixed lengths: {desc}; "
            f"e.g. rows {_rows(odd[:_SHOW])} "
            f"are not {int(common)}-long",
            "give every row a vector of the same length (one model for all rows)",
        )
    dim = int(uniq[0])
    if dim == 0:
        raise InputError(f"--vector {col!r} holds empty vectors", "store non-empty vectors")
    fixed = _finite_float32(chunks, dim, col)
    i = tbl.column_names.index(col)
    return tbl.set_column(i, col, pa.chunked_array(fixed, pa.list_(pa.float32(), dim))), dim


def _parse_text_vectors(store: Store, arr, col: str):
    """Vectors written as text, e.g. "[0.1, 0.2]" in a CSV, parsed in DuckDB."""
    with store.registered("_dc_vec", pa.table({"v": arr})):
        parsed = store.arrow("SELECT TRY_CAST(v AS DOUBLE[]) AS v FROM _dc_vec")
    bad = pc.and_(pc.is_null(parsed.column("v")), pc.is_valid(arr))
    if pc.any(bad).as_py():
        first = np.flatnonzero(bad.to_numpy(zero_copy_only=False))[:_SHOW]
        raise InputError(
            f"--vector {col!r}: values in rows {_rows(first)} are not lists of numbers",
            "write each vector as [x1, x2, ...] or store the column as a list in Parquet",
        )
    return parsed.column("v")


def _finite_float32(chunks: list, dim: int, col: str) -> list:
    """Each chunk of `dim`-long lists as a fixed-size list of float32, refusing NaN and
    infinite values."""
    fixed, base = [], 0
    for c in chunks:
        flat = pc.list_flatten(c)
        if flat.type != pa.float32():
            flat = flat.cast(pa.float32())
        values = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32)
        step = 1 << 24  # check in blocks: a mask of the whole chunk would cost a quarter of it
        if not all(np.isfinite(values[i : i + step]).all() for i in range(0, len(values), step)):
            bad_rows = base + np.unique(np.flatnonzero(~np.isfinite(values)) // dim)[:_SHOW]
            raise InputError(
                f"--vector {col!r} holds NaN or infinite values (rows {_rows(bad_rows)})",
                "fix or drop those rows",
            )
        fixed.append(pa.FixedSizeListArray.from_arrays(_np_arrow(values), dim))
        base += len(c)
    return fixed


def _check_images(col, root: Path, allow_outside: bool, name: str, image: str) -> pa.Array:
    """Resolve, confine and verify every image file (Pillow, in a thread pool).

    Returns the absolute resolved paths. Refuses paths that leave `root` (`..`, absolute,
    symlinks out) unless `allow_outside`; missing, unreadable, corrupt or over-large images
    (decompression bombs) are an error naming the first few."""
    from PIL import Image

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.null_count:
        first = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[:_SHOW]
        raise InputError(
            f"image column {image!r} is empty in {arr.null_count} rows (rows {_rows(first)})",
            "drop those rows or fill in their image paths",
        )
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise InputError(
            f"image column {image!r} is {arr.type}, not file paths",
            "point --image at a column of image file paths (relative to the table's folder)",
        )
    rels = arr.to_pylist()
    uniq = list(dict.fromkeys(rels))
    root_real = os.path.realpath(root)
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        workers = min(16, 4 * (os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            check = functools.partial(
                _check_image, root_real=root_real, allow_outside=allow_outside
            )
            results = dict(zip(uniq, pool.map(check, uniq)))
    bad = {r: p for r, (_, p) in results.items() if p is not None}
    if bad:
        raise _images_error(bad, len(uniq), root_real, name, image)
    resolved = {r: real for r, (real, _) in results.items()}
    return pl.Series(S.IMAGE_PATH, [resolved[r] for r in rels], dtype=pl.Utf8).to_arrow()


def _check_image(rel: str, root_real: str, allow_outside: bool) -> tuple[str, str | None]:
    """(resolved path, problem or None) of one image file."""
    from PIL import Image

    full = os.path.join(root_real, os.path.expanduser(rel))
    real = os.path.realpath(full)
    inside = real == root_real or real.startswith(root_real + os.sep)
    if not inside and not allow_outside:
        return real, "outside"
    if not os.path.isfile(real):
        return real, "missing"
    try:
        with Image.open(real) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                return real, f"too large ({w}x{h} pixels)"
            im.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still reads it all
            im.load()
    except Image.DecompressionBombError as exc:
        return real, f"too large ({exc})"
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        return real, f"corrupt ({type(exc).__name__}: {str(exc)[:80]})"
    return real, None


def _images_error(bad: dict, n_files: int, root_real: str, name: str, image: str) -> InputError:
    """One error naming each kind of unusable image (a few files each) and its fix."""
    kinds: dict[str, list[str]] = {}
    for r, p in bad.items():
        kind, _, detail = p.partition(" (")
        kinds.setdefault(kind, []).append(f"{r} ({detail}" if detail else r)
    parts = []
    for kind, files in kinds.items():
        shown = ", ".join(files[:_SHOW]) + (" ..." if len(files) > _SHOW else "")
        parts.append(f"{len(files)} {kind}: {shown}")
    fixes = []
    if "outside" in kinds:
        fixes.append(
            f"keep image paths inside {root_real} (no '..', absolute paths or symlinks out), "
            "or pass --allow-outside-paths if you trust the table"
        )
    if "missing" in kinds:
        fixes.append(f"image paths are relative to {root_real}: check them")
    if "corrupt" in kinds:
        fixes.append("re-export or drop the unreadable images")
    if "too large" in kinds:
        fixes.append(
            f"images over {MAX_IMAGE_PIXELS} pixels are refused as possible decompression "
            "bombs: resize them, or raise DATACURE_MAX_IMAGE_PIXELS if you trust them"
        )
    return InputError(
        f"{len(bad)} of {n_files} images in {name} (column {image!r}) are unusable: "
        + "; ".join(parts),
        "; ".join(fixes),
    )
