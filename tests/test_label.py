"""The `label` auditor's views, stack and flagging rule, on seeded data with planted defects."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from helpers import blobs, make_store

from datacure.auditor.label import error_probability, expected_f1_cut, uniform_flip_rate
from datacure.auditor.predict import PRED_MODEL, fit_log_pool, log_pool
from datacure.auditor.runner import run_audit


def _label_rows(store) -> pl.DataFrame:
    return store.polars(
        "SELECT row_id, is_issue, score, details FROM issues WHERE auditor = 'label' "
        "AND run_id = (SELECT max(run_id) FROM runs) ORDER BY row_id"
    )


def _info(store) -> dict:
    return json.loads(
        store.scalar(
            "SELECT info FROM issue_summary WHERE auditor = 'label' "
            "AND run_id = (SELECT max(run_id) FROM runs)"
        )
    )


def _flip(y: np.ndarray, share: float, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(y), int(share * len(y)), replace=False)
    out = y.copy()
    out[idx] = (y[idx] + rng.integers(1, k, len(idx))) % k
    return out, np.sort(idx)


def test_text_view_finds_flips_the_embedding_cannot_see(db_path):
    """The vectors carry no class signal; the words do. The stack leans on the TF-IDF view and
    finds the flipped labels."""
    rng = np.random.default_rng(11)
    n, k = 600, 3
    y = rng.integers(0, k, n)
    vocab = [[f"w{c}x{j}" for j in range(15)] for c in range(k)]
    shared = [f"common{j}" for j in range(10)]
    texts = [" ".join(list(rng.choice(vocab[c], 6)) + list(rng.choice(shared, 4))) for c in y]
    noisy, flipped = _flip(y, 0.05, k, seed=12)
    x = rng.normal(size=(n, 16)).astype(np.float32)  # no signal at all
    store = make_store(db_path, pl.DataFrame({"label": noisy, "text": texts}), x, text="text")
    run_audit(store, auditors=["label"])
    df = _label_rows(store)
    info = _info(store)
    found = set(df.filter(pl.col("is_issue"))["row_id"].to_list())
    assert len(found & set(flipped)) >= 0.9 * len(flipped), "flips missed"
    assert len(found - set(flipped)) <= 0.1 * len(flipped), "clean rows flagged"
    # only the text can have found them: the vector views are at chance
    assert info["model_accuracy"] < 0.5 and info["knn_accuracy"] < 0.5
    assert info["text_accuracy"] > 0.9 and info["view_weights"]["text"] > 0
    # invariants: one row per labelled row, scores and error probabilities in [0, 1]
    assert len(df) == n and df["row_id"].n_unique() == n
    d = [json.loads(s) for s in df["details"]]
    assert all(0.0 <= r["error_prob"] <= 1.0 for r in d)
    assert df["score"].min() >= 0.0 and df["score"].max() <= 1.0
    assert all(r["suggested_label"] in (0, 1, 2) for r in d)
    right = sum(d[int(i)]["suggested_label"] == y[i] for i in flipped)
    assert right >= 0.9 * len(flipped)


def test_hashed_text_features_are_sklearns_tfidf():
    """The text view's hashed features (stateless, so the Ray engine's ranges agree) are
    TfidfVectorizer's sublinear TF-IDF of word 1-2 grams seen in two texts: the same values per
    text (no bucket collides here), nulls as empty texts, capitals and accents folded alike."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from datacure.auditor.predict import tfidf_matrix

    texts = ["The cat sat on the mat", "the dog sat", "a cat and a dog", "mat mat mat cat"]
    texts = texts * 3 + ["", None, "Über café, naïve!", "über CAFÉ"]
    ours = tfidf_matrix(texts, 2).toarray()
    ref = TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2)).fit_transform(
        [t or "" for t in texts]
    )
    ref = ref.toarray()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(np.sort(ours, axis=1), np.sort(ref, axis=1), atol=1e-6)
    assert tfidf_matrix(["one", "two"], 2) is None  # no term in two texts: no text view


def test_kept_terms_are_the_most_frequent_up_to_the_cell_budget():
    """select_terms keeps buckets seen in two texts, the most frequent first (ties: the lower
    bucket), at most MAX_CELLS // classes of them, so a model's class x term table is bounded."""
    from datacure.auditor import predict as P

    df = np.zeros(P.TEXT_BUCKETS, np.int64)
    df[[5, 9, 40, 41, 77]] = [1, 3, 2, 3, 7]
    got = P.select_terms(df, 10, 2)
    assert got["kept"].tolist() == [9, 40, 41, 77]
    np.testing.assert_allclose(got["idf"], np.log(11 / (1 + df[[9, 40, 41, 77]])) + 1)
    classes = P.MAX_CELLS // 2  # two terms fit: the most frequent, then the lower tied bucket
    assert P.select_terms(df, 10, classes)["kept"].tolist() == [9, 77]
    assert P.select_terms(np.zeros(P.TEXT_BUCKETS, np.int64), 10, 2) is None


def test_clean_separable_data_is_silent(db_path):
    """Negative control. With no label that the views confidently dispute, the confident joint
    has no off-diagonal mass, the noise matrix is the identity, every random-flip error
    probability is 0
    and the expected-F1 cut is empty: no flag at all, whatever the size of the data."""
    x, y = blobs(600, seed=31)
    store = make_store(db_path, pl.DataFrame({"label": y}), x)
    run_audit(store, auditors=["label"])
    info = _info(store)
    assert info["estimated_noise_rate"] == pytest.approx(0.0, abs=1e-12)
    assert info["expected_errors"] == pytest.approx(0.0, abs=1e-2)
    assert not _label_rows(store)["is_issue"].any()


def test_clean_overlapping_data_stays_within_the_rules_bound(db_path):
    """Negative control on classes that overlap (so the views disagree with some true labels):
    the cut flags m rows with expected F1 F = 2 S / (m + Q) where S <= Q is the expected number
    of errors among them, hence m <= Q (2 / F - 1); and the rows flagged are rows the stacked
    views do disagree with."""
    x, y = blobs(900, seed=32, std=2.2)
    store = make_store(db_path, pl.DataFrame({"label": y}), x)
    run_audit(store, auditors=["label"])
    info = _info(store)
    df = _label_rows(store)
    m = int(df["is_issue"].sum())
    q, f = info["expected_errors"], info["expected_f1"]
    if m:
        assert m <= q * (2.0 / f - 1.0) + 1e-9
    disagree = 1.0 - info["combined_accuracy"]
    assert m <= disagree * len(df) + 1e-9


def test_neighbours_that_vote_against_the_label_get_a_negative_weight(db_path):
    """Each 'premise' appears once with every label (as in an NLI set): a row's nearest
    neighbours carry the other labels. The fitted stack gives the vote a negative weight and
    the planted flips still rank worst."""
    rng = np.random.default_rng(41)
    groups, k = 200, 3
    premise = np.repeat(rng.normal(size=(groups, 16)), k, axis=0)
    y = np.tile(np.arange(k), groups)
    signal = np.eye(k)[y] * 0.6 + rng.normal(scale=0.5, size=(groups * k, k))
    x = np.hstack([premise * 3.0, signal]).astype(np.float32)
    noisy, flipped = _flip(y, 0.05, k, seed=42)
    store = make_store(db_path, pl.DataFrame({"label": noisy}), x)
    run_audit(store, auditors=["label"])
    info = _info(store)
    assert info["view_weights"]["knn"] < 0
    worst = set(_label_rows(store).sort("score").head(2 * len(flipped))["row_id"].to_list())
    assert len(worst & set(flipped)) >= 0.7 * len(flipped)


def test_annotator_noise_model_reads_the_label_as_a_draw():
    """noise_model: annotator: q = 1 - C[given]; the default: the noisy channel's posterior."""
    c = np.array([[0.9, 0.1], [0.4, 0.6], [0.05, 0.95]])
    y = np.array([0, 0, 0])
    t = np.eye(2) * 0.9 + 0.1 * (1 - np.eye(2))  # 10% flips each way
    q = error_probability(y, c, t)
    # row 0: the label agrees with a confident model; row 2: it disagrees
    assert q[0] < 0.05 and q[2] > 0.6 and q[0] < q[1] < q[2]
    # an identity channel: no noise, no error probability
    assert np.allclose(error_probability(y, c, np.eye(2)), 0.0)


def test_expected_f1_cut():
    score = np.array([0.1, 0.2, 0.3, 0.4, 0.9])
    q = np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    assert expected_f1_cut(score, q) == (2, 1.0)
    assert expected_f1_cut(score, np.zeros(5)) == (0, 0.0)
    # spread thin, a wider net is the better bet
    m, f = expected_f1_cut(score, np.full(5, 0.3))
    assert m == 5 and f == pytest.approx(2 * 1.5 / (5 + 1.5))


def test_fitted_stack_is_no_worse_than_its_best_view():
    """The stack's log-loss on the given labels is at most that of its best view at its best
    temperature (that view alone is a candidate), and an uninformative view gets ~no weight."""
    rng = np.random.default_rng(51)
    n, k = 2000, 4
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.5 * np.eye(k)[y]
    good = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    noise = rng.dirichlet(np.ones(k), n)

    def nll(p):
        return -np.log(p[np.arange(n), y]).mean()

    w = fit_log_pool([good, noise], y)
    best_single = min(nll(log_pool([good], np.array([t]))) for t in np.linspace(0.2, 3, 57))
    assert nll(log_pool([good, noise], w)) <= best_single + 1e-6
    assert abs(w[1]) < 0.1 * abs(w[0])
    # behind a noisy channel the same views fit a sharper true-class model
    channel = np.full((k, k), 0.05) + np.eye(k) * (1 - 0.05 * k)
    wf = fit_log_pool([good, noise], y, noise=channel, start=w)
    assert np.isfinite(wf).all() and wf[0] > w[0]


def test_pred_probs_are_cached_under_the_model_name(db_path):
    x, y = blobs(300, seed=61)
    store = make_store(db_path, pl.DataFrame({"label": y}), x)
    run_audit(store, auditors=["label"])
    assert store.scalar("SELECT DISTINCT model FROM predictions") == PRED_MODEL
    run_audit(store, auditors=["label"])
    assert store.scalar("SELECT count(*) FROM predictions") == 300


def _posterior_blobs(n: int, seed: int, std: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian blobs close enough to overlap: (x, true labels, exact class posterior)."""
    rng = np.random.default_rng(seed)
    k, d = 3, 8
    centres = rng.normal(scale=1.6, size=(k, d))
    y = rng.integers(0, k, n)
    x = centres[y] + rng.normal(scale=std, size=(n, d))
    logits = -((x[:, None, :] - centres[None]) ** 2).sum(axis=2) / (2 * std**2)
    post = np.exp(logits - logits.max(axis=1, keepdims=True))
    return x.astype(np.float32), y, post / post.sum(axis=1, keepdims=True)


def test_uniform_flip_rate_sees_the_floor_random_flips_leave():
    """A model of randomly flipped labels cannot be sure of anything (the flips leave a floor):
    the uniform channel's rate comes out well above 0. Labels that are an annotator's draw from
    the class distribution leave no floor: the rate comes out near 0, however many of them
    differ from the true class."""
    rng = np.random.default_rng(71)
    n, k = 2000, 3
    true = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) * 1.5 + 3.0 * np.eye(k)[true]
    h = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    channel = np.full((k, k), 0.05) + np.eye(k) * 0.85  # 10% uniform flips
    flipped, _ = _flip(true, 0.1, k, seed=72)
    rho, gain = uniform_flip_rate(h @ channel.T, flipped)
    assert rho > 0.03 and gain > 3.0
    drawn = (rng.random(n)[:, None] > np.cumsum(h, axis=1)).sum(axis=1)
    assert (drawn != true).mean() > 0.15  # many labels differ from the true class ...
    rho, _ = uniform_flip_rate(h, drawn)
    assert rho < 0.01  # ... but no floor


def _f1(flags: set, wrong: set) -> float:
    tp = len(flags & wrong)
    return 2 * tp / max(len(flags) + len(wrong), 1)


def test_auto_reads_random_flips_as_class_conditional(db_path):
    """Planted random flips on overlapping classes: auto finds the floor, uses the noisy
    channel's error probability (as class_conditional does) and finds the flips."""
    x, y, _ = _posterior_blobs(1500, seed=81, std=1.0)
    noisy, flipped = _flip(y, 0.1, 3, seed=82)
    store = make_store(db_path, pl.DataFrame({"label": noisy}), x)
    run_audit(store, auditors=["label"], config={"label": {"noise_model": "auto"}})
    info = _info(store)
    assert info["noise_model"] == "auto" and info["error_prob_model"] == "class_conditional"
    assert info["uniform_flip_share"] >= 0.1
    found = set(_label_rows(store).filter(pl.col("is_issue"))["row_id"].to_list())
    assert _f1(found, set(flipped.tolist())) >= 0.7


def test_auto_reads_annotator_noise_as_annotator(db_path):
    """Planted annotator noise: each label is a draw from the exact class posterior, so the
    wrong labels sit on ambiguous rows and no floor is left. auto reads it as annotator noise
    and its flags beat the class-conditional rule's on the wrong labels."""
    x, y, post = _posterior_blobs(1500, seed=91, std=1.5)
    rng = np.random.default_rng(92)
    drawn = (rng.random(len(y))[:, None] > np.cumsum(post, axis=1)).sum(axis=1)
    drawn = np.minimum(drawn, 2)
    wrong = set(np.flatnonzero(drawn != y).tolist())
    assert 0.05 < len(wrong) / len(y) < 0.3
    store = make_store(db_path, pl.DataFrame({"label": drawn}), x)
    f1 = {}
    for model in ("auto", "class_conditional"):
        run_audit(store, auditors=["label"], config={"label": {"noise_model": model}})
        info = _info(store)
        f1[model] = _f1(set(_label_rows(store).filter(pl.col("is_issue"))["row_id"]), wrong)
        if model == "auto":
            assert info["error_prob_model"] == "annotator"
            assert info["uniform_flip_share"] < 0.1
    assert f1["auto"] > f1["class_conditional"] and f1["auto"] >= 0.4


def test_nothing_flagged_when_no_error_is_the_best_bet():
    """Every row carries a sliver of doubt, none much: the probability that no label is wrong
    beats every cut, and the cut is empty."""
    score = np.linspace(0.9, 1.0, 1000)
    m, p_none = expected_f1_cut(score, np.full(1000, 1e-4))
    assert m == 0 and p_none == pytest.approx(np.exp(1000 * np.log1p(-1e-4)))


def test_mixed_cut_lies_between_the_two_models_cuts():
    """expected_f1_cut with one column per error model and a prior: the cut maximises the
    averaged expected F1, so it lands between the cuts of the models alone; a prior of 1 on one
    model is that model's cut."""
    score = np.linspace(0.0, 1.0, 10)
    random_flips = np.array([1.0, 1.0, 0.6, 0.4, 0.1, 0, 0, 0, 0, 0])  # about three errors
    annotator = np.array([0.9, 0.9, 0.8, 0.8, 0.7, 0.7, 0.1, 0.1, 0.0, 0.0])  # six likely
    qs = np.stack([random_flips, annotator], axis=1)
    m_random, _ = expected_f1_cut(score, random_flips)
    m_annotator, _ = expected_f1_cut(score, annotator)
    assert (m_random, m_annotator) == (3, 6)
    assert expected_f1_cut(score, qs, np.array([1.0, 0.0]))[0] == m_random
    assert expected_f1_cut(score, qs, np.array([0.0, 1.0]))[0] == m_annotator
    m, f = expected_f1_cut(score, qs, np.array([0.6, 0.4]))
    assert m_random < m < m_annotator
    curves = [2 * np.cumsum(q) / (np.arange(1, 11) + q.sum()) for q in qs.T]
    assert f == pytest.approx(0.6 * curves[0][m - 1] + 0.4 * curves[1][m - 1])


def _boundary_flip(y, post, share: float, seed: int) -> np.ndarray:
    """Human-like flips: rows drawn in proportion to their doubt (1 - posterior of the true
    class), each moved to its most likely other class; returns the flipped row ids."""
    rng = np.random.default_rng(seed)
    other = post.copy()
    other[np.arange(len(y)), y] = 0.0
    w = other.sum(axis=1)
    idx = np.sort(rng.choice(len(y), int(share * len(y)), replace=False, p=w / w.sum()))
    out = y.copy()
    out[idx] = other[idx].argmax(axis=1)
    return out, idx


def test_mixed_reaches_boundary_flips_and_stays_silent_on_clean_labels(tmp_path):
    """10% of labels flipped where the classes overlap (to the confusable class): the confident
    joint sees a little random noise, and class_conditional (the default) flags only a few of
    them. `mixed` cuts between class_conditional and annotator and reaches most of them, with
    no loss of precision. Negative control: the true labels of the same rows stay (near)
    silent under `mixed`."""
    x, y, post = _posterior_blobs(1500, seed=101, std=1.2)
    noisy, idx = _boundary_flip(y, post, 0.1, seed=102)
    wrong = set(idx.tolist())
    store = make_store(tmp_path / "noisy.duckdb", pl.DataFrame({"label": noisy}), x)
    found = {}
    for model in ("annotator", None, "mixed"):
        config = {"label": {"noise_model": model}} if model else None
        run_audit(store, auditors=["label"], config=config)
        found[model or "class_conditional"] = set(
            _label_rows(store).filter(pl.col("is_issue"))["row_id"].to_list()
        )
    info = _info(store)
    assert info["noise_model"] == "mixed" and info["random_noise_prior"] == 0.6
    n_cc, n_mixed, n_ann = (len(found[m]) for m in ("class_conditional", "mixed", "annotator"))
    assert n_cc <= n_mixed <= n_ann
    reached = {m: len(f & wrong) for m, f in found.items()}
    assert reached["mixed"] >= 0.7 * len(wrong)
    assert reached["mixed"] >= reached["class_conditional"] + 0.3 * len(wrong)
    assert reached["mixed"] >= 0.9 * n_mixed  # precision
    clean = make_store(tmp_path / "clean.duckdb", pl.DataFrame({"label": y}), x)
    run_audit(clean, auditors=["label"], config={"label": {"noise_model": "mixed"}})
    assert _label_rows(clean)["is_issue"].sum() <= 0.01 * len(y)
