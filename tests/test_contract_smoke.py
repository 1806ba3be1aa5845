"""The store, context and runner work together: a seeded auditor writes one run atomically."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from helpers import blobs, make_store

from datacure.auditor.base import (
    REGISTRY,
    Auditor,
    AuditResult,
    Requires,
    register,
    validate_result,
)
from datacure.auditor.runner import run_audit


class _Probe(Auditor):
    name = "_probe"
    requires = frozenset({Requires.EMBEDDINGS, Requires.LABELS})
    boom = False

    def audit(self, ctx):
        if self.boom:
            raise RuntimeError("planted failure")
        g = ctx.knn(5)
        s = np.clip(1 - g.distances.mean(1), 0, 1)
        return AuditResult(
            {"row_id": ctx.row_ids, "is_issue": s < 0.2, "score": s, "pmax": ctx.pred_probs.max(1)},
            score=float(s.mean()),
            info={"k": g.k},
        )


@pytest.fixture
def probe():
    register(_Probe)
    yield _Probe
    REGISTRY.pop("_probe", None)
    _Probe.boom = False


def test_run_writes_issues_and_summary(db_path, probe):
    x, y = blobs(200)
    st = make_store(db_path, pl.DataFrame({"label": y, "f": np.arange(200)}), x)
    rep = run_audit(st, auditors=["_probe"])
    assert rep.outcomes[0].status == "ok"
    assert st.scalar("SELECT count(*) FROM issues WHERE auditor = '_probe'") == 200
    assert st.scalar("SELECT count(DISTINCT row_id) FROM issues") == 200
    assert st.scalar("SELECT json_extract(info, '$.k')::INT FROM issue_summary") == 5
    # pred_probs and the kNN graph are cached and reused
    assert st.scalar("SELECT count(*) FROM predictions") == 200
    run_audit(st, auditors=["_probe"])
    assert st.scalar("SELECT count(*) FROM predictions") == 200
    assert st.scalar("SELECT count(*) FROM knn_graphs") == 1


def test_failed_audit_leaves_store_unchanged(db_path, probe):
    x, y = blobs(100)
    st = make_store(db_path, pl.DataFrame({"label": y}), x)
    before = {
        t: st.scalar(f"SELECT count(*) FROM {t}")
        for t in ("runs", "issues", "predictions", "knn_graphs")
    }
    _Probe.boom = True
    with pytest.raises(RuntimeError, match="planted"):
        run_audit(st, auditors=["_probe"])
    after = {t: st.scalar(f"SELECT count(*) FROM {t}") for t in before}
    assert after == before


def test_missing_input_is_skipped_with_reason(db_path, probe):
    st = make_store(db_path, pl.DataFrame({"label": [0, 1, 0, 1]}), None)
    rep = run_audit(st, auditors=["_probe"])
    assert rep.outcomes[0].status == "skipped"
    assert "embed" in rep.outcomes[0].reason
    assert st.scalar("SELECT count(*) FROM skipped_auditors") == 1


def test_duplicate_registration_is_an_error(probe):
    class Other(Auditor):
        name = "_probe"

        def audit(self, ctx):  # pragma: no cover
            raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        register(Other)


@pytest.mark.parametrize(
    "rows, match",
    [
        ({"row_id": [1, 2], "is_issue": [False, True], "score": [0.5, 1.5]}, "outside"),
        ({"row_id": [1, 1], "is_issue": [False, True], "score": [0.5, 0.5]}, "more than one"),
        ({"row_id": [1, 2], "is_issue": [0, 1], "score": [0.5, 0.5]}, "boolean"),
        ({"row_id": [1, 2], "is_issue": [False, True], "score": [0.5, float("nan")]}, "NaN"),
    ],
)
def test_score_convention_checked_in_one_place(rows, match):
    with pytest.raises(ValueError, match=match):
        validate_result("x", AuditResult(rows, score=0.5), None)
