"""Benchmark results are data: bench/RESULTS.md is exactly what bench/report.py renders from
bench/results/*.json, and every results file names the script that made it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def _report_module():
    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _results():
    return sorted((BENCH / "results").glob("*.json"))


def test_results_md_is_rendered_from_the_json_files():
    report = _report_module()
    assert (BENCH / "RESULTS.md").read_text() == report.render(BENCH / "results"), (
        "bench/RESULTS.md differs from what bench/report.py renders from bench/results/*.json: "
        "run `.venv/bin/python bench/report.py` and commit both"
    )


@pytest.mark.parametrize("path", _results(), ids=lambda p: p.name)
def test_each_results_file_names_an_existing_script(path):
    doc = json.loads(path.read_text())
    assert doc.get("name") == path.stem, "the file name is the results name"
    script = doc.get("script")
    assert script and script.startswith("bench/") and script.endswith(".py"), script
    assert (ROOT / script).is_file(), f"{path.name} names {script}, which does not exist"
    for key in ("argv", "created", "versions", "machine", "inputs", "figures"):
        assert key in doc, f"{path.name} lacks {key!r}"
    for t in doc["figures"].get("tables", []):
        assert all(len(r) == len(t["columns"]) for r in t["rows"]), t["title"]


def test_renderer_handles_any_file_following_the_convention(tmp_path):
    """A file from a script the renderer has never seen: tables, nested figures, missing
    optional keys, odd values; sorted by file name, no trace of the render time."""
    report = _report_module()
    (tmp_path / "b_other.json").write_text(
        json.dumps(
            {
                "name": "b_other",
                "script": "bench/other.py",
                "argv": ["--quick"],
                "figures": {
                    "tables": [
                        {
                            "title": "t1",
                            "columns": ["method", "F1", "a|b"],
                            "rows": [["ours", 0.52341, None], ["theirs", 1234.56, True]],
                            "note": "a note",
                        }
                    ],
                    "speedup": 3.14159,
                    "nested": {"x": 1, "y": {"z": [1, 2]}},
                    "nan": None,
                },
            }
        )
    )
    (tmp_path / "a_first.json").write_text(
        json.dumps({"name": "a_first", "title": "First", "script": "bench/a.py", "figures": {}})
    )
    text = report.render(tmp_path)
    assert text == report.render(tmp_path)  # deterministic
    assert text.index("## First") < text.index("## b_other")
    assert "| ours | 0.5234 | - |" in text
    assert "| theirs | 1235 | yes |" in text
    assert "a\\|b" in text and "a note" in text
    assert "`nested.y.z`: `[1, 2]`" in text and "`speedup`: 3.142" in text
    assert "python bench/other.py --quick" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "No results yet" in report.render(empty)


def test_full_run_names_every_script_with_a_results_file():
    """`make bench-full` (bench/run.py's FULL list) runs every script that wrote a results file,
    so a full run regenerates them all (read from run.py's source: it imports bench modules)."""
    import ast

    tree = ast.parse((BENCH / "run.py").read_text())
    lists = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id in ("QUICK", "FULL")
    }
    full = {job.split()[0] for job in lists["FULL"]}
    for job in lists["QUICK"] + lists["FULL"]:
        assert (BENCH / job.split()[0]).is_file(), f"bench/run.py names {job}, not a script"
    made = {json.loads(p.read_text())["script"].removeprefix("bench/") for p in _results()}
    made.discard("run.py")  # the run's own record
    assert made <= full, f"scripts with results that `make bench-full` never runs: {made - full}"
