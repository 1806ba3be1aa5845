"""Helpers shared by the tests: seeded stores built without the embedder, real data or a skip.

Imported as `from helpers import ...` (pytest puts this folder on sys.path; it is not a
package, so nothing here can shadow the installed `datacure`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test saying why."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (the ../shared checkout is absent)")
    return path


def make_store(
    path,
    frame: pl.DataFrame,
    vectors: np.ndarray | None = None,
    split: str = "train",
    split_column: str | None = None,
    label: str | None = "label",
    text: str | None = None,
    key: str = "test",
):
    """A store holding `frame` as samples and, if given, `vectors` (row order) as an embedding."""
    from datacure.store import Store
    from datacure.store.ingest import ingest_frame

    st = Store(path)
    ingest_frame(st, frame, split=split, split_column=split_column, label=label, text=text)
    if vectors is not None:
        rid = st.execute("SELECT row_id FROM samples ORDER BY row_id").fetchnumpy()["row_id"]
        with st.transaction():
            st.register_embedding(key, vectors.shape[1], "seeded", text, "test", False)
            st.append_embeddings(key, rid, vectors)
    return st


def blobs(n=600, d=16, centers=3, std=0.6, seed=0):
    """Well-separated Gaussian blobs: (X float32 [n, d], y int [n])."""
    rng = np.random.default_rng(seed)
    c = rng.normal(scale=4.0, size=(centers, d))
    y = rng.integers(0, centers, n)
    x = c[y] + rng.normal(scale=std, size=(n, d))
    return x.astype(np.float32), y
