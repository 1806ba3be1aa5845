"""`datacure demo`: the bundled data hold exactly what truth.json says was planted, the demo's
scoring of findings against it is right, it cleans only its own files, and (slow) the whole flow
runs and finds the planted defects."""

from __future__ import annotations

import difflib
import importlib.util
import json
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from datacure import demo

# The script that built the bundled data is not part of the installed package: load it by path.
_spec = importlib.util.spec_from_file_location(
    "make_data", Path(__file__).resolve().parents[1] / "demo" / "data" / "make_data.py"
)
make_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_data)


@pytest.fixture(scope="module")
def news() -> pl.DataFrame:
    return pl.read_csv(demo.DATA)


@pytest.fixture(scope="module")
def truth() -> dict:
    return json.loads(demo.TRUTH.read_text())


def test_bundled_files_are_what_the_seeded_script_makes(truth):
    text, t = make_data.build()
    assert demo.DATA.read_text(encoding="utf-8") == text
    assert truth == json.loads(json.dumps(t))
    assert demo.DATA.stat().st_size + demo.TRUTH.stat().st_size < 300_000


def test_planted_defects_are_in_the_data(news, truth):
    keys = news.with_columns(
        pl.col("text").map_elements(demo._key, return_dtype=pl.Utf8).alias("k")
    )
    train, test = keys.filter(pl.col("split") == "train"), keys.filter(pl.col("split") == "test")
    assert (len(train), len(test)) == (1000, 300)
    given = dict(zip(train["k"], train["label"]))
    for e in truth["label_errors"]:
        assert given[demo._key(e["text"])] == e["given"] != e["true"]
    for a, b in truth["exact_duplicates"]:
        assert a != b and demo._key(a) == demo._key(b)
    for a, b in truth["near_duplicates"]:
        assert demo._key(a) != demo._key(b)
        assert difflib.SequenceMatcher(None, a.split(), b.split()).ratio() > 0.9
    leaked = {demo._key(t) for t in truth["leaked"]}
    assert leaked <= set(test["k"]) and leaked <= set(train["k"])
    # the only repeated keys are the planted exact copies and leaks
    counts = Counter(keys["k"].to_list())
    repeated = {k for k, c in counts.items() if c > 1}
    assert repeated == {demo._key(a) for a, _ in truth["exact_duplicates"]} | leaked
    # spurious source: aligned with the topic in train, not in test
    aligned = truth["spurious"]["aligned"]

    def share(df):
        return (df["source"] == df["label"].replace_strict(aligned)).mean()

    assert 0.85 < share(train) < 0.95 and share(test) < 0.4


def test_evaluate_scores_findings_against_truth(tmp_path, news, truth):
    """Flag exactly the planted rows (and a few wrong ones): the figures must say so."""
    from datacure.store import Store
    from datacure.store.ingest import ingest_frame

    st = Store(tmp_path / "e.duckdb")
    ingest_frame(st, news, split_column="split", label="label", text="text")
    st.execute(
        "CREATE TEMP TABLE k AS SELECT row_id, split, trim(regexp_replace(lower(text), "
        "'[^a-z0-9]+', ' ', 'g')) AS k FROM samples"
    )
    le = [demo._key(e["text"]) for e in truth["label_errors"]][:40]  # 40 of 48 found
    ex = [demo._key(a) for a, _ in truth["exact_duplicates"]]
    near = [demo._key(x) for pair in truth["near_duplicates"][:10] for x in pair]  # 10 of 15
    leak = [demo._key(t) for t in truth["leaked"]]
    with st.transaction():
        st.execute("INSERT INTO runs VALUES (1, now(), now(), '[]', '{}', 't', 'ok')")
        for aud, ks, extra in (
            ("label", le, 10),
            ("exact_duplicate", ex, 0),
            ("near_duplicate", near, 0),
            ("leakage", leak, 0),
        ):
            st.execute(
                "INSERT INTO issues SELECT 1, ?, row_id, (k IN (SELECT unnest(?)) AND split = "
                "'train') OR row_id < ?, 0.5, NULL FROM k",
                [aud, ks, extra],
            )
            st.execute("INSERT INTO issue_summary VALUES (1, ?, 0.5, 0, '{}')", [aud])
        st.execute(
            "INSERT INTO issue_summary VALUES (1, 'spurious_attribute', 0.2, 0, ?)",
            [
                json.dumps(
                    {
                        "associated": ["source"],
                        "majority_baseline": 0.26,
                        "attributes": [
                            {
                                "attribute": "source",
                                "cramers_v": 0.8,
                                "cv_accuracy": 0.9,
                                "majority_baseline": 0.26,
                            }
                        ],
                    }
                )
            ],
        )
    found = demo.evaluate(st, truth)
    lab = found["label_errors"]
    extra_hits = st.scalar(
        "SELECT count(*) FROM k WHERE row_id < 10 AND k IN (SELECT unnest(?))", [le]
    )
    assert lab["planted"] == 48 and lab["found"] == 40
    assert lab["flagged"] == 40 + 10 - extra_hits
    assert found["exact_duplicates"]["found"] == 15
    assert found["near_duplicates"]["found"] == 10
    assert found["leakage"]["found"] == 10 and found["leakage"]["planted"] == 10
    assert found["spurious"]["named"] and found["spurious"]["cramers_v"] == 0.8
    lines = "\n".join(
        demo.DemoResult(tmp_path, tmp_path, tmp_path, tmp_path, tmp_path, found=found).lines()
    )
    assert "label errors: 40 of 48 planted found" in lines
    assert "spurious attribute: `source` named" in lines
    st.close()


def test_fresh_removes_only_demo_files(tmp_path):
    (tmp_path / "demo.duckdb").write_text("x")
    (tmp_path / "demo.duckdb.wal").write_text("x")
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "mine.csv").write_text("keep me too")  # no manifest: not ours
    demo._fresh(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "notes.txt"]
    assert (tmp_path / "export" / "mine.csv").exists()


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """The CLI demo: every step runs, planted defects are found, files are where it says."""
    from typer.testing import CliRunner

    from datacure import cli

    t0 = time.perf_counter()
    res = CliRunner().invoke(cli.app, ["demo", "--dir", str(tmp_path / "d")])
    seconds = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    out = res.output
    assert "label errors:" in out and "spurious attribute: `source` named" in out
    assert "rebalanced export" in out
    d = tmp_path / "d"
    for name in (
        "demo.duckdb",
        "report.html",
        "report.json",
        "export/manifest.json",
        "export/train.csv",
        "export/test.csv",
    ):
        assert (d / name).exists(), name
    summary = json.loads((d / "report.json").read_text())
    assert summary["export_manifest"] and summary["edits"]["total"] > 0
    print(f"demo took {seconds:.1f} s")
