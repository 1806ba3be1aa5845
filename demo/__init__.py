"""`datacure demo`: the whole flow on data bundled with the package, and what it found.

The data (`demo/data/news.csv`, built by `make_data.py` beside it) are 1,300 short
news sentences in four topics with defects planted in train (`truth.json` says which): label
errors, exact and near duplicates, test items leaked into train, and a `source` column tied to
the topic in train but not in test (a spurious attribute). The demo ingests them into a fresh
store, embeds them with the bundled all-MiniLM-L6-v2, runs every auditor, plans repairs with an
oversampling rebalance of label x source, exports the repaired splits, writes the report, and
prints how much of what was planted each auditor found and where the files are. Nothing is
downloaded; it runs in minutes on two CPU cores.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
DATA = DATA_DIR / "news.csv"
TRUTH = DATA_DIR / "truth.json"
STORE_NAME = "demo.duckdb"
REBALANCE_BY = "source"
# Text key used to match the planted rows: lower case, punctuation and spacing folded, so it is
# the same whatever a reader does to whitespace (and an exact duplicate shares its original's).
KEY_SQL = "trim(regexp_replace(lower({col}), '[^a-z0-9]+', ' ', 'g'))"


def _key(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


@dataclass
class DemoResult:
    """What the demo found against what was planted, and where its files are."""

    workdir: Path
    store: Path
    report: Path
    report_json: Path
    export_dir: Path
    seconds: float = 0.0
    steps: dict = field(default_factory=dict)  # step -> seconds
    found: dict = field(default_factory=dict)  # finding -> figures

    def lines(self) -> list[str]:
        out = _found_lines(self.found)
        out += [
            "",
            f"files (in {self.seconds:.0f} s):",
            f"  store:    {self.store}",
            f"  report:   {self.report}",
            f"  json:     {self.report_json}",
            f"  export:   {self.export_dir} (manifest.json inside)",
            "",
            f"next: open the report, or try `datacure issues --db {self.store} --auditor label`,",
            (
                f'      `datacure review --db {self.store}`, `datacure sql "SELECT * FROM issues '
                f'LIMIT 5" --db {self.store}`'
            ),
        ]
        return out


def _found_lines(f: dict) -> list[str]:
    """What the demo found (see `evaluate`), one line per planted defect."""
    out = ["", "what datacure found in the demo data (planted defects in train):"]
    le = f.get("label_errors")
    if le:
        out.append(
            f"  label errors: {le['found']} of {le['planted']} planted found by `label` "
            f"({le['flagged']} rows flagged; precision {le['precision']:.2f}, "
            f"recall {le['recall']:.2f})"
        )
    for name, title in (
        ("exact_duplicates", "exact duplicates"),
        ("near_duplicates", "near duplicates"),
        ("leakage", "test items leaked into train"),
    ):
        d = f.get(name)
        if d:
            out.append(
                f"  {title}: {d['found']} of {d['planted']} planted pairs found "
                f"by `{d['auditor']}` ({d['flagged']} rows flagged)"
            )
    sp = f.get("spurious")
    if sp:
        if sp["named"]:
            out.append(
                f"  spurious attribute: `{sp['column']}` named by `spurious_attribute` "
                f"(Cramer's V {sp['cramers_v']:.2f}; predicts the label alone with accuracy "
                f"{sp['cv_accuracy']:.2f} against a majority baseline of "
                f"{sp['baseline']:.2f}); {sp['flagged']} minority-group rows flagged"
            )
        else:
            out.append(
                f"  spurious attribute: `{sp['column']}` NOT named "
                f"(associated: {', '.join(sp['associated']) or 'none'})"
            )
    rb = f.get("rebalance")
    if rb:
        out.append(
            f"  rebalanced export: train groups (label x {REBALANCE_BY}) from "
            f"{rb['before_min']}-{rb['before_max']} rows to {rb['after_min']}-"
            f"{rb['after_max']} rows ({rb['train_before']} -> {rb['train_after']} train rows)"
        )
    ed = f.get("edits")
    if ed:
        out.append("  planned edits: " + ", ".join(f"{k} {v}" for k, v in sorted(ed.items())))
    other = f.get("other_auditors")
    if other:
        out.append("  other auditors: " + "; ".join(other))
    return out


def _fresh(workdir: Path) -> None:
    """Remove what an earlier demo run left in `workdir` (only the demo's own files)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for p in workdir.glob(STORE_NAME + "*"):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    exp = workdir / "export"
    if exp.is_dir() and ((exp / "manifest.json").exists() or not any(exp.iterdir())):
        shutil.rmtree(exp)
    for name in ("report.html", "report.json"):
        (workdir / name).unlink(missing_ok=True)


def _register_truth(st, truth: dict) -> None:
    """Planted rows as a table `_truth(key, kind, pair, detail)` on the store's connection."""
    import pyarrow as pa

    keys, kinds, pairs, detail = [], [], [], []
    for i, e in enumerate(truth["label_errors"]):
        keys.append(_key(e["text"]))
        kinds.append("label_error")
        pairs.append(i)
        detail.append(e["true"])
    for kind in ("exact_duplicates", "near_duplicates"):
        for i, (a, b) in enumerate(truth[kind]):
            for t in {_key(a), _key(b)}:
                keys.append(t)
                kinds.append(kind)
                pairs.append(i)
                detail.append(None)
    for i, t in enumerate(truth["leaked"]):
        keys.append(_key(t))
        kinds.append("leakage")
        pairs.append(i)
        detail.append(None)
    st.con.register(
        "_truth", pa.table({"key": keys, "kind": kinds, "pair": pairs, "detail": detail})
    )


def evaluate(st, truth: dict, export_dir: Path | None = None) -> dict:
    """Compare the latest audit, plan and export with what was planted (figures for `lines`)."""
    from ..store import schema as S

    run_id = st.latest_run_id()
    text = S.quote(st.text_column() or "text")
    ran = {
        r[0]
        for r in st.fetchall(f"SELECT auditor FROM {S.ISSUE_SUMMARY} WHERE run_id = ?", [run_id])
    }
    found: dict = {}
    _register_truth(st, truth)
    try:
        st.execute(
            f"CREATE OR REPLACE TEMP TABLE _planted AS SELECT s.row_id, s.split, t.kind, t.pair "
            f"FROM {S.SAMPLES} s JOIN _truth t ON {KEY_SQL.format(col='s.' + text)} = t.key"
        )
    finally:
        st.con.unregister("_truth")
    if "label" in ran:
        found["label_errors"] = _label_errors_found(st, run_id, truth)
    found.update(_pairs_found(st, run_id, truth, ran))
    col = truth["spurious"]["column"]
    if "spurious_attribute" in ran:
        found["spurious"] = _spurious_found(st, run_id, col)
    if st.table_exists(S.EDITS):
        found["edits"] = {
            f"{a}/{r}": int(n)
            for a, r, n in st.fetchall(
                f"SELECT action, reason, count(*) FROM {S.EDITS} WHERE status != 'rejected' "
                "GROUP BY ALL ORDER BY ALL"
            )
        }
    found["other_auditors"] = _other_auditors(st, run_id)
    rebalance = _rebalance_found(st, col, export_dir)
    if rebalance is not None:
        found["rebalance"] = rebalance
    return found


def _flagged(st, run_id, auditor: str) -> int:
    """Rows the auditor flagged in the run."""
    from ..store import schema as S

    return int(
        st.scalar(
            f"SELECT count(*) FROM {S.ISSUES} WHERE run_id = ? AND auditor = ? AND is_issue",
            [run_id, auditor],
        )
        or 0
    )


def _label_errors_found(st, run_id, truth: dict) -> dict:
    """The planted label errors of train the label auditor flagged, precision and recall."""
    from ..store import schema as S

    hit = int(
        st.scalar(
            f"SELECT count(*) FROM _planted p JOIN {S.ISSUES} i USING (row_id) WHERE "
            "p.kind = 'label_error' AND p.split = 'train' AND i.run_id = ? "
            "AND i.auditor = 'label' AND i.is_issue",
            [run_id],
        )
    )
    n = len(truth["label_errors"])
    fl = _flagged(st, run_id, "label")
    return {
        "planted": n,
        "found": hit,
        "flagged": fl,
        "precision": hit / fl if fl else 0.0,
        "recall": hit / n,
    }


def _pairs_found(st, run_id, truth: dict, ran: set) -> dict:
    """The planted exact and near duplicates and leaked copies found, by the first auditor of
    each kind that ran."""
    from ..store import schema as S

    found = {}
    for kind, auditors in (
        ("exact_duplicates", ("exact_duplicate",)),
        ("near_duplicates", ("near_duplicate", "exact_duplicate")),
        ("leakage", ("leakage",)),
    ):
        aud = next((a for a in auditors if a in ran), None)
        if aud is None:
            continue
        # a pair counts as found when every one of its rows is flagged (leakage: any copy, since
        # the auditor may flag only the side in the split it checks)
        need = "bool_or" if kind == "leakage" else "bool_and"
        hit = int(
            st.scalar(
                f"SELECT count(*) FROM (SELECT p.pair, {need}(coalesce(i.is_issue, false)) AS ok "
                f"FROM _planted p LEFT JOIN {S.ISSUES} i ON i.row_id = p.row_id AND i.run_id = ? "
                f"AND i.auditor = ? WHERE p.kind = ? GROUP BY p.pair) WHERE ok",
                [run_id, aud, kind],
            )
        )
        found[kind] = {
            "planted": len(truth[kind] if kind != "leakage" else truth["leaked"]),
            "found": hit,
            "auditor": aud,
            "flagged": _flagged(st, run_id, aud),
        }
    return found


def _spurious_found(st, run_id, col: str) -> dict:
    """Whether spurious_attribute named the planted column, with its figures."""
    from ..store import schema as S

    info = json.loads(
        st.scalar(
            f"SELECT info FROM {S.ISSUE_SUMMARY} WHERE run_id = ? AND auditor = "
            "'spurious_attribute'",
            [run_id],
        )
        or "{}"
    )
    att = next((a for a in info.get("attributes", []) if a.get("attribute") == col), {})
    return {
        "column": col,
        "named": col in (info.get("associated") or []),
        "associated": info.get("associated") or [],
        "cramers_v": float(att.get("cramers_v") or 0.0),
        "cv_accuracy": float(att.get("cv_accuracy") or 0.0),
        "baseline": float(att.get("majority_baseline") or info.get("majority_baseline") or 0.0),
        "flagged": _flagged(st, run_id, "spurious_attribute"),
    }


def _other_auditors(st, run_id) -> list[str]:
    """One line per other auditor of the run: rows flagged and share, or why it did not run."""
    from ..store import schema as S

    other = []
    for name, n, share in st.fetchall(
        f"SELECT auditor, count(*) FILTER (WHERE is_issue), avg(is_issue::INT) FROM {S.ISSUES} "
        "WHERE run_id = ? AND auditor NOT IN ('label', 'exact_duplicate', 'near_duplicate', "
        "'leakage', 'spurious_attribute') GROUP BY 1 ORDER BY 1",
        [run_id],
    ):
        other.append(f"{name} {n} ({share:.1%})")
    for name, reason in st.fetchall(
        f"SELECT auditor, reason FROM {S.SKIPPED} WHERE run_id = ? ORDER BY 1", [run_id]
    ):
        other.append(f"{name} not run ({reason})")
    return other


def _rebalance_found(st, col: str, export_dir: Path | None) -> dict | None:
    """The (label, planted column) group sizes of train before and in the exported train file
    (None without an export in a format read here)."""
    from ..store import schema as S

    before = st.fetchall(
        f"SELECT count(*) FROM {S.SAMPLES} WHERE split = 'train' GROUP BY label, {S.quote(col)}"
    )
    if export_dir is None:
        return None
    files = sorted(export_dir.glob("train.*"))
    if not files:
        return None
    import polars as pl

    f = files[0]
    reader = {
        ".csv": pl.read_csv,
        ".parquet": pl.read_parquet,
        ".jsonl": pl.read_ndjson,
    }.get(f.suffix)
    if reader is None:
        return None
    tr = reader(f)
    after = tr.group_by("label", col).len()["len"].to_list()
    return {
        "before_min": min(r[0] for r in before),
        "before_max": max(r[0] for r in before),
        "after_min": min(after),
        "after_max": max(after),
        "train_before": sum(r[0] for r in before),
        "train_after": len(tr),
    }


@dataclass
class _Step:
    """Runs one numbered step of the demo: says its name, times it into `times`, and says its
    result's summary."""

    say: Callable[[str], None]
    times: dict

    def __call__(self, name: str, n: int, fn, *args, **kwargs):
        self.say(f"[bold][{n}/6] {name}[/bold]")
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        self.times[name] = round(time.perf_counter() - t0, 2)
        if value is not None and hasattr(value, "summary"):
            self.say(value.summary())
        return value


def _run_steps(st, res: DemoResult, step: _Step, embed_options: dict | None) -> None:
    """The six steps on the demo store: ingest, embed, audit, repair, export, report."""
    from ..auditor.runner import run_audit
    from ..repair.export import export
    from ..repair.plan import plan_repairs
    from ..report import write_report
    from ..store.embed import embed
    from ..store.ingest import ingest

    step("ingest", 1, ingest, st, str(DATA), split_column="split", label="label", text="text")
    step("embed", 2, embed, st, **(embed_options or {}))
    step("audit", 3, run_audit, st, progress=step.say)
    step(
        "repair",
        4,
        plan_repairs,
        st,
        rebalance_by=REBALANCE_BY,
        strategy="oversample",
        progress=step.say,
    )
    step("export", 5, export, st, str(res.export_dir), fmt="csv")
    step(
        "report",
        6,
        write_report,
        st,
        res.report,
        json_path=res.report_json,
        manifest_path=res.export_dir / "manifest.json",
    )


def run_demo(
    workdir: str | Path = "datacure-demo",
    say: Callable[[str], None] = print,
    out: Callable[[str], None] = print,
    embed_options: dict | None = None,
) -> DemoResult:
    """Run the demo in `workdir` (created; earlier demo files there are replaced).

    `say` gets progress lines (stderr in the CLI), `out` the results (stdout). `embed_options`
    are passed to the embed step (tests use it to pick a model)."""
    t_all = time.perf_counter()
    workdir = Path(workdir).resolve()
    _fresh(workdir)
    truth = json.loads(TRUTH.read_text())
    from ..store import Store

    res = DemoResult(
        workdir=workdir,
        store=workdir / STORE_NAME,
        report=workdir / "report.html",
        report_json=workdir / "report.json",
        export_dir=workdir / "export",
    )
    with Store(res.store) as st:
        _run_steps(st, res, _Step(say, res.steps), embed_options)
        res.found = evaluate(st, truth, res.export_dir)
    res.seconds = time.perf_counter() - t_all
    say("steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in res.steps.items()))
    for line in res.lines():
        out(line)
    return res
