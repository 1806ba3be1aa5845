"""An auditor declares its repair and its report section; plan, review, report and the app read
the declarations. A toy auditor registered here (no name of it anywhere in the library) is
planned, reviewed, reported and shown by serve; no table keyed by auditor names is left."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from helpers import make_store

from datacure.auditor.base import (
    DROP,
    REGISTRY,
    Auditor,
    AuditResult,
    RepairAction,
    ReportSection,
    register,
)
from datacure.auditor.runner import run_audit

ROOT = Path(__file__).resolve().parents[1]


class ToyLongText(Auditor):
    """Flags rows whose text is longer than 30 characters; drops them under `drop_outliers`."""

    name = "toy_long_text"
    description = "toy: long texts"
    details = {"length": pl.Int64}
    repair = RepairAction(
        DROP, planned=lambda p: p.drop_outliers, evidence={"length": "BIGINT"}, priority=5
    )
    report = ReportSection(
        view="cue_table", own_section=("toy", "Toy section"), info_keys=("longest",)
    )

    def audit(self, ctx) -> AuditResult:
        n = ctx.frame["text"].str.len_chars()
        rows = pl.DataFrame(
            {
                "row_id": ctx.row_ids,
                "is_issue": (n > 30).to_numpy(),
                "score": (1.0 / (1.0 + n.cast(pl.Float64) / 30)).to_numpy(),
                "length": n.to_numpy(),
            }
        )
        cues = [{"token": "toy-cue", "share": 0.5}]
        return AuditResult(rows, 0.5, info={"cues": cues, "longest": int(n.max())})


@pytest.fixture
def toy(db_path):
    register(ToyLongText)
    texts = [f"short {i}" if i % 5 else f"a much longer text that goes on {i}" for i in range(40)]
    frame = pl.DataFrame({"text": texts, "label": ["a" if i % 2 else "b" for i in range(40)]})
    st = make_store(db_path, frame, text="text")
    run_audit(st, auditors=["toy_long_text"])
    yield st
    st.close()
    REGISTRY.pop("toy_long_text", None)


def test_toy_auditor_is_planned_reviewed_reported_and_served(toy, tmp_path):
    from datacure.repair.plan import plan_repairs
    from datacure.repair.review import apply_review, drop_on_accept
    from datacure.report import write_report

    st = toy
    flagged = [r for (r,) in st.fetchall("SELECT row_id FROM issues WHERE is_issue ORDER BY 1")]
    assert len(flagged) == 8
    rep = plan_repairs(st, drop_outliers=True)  # the toy's declared policy switch
    assert rep.counts["drop/toy_long_text"] == 8
    det = json.loads(st.scalar("SELECT details FROM edits WHERE row_id = ?", [flagged[0]]))
    assert det["length"] > 30 and det["reasons"] == ["toy_long_text"]
    plan_repairs(st)  # not planned without the switch
    assert st.scalar("SELECT count(*) FROM edits WHERE status = 'pending'") == 0
    # review: an accepted flag of a `drop` auditor drops the row although nothing was planned
    assert "toy_long_text" in drop_on_accept()
    apply_review(st, [(flagged[0], "toy_long_text")], "accept")
    assert st.fetchall("SELECT action, status FROM edits WHERE row_id = ?", [flagged[0]]) == [
        ("drop", "accepted")
    ]
    # report: its section of its own, its declared view of the info
    out = write_report(st, tmp_path / "r.html")
    html = out.read_text()
    assert 'id="toy"' in html and "Toy section" in html and "toy-cue" in html
    assert '<td class="">longest</td>' in html  # the declared info key, shown first
    # serve: the findings page shows the declared view
    from starlette.testclient import TestClient

    from datacure.serve.app import create_app

    st.close()
    with TestClient(create_app(st.path), base_url="http://127.0.0.1:8765") as c:
        page = c.get("/findings")
        assert page.status_code == 200 and "toy-cue" in page.text


def test_no_table_keyed_by_auditor_names_is_left():
    """plan, review, report and serve name no built-in auditor in code (docstrings aside)."""
    import ast

    from datacure.auditor import load_builtin
    from datacure.store import schema as S

    # `label` is also a column of samples, "null" a JSON literal, and "slice" the keyword of
    # `--rebalance-by slice` (rows grouped by the `slices` table, whichever auditor wrote it)
    names = set(load_builtin()) - set(S.RESERVED) - {"null", "slice"}
    files = [*(ROOT / "repair").glob("*.py"), *(ROOT / "report").glob("*.py")]
    files += [*(ROOT / "serve").glob("*.py")]
    for f in files:
        tree = ast.parse(f.read_text())
        docs = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef)
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        used = {
            n.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
        }
        assert not (used & names), (f.name, sorted(used & names))


def test_a_repair_must_declare_the_details_it_reads():
    class Renamed(ToyLongText):
        name = "toy_renamed"
        details = {"len": pl.Int64}  # the repair still reads `length`

    with pytest.raises(TypeError, match=r"reads details \['length'\]"):
        register(Renamed)
    assert "toy_renamed" not in REGISTRY


def test_details_of_the_wrong_type_are_refused(toy):
    from datacure.auditor.base import validate_result

    bad = pl.DataFrame({"row_id": [0], "is_issue": [True], "score": [0.1], "length": ["long"]})
    with pytest.raises(ValueError, match="details 'length' holds String"):
        validate_result("toy_long_text", AuditResult(bad, 0.5), None)
    with pytest.raises(ValueError, match="lack the declared details 'length'"):
        validate_result("toy_long_text", AuditResult(bad.drop("length"), 0.5), None)
