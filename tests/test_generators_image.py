"""Images: the built-in class x group conditional diffusion model trains a few steps, samples
images of the right shape whose colour follows the conditioning, is saved as safetensors and
reused; generated images are verified, stored with provenance and exported (parquet round trip
through ingest, ImageFolder tree)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from datacure.generators.image import ConditionalDiffusion
from datacure.generators.synthetic import coloured_digits, write_image_table
from datacure.generators.verify import Verifier
from datacure.repair.export import export
from datacure.repair.plan import plan_repairs
from datacure.repair.policy import DiffusionOptions, RepairPolicy
from datacure.store import Store

DIFF = DiffusionOptions(
    size=8,
    steps=120,
    batch_size=32,
    lr=3e-3,
    channels=[16, 32, 32],
    inference_steps=20,
    overgenerate=1.5,
)


@pytest.fixture(scope="module")
def image_store(tmp_path_factory):
    """Coloured digits (0/1 on red/green, colour tied to the label 90% in train), embedded with
    the pixel-PCA fallback, and a `generate` plan run once (the model trains 120 steps)."""
    from datacure.store.embed import embed
    from datacure.store.ingest import ingest

    root = tmp_path_factory.mktemp("img")
    st = Store(root / "img.duckdb")
    for split, n, corr, seed in (("train", 160, 0.9, 0), ("test", 40, 0.5, 1)):
        imgs, frame = coloured_digits(n=n, correlation=corr, seed=seed)
        csv = write_image_table(imgs, frame, root / split)
        ingest(st, csv, split=split, label="label", image="image")
    embed(st)
    policy = RepairPolicy(rebalance_by="color", strategy="generate", diffusion=DIFF, seed=0)
    rep = plan_repairs(st, policy=policy)
    yield st, rep, policy, root
    st.close()


def _model_folder(st) -> Path:
    models = list((Path(st.path).parent / "img.datacure" / "models").glob("diffusion-*"))
    assert len(models) == 1
    return models[0]


def test_builtin_diffusion_is_saved_as_safetensors_and_class_conditioned(image_store):
    st, rep, _, _ = image_store
    folder = _model_folder(st)
    names = {p.name for p in folder.iterdir()}
    assert {
        "diffusion_pytorch_model.safetensors",
        "datacure_condition.safetensors",
        "datacure_diffusion.json",
    } <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    m = ConditionalDiffusion.load(folder)
    # factorised conditioning: 2 labels + null, 2 colours + null
    assert m.num_cells == 4
    assert m.condition.label.num_embeddings == 3 and m.condition.group.num_embeddings == 3
    cells = m.cell(["0"] * 6 + ["1"] * 6, (["red"] * 3 + ["green"] * 3) * 2)
    out = m.sample(cells, seed=3, inference_steps=20, out_size=32)
    assert out.shape == (12, 32, 32, 3) and out.dtype == np.uint8
    # the conditioning holds after 120 steps: the common cells (0 on red, 1 on green) come out in
    # their colour, red cells are redder than green cells overall, and so are the rare cells
    # (1 on red, 9 images; 0 on green, 11), the ones a rebalance fills. Over 10 training seeds
    # the smallest margins were 19 (common), 44 (overall) and 31 (rare) against the bounds here
    # (measured before every training draw was seeded; training is now deterministic for its
    # seed, so this test sees one fixed model, whatever the load)
    rgb = out.reshape(12, -1, 3).astype(float).mean(1)
    redness = rgb[:, 0] - rgb[:, 1]
    assert redness[0:3].mean() > 10 and redness[9:12].mean() < -10
    assert redness[np.r_[0:3, 6:9]].mean() - redness[np.r_[3:6, 9:12]].mean() > 10
    assert redness[6:9].mean() - redness[3:6].mean() > 10
    # deterministic for a seed
    assert np.array_equal(
        m.sample(cells[:2], seed=3, inference_steps=20),
        m.sample(cells[:2], seed=3, inference_steps=20),
    )


def test_generated_images_are_verified_and_kept_with_provenance(image_store):
    st, rep, policy, _ = image_store
    gen = st.polars("SELECT * FROM generated")
    assert len(gen) == rep.generation["candidates"] > 0
    assert set(gen["generator"]) == {"image-diffusion"} and set(gen["backend"]) == {"builtin"}
    kept = gen.filter(pl.col("row_id").is_not_null())
    assert kept["verified"].all() and len(kept) == rep.generation["kept"]
    for p in kept["image_path"].to_list():
        assert Path(p).exists()
    # every cell reaches the largest cell's size: generated rows plus any oversampled fallback
    counts = st.fetchall(
        "SELECT color, label, count(*) FROM samples WHERE split = 'train' GROUP BY ALL"
    )
    largest = max(c for _, _, c in counts)
    added = st.polars(
        "SELECT json_extract_string(details, '$.group') g, "
        "sum(json_extract(details, '$.copies')::INT) n FROM edits WHERE action = 'add' GROUP BY 1"
    )
    for color, label, c in counts:
        g = json.dumps([str(label), color])
        extra = added.filter(pl.col("g") == g)["n"].sum() or 0
        assert c + extra == largest
    if rep.generation["kept"] < sum(largest - c for *_, c in counts):
        assert any("oversampling" in n for n in rep.notes)
    # a rerun reuses the trained model instead of training again
    rep2 = plan_repairs(st, policy=policy)
    assert any("reused" in n for n in rep2.notes)
    assert st.scalar("SELECT count(*) FROM generated") == rep2.generation["candidates"]


def test_verification_rejects_an_image_whose_label_does_not_hold(image_store):
    from datacure.generators.common import get_embedder

    st, *_ = image_store
    fr = st.polars(
        "SELECT row_id, label::VARCHAR AS label, color, image_path FROM samples "
        "WHERE split = 'train' ORDER BY row_id"
    )
    _, vec = st.load_embeddings(None, fr["row_id"].to_numpy())
    ver = Verifier(vec, fr["label"].to_numpy(), fr["color"].to_numpy(), margin=0.1)
    emb = get_embedder(st)
    ones = fr.filter(pl.col("label") == "1")["image_path"].to_list()[:5]
    v = ver.check(emb.encode(ones), ["0"] * 5, None)
    assert not v.keep.any() and set(v.reason) <= {"label", "margin"}
    v = ver.check(emb.encode(ones), ["1"] * 5, None)
    assert v.keep.mean() >= 0.6


def test_image_export_round_trips_and_writes_imagefolder(image_store, tmp_path):
    from datacure.store.ingest import ingest

    st, rep, _, _ = image_store
    out = tmp_path / "pq"
    er = export(st, out, fmt="parquet", seed=0)
    tr = pl.read_parquet(out / "train.parquet")
    assert set(tr.group_by("label", "color").len()["len"].to_list()) == {
        er.counts["train"]["rows_out"] // 4
    }
    syn = tr.filter(pl.col("synthetic"))
    assert len(syn) == rep.generation["kept"]
    assert (syn["synthetic_generator"] == "image-diffusion").all()
    assert all((out / p).exists() for p in tr["image"].to_list())
    st2 = Store(tmp_path / "again.duckdb")
    ingest(st2, out / "train.parquet", split="train", label="label", image="image")
    assert st2.scalar("SELECT count(*) FROM samples") == len(tr)
    assert st2.scalar("SELECT count(*) FROM samples WHERE synthetic") == len(syn)
    st2.close()
    folder = tmp_path / "if"
    export(st, folder, fmt="imagefolder")
    meta = pl.read_csv(folder / "train" / "metadata.csv")
    assert len(meta) == len(tr)
    assert all((folder / "train" / f).exists() for f in meta["file_name"].to_list())
    assert {f.split("/")[0] for f in meta["file_name"].to_list()} == {"0", "1"}


def _short_training(seed: int, imgs: np.ndarray, cells: np.ndarray, noise_before: int):
    import torch

    torch.randn(noise_before)  # the global generator in another state: must not matter
    m = ConditionalDiffusion(["0", "1"], ["red", "green"], size=8, channels=(8, 16), seed=seed)
    m.fit(imgs, cells, steps=12, batch_size=16, seed=seed)
    weights = {k: v.clone() for k, v in m._modules().state_dict().items()}
    return weights, m.sample(cells[:6], seed=seed, inference_steps=5)


def test_diffusion_training_and_sampling_are_deterministic_for_a_seed(monkeypatch):
    """Two short trainings with one seed give identical weights and samples, whatever the
    process drew before and whatever the load-based thread choice would be; another seed gives
    another model."""
    import torch

    import datacure.store.knn as knn

    imgs, frame = coloured_digits(n=48, correlation=0.9, seed=0)
    imgs = imgs[:, ::4, ::4]  # 8x8
    cells = (frame["label"].to_numpy() * 2 + (frame["color"] == "green").to_numpy()).astype(int)
    before = torch.get_num_threads()
    monkeypatch.setattr(knn, "num_threads", lambda: 2)
    w1, s1 = _short_training(5, imgs, cells, noise_before=3)
    monkeypatch.setattr(knn, "num_threads", lambda: 1)
    w2, s2 = _short_training(5, imgs, cells, noise_before=11)
    w3, s3 = _short_training(6, imgs, cells, noise_before=3)
    assert torch.get_num_threads() == before  # restored
    assert w1.keys() == w2.keys()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert np.array_equal(s1, s2)
    assert not all(torch.equal(w1[k], w3[k]) for k in w1)
    assert not np.array_equal(s1, s3)
