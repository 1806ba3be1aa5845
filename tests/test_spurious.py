"""spurious_attribute and spurious_token: planted associations are found, controls are not."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from helpers import make_store

from datacure.auditor.properties import discretize, image_properties, text_properties
from datacure.auditor.runner import run_audit
from datacure.auditor.spurious import (
    association_stats,
    contingency,
    cv_attribute_accuracy,
    majority_baseline,
)
from datacure.generators.synthetic import coloured_digits, write_image_table


def _summary(st, auditor):
    return json.loads(st.scalar("SELECT info FROM issue_summary WHERE auditor = ?", [auditor]))


def _issues(st, auditor):
    return st.polars(
        "SELECT i.row_id, i.is_issue, i.score, i.details, s.* EXCLUDE (row_id) "
        "FROM issues i JOIN samples s USING (row_id) WHERE auditor = ? ORDER BY row_id",
        [auditor],
    )


def _wrong(st) -> set[int]:
    """Rows the context's out-of-sample pred_probs misclassify."""
    pp = st.polars(
        "SELECT p.row_id, p.pred_probs, s.label::VARCHAR AS label FROM predictions p "
        "JOIN samples s USING (row_id) ORDER BY row_id"
    )
    classes = sorted(set(pp["label"].to_list()), key=lambda v: (len(v), v))
    pred = np.asarray(pp["pred_probs"].to_list()).argmax(1)
    y = np.array([classes.index(v) for v in pp["label"].to_list()])
    return set(pp["row_id"].filter(pl.Series(pred != y)).to_list())


# --- statistics ---------------------------------------------------------------------------------
@pytest.mark.parametrize("counts", [(70, 20, 10), (10, 20, 70), (20, 70, 10)])
def test_majority_baseline_is_the_class_frequency(counts):
    # Whichever index the majority class has, the baseline is its share (0.7), not index / N.
    y = np.repeat(np.arange(3), counts)
    assert majority_baseline(y, 3) == pytest.approx(0.7)


def test_attribute_equal_to_label_is_perfectly_associated():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    t = contingency(y, 3, y, 3)
    st = association_stats(t)
    assert st["cramers_v"] == pytest.approx(1.0, abs=0.01)
    assert st["normalized_mi"] == pytest.approx(1.0, abs=1e-9)
    assert cv_attribute_accuracy(y, 3, y, 3) == 1.0
    noise = rng.integers(0, 4, 600)
    st0 = association_stats(contingency(noise, 4, y, 3))
    assert st0["cramers_v"] < 0.1 and st0["p_value"] > 0.001
    assert cv_attribute_accuracy(noise, 4, y, 3) < 0.45


def test_discretize_bins_numbers_and_keeps_nulls_apart():
    g = discretize(pl.Series("x", [float(i) for i in range(100)] + [None, float("nan")]), bins=4)
    assert g.kind == "numeric" and g.levels[-1] == "(missing)"
    assert np.bincount(g.codes).tolist() == [25, 25, 25, 25, 2]
    c = discretize(pl.Series("c", ["a", "b", None] * 5))
    assert c.kind == "categorical" and sorted(c.levels) == sorted(["a", "b", "(missing)"])
    assert discretize(pl.Series("k", ["same"] * 10)) is None


def test_text_properties_are_counted_per_row():
    f = text_properties(["ab12", "ABcd", "", None])
    assert f["text_length"].to_list() == [4, 4, 0, 0]
    assert f["digit_share"].to_list() == [0.5, 0, 0, 0]
    assert f["upper_share"].to_list() == [0, 0.5, 0, 0]


# --- spurious_attribute ------------------------------------------------------------------------
def _digits_store(path, n=400, correlation=0.95, seed=0, with_vectors=True):
    imgs, frame = coloured_digits(n=n, correlation=correlation, seed=seed)
    rng = np.random.default_rng(seed)
    frame = frame.with_columns(
        pl.Series("camera", rng.choice(["a", "b", "c"], n)),  # control: independent of label
        pl.Series("exposure", rng.normal(size=n)),  # control, numeric
    )
    vec = imgs.reshape(n, -1)[:, ::24].astype(np.float32) / 255 if with_vectors else None
    st = make_store(path, frame.drop("aligned"), vec)
    return st, frame


def test_planted_attribute_is_found_and_its_minority_cells_flagged(db_path):
    st, frame = _digits_store(db_path)
    rep = run_audit(st, auditors=["spurious_attribute"])
    assert rep.outcomes[0].status == "ok"
    info = _summary(st, "spurious_attribute")
    assert info["strong"] == ["color"] and info["flagging"] == ["color"]
    assert "camera" not in info["associated"] and "exposure" not in info["associated"]
    color = next(a for a in info["attributes"] if a["attribute"] == "color")
    assert color["cv_accuracy"] > 0.9 > color["majority_baseline"]
    assert color["cramers_v"] > 0.8 and color["mutual_information"] > 0.3
    groups = info["groups"]["color"]
    assert {(r["label"], r["value"]) for r in groups["table"] if r["under_represented"]} == {
        ("0", "green"),
        ("1", "red"),
    }
    assert all(r["accuracy"] is not None for r in groups["table"])
    assert groups["worst_group_accuracy"] == min(r["accuracy"] for r in groups["table"])
    rows = _issues(st, "spurious_attribute")
    flagged = rows.filter(pl.col("is_issue"))
    # exactly the rows the shortcut fails on: colour unlike their label's usual colour, and
    # misclassified out of sample
    wrong = _wrong(st)
    minority = set(np.flatnonzero(~frame["aligned"].to_numpy()).tolist())
    assert set(flagged["row_id"]) == minority & wrong
    assert len(minority & wrong) >= 0.5 * len(minority)  # the shortcut fails on most of them
    d = json.loads(flagged["details"][0])
    assert d["attribute"] == "color" and d["value"] == flagged["color"][0]
    assert 0 < d["group_share"] < 0.15
    # every minority-cell row, flagged or not, scores below every other row
    in_min = pl.col("row_id").is_in(sorted(minority))
    assert rows.filter(in_min)["score"].max() < rows.filter(~in_min)["score"].min()


def test_no_association_is_not_flagged(db_path):
    st, _ = _digits_store(db_path, correlation=0.5, with_vectors=False)
    run_audit(st, auditors=["spurious_attribute"])
    info = _summary(st, "spurious_attribute")
    assert info["associated"] == [] and info["strong"] == []
    assert info["accuracy_source"] is None  # no embeddings: no pred_probs, no accuracy
    assert st.scalar("SELECT count(*) FROM issues WHERE is_issue") == 0
    assert st.scalar("SELECT score FROM issue_summary") > 0.9


def test_derived_colour_property_is_named_from_the_images(tmp_path):
    imgs, frame = coloured_digits(n=160, seed=1)
    csv = write_image_table(imgs, frame.drop("aligned"), tmp_path / "src")
    from datacure.store import Store
    from datacure.store.ingest import ingest

    st = Store(tmp_path / "img.duckdb")
    ingest(st, csv, label="label", image="image")
    run_audit(st, auditors=["spurious_attribute"])
    info = _summary(st, "spurious_attribute")
    assert "color" in info["strong"]
    assert {"red", "green"} <= set(info["strong"])  # per-channel colour of the background
    attrs = {a["attribute"]: a for a in info["attributes"]}
    # the channels say nothing the colour column has not said: named, but they flag nothing
    assert "color" in attrs["red"]["redundant_with"] and "color" in attrs["green"]["redundant_with"]
    assert "color" in info["flagging"] and "red" not in info["flagging"]
    assert "aspect_ratio" not in info["associated"]  # every image is 32 x 32: constant
    flagged = _issues(st, "spurious_attribute").filter(pl.col("is_issue"))
    minority = set(np.flatnonzero(~frame["aligned"].to_numpy()).tolist())
    # No embedding, so no pred_probs to say where the shortcut fails: every minority-colour row
    # is flagged (under the colour column or a colour channel); other flags come from
    # properties the digit's shape really moves (edges, contrast).
    assert info["accuracy_source"] is None
    assert minority <= set(flagged["row_id"])
    by_color = flagged.filter(pl.col("details").str.contains('"attribute":"color"'))
    assert len(by_color) and set(by_color["row_id"]) <= minority


def test_image_properties_match_known_pixels(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    check = (np.indices((40, 20)).sum(0) % 2 * 255).astype(np.uint8)
    Image.fromarray(check).save(tmp_path / "check.png")
    f = image_properties([tmp_path / "red.png", tmp_path / "bad.png", tmp_path / "check.png"])
    r = f.row(0, named=True)
    assert r["red"] == 1.0 and r["green"] == 0.0 and r["contrast"] == 0.0
    assert r["brightness"] == pytest.approx(np.sqrt(0.241))  # cleanvision's formula
    assert r["aspect_ratio"] == 0.5 and r["size"] == pytest.approx(np.sqrt(800))
    # a sharp checkerboard has far more edge energy than a flat image (only its border differs)
    assert f["blurriness"][2] > 3 * r["blurriness"]
    assert all(v is None for v in f.row(1))  # unreadable: nulls, no exception


# --- spurious_token ------------------------------------------------------------------------------
WORDS = np.array(
    [
        "the",
        "a",
        "cat",
        "dog",
        "sat",
        "ran",
        "on",
        "mat",
        "park",
        "house",
        "big",
        "small",
        "red",
        "blue",
    ]
)


def _texts(n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, 8)) for _ in range(n)], rng


def test_planted_cue_token_is_found(db_path):
    # a shortcut task: the filler words say nothing, one planted word predicts label 2
    n = 600
    texts, rng = _texts(n, 0)
    y = rng.integers(0, 3, n)
    cue = ((y == 2) & (rng.random(n) < 0.6)) | ((y != 2) & (rng.random(n) < 0.05))
    texts = [t + " never" if c else t for t, c in zip(texts, cue)]
    st = make_store(db_path, pl.DataFrame({"label": y, "text": texts}), text="text")
    run_audit(st, auditors=["spurious_token"])
    info = _summary(st, "spurious_token")
    assert info["cues"][0]["cue"] == "never" and info["cues"][0]["label"] == "2"
    assert info["cues_by_label"]["2"][0] == "never"
    top = info["cues"][0]
    assert top["count"] == int(cue.sum()) and top["count_with_label"] == int((cue & (y == 2)).sum())
    assert top["z"] > info["z_threshold"]
    # only "never" and bigrams that contain it are cues; the filler vocabulary is not
    assert all("never" in c["cue"] for c in info["cues"])
    rows = _issues(st, "spurious_token")
    assert set(rows.filter(pl.col("is_issue"))["row_id"]) == set(np.flatnonzero(cue & (y == 2)))
    d = json.loads(rows.filter(pl.col("is_issue"))["details"][0])
    assert "never" in d["cue"] and d["cue_label"] == "2"
    counter = rows.filter(pl.lit(cue) & (pl.col("label") != 2))
    assert not counter["is_issue"].any()
    assert all("never" in json.loads(x)["counter_cue"] for x in counter["details"])


@pytest.mark.parametrize("harmed", [True, False])
def test_cue_flags_rows_only_when_it_costs_accuracy(db_path, harmed):
    """With out-of-sample pred_probs, a cue flags rows only when the model errs more on its
    counter-examples (a cue of another label) than elsewhere; errors spread at random: the
    cue is listed, no row flagged."""
    n = 900
    texts, rng = _texts(n, 5)
    y = rng.integers(0, 3, n)
    cue = ((y == 2) & (rng.random(n) < 0.6)) | ((y != 2) & (rng.random(n) < 0.05))
    texts = [t + " never" if c else t for t, c in zip(texts, cue)]
    wrong = rng.random(n) < 0.1
    if harmed:  # the model follows the cue: its counter-examples come out as label 2
        wrong |= cue & (y != 2)
    pred = np.where(wrong, np.where(cue & (y != 2), 2, (y + 1) % 3), y)
    pp = np.full((n, 3), 0.05)
    pp[np.arange(n), pred] = 0.9
    frame = pl.DataFrame({"label": y, "text": texts, "pp": pp.tolist()})
    x = rng.normal(size=(n, 8)).astype(np.float32)
    st = make_store(db_path, frame, x, text="text")
    run_audit(st, auditors=["spurious_token"], pred_probs="pp")
    info = _summary(st, "spurious_token")
    assert info["cues"][0]["cue"] == "never" and not info["lexical_labels"]
    harm = info["harm"]
    assert harm["counter_rows"] == int((cue & (y != 2)).sum())
    flagged = set(_issues(st, "spurious_token").filter(pl.col("is_issue"))["row_id"])
    if harmed:
        assert harm["harm_p_value"] < 0.01 and harm["accuracy_gap"] > 0.5
        assert info["practically_significant"]
        assert flagged == set(np.flatnonzero(cue & (y == 2)).tolist())
    else:
        assert harm["harm_p_value"] > 0.01 or harm["accuracy_gap"] < 0.05
        assert not info["practically_significant"] and "cost nothing" in info["note"]
        assert flagged == set()


def test_lexical_labels_list_cues_but_flag_no_row(db_path):
    # a topic task: every row carries a word of its own topic, so the words are the signal,
    # not a shortcut; a planted cue in a minority of rows is what gets flagged (test above)
    n = 600
    texts, rng = _texts(n, 3)
    y = rng.integers(0, 3, n)
    topic = np.array(["football", "election", "stocks"])
    texts = [f"{t} {topic[c]}" for t, c in zip(texts, y)]
    st = make_store(db_path, pl.DataFrame({"label": y, "text": texts}), text="text")
    run_audit(st, auditors=["spurious_token"])
    info = _summary(st, "spurious_token")
    assert {c["cue"] for c in info["cues"][:3]} == set(topic)
    assert info["lexical_labels"] and info["cue_coverage"] == 1.0 and "lexical" in info["note"]
    rows = _issues(st, "spurious_token")
    assert not rows["is_issue"].any()
    # still scored: every row carries a cue of strength 1 (its topic word never appears under
    # another label), and its details name it
    assert rows["score"].max() < 1e-9
    cues = [json.loads(d)["cue"] for d in rows["details"]]
    assert all(topic[c] in cue.split() for c, cue in zip(rows["label"].to_list(), cues))
    assert info["bag_of_words"]["accuracy_lift"] > 0.9  # the topic word decides the label
    # the same data with both lexical tests switched off: the rows are flagged again
    run_audit(
        st,
        auditors=["spurious_token"],
        config=[{"auditor": "spurious_token", "max_cue_coverage": 1.0, "lexical_lift": 1.0}],
    )
    assert (
        st.scalar(
            "SELECT count(*) FROM issues WHERE is_issue AND run_id = (SELECT max(run_id) FROM runs)"
        )
        == n
    )


def test_random_text_has_no_cues(db_path):
    texts, rng = _texts(600, 1)
    y = rng.integers(0, 2, 600)
    st = make_store(db_path, pl.DataFrame({"label": y, "text": texts}), text="text")
    run_audit(st, auditors=["spurious_token"])
    info = _summary(st, "spurious_token")
    assert info["num_cues"] == 0 and info["vocabulary_size"] > 0
    assert st.scalar("SELECT count(*) FROM issues WHERE is_issue") == 0


def test_text_length_is_a_derived_attribute(db_path):
    texts, rng = _texts(500, 2)
    y = rng.integers(0, 2, 500)
    texts = [t + " and the dog ran" * 3 if lab == 1 else t for t, lab in zip(texts, y)]
    st = make_store(db_path, pl.DataFrame({"label": y, "text": texts}), text="text")
    run_audit(st, auditors=["spurious_attribute"])
    info = _summary(st, "spurious_attribute")
    assert "text_length" in info["strong"]
    assert "digit_share" not in info["associated"]


def test_zero_lift_attribute_flags_nothing(db_path):
    """Negative control: an attribute strongly associated with the label (Cramer's V ~0.37)
    that still predicts the majority label in every group, so it adds nothing over the
    majority baseline: reported as a finding, no row flagged."""
    rng = np.random.default_rng(4)
    n = 2000
    group = np.where(np.arange(n) < n // 2, "a", "b")
    p1 = np.where(group == "a", 0.35, 0.05)  # label 1 is the minority in both groups
    y = (rng.random(n) < p1).astype(np.int64)
    frame = pl.DataFrame({"label": y, "source": group, "noise": rng.normal(size=n)})
    st = make_store(db_path, frame)
    run_audit(st, auditors=["spurious_attribute"])
    info = _summary(st, "spurious_attribute")
    src = next(a for a in info["attributes"] if a["attribute"] == "source")
    assert src["strong"] and src["cramers_v"] > 0.3
    assert src["accuracy_lift"] <= 0.0 + 1e-9 and not src["practically_significant"]
    assert info["flagging"] == [] and info["not_practically_significant"] == ["source"]
    assert st.scalar("SELECT count(*) FROM issues WHERE is_issue") == 0


def test_topic_headlines_have_no_spurious_token_flags(db_path):
    """Negative control on real text: 2,000 AG News test headlines (titles only: short, so only
    35% of rows carry a cue that reaches min_count, under the coverage bound). A topic's own
    vocabulary is its signal: a bag of words predicts the topic out of sample far above the
    majority class, so the labels are lexical and no row is flagged; the cues are still listed."""
    from helpers import shared_data

    df = pl.read_csv(shared_data("noisy_ag_news", "test.csv")).sample(2000, seed=0)
    frame = df.select(
        pl.col("text").str.split(" . ").list.first().alias("text"), pl.col("gt").alias("label")
    )
    st = make_store(db_path, frame, text="text")
    run_audit(st, auditors=["spurious_token"])
    info = _summary(st, "spurious_token")
    assert info["num_cues"] > 20 and info["cue_coverage"] < 0.5
    assert info["bag_of_words"]["accuracy_lift"] > 0.5 and info["lexical_labels"]
    assert st.scalar("SELECT count(*) FROM issues WHERE is_issue") == 0


def test_attributes_follow_the_data_definition(db_path):
    """The row index of a file sorted by label predicts the label perfectly once binned, but the
    definition calls it an identifier (all distinct, no gaps), so it is skipped, not reported as
    a shortcut (it was binned into quantiles when the auditor read the dtype); the planted
    `cue` is still found, and so is a shortcut in an integer code (categorical there)."""
    rng = np.random.default_rng(11)
    n = 600
    y = np.sort(rng.integers(0, 2, n))
    cue = np.where(rng.random(n) < 0.9, y, 1 - y)
    frame = pl.DataFrame(
        {
            "label": y,
            "idx": np.arange(n),
            "cue": np.array(["x", "y"])[cue],
            "code": cue * 3 + rng.integers(0, 3, n),  # six values; 0-2 for x, 3-5 for y
        }
    )
    st = make_store(db_path, frame)
    types = {c.name: c.type for c in st.data_definition().columns}
    assert (types["idx"], types["cue"], types["code"]) == (
        "identifier",
        "categorical",
        "categorical",
    )
    run_audit(st, auditors=["spurious_attribute"])
    info = _summary(st, "spurious_attribute")
    assert {"attribute": "idx", "reason": "type identifier in the data definition"} in info[
        "skipped_attributes"
    ]
    assert "idx" not in {a["attribute"] for a in info["attributes"]}
    assert {"cue", "code"} <= set(info["strong"])
