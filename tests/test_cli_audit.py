"""`datacure audit` and `datacure issues` through the real entry point (cli.main)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from hardening_util import run_cli, snapshot
from helpers import blobs, make_store


@pytest.fixture
def noisy_db(db_path):
    """300 labelled rows in 3 blobs with 10% of the labels flipped."""
    x, y = blobs(300, seed=31)
    rng = np.random.default_rng(31)
    flip = rng.choice(300, 30, replace=False)
    y = y.copy()
    y[flip] = (y[flip] + 1) % 3
    frame = pl.DataFrame(
        {"text": [f"doc {i}" for i in range(300)], "label": np.array(["a", "b", "c"])[y]}
    )
    make_store(db_path, frame, x, text="text").close()
    return db_path


def test_audit_prints_summary_and_passes_under_threshold(noisy_db):
    r = run_cli("audit", "--db", noisy_db, "--auditors", "label,outlier", "--fail-on", "label=0.5")
    assert r.code == 0, r
    assert "label" in r.stdout and "outlier" in r.stdout and "flagged" in r.stdout
    assert "10.00%" in r.stdout  # 30 of 300 flipped, all found


def test_fail_on_breached_exits_1(noisy_db):
    r = run_cli("audit", "--db", noisy_db, "--auditors", "label", "--fail-on", "label=0.05")
    assert r.code == 1, r
    assert "threshold breached" in r.stderr and "label" in r.stderr


def test_a_bug_exits_3_with_its_traceback_not_1_the_gates_code(noisy_db, monkeypatch):
    """An exception nothing expected (here planted in the auditor runner) is a crash, which a CI
    gate must not read as `--fail-on` breached."""
    from datacure.auditor import runner

    def broken(*a, **kw):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(runner, "run_audit", broken)
    r = run_cli("audit", "--db", noisy_db, "--auditors", "label", "--fail-on", "label=0.05")
    assert r.code == 3 and r.traceback, r
    assert "planted bug" in r.stderr and "internal error" in r.stderr, r


def test_bad_fail_on_exits_2_and_leaves_store_unchanged(noisy_db):
    before = snapshot(noisy_db)
    r = run_cli("audit", "--db", noisy_db, "--fail-on", "label=lots")
    assert r.code == 2 and not r.traceback, r
    assert "NAME=FRACTION" in r.stderr
    assert snapshot(noisy_db) == before


def test_config_yaml_sets_parameters(noisy_db, tmp_path):
    cfg = tmp_path / "audit.yaml"
    cfg.write_text(
        "- auditor: near_duplicate\n  max_distance: 0.5\n- auditor: label\n  knn_weight: 0.0\n"
    )
    r = run_cli("audit", "--db", noisy_db, "--auditors", "near_duplicate,label", "--config", cfg)
    assert r.code == 0, r
    import duckdb

    con = duckdb.connect(str(noisy_db), read_only=True)
    auditors = json.loads(con.execute("SELECT auditors FROM runs").fetchall()[0][0])
    info = json.loads(
        con.execute("SELECT info FROM issue_summary WHERE auditor = 'near_duplicate'").fetchall()[
            0
        ][0]
    )
    con.close()
    by = {a["auditor"]: a for a in auditors}
    assert by["near_duplicate"]["max_distance"] == 0.5 and by["label"]["knn_weight"] == 0.0
    assert info["radius"] == 0.5


def test_config_with_unknown_parameter_exits_2(noisy_db, tmp_path):
    cfg = tmp_path / "audit.yaml"
    cfg.write_text("- auditor: outlier\n  treshold: 0.5\n")
    r = run_cli("audit", "--db", noisy_db, "--config", cfg)
    assert r.code == 2 and not r.traceback, r
    assert "treshold" in r.stderr and "threshold" in r.stderr


def test_user_pred_probs_file(noisy_db, tmp_path):
    probs = np.full((300, 3), 1 / 3)
    path = tmp_path / "pp.npy"
    np.save(path, probs[:, :2])  # wrong shape: a clear error
    r = run_cli("audit", "--db", noisy_db, "--auditors", "label", "--pred-probs", path)
    assert r.code == 2 and "shape" in r.stderr, r
    np.save(path, probs)
    r = run_cli("audit", "--db", noisy_db, "--auditors", "label", "--pred-probs", path)
    assert r.code == 0, r


def test_issues_shows_worst_rows_with_given_and_suggested_label(noisy_db):
    assert run_cli("audit", "--db", noisy_db, "--auditors", "label,outlier").code == 0
    r = run_cli("issues", "--db", noisy_db, "--auditor", "label", "--top", "5", "--format", "json")
    assert r.code == 0, r
    rows = json.loads(r.stdout)
    assert len(rows) == 5
    assert all(row["auditor"] == "label" for row in rows)
    assert [row["score"] for row in rows] == sorted(row["score"] for row in rows)
    assert all(row["text"].startswith("doc ") for row in rows)
    assert all(row["given_label"] != row["suggested_label"] for row in rows)
    assert all(row["suggested_label"] in ("a", "b", "c") for row in rows)
    r = run_cli("issues", "--db", noisy_db, "--top", "3", "--format", "csv")
    assert r.code == 0 and r.stdout.startswith("auditor,row_id,split,score,text,given_label"), r
    assert len(r.stdout.strip().splitlines()) == 4


def test_issues_for_an_auditor_that_did_not_run_exits_2(noisy_db):
    assert run_cli("audit", "--db", noisy_db, "--auditors", "outlier").code == 0
    r = run_cli("issues", "--db", noisy_db, "--auditor", "label")
    assert r.code == 2 and "did not run" in r.stderr, r


@pytest.fixture
def unembedded_db(db_path):
    """Labelled text rows with no embedding: `label` (needs one) is skipped."""
    frame = pl.DataFrame({"text": [f"doc {i}" for i in range(60)], "label": ["a", "b"] * 30})
    make_store(db_path, frame, text="text").close()
    return db_path


def test_fail_on_a_skipped_auditor_exits_2(unembedded_db):
    """A gate fails closed: `label` was skipped (run before `embed`), so `--fail-on label=0.05`
    checked nothing and must not exit 0."""
    r = run_cli("audit", "--db", unembedded_db, "--fail-on", "label=0.05")
    assert r.code == 2 and not r.traceback, r
    assert "--fail-on label" in r.stderr and "skipped" in r.stderr, r
    # the same audit without the gate is fine: the skip itself is no error
    r = run_cli("audit", "--db", unembedded_db, "--auditors", "exact_duplicate,null")
    assert r.code == 0, r


def test_fail_on_an_auditor_not_run_or_misspelt_exits_2(noisy_db):
    before = snapshot(noisy_db)
    r = run_cli("audit", "--db", noisy_db, "--fail-on", "lable=0.05")
    assert r.code == 2 and "did you mean 'label'" in r.stderr, r
    assert snapshot(noisy_db) == before  # refused before any work
    r = run_cli("audit", "--db", noisy_db, "--auditors", "outlier", "--fail-on", "label=0.5")
    assert r.code == 2 and "did not run" in r.stderr, r
