"""A repaired export, ingested and audited again, no longer shows what the repair fixed, and
shows nothing new because of the repair (copies, the export's own columns)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from datacure.auditor.runner import run_audit
from datacure.repair.export import export
from datacure.repair.plan import plan_repairs
from datacure.repair.policy import RepairPolicy
from datacure.store import Store
from datacure.store.embed import embed
from datacure.store.ingest import ingest, ingest_frame

AUDITORS = [
    "exact_duplicate",
    "near_duplicate",
    "leakage",
    "null",
    "outlier",
    "class_imbalance",
    "spurious_attribute",
]


def _flags(st) -> dict[str, set[int]]:
    """Flagged rows of the latest run per auditor, as the rows' original ids (the export's
    `datacure_row_id` where the store has it, else the row id)."""
    cols = {c for c, _ in st.columns("samples")}
    orig = "s.datacure_row_id" if "datacure_row_id" in cols else "s.row_id"
    rows = st.fetchall(
        f"SELECT i.auditor, {orig} FROM issues i JOIN samples s USING (row_id) "
        "WHERE i.is_issue AND i.run_id = (SELECT max(run_id) FROM runs)"
    )
    out: dict[str, set[int]] = {a: set() for a in AUDITORS}
    for a, r in rows:
        out[a].add(int(r))
    return out


def test_repaired_export_reaudited_shows_neither_the_fixes_nor_new_flags(tmp_path):
    rng = np.random.default_rng(0)
    n_train, n_test = 300, 80
    n = n_train + n_test
    vocab = np.array([f"w{i}" for i in range(500)])
    texts = [" ".join(rng.choice(vocab, 12)) for _ in range(n)]
    for i in range(5):  # planted: train rows 1-5 repeat train rows 101-105
        texts[1 + i] = texts[101 + i]
    for i in range(4):  # planted: test rows copy train rows 201-204 (leakage)
        texts[n_train + i] = texts[201 + i]
    label = rng.integers(0, 2, n).astype(str)
    source = np.where(rng.random(n) < 0.8, "web", "forum")
    frame = pl.DataFrame(
        {
            "text": texts,
            "label": label,
            "source": source,
            "part": ["train"] * n_train + ["test"] * n_test,
        }
    )
    st = Store(tmp_path / "a.duckdb")
    ingest_frame(st, frame, split_column="part", text="text")
    embed(st, model="hash:256")
    run_audit(st, auditors=AUDITORS)
    before = _flags(st)
    assert {1, 2, 3, 4, 5, 101, 102, 103, 104, 105} <= before["exact_duplicate"]
    assert {n_train, n_train + 1, n_train + 2, n_train + 3} <= before["leakage"]

    rep = plan_repairs(st, policy=RepairPolicy(rebalance_by="source", strategy="oversample"))
    assert rep.counts.get("add/rebalance", 0) > 0
    export(st, tmp_path / "out", fmt="parquet")
    st.close()

    st2 = Store(tmp_path / "b.duckdb")
    for split in ("train", "test"):
        ingest(st2, tmp_path / "out" / f"{split}.parquet", split=split, label="label")
    assert st2.text_column() == "text"
    copies = st2.scalar(
        "SELECT count(*) - count(DISTINCT datacure_row_id) FROM samples WHERE split = 'train'"
    )
    assert copies > 50  # the oversampled copies are there
    embed(st2, model="hash:256")
    run_audit(st2, auditors=AUDITORS)
    after = _flags(st2)
    # what the repair fixed is gone, and its copies and columns raise nothing new
    assert after["exact_duplicate"] == set() and after["near_duplicate"] == set()
    assert after["leakage"] == set()
    assert after["null"] == set()
    for a in ("outlier", "class_imbalance", "spurious_attribute"):
        assert after[a] <= before[a], a
    null = json.loads(st2.scalar("SELECT info FROM issue_summary WHERE auditor = 'null'"))
    assert "synthetic_parent" in null["ignored_export_columns"]
    spur = json.loads(
        st2.scalar("SELECT info FROM issue_summary WHERE auditor = 'spurious_attribute'")
    )
    tested = {a["attribute"] for a in spur["attributes"]}
    assert not tested & {"synthetic", "datacure_row_id", "synthetic_parent"}
