"""Core auditors: each finds a defect planted in seeded data, and keeps its invariants."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from helpers import blobs, make_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datacure.auditor.context import AuditContext
from datacure.auditor.predict import cross_val_pred_probs, knn_class_distribution
from datacure.auditor.runner import run_audit

CORE = [
    "label",
    "outlier",
    "exact_duplicate",
    "near_duplicate",
    "non_iid",
    "class_imbalance",
    "null",
]


def issues(store, auditor: str, run_id: int | None = None) -> pl.DataFrame:
    run_id = run_id or store.latest_run_id()
    return store.polars(
        "SELECT row_id, is_issue, score, details FROM issues WHERE run_id = ? AND auditor = ? "
        "ORDER BY row_id",
        [run_id, auditor],
    )


def summary_info(store, auditor: str) -> dict:
    run_id = store.latest_run_id()
    raw = store.scalar(
        "SELECT info FROM issue_summary WHERE run_id = ? AND auditor = ?", [run_id, auditor]
    )
    return json.loads(raw)


def details(df: pl.DataFrame) -> dict[int, dict]:
    """{row_id: details dict} of an issues frame."""
    return {r: json.loads(d) for r, d in zip(df["row_id"].to_list(), df["details"].to_list())}


def flagged(df: pl.DataFrame) -> set[int]:
    return set(df.filter(pl.col("is_issue"))["row_id"].to_list())


# --- label ---------------------------------------------------------------------------------------
def test_label_finds_flipped_labels_and_suggests_the_true_one(db_path):
    x, y = blobs(600, seed=1)
    names = np.array(["cat", "dog", "eel"])
    rng = np.random.default_rng(1)
    flip = rng.choice(600, 30, replace=False)
    noisy = y.copy()
    noisy[flip] = (y[flip] + rng.integers(1, 3, 30)) % 3
    store = make_store(db_path, pl.DataFrame({"label": names[noisy]}), x)
    run_audit(store, auditors=["label"])
    df = issues(store, "label")
    found = flagged(df)
    assert len(found & set(flip)) >= 28, "flipped labels missed"
    assert len(found - set(flip)) <= 3, "clean rows flagged"
    # the flipped rows are the worst-scored ones
    worst = set(df.sort("score").head(30)["row_id"].to_list())
    assert len(worst & set(flip)) >= 28
    d = details(df)
    right = sum(d[int(i)]["suggested_label"] == names[y[i]] for i in flip)
    assert right >= 28
    assert all(d[int(i)]["given_label"] == names[noisy[i]] for i in flip)
    assert all(0.5 < d[int(i)]["suggested_label_prob"] <= 1.0 for i in flip)


def _two_split_store(db_path, train: pl.DataFrame, other: pl.DataFrame, x=None, text=None):
    """train (labelled) and `pool` (unlabelled, ingested with label none) in one store."""
    from datacure.store.ingest import ingest_frame

    store = make_store(db_path, train, None, text=text)
    ingest_frame(store, other, split="pool", label="none", text=text)
    if x is not None:
        rid = store.execute("SELECT row_id FROM samples ORDER BY row_id").fetchnumpy()["row_id"]
        with store.transaction():
            store.register_embedding("test", x.shape[1], "seeded", None, "test", False)
            store.append_embeddings("test", rid, x)
    return store


def test_label_audits_only_labelled_rows_and_keeps_label_type(db_path):
    x, y = blobs(300, seed=2)
    store = _two_split_store(
        db_path, pl.DataFrame({"label": y[:270]}), pl.DataFrame({"label": y[270:]}), x
    )
    run_audit(store, auditors=["label"])
    df = issues(store, "label")
    assert len(df) == 270
    assert set(df["row_id"].to_list()) == set(range(270))
    det = json.loads(df["details"][0])
    assert isinstance(det["given_label"], int) and isinstance(det["suggested_label"], int)


@pytest.mark.parametrize("source", ["npy", "column"])
def test_label_with_user_pred_probs_and_no_embeddings(db_path, tmp_path, source):
    _, y = blobs(200, seed=3)
    probs = np.full((200, 3), 0.05)
    probs[np.arange(200), y] = 0.9
    probs[7] = [0.05, 0.05, 0.9] if y[7] != 2 else [0.9, 0.05, 0.05]  # planted disagreement
    path = tmp_path / "pp.npy"
    np.save(path, probs)
    frame = pl.DataFrame({"label": y, "pp": probs.tolist()})
    store = make_store(db_path, frame, None)
    rep = run_audit(store, auditors=["label"], pred_probs=str(path) if source == "npy" else "pp")
    assert rep.outcomes[0].status == "ok"
    assert flagged(issues(store, "label")) == {7}
    assert summary_info(store, "label")["knn_weight"] == 0.0


def test_pred_probs_are_out_of_sample_and_calibrated():
    x, y = blobs(400, seed=4, std=2.0)
    labels = y.copy()
    labels[:40] = -1  # unlabelled rows still get predictions
    p = cross_val_pred_probs(x, labels, 3, folds=5, seed=0)
    assert p.shape == (400, 3)
    assert np.allclose(p.sum(1), 1.0) and (p >= 0).all()
    assert (p.argmax(1) == y).mean() > 0.9
    # a row whose label is flipped still gets high probability for its true class: the model
    # that predicted it never saw the flipped label
    flipped = labels.copy()
    flipped[100] = (y[100] + 1) % 3
    q = cross_val_pred_probs(x, flipped, 3, folds=5, seed=0)
    assert q[100].argmax() == y[100]


def test_knn_class_distribution_ignores_unlabelled_neighbours():
    idx = np.array([[1, 2], [0, 2], [0, 1]])
    dist = np.zeros((3, 2), dtype=np.float32)
    labels = np.array([0, 1, -1])
    q = knn_class_distribution(idx, dist, labels, 2, alpha=0.0)
    assert np.allclose(q[0], [0, 1]) and np.allclose(q[1], [1, 0]) and np.allclose(q[2], [0.5, 0.5])


# --- outlier -----------------------------------------------------------------------------------
def test_outlier_finds_far_away_points(db_path):
    x, y = blobs(400, seed=5)
    rng = np.random.default_rng(555)  # not blobs' seed: that would redraw the blob centres
    far = np.array([11, 99, 250])
    x[far] = rng.normal(scale=4.0, size=(3, x.shape[1]))  # directions no blob has
    store = make_store(db_path, pl.DataFrame({"label": y}), x)
    run_audit(store, auditors=["outlier"])
    df = issues(store, "outlier")
    assert set(far) <= flagged(df)
    assert len(flagged(df)) <= 10
    assert set(df.sort("score").head(3)["row_id"].to_list()) == set(far)
    d = json.loads(df.filter(pl.col("row_id") == 11)["details"][0])
    assert d["mean_distance"] > summary_info(store, "outlier")["issue_distance"]


# --- duplicates ----------------------------------------------------------------------------------
def test_exact_duplicate_text_folds_case_whitespace_punctuation(db_path):
    texts = [f"sentence number {i} about things" for i in range(50)]
    texts[10] = "Sentence number 3,  about THINGS!"  # copy of 3
    texts[20] = "sentence number 3 about things"  # copy of 3
    texts[30] = "sentence number 7 about things."  # copy of 7
    texts[40] = "sentence number 7 about other things"  # not a copy
    texts[41] = ""  # empty text: a null issue, not a duplicate
    texts[42] = "   "
    x, y = blobs(50, seed=6)
    store = make_store(db_path, pl.DataFrame({"label": y, "text": texts}), x, text="text")
    run_audit(store, auditors=["exact_duplicate"])
    df = issues(store, "exact_duplicate")
    assert flagged(df) == {3, 10, 20, 7, 30}
    d = details(df)
    assert d[10]["set_id"] == 3 and sorted(d[10]["members"]) == [3, 20]
    assert sorted(d[3]["members"]) == [10, 20]
    assert d[30]["set_id"] == 7 and d[30]["members"] == [7]
    assert d[40]["set_id"] is None and d[40]["members"] == []


def test_exact_duplicate_images_by_bytes_and_by_pixels(db_path, tmp_path):
    from PIL import Image

    from datacure.store.db import Store
    from datacure.store.ingest import ingest_frame

    rng = np.random.default_rng(7)
    (tmp_path / "img").mkdir()
    arrays = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(6)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / "img" / f"{i}.png", compress_level=6)
    shutil.copy(tmp_path / "img" / "0.png", tmp_path / "img" / "6.png")  # same bytes as 0
    Image.fromarray(arrays[1]).save(tmp_path / "img" / "7.png", compress_level=0)  # same pixels
    assert (tmp_path / "img" / "7.png").read_bytes() != (tmp_path / "img" / "1.png").read_bytes()
    frame = pl.DataFrame({"image": [f"img/{i}.png" for i in range(8)], "label": [0, 1] * 4})
    store = Store(db_path)
    ingest_frame(store, frame, image="image", image_root=tmp_path)
    run_audit(store, auditors=["exact_duplicate"])
    df = issues(store, "exact_duplicate")
    assert flagged(df) == {0, 6, 1, 7}
    d = details(df)
    assert d[6]["members"] == [0] and d[7]["members"] == [1] and d[7]["set_id"] == 1
    from datacure.auditor.views import worst_issues

    view = worst_issues(store, auditor="exact_duplicate", top=10)
    assert len(view) == 4 and "image_path" in view.columns
    assert all(p.endswith(".png") and p.startswith("/") for p in view["image_path"].to_list())


def test_near_duplicate_finds_near_copies_with_symmetric_sets(db_path):
    x, y = blobs(400, seed=8)
    rng = np.random.default_rng(8)
    pairs = [(5, 300), (17, 201), (44, 390)]
    for a, b in pairs:
        x[b] = x[a] + rng.normal(scale=1e-3, size=x.shape[1])
    x[202] = x[17] + rng.normal(scale=1e-3, size=x.shape[1])  # a set of three
    store = make_store(db_path, pl.DataFrame({"label": y}), x)
    run_audit(store, auditors=["near_duplicate"])
    df = issues(store, "near_duplicate")
    assert flagged(df) == {5, 300, 17, 201, 202, 44, 390}
    d = details(df)
    assert sorted(d[17]["members"]) == [201, 202] and d[202]["set_id"] == 17
    assert d[300]["nearest_row_id"] == 5 and d[300]["similarity"] > 0.999
    _assert_sets_symmetric(df)


def test_duplicates_across_splits_are_left_to_leakage(db_path):
    x, y = blobs(200, seed=9)
    x[150] = x[3]
    frame = pl.DataFrame({"label": y, "split": ["train"] * 100 + ["test"] * 100})
    store = make_store(db_path, frame, x, split=None, split_column="split")
    run_audit(store, auditors=["near_duplicate"])
    assert not flagged(issues(store, "near_duplicate"))


def _assert_sets_symmetric(df: pl.DataFrame) -> None:
    d = details(df)
    for rid, det in d.items():
        for m in det["members"]:
            assert rid in d[m]["members"], f"{rid} lists {m} but not the reverse"
            assert d[m]["set_id"] == det["set_id"]
        if det["members"]:
            assert det["set_id"] == min([rid, *det["members"]])


# --- non-IID -----------------------------------------------------------------------------------
def _non_iid_store(db_path, sort: bool):
    x, y = blobs(600, seed=10)
    order = np.argsort(y, kind="stable") if sort else np.arange(600)
    return make_store(db_path, pl.DataFrame({"label": y[order]}), x[order])


def test_non_iid_detects_data_sorted_by_label(db_path):
    store = _non_iid_store(db_path, sort=True)
    rep = run_audit(store, auditors=["non_iid"])
    info = summary_info(store, "non_iid")
    assert info["p_value"] < 0.01 and info["non_iid"]
    assert rep.outcomes[0].num_issues == 1
    assert rep.outcomes[0].score == pytest.approx(info["p_value"])


def test_non_iid_accepts_the_same_data_shuffled(db_path):
    store = _non_iid_store(db_path, sort=False)
    rep = run_audit(store, auditors=["non_iid"])
    info = summary_info(store, "non_iid")
    assert info["p_value"] > 0.05 and not info["non_iid"]
    assert rep.outcomes[0].num_issues == 0
    # a p-value left on 25 permutations lies outside the refinement band [0.005, 0.2]
    (split,) = info["splits"].values()
    assert split["permutations"] in (25, 200)
    if split["permutations"] == 25:
        assert not 0.005 <= split["p_value"] <= 0.2


def test_non_iid_refines_a_p_value_near_the_threshold():
    from datacure.auditor.non_iid import knn_order_test

    rng = np.random.default_rng(4)
    n, k = 800, 6
    nbr = rng.integers(0, n, size=(n, k))
    valid = np.ones((n, k), dtype=bool)
    # refined = the longer test from the start: the extra permutations continue the same stream
    stat, p, sc, used = knn_order_test(
        nbr, valid, 25, seed=3, refine=(0.0, 1.0), max_permutations=120
    )
    stat2, p2, sc2, used2 = knn_order_test(nbr, valid, 120, seed=3)
    assert used == used2 == 120 and p == pytest.approx(p2) and stat == stat2
    np.testing.assert_array_equal(sc, sc2)
    # outside the band nothing more runs
    *_, used3 = knn_order_test(nbr, valid, 25, seed=3, refine=(p + 0.01, 1.0), max_permutations=120)
    assert used3 == 25


def test_non_iid_statistic_and_scores_match_cleanlab():
    from cleanlab.datalab.internal.issue_manager.noniid import NonIIDIssueManager

    from datacure.auditor.non_iid import _row_scores, ks_statistic

    rng = np.random.default_rng(11)
    for n in (12, 97):
        nbr = np.array([rng.choice(np.delete(np.arange(n), i), 5, replace=False) for i in range(n)])
        dist = np.abs(np.arange(n)[:, None] - nbr)
        ref = object.__new__(NonIIDIssueManager)
        ref.N, ref.background_distribution, ref.neighbor_index_distances = n, None, dist
        assert ks_statistic(dist, n) == pytest.approx(ref._get_statistics(dist)["ks"], abs=1e-12)
        ours = _row_scores(np.sort(dist, axis=1), np.arange(n), n)
        assert np.allclose(ours, ref._score_dataset(), atol=1e-12)


# --- class imbalance, null ------------------------------------------------------------------------
def test_class_imbalance_names_a_rare_class_and_flags_no_row(db_path):
    rng = np.random.default_rng(12)
    y = np.array(["a"] * 300 + ["b"] * 290 + ["rare"] * 5)
    x = rng.normal(size=(len(y), 8)).astype(np.float32)
    store = make_store(db_path, pl.DataFrame({"label": y}), x)
    run_audit(store, auditors=["class_imbalance"])
    df = issues(store, "class_imbalance")
    # a finding: the class is named, no row is a decision
    assert not flagged(df)
    info = summary_info(store, "class_imbalance")
    assert info["rarest_class"] == "rare" and info["flagged_classes"] == ["rare"]
    det = [json.loads(d) for d in df["details"].to_list()]
    rare = {r for r, d in zip(df["row_id"].to_list(), det) if d["class_flagged"]}
    assert rare == set(range(590, 595))
    assert df.filter(pl.col("row_id") >= 590)["score"].max() < 0.1


def test_class_imbalance_quiet_on_balanced_classes(db_path):
    x, y = blobs(300, seed=13)
    store = make_store(db_path, pl.DataFrame({"label": y}), x)
    run_audit(store, auditors=["class_imbalance"])
    assert not flagged(issues(store, "class_imbalance"))


def test_null_flags_missing_values_and_empty_text(db_path):
    n = 30
    texts = [f"row {i}" for i in range(n)]
    texts[3], texts[4] = None, "  "
    source = ["web"] * n
    source[5] = None
    train = pl.DataFrame({"text": texts, "label": ["x", "y"] * (n // 2), "source": source})
    pool = pl.DataFrame({"text": [f"u {i}" for i in range(10)], "source": ["web"] * 10})
    store = _two_split_store(db_path, train, pool, text="text")
    # a null label in a labelled split (ingest refuses one; SQL edits can make one) is a defect;
    # the unlabelled `pool` split is not
    store.execute("UPDATE samples SET label = NULL WHERE row_id = 6")
    run_audit(store, auditors=["null"])
    df = issues(store, "null")
    assert flagged(df) == {3, 4, 5, 6}
    score = dict(zip(df["row_id"].to_list(), df["score"].to_list()))
    d = details(df)
    assert score[3] == 0.0 and score[4] == 0.0  # no content at all
    assert 0.0 < score[5] < 1.0 and d[5]["null_columns"] == ["source"]
    assert d[6]["null_columns"] == ["label"]


# --- invariants ----------------------------------------------------------------------------------
@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    n=st.integers(min_value=12, max_value=60),
    classes=st.integers(min_value=2, max_value=4),
    dups=st.integers(min_value=0, max_value=5),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_invariants_on_random_data(tmp_path_factory, n, classes, dups, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = np.arange(n) % classes  # every class has at least 3 rows
    rng.shuffle(y)
    texts = [f"w{rng.integers(0, 5)} w{rng.integers(0, 5)}" for _ in range(n)]
    for i in rng.choice(n, size=min(dups, n // 2), replace=False):
        j = int(rng.integers(0, n))
        x[i] = x[j] + 1e-4
        texts[i] = texts[j].upper()
    db = tmp_path_factory.mktemp("inv") / "s.duckdb"
    store = make_store(db, pl.DataFrame({"label": y, "text": texts}), x, text="text")
    rep = run_audit(store, auditors=CORE)
    ctx = AuditContext(store)
    for o in rep.outcomes:
        assert o.status == "ok", (o.name, o.reason)
        df = issues(store, o.name)
        expected = n  # one row per audited sample (label: per labelled sample; all are here)
        assert len(df) == expected and df["row_id"].n_unique() == expected
        assert set(df["row_id"].to_list()) <= set(ctx.row_ids.tolist())
        assert df["score"].min() >= 0.0 and df["score"].max() <= 1.0
        assert 0.0 <= o.score <= 1.0
        if o.name in ("exact_duplicate", "near_duplicate"):
            _assert_sets_symmetric(df)
            assert {r for r, d in details(df).items() if d["members"]} == flagged(df)
    store.close()


def test_non_iid_tests_each_split_in_its_own_order(db_path):
    x, y = blobs(600, seed=14)
    order = np.concatenate([np.argsort(y[:300], kind="stable"), np.arange(300, 600)])
    frame = pl.DataFrame({"label": y[order], "split": ["train"] * 300 + ["test"] * 300})
    store = make_store(db_path, frame, x[order], split=None, split_column="split")
    run_audit(store, auditors=["non_iid"])
    info = summary_info(store, "non_iid")
    assert info["splits"]["train"]["p_value"] < 0.01
    assert info["splits"]["test"]["p_value"] > 0.05
    assert info["p_value"] == pytest.approx(min(1.0, 2 * info["splits"]["train"]["p_value"]))


def test_sparse_optional_column_gives_no_null_row_flags(db_path):
    """Negative control: a note column filled in 2% of rows is an optional column (reported at
    column level), not 98% of rows needing a decision; a column filled in all but one row still
    flags that row, and so does an empty text."""
    n = 400
    rng = np.random.default_rng(7)
    note = np.where(rng.random(n) < 0.02, "checked by hand", None)
    source = ["web"] * n
    source[17] = None
    texts = [f"row {i}" for i in range(n)]
    texts[23] = " "
    frame = pl.DataFrame(
        {"text": texts, "label": ["x", "y"] * (n // 2), "note": note, "source": source}
    )
    store = make_store(db_path, frame, text="text")
    run_audit(store, auditors=["null"])
    df = issues(store, "null")
    assert flagged(df) == {17, 23}
    info = json.loads(store.scalar("SELECT info FROM issue_summary WHERE auditor = 'null'"))
    assert list(info["sparse_columns"]) == ["note"] and info["sparse_columns"]["note"] > 0.9
    assert "source" in info["flagging_columns"] and "note" not in info["flagging_columns"]
