"""HTML fragments of the report built from an auditor's `info` and from the export manifest:
tables, the drift table, the spurious-attribute heatmap, the cue table, example rows. The
markup is in report/templates (`_macros.html`, `views.html`, autoescaped); this module picks the
values they show."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..store import schema as S
from .jinja import macro, markup, slug
from .summary import TABLE_ROWS, _clip
from .svg import _fmt, _svg_heatmap

KIND_LABEL = {"row": "row check: ", "finding": "finding: "}


_slug = slug


def _table(
    rows: list[dict], columns: list[str] | None = None, cls: str = "", limit: int = TABLE_ROWS
) -> str:
    """Records as a table (`_macros.html` `table`): the first `limit` rows, numbers right."""
    return macro("_macros.html", "table")(rows, columns, cls, limit)


def _records(obj: Any, key_name: str = "name") -> list[dict] | None:
    """A list of dicts from `[{...}, ...]` or `{name: {...}}`; None when `obj` is neither."""
    if isinstance(obj, list) and obj and all(isinstance(r, dict) for r in obj):
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
        return [{key_name: k, **v} for k, v in obj.items()]
    return None


def _flat(rec: dict) -> dict:
    """One level of a record for a table: nested values shortened to JSON text."""
    return {k: (v if not isinstance(v, (dict, list)) else _clip(v, 4, 80)) for k, v in rec.items()}


# --- views of particular auditors' info -----------------------------------------------------------
_STAT_KEYS = (
    "test",
    "statistic",
    "p_value",
    "p_adjusted",
    "threshold",
    "wasserstein_norm",
    "jensen_shannon",
    "auc",
    "drifted",
)


def _stat_row(rec: dict, **lead: Any) -> dict:
    """A test result as a table row: the lead keys, then the usual statistics, then the rest
    (nested values left out)."""
    row = dict(lead)
    for k in _STAT_KEYS:
        if k in rec:
            row[k] = rec[k]
    for k, v in rec.items():
        if k not in row and not isinstance(v, (dict, list)):
            row[k] = v
    return row


def _drift_view(info: dict) -> str:
    """`split_drift`: per split and column, the test, statistic and (corrected) p-value; the
    label and embedding tests. Falls back to any `drifted_columns` list it finds."""
    splits = info.get("splits")
    rows = other = recs = None
    singles = []
    if isinstance(splits, dict) and splits:
        rows, other = [], []
        for sp, res in splits.items():
            if not isinstance(res, dict):
                continue
            for col, st in (res.get("columns") or {}).items():
                if isinstance(st, dict):
                    rows.append(_stat_row(st, split=sp, column=col))
            for what in ("label", "embedding"):
                st = res.get(what)
                if isinstance(st, dict):
                    other.append(_stat_row(st, split=sp, test_of=what))
        rows.sort(key=lambda r: (not r.get("drifted"), r.get("p_adjusted") or 1.0))
    else:
        recs = [_flat(r) for r in _records(info.get("drifted_columns"), "column") or []]
        singles = [
            (key, _stat_row(info[key]))
            for key in ("label", "embedding")
            if isinstance(info.get(key), dict)
        ]
    return macro("views.html", "drift")(
        reference=info.get("reference"),
        correction=info.get("correction", "-"),
        alpha=info.get("alpha"),
        rows=rows,
        drifted=sum(1 for r in rows or [] if r.get("drifted")),
        other=other,
        recs=recs,
        singles=singles,
    )


def _group_cells(cells: Any) -> list[dict]:
    """Normalise a label x value group table to cells with label, value, count, accuracy."""
    if isinstance(cells, dict):
        cells = cells.get("table") or _records(cells, "group") or []
    out = []
    for g in cells or []:
        if not isinstance(g, dict):
            continue
        label = g.get("label", g.get("class"))
        value = g.get("value", g.get("attribute_value"))
        if label is None or value is None:
            continue
        out.append(
            {
                "label": label,
                "value": value,
                "count": g.get("count", g.get("n")),
                "accuracy": g.get("accuracy"),
            }
        )
    return out


_ATTRIBUTE_KEYS = (
    "attribute",
    "source",
    "kind",
    "num_groups",
    "cv_accuracy",
    "majority_baseline",
    "accuracy_lift",
    "cramers_v",
    "mutual_information",
    "p_adjusted",
    "associated",
    "strong",
)


def _spurious_view(info: dict) -> str:
    """`spurious_attribute`: the attributes tested (strongest first) and, for each associated
    one, a heatmap of out-of-sample accuracy over label x value with the worst group."""
    atts = _records(info.get("attributes"), "attribute") or []
    groups = info.get("groups") if isinstance(info.get("groups"), dict) else {}
    if not atts and not groups:
        return ""
    assoc = info.get("associated")
    heatmaps = []
    for name, g in list(groups.items())[:6]:
        cells = _group_cells(g)
        if not cells:
            continue
        worst = g.get("worst_group") if isinstance(g, dict) else None
        title = f"out-of-sample accuracy by label x {name}"
        heatmaps.append(
            {
                "name": name,
                "svg": markup(_svg_heatmap(cells, "label", "value", title)),
                "worst": worst if isinstance(worst, dict) else None,
            }
        )
    return macro("views.html", "spurious")(
        associated=None if assoc is None else ", ".join(map(str, assoc or [])),
        baseline=info.get("majority_baseline"),
        attributes=[{k: a[k] for k in _ATTRIBUTE_KEYS if k in a} or _flat(a) for a in atts],
        heatmaps=heatmaps,
    )


def _token_view(info: dict) -> str:
    recs = _records(info.get("cues") or info.get("tokens"), "token")
    return macro("views.html", "cues")([_flat(r) for r in recs] if recs else [])


# Views an auditor can name in its `ReportSection.view`, drawn from its `info`.
VIEWS: dict[str, Callable[[dict], str]] = {
    "drift_table": _drift_view,
    "group_heatmap": _spurious_view,
    "cue_table": _token_view,
}


def auditor_view(name: str) -> Callable[[dict], str] | None:
    """The info view the auditor `name` declares (None: none, or not a registered auditor)."""
    from ..auditor import load_builtin

    cls = load_builtin().get(name)
    view = cls.report.view if cls is not None else None
    if view is not None and view not in VIEWS:
        raise ValueError(f"auditor {name!r} declares an unknown report view {view!r}")
    return VIEWS.get(view) if view else None


def key_info(name: str, info: dict) -> str:
    """A table of the `info` keys the auditor `name` declares worth showing (ReportSection)."""
    from ..auditor import load_builtin

    cls = load_builtin().get(name)
    keys = [k for k in (cls.report.info_keys if cls is not None else ()) if k in info]
    rows = [{"key": k, "value": json.dumps(info[k], default=str)[:200]} for k in keys]
    return _table(rows) if rows else ""


def own_sections() -> dict[str, tuple[str, str]]:
    """Auditor name -> (anchor, title) for the auditors that declare a section of their own."""
    from ..auditor import load_builtin

    return {n: c.report.own_section for n, c in load_builtin().items() if c.report.own_section}


def _manifest_view(man: dict) -> str:
    """Rows per split and edits applied as tables; the whole manifest folded below."""
    recs = _records(man.get("splits"), "split")
    applied = man.get("edits_applied")
    rows = None
    if isinstance(applied, dict) and applied:
        rows = [
            {"edit": k, "reason": r, "edits": n}
            for k, v in applied.items()
            for r, n in (v.items() if isinstance(v, dict) else [("", v)])
        ]
    return macro("views.html", "manifest")(
        splits=[_flat(r) for r in recs] if recs else None,
        applied=rows,
        text=json.dumps(man, indent=1, ensure_ascii=False, default=str)[:8000],
    )


def _example_rows(examples: list[dict], image: bool) -> str:
    """The worst flagged rows of an auditor as a filterable table (`_macros.html` `examples`)."""
    return macro("_macros.html", "examples")([_example(ex) for ex in examples], image)


def _example(ex: dict) -> dict:
    sugg = ex.get("suggested_label")
    return {
        "row_id": ex[S.ROW_ID],
        "split": ex.get("split"),
        "score": ex.get("score"),
        "text": ex.get("text"),
        "thumb": ex.get("_thumb"),
        "image_path": ex.get("image_path"),
        "label": ex.get("label"),
        "suggested": sugg if sugg is not None else "",
        "changed": sugg is not None and str(sugg) != str(ex.get("label")),
        "details": "; ".join(f"{k}={_fmt(v)}" for k, v in (ex.get("details") or {}).items())[:400],
    }
