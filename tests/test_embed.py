"""Embeddings: shape, dtype, normalisation, resumability, the image fallback, clear errors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from store import Store
from store.embed import embed, embedder_for, load_embedder
from store.errors import InputError
from store.ingest import ingest, ingest_frame
from store.synthetic import coloured_digits, write_image_table


def _text_store(path, n=120):
    st = Store(path)
    texts = [f"the {w} sat on mat number {i}" for i, w in zip(range(n), ["cat", "dog", "bird"] * n)]
    ingest_frame(st, pl.DataFrame({"text": texts, "label": [i % 3 for i in range(n)]}), text="text")
    return st


def test_minilm_embeddings_are_normalised_float32(db_path):
    st = _text_store(db_path, 40)
    rep = embed(st)
    rid, vec = st.load_embeddings(rep.key)
    assert vec.shape == (40, 384) and vec.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    assert st.default_embedding() == rep.key
    # the reloaded embedder encodes new text into the same space
    again = embedder_for(st, rep.key).encode([st.scalar("SELECT text FROM samples ORDER BY row_id")])
    np.testing.assert_allclose(again[0], vec[0], atol=1e-5)


def test_embed_resumes_and_skips_rows_done(db_path):
    st = _text_store(db_path)
    first = embed(st, model="hash:64", limit=50, chunk_rows=16)
    assert first.embedded == 50
    second = embed(st, model="hash:64", chunk_rows=16)
    assert second.embedded == 70 and second.skipped == 50
    rid, vec = st.load_embeddings(first.key)
    assert len(rid) == 120 and len(np.unique(rid)) == 120
    assert embed(st, model="hash:64").embedded == 0


def test_image_fallback_is_persisted_and_says_so(tmp_path):
    images, frame = coloured_digits(n=80, seed=3)
    csv = write_image_table(images, frame, tmp_path / "img")
    st = Store(tmp_path / "s.duckdb")
    ingest(st, str(csv), split="train", label="label", image="image")
    rep = embed(st)
    assert "FALLBACK" in rep.summary()
    rid, vec = st.load_embeddings(rep.key)
    assert vec.shape[0] == 80 and np.isfinite(vec).all()
    # same colour -> closer than different colour: the fallback sees the planted attribute
    colours = st.execute("SELECT color FROM samples ORDER BY row_id").fetchnumpy()["color"]
    sims = vec @ vec.T
    same = sims[colours[:, None] == colours[None, :]].mean()
    diff = sims[colours[:, None] != colours[None, :]].mean()
    assert same > diff
    reloaded = embedder_for(st, rep.key).encode([images[0]])
    np.testing.assert_allclose(reloaded[0], vec[0], atol=1e-4)


def test_missing_model_is_a_clear_error():
    with pytest.raises(InputError, match="never downloads"):
        load_embedder("no-such-org/no-such-model-xyz")


def test_embed_without_content_column_is_an_error(db_path):
    st = Store(db_path)
    ingest_frame(st, pl.DataFrame({"x": [1, 2, 3], "label": [0, 1, 0]}))
    with pytest.raises(InputError, match="no text or image column"):
        embed(st)
