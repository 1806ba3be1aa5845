"""Every registered auditor keeps the same contract on the same seeded data.

The list is whatever `auditor.BUILTIN_MODULES` registers when the test runs, so a new auditor is
checked without editing this file. An auditor may skip (its `requires` or `skip_reason` says
why); one that runs must return a valid result, write nothing, and be reproducible.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from helpers import blobs, make_store
from pydantic import BaseModel

from datacure.auditor import REGISTRY, load_builtin
from datacure.auditor.base import Params, Requires, validate_result
from datacure.auditor.context import AuditContext
from datacure.auditor.runner import CORE_ORDER, run_audit
from datacure.store.errors import InputError

load_builtin()
NAMES = sorted(REGISTRY)
RESULT_TABLES = ("runs", "issues", "issue_summary", "skipped_auditors", "slices", "edits")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """Labelled text in two splits with embeddings, a metadata column and planted defects of
    every core kind (flipped labels, copies, a far point, a rare class, an empty text)."""
    n = 240
    x, y = blobs(n, d=12, centers=3, seed=21)
    rng = np.random.default_rng(21)
    words = np.array(["alpha", "beta", "gamma", "delta", "omega", "sigma"])
    texts = [f"{words[c]} {' '.join(rng.choice(words, 4))} item {i}" for i, c in enumerate(y)]
    labels = np.array(["north", "south", "east"], dtype=object)[y]
    labels[[5, 50, 90]] = "south" if labels[5] != "south" else "north"  # flipped
    labels[[7, 8]] = "rare"  # a class far under its share
    texts[12] = texts[11].upper()  # an exact copy (case folded)
    x[14] = x[13] + 1e-4  # a near copy
    x[20] = rng.normal(scale=9.0, size=x.shape[1])  # far away
    texts[30] = ""  # empty content
    frame = pl.DataFrame(
        {
            "text": texts,
            "label": labels.tolist(),
            "source": rng.choice(["web", "news", "forum"], n).tolist(),
            "split": ["train"] * 180 + ["test"] * 60,
        }
    )
    db = tmp_path_factory.mktemp("contract") / "c.duckdb"
    store = make_store(db, frame, x, split=None, split_column="split", text="text")
    yield store
    store.close()


def _counts(store) -> dict:
    return {t: store.scalar(f"SELECT count(*) FROM {t}") for t in RESULT_TABLES}


@pytest.mark.parametrize("name", NAMES)
def test_declaration(name):
    cls = REGISTRY[name]
    assert cls.name == name
    assert isinstance(cls.description, str) and cls.description, "say what the auditor checks"
    assert cls.kind in ("row", "finding"), "a row check or a dataset-level finding"
    assert isinstance(cls.requires, frozenset)
    assert all(isinstance(r, Requires) for r in cls.requires)
    assert issubclass(cls.Params, BaseModel)
    if cls.Params.model_fields:
        assert issubclass(cls.Params, Params), "parameters subclass auditor.base.Params"
    aud = cls()
    cfg = aud.config()
    assert cfg["auditor"] == name
    again = cls(**{k: v for k, v in json.loads(json.dumps(cfg)).items() if k != "auditor"})
    assert again.fingerprint() == aud.fingerprint(), "config must round-trip through JSON"
    with pytest.raises(InputError, match="bad parameter"):
        cls(no_such_parameter_xyz=1)


@pytest.mark.parametrize("name", NAMES)
def test_audit_contract(seeded, name):
    store = seeded
    ctx = AuditContext(store)
    aud = REGISTRY[name]()
    reason = ctx.missing(aud.requires) or aud.skip_reason(ctx)
    if reason is not None:
        assert isinstance(reason, str) and reason.strip()
        assert name not in CORE_ORDER, f"core auditor {name} skipped on the seeded data: {reason}"
        pytest.skip(f"{name} skips here: {reason}")
    before = _counts(store)
    result = validate_result(name, aud.audit(ctx), ctx.row_ids)
    assert _counts(store) == before, "only the runner writes results"
    rows = result.rows
    assert set(rows["row_id"].to_list()) <= set(ctx.row_ids.tolist())
    if name in CORE_ORDER and name != "label" and name != "class_imbalance":
        assert len(rows) == ctx.n, "one row per audited sample"
    if name in ("label", "class_imbalance"):
        assert len(rows) == int(ctx.labelled.sum()), "one row per labelled sample"
    json.dumps(result.info)
    # the same inputs give the same findings
    again = validate_result(name, REGISTRY[name]().audit(AuditContext(store)), ctx.row_ids)
    assert again.rows.select("row_id", "is_issue").equals(rows.select("row_id", "is_issue"))
    assert np.allclose(again.rows["score"].to_numpy(), rows["score"].to_numpy())


def test_core_auditors_find_the_planted_defects(seeded):
    store = seeded
    rep = run_audit(store, auditors=list(CORE_ORDER))
    found = {
        a: set(
            store.polars(
                "SELECT row_id FROM issues WHERE run_id = ? AND auditor = ? AND is_issue",
                [rep.run_id, a],
            )["row_id"].to_list()
        )
        for a in CORE_ORDER
    }
    # label: every flag is a wrong label (the three flips, the two "rare" rows that sit among
    # the first class, the near copy that took another class's vector), most of them flagged
    # (the expected-F1 cut may stop before the least certain flip, row 90), and all six are the
    # six worst-scored rows
    wrong = {5, 50, 90, 7, 8, 14}
    assert {5, 50} <= found["label"] <= wrong and len(found["label"]) >= 4
    worst = store.polars(
        "SELECT row_id FROM issues WHERE run_id = ? AND auditor = 'label' ORDER BY score LIMIT 6",
        [rep.run_id],
    )["row_id"].to_list()
    assert set(worst) == wrong
    assert {11, 12} <= found["exact_duplicate"]
    assert {13, 14} <= found["near_duplicate"]
    assert 20 in found["outlier"]
    assert found["class_imbalance"] == set()  # a finding: the class is named, no row flagged
    info = json.loads(
        store.scalar(
            "SELECT info FROM issue_summary WHERE run_id = ? AND auditor = 'class_imbalance'",
            [rep.run_id],
        )
    )
    assert info["flagged_classes"] == ["rare"]
    assert 30 in found["null"]


def test_run_everything_registered(seeded):
    store = seeded
    before = _counts(store)
    rep = run_audit(store)
    assert {o.name for o in rep.outcomes} == set(NAMES)
    ran = [o for o in rep.outcomes if o.status == "ok"]
    skipped = [o for o in rep.outcomes if o.status != "ok"]
    assert all(o.reason for o in skipped)
    after = _counts(store)
    assert after["runs"] == before["runs"] + 1
    assert after["issue_summary"] - before["issue_summary"] == len(ran)
    assert after["skipped_auditors"] - before["skipped_auditors"] == len(skipped)
    assert after["issues"] - before["issues"] == sum(o.num_rows for o in ran)
