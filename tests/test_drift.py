"""`split_drift`: planted shifts are found and named; random halves of one file are not."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from helpers import make_store

from datacure.auditor.drift import benjamini_hochberg, classifier_two_sample
from datacure.auditor.runner import run_audit


def _frame(rng, n, shift=0.0, cat_p=(0.5, 0.3, 0.2)):
    return {
        "x": rng.normal(loc=shift, size=n),
        "z": rng.normal(size=n),
        "c": rng.choice(["a", "b", "c"], n, p=list(cat_p)),
        "flag": rng.integers(0, 2, n).astype(bool),
        "label": rng.integers(0, 3, n),
    }


def _vectors(rng, n, d=16, centers=None, new_share=0.0, new_center=None):
    y = rng.integers(0, len(centers), n)
    x = centers[y] + rng.normal(scale=0.8, size=(n, d))
    k = int(new_share * n)
    if k:
        x[:k] = new_center + rng.normal(scale=0.8, size=(k, d))
    return x.astype(np.float32)


def _info(st):
    return json.loads(st.scalar("SELECT info FROM issue_summary WHERE auditor = 'split_drift'"))


@pytest.mark.parametrize("n_ref", [600, 3000])
def test_planted_drift_found_and_named(db_path, n_ref):
    """x shifted by one standard deviation, a new embedding cluster holding a third of test.
    n_ref 600 exercises the p-value tests (KS, chi-square, z), 3000 the distances."""
    rng = np.random.default_rng(0)
    n_te, d = 400, 16
    centers = rng.normal(scale=3.0, size=(4, d))
    new_center = rng.normal(scale=3.0, size=d)
    tr, te = _frame(rng, n_ref), _frame(rng, n_te, shift=1.0)
    frame = pl.concat([pl.DataFrame(tr), pl.DataFrame(te)]).with_columns(
        pl.Series("part", ["train"] * n_ref + ["test"] * n_te)
    )
    x = np.vstack(
        [
            _vectors(rng, n_ref, d, centers),
            _vectors(rng, n_te, d, centers, new_share=1 / 3, new_center=new_center),
        ]
    )
    st = make_store(db_path, frame, x, split_column="part")
    rep = run_audit(st, auditors=["split_drift"])
    assert rep.outcomes[0].status == "ok", rep.outcomes[0].reason
    info = _info(st)
    assert [(c["split"], c["column"]) for c in info["drifted_columns"]] == [("test", "x")]
    x_res = info["drifted_columns"][0]
    assert x_res["test"] == ("ks" if n_ref <= 1000 else "wasserstein_norm")
    assert x_res["wasserstein_norm"] > 0.5 and x_res["ks_p"] < 1e-6
    # the split column ("part") is not reported as a drifting feature
    assert "part" not in info["splits"]["test"]["columns"]
    assert info["embedding"]["auc"] > 0.6 and info["embedding"]["p_value"] < 0.01
    assert info["embedding"]["drifted"] and info["drifted_splits"] == ["test"]
    assert info["label"]["drifted"] is False
    rows = st.fetchall(
        "SELECT row_id, is_issue, score FROM issues WHERE auditor = 'split_drift' ORDER BY row_id"
    )
    assert len(rows) == n_te and rows[0][0] == n_ref  # one row per test row
    flagged = np.array([r[1] for r in rows])
    score = np.array([r[2] for r in rows])
    k = n_te // 3
    assert flagged[:k].mean() > 0.9 and flagged[k:].mean() < 0.05
    assert score[:k].mean() < 0.05 < score[k:].mean()
    assert ((score > 0) & (score <= 1)).all()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_halves_not_flagged(db_path, seed):
    """One file split at random: twenty columns, labels and embeddings; nothing drifts."""
    rng = np.random.default_rng(seed)
    n, d = 1600, 16
    cols = {f"n{i}": rng.normal(size=n) for i in range(12)}
    cols |= {f"c{i}": rng.choice(list("abcd"), n) for i in range(6)}
    cols |= {
        "b0": rng.integers(0, 2, n),
        "few": rng.integers(0, 4, n),
        "label": rng.integers(0, 3, n),
    }
    part = np.where(rng.random(n) < 0.5, "train", "test")
    centers = rng.normal(scale=3.0, size=(4, d))
    x = _vectors(rng, n, d, centers)
    st = make_store(
        db_path, pl.DataFrame(cols).with_columns(pl.Series("part", part)), x, split_column="part"
    )
    run_audit(st, auditors=["split_drift"])
    info = _info(st)
    assert info["drifted_columns"] == [] and info["drifted_splits"] == []
    assert len(info["splits"]["test"]["columns"]) == 20
    assert info["embedding"]["drifted"] is False
    assert st.scalar("SELECT count(*) FROM issues WHERE auditor='split_drift' AND is_issue") == 0


def test_label_shift_and_table_without_embedding(db_path):
    rng = np.random.default_rng(5)
    n_tr, n_te = 800, 300
    frame = pl.DataFrame(
        {
            "x": np.r_[rng.normal(size=n_tr), rng.normal(size=n_te)],
            "label": np.r_[
                rng.choice(3, n_tr, p=[0.6, 0.2, 0.2]), rng.choice(3, n_te, p=[0.2, 0.2, 0.6])
            ],
            "part": ["train"] * n_tr + ["test"] * n_te,
        }
    )
    st = make_store(db_path, frame, None, split_column="part")
    run_audit(st, auditors=["split_drift"])
    info = _info(st)
    assert info["label"]["drifted"] and info["label"]["test"] == "chi_square"
    assert info["drifted_columns"] == []
    assert "skipped" in info["embedding"]
    assert "numeric columns" in info["rows"]
    n = st.scalar("SELECT count(*) FROM issues WHERE auditor='split_drift'")
    assert n == n_te


def test_benjamini_hochberg_and_c2st_invariants():
    from scipy.stats import false_discovery_control

    p = np.random.default_rng(1).random(30) ** 3
    assert np.allclose(benjamini_hochberg(p), false_discovery_control(p))
    assert np.allclose(
        benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5])), [0.04, 0.16 / 3, 0.16 / 3, 0.5]
    )
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    same = classifier_two_sample(a, b, permutations=200)
    moved = classifier_two_sample(a, b + 0.5, permutations=200)
    assert same["p_value"] > 0.05 and moved["p_value"] < 0.01 and moved["auc"] > 0.7


def test_columns_are_tested_by_their_data_definition_type(db_path):
    """The test follows the definition: an integer code with 8 values is categorical there, so
    its shift is found by the chi-square test (it was KS when drift read the dtype); an order
    id is an identifier and skipped; a code with the same shares in both splits stays silent."""
    rng = np.random.default_rng(7)
    n_tr, n_te = 800, 400
    p_tr = np.full(8, 1 / 8)
    p_te = np.array([0.3, 0.3, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05])
    frame = pl.DataFrame(
        {
            "region": np.r_[rng.choice(8, n_tr, p=p_tr), rng.choice(8, n_te, p=p_te)],
            "steady": rng.choice(8, n_tr + n_te, p=p_tr),
            "order_id": rng.permutation(n_tr + n_te) * 3 + 1000,
            "label": rng.integers(0, 3, n_tr + n_te),
            "part": ["train"] * n_tr + ["test"] * n_te,
        }
    )
    st = make_store(db_path, frame, None, split_column="part")
    types = {c.name: c.type for c in st.data_definition().columns}
    assert types["region"] == types["steady"] == "categorical"
    assert types["order_id"] == "identifier"
    run_audit(st, auditors=["split_drift"])
    info = _info(st)
    assert [c["column"] for c in info["drifted_columns"]] == ["region"]
    assert info["drifted_columns"][0]["test"] == "chi_square"
    cols = info["splits"]["test"]["columns"]
    assert cols["steady"]["test"] == "chi_square" and not cols["steady"]["drifted"]
    assert info["splits"]["test"]["skipped_columns"] == {
        "order_id": "type identifier in the data definition"
    }


def test_float_nan_is_missing_not_a_crash(db_path):
    """NaN (not null) in a numeric column: it counts as missing, like null, and the column is
    still tested on its finite values (a NaN p-value used to abort the whole audit)."""
    rng = np.random.default_rng(7)
    n_tr, n_te = 900, 400
    x = np.r_[rng.normal(size=n_tr), rng.normal(loc=1.0, size=n_te)]
    z = rng.normal(size=n_tr + n_te)
    x[rng.choice(n_tr + n_te, 60, replace=False)] = np.nan
    z[rng.choice(n_tr + n_te, 200, replace=False)] = np.nan
    z[:3] = np.inf
    frame = pl.DataFrame(
        {
            "x": x,
            "z": z,
            "label": rng.integers(0, 3, n_tr + n_te),
            "part": ["train"] * n_tr + ["test"] * n_te,
        }
    )
    st = make_store(db_path, frame, None, split_column="part")
    rep = run_audit(st, auditors=["split_drift"])
    assert rep.outcomes[0].status == "ok", rep.outcomes[0].reason
    info = _info(st)
    # the planted shift is found; z (random NaNs, a few inf) stays silent
    assert [d["column"] for d in info["drifted_columns"]] == ["x"]
    cols = info["splits"]["test"]["columns"]
    assert np.isfinite(cols["z"]["p_value"]) and np.isfinite(cols["x"]["p_value"])
    assert 0 < cols["z"]["null_share"][0] < 0.3 and 0 < cols["z"]["null_share"][1] < 0.3
