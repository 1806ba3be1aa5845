"""Seeded data sets with a known defect, shared by tests, benchmarks and the demo.

`coloured_digits`: sklearn's 8x8 digits upscaled to 32x32 RGB, with a background colour tied to
the label with probability `correlation` (a planted spurious attribute, as in Coloured MNIST and
Waterbirds). With `correlation=0.5`... the colour is independent of the label only when it equals
1/num_colours; the "aligned" colour of class c is `COLOURS[c % len(COLOURS)]`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

COLOURS = {
    "red": (200, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 200),
    "yellow": (220, 200, 40),
    "purple": (140, 50, 170),
}


def coloured_digits(
    n: int | None = None,
    correlation: float = 0.95,
    classes: tuple[int, ...] = (0, 1),
    colours: tuple[str, ...] = ("red", "green"),
    size: int = 32,
    seed: int = 0,
) -> tuple[np.ndarray, pl.DataFrame]:
    """(images uint8 [n, size, size, 3], frame with `label`, `color`, `aligned`).

    Each digit of class `classes[i]` gets background `colours[i % len(colours)]` with probability
    `correlation`, otherwise another colour of `colours` chosen uniformly. The digit is drawn in
    white-ish strokes over the background, so the label is learnable from shape alone."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    d = load_digits()
    keep = np.isin(d.target, classes)
    imgs8, y = d.images[keep], d.target[keep]
    if n is not None:
        idx = rng.choice(len(y), size=n, replace=n > len(y))
        imgs8, y = imgs8[idx], y[idx]
    cls_index = {c: i for i, c in enumerate(classes)}
    aligned_col = np.array([cls_index[c] % len(colours) for c in y])
    is_aligned = rng.random(len(y)) < correlation
    other = (aligned_col + rng.integers(1, max(len(colours), 2), len(y))) % len(colours)
    col_idx = np.where(is_aligned | (len(colours) == 1), aligned_col, other)
    rgb = np.array([COLOURS[c] for c in colours], dtype=np.float32)[col_idx]  # [n, 3]
    # upscale 8x8 (0..16) to size x size by nearest neighbour, vectorised
    rep = size // 8
    strokes = np.kron(imgs8 / 16.0, np.ones((rep, rep)))[:, :size, :size]  # [n, s, s]
    noise = rng.normal(0, 8, size=(len(y), size, size, 3))
    bg = rgb[:, None, None, :] + noise
    fg = np.full_like(bg, 245.0)
    a = strokes[..., None]
    img = np.clip(bg * (1 - a) + fg * a, 0, 255).astype(np.uint8)
    frame = pl.DataFrame(
        {
            "label": y.astype(np.int64),
            "color": np.array(colours)[col_idx],
            "aligned": col_idx == aligned_col,
        }
    )
    return img, frame


def write_image_table(images: np.ndarray, frame: pl.DataFrame, root: str | Path, name="data.csv"):
    """Write images as PNG files under `root/images/` and a CSV table whose `image` column holds
    paths relative to `root`. Returns the CSV path."""
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rel = [f"images/{i:06d}.png" for i in range(len(images))]
    for path, arr in zip(rel, images):  # one file per image: unavoidable I/O
        Image.fromarray(arr).save(root / path)
    out = root / name
    frame.with_columns(pl.Series("image", rel)).write_csv(out)
    return out
