"""slice: a planted high-error group is found, tested and described; random errors are not."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from helpers import make_store

from datacure.auditor.runner import run_audit
from datacure.auditor.slice import find_slices, holm, nearest_prompts, reduce_embeddings

WORDS = np.array(["apple", "river", "stone", "cloud", "table", "green", "light", "chair"])


def _planted(n=900, d=16, slice_size=60, slice_error=0.7, base_error=0.1, seed=0):
    """Three blobs; in class 0 a tight sub-cluster where the model errs `slice_error` of the
    time, elsewhere `base_error`. Returns (x, y, pred_probs, planted positions)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centers = rng.normal(scale=4, size=(3, d))
    x = centers[y] + rng.normal(size=(n, d))
    planted = np.flatnonzero(y == 0)[:slice_size]
    x[planted] = (
        centers[0] + rng.normal(scale=4, size=d) + rng.normal(scale=0.5, size=(len(planted), d))
    )
    p = np.full((n, 3), 0.05)
    p[np.arange(n), y] = 0.9
    wrong = rng.random(n) < base_error
    wrong[planted] = rng.random(len(planted)) < slice_error
    p[wrong] = 0.05
    p[wrong, (y[wrong] + 1) % 3] = 0.9
    return x.astype(np.float32), y, p, planted


def test_planted_slice_is_found_and_described(db_path):
    x, y, p, planted = _planted()
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, 5)) for _ in range(len(y))]
    for i in planted:
        texts[i] += " zebra stripes"
    weather = np.where(
        np.isin(np.arange(len(y)), planted), "snow", rng.choice(["sun", "rain"], len(y))
    )
    frame = pl.DataFrame({"label": y, "text": texts, "pp": p.tolist(), "weather": weather})
    st = make_store(db_path, frame, x, text="text")
    rep = run_audit(st, auditors=["slice"], pred_probs="pp")
    assert rep.outcomes[0].status == "ok", rep.outcomes[0].reason
    rows = st.fetchall(
        "SELECT slice_id, auditor, size, error_rate, members, description FROM slices"
    )
    assert len(rows) == 1
    sid, auditor, size, rate, members, desc = rows[0]
    assert auditor == "slice" and sid == "0/1"
    assert set(members) == set(planted.tolist()) and size == len(planted)
    assert rate == pytest.approx(p[planted].argmax(1).__ne__(0).mean())
    assert "zebra" in desc and "stripes" in desc and "weather=snow" in desc
    info = json.loads(st.scalar("SELECT info FROM slices"))
    assert info["p_adjusted"] < 0.05 and info["lift"] > 2
    assert info["tokens"][0]["share"] == pytest.approx(1.0)
    assert info["tokens"][0]["share_rest"] == pytest.approx(0.0)
    # a finding about a group: by default no row is flagged, every member is marked and scored
    assert st.scalar("SELECT count(*) FROM issues WHERE is_issue") == 0
    members_ = st.polars(
        "SELECT row_id, score FROM issues WHERE details->>'slice_id' = '0/1' ORDER BY 1"
    )
    assert members_["row_id"].to_list() == sorted(planted.tolist())
    assert members_["score"].to_list() == pytest.approx([1 - rate] * len(planted))
    summary = json.loads(st.scalar("SELECT info FROM issue_summary"))
    assert summary["num_slices"] == 1 and summary["rows_in_slices"] == len(planted)
    assert summary["rows_flagged"] == 0 and summary["undescribed_slices"] == []
    assert st.scalar("SELECT score FROM issue_summary") == pytest.approx(1 - len(planted) / len(y))

    # flag_rows: the described slice's members the model gets wrong, the rows that need a look
    rep = run_audit(st, auditors=["slice"], pred_probs="pp", config={"slice": {"flag_rows": True}})
    flagged = st.polars(
        "SELECT row_id, score, details->>'slice_id' AS sid FROM issues WHERE is_issue "
        "AND run_id = ? ORDER BY 1",
        [rep.run_id],
    )
    wrong = planted[p[planted].argmax(1) != 0]
    assert flagged["row_id"].to_list() == sorted(wrong.tolist())
    assert set(flagged["sid"]) == {"0/1"}
    assert flagged["score"].to_list() == pytest.approx([1 - rate] * len(wrong))


def test_slice_from_the_contexts_own_pred_probs(db_path):
    # No user pred_probs: a group of class 1 lies inside class 0's blob (a hard or mislabelled
    # subgroup), so the cross-validated logistic regression errs on that group.
    rng = np.random.default_rng(3)
    n, d = 900, 16
    y = rng.integers(0, 3, n)
    centers = rng.normal(scale=4, size=(3, d))
    x = centers[y] + rng.normal(size=(n, d))
    grp = np.flatnonzero(y == 1)[:50]
    x[grp] = centers[0] + rng.normal(size=(len(grp), d))
    st = make_store(db_path, pl.DataFrame({"label": y}), x.astype(np.float32))
    run_audit(st, auditors=["slice"])
    members = st.fetchall("SELECT members FROM slices WHERE slice_id LIKE '1/%'")
    assert len(members) == 1
    got = set(members[0][0])
    assert len(got & set(grp.tolist())) >= 0.8 * len(grp) and len(got) <= 1.3 * len(grp)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_errors_make_no_slice(seed):
    # Structured embeddings (sub-clusters) but errors scattered at random: nothing to find.
    rng = np.random.default_rng(seed)
    n, d = 1500, 32
    y = rng.integers(0, 3, n)
    sub = rng.integers(0, 15, n)
    x = 2 * rng.normal(size=(15, d))[sub] + rng.normal(size=(n, d))
    p = np.full((n, 3), 0.1)
    p[np.arange(n), y] = 0.8
    wrong = rng.random(n) < 0.15
    p[wrong] = 0.1
    p[wrong, (y[wrong] + 1) % 3] = 0.8
    slices, stats = find_slices(reduce_embeddings(x, 16, seed), y, p, seed=seed)
    assert slices == [] and stats["clusters_tested"] > 0


def test_holm_adjustment():
    p = np.array([0.01, 0.04, 0.03, 0.5])
    assert holm(p).tolist() == pytest.approx([0.04, 0.09, 0.09, 0.5])


def test_nearest_prompts_follow_the_slice_direction():
    rng = np.random.default_rng(0)
    prompts = ["a photo at night", "a photo in snow", "a photo of a dog"]
    pv = rng.normal(size=(3, 8))
    cls = rng.normal(size=(200, 8))
    sl = cls[:30] + 3 * pv[1] / np.linalg.norm(pv[1])
    got = nearest_prompts(sl, np.vstack([cls[30:], sl]), pv, prompts, k=2)
    assert got[0]["prompt"] == "a photo in snow"


def test_prompt_descriptions_skip_with_a_reason_when_no_encoder(db_path):
    x, y, p, _ = _planted(seed=4)
    frame = pl.DataFrame({"label": y, "pp": p.tolist()})
    st = make_store(db_path, frame, x)  # embedding model "seeded": nothing can encode prompts
    run_audit(st, auditors=["slice"], pred_probs="pp", context_options={"slice_prompts": ["snow"]})
    info = json.loads(st.scalar("SELECT info FROM issue_summary"))
    assert info["num_slices"] == 1
    assert "prompt descriptions skipped" in info["notes"][0]


def test_slice_set_apart_by_stopwords_alone_flags_no_row(db_path):
    """The planted slice is found and validated, but the only words that set it apart are
    stopwords: a finding listed in the slices table and info, with no row flagged even under
    `flag_rows`."""
    x, y, p, planted = _planted()
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, 5)) + " on was not it" for _ in range(len(y))]
    for i in planted:  # as long as the others' ending: the text length says nothing either
        texts[i] = texts[i].replace(" on was not it", " of the and is")
    frame = pl.DataFrame({"label": y, "text": texts, "pp": p.tolist()})
    st = make_store(db_path, frame, x, text="text")
    # even asked to flag rows, a slice nothing describes flags none
    run_audit(st, auditors=["slice"], pred_probs="pp", config={"slice": {"flag_rows": True}})
    info = json.loads(st.scalar("SELECT info FROM issue_summary"))
    assert info["num_slices"] == 1 and info["undescribed_slices"] == ["0/1"]
    sl = json.loads(st.scalar("SELECT info FROM slices"))
    assert sl["flags_rows"] is False and sl["distinguished_by"] == []
    assert not any(t["token"] in ("of", "the", "and", "is") for t in sl["tokens"])
    assert st.scalar("SELECT count(*) FROM issues WHERE is_issue") == 0
