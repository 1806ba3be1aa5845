"""HTML fragments of the report built from an auditor's `info` and from the export manifest:
tables, the drift table, the spurious-attribute heatmap, the cue table, example rows."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..store import schema as S
from .summary import TABLE_ROWS, THUMB_PX, _clip
from .svg import _e, _fmt, _svg_heatmap

KIND_LABEL = {"row": "row check: ", "finding": "finding: "}


# ------------------------------------------------------------------------------------------------
# rendering: inline SVG, escaped text, no external assets
# ------------------------------------------------------------------------------------------------
def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in str(name).lower()).strip("-") or "x"


def _table(
    rows: list[dict], columns: list[str] | None = None, cls: str = "", limit: int = TABLE_ROWS
) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    columns = columns or list(
        dict.fromkeys(k for r in rows for k in r if not str(k).startswith("_"))
    )
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for r in rows[:limit]:
        cells = []
        for c in columns:
            v = r.get(c)
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f'<td class="{"num" if num else ""}">{_e(_fmt(v))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = (
        f'<p class="muted">{len(rows) - limit} more rows not shown</p>' if len(rows) > limit else ""
    )
    return (
        f'<table class="{cls}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>{more}"
    )


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
    parts = []
    splits = info.get("splits")
    if info.get("reference"):
        parts.append(
            f"<p>Each split against the reference split <code>{_e(info['reference'])}"
            f"</code>; p-values corrected by {_e(info.get('correction', '-'))}, "
            f"alpha {_e(_fmt(info.get('alpha')))}.</p>"
        )
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
        drifted = [r for r in rows if r.get("drifted")]
        parts.append(f"<h4>Columns ({len(drifted)} of {len(rows)} tests drifted)</h4>")
        parts.append(_table(rows))
        if other:
            parts.append("<h4>Labels and embedding</h4>" + _table(other))
        return "".join(parts)
    recs = _records(info.get("drifted_columns"), "column")
    if recs:
        parts.append("<h4>Drifted columns</h4>" + _table([_flat(r) for r in recs]))
    for key in ("label", "embedding"):
        v = info.get(key)
        if isinstance(v, dict):
            parts.append(f"<h4>{_e(key)}</h4>" + _table([_stat_row(v)]))
    return "".join(parts)


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


def _spurious_view(info: dict) -> str:
    """`spurious_attribute`: the attributes tested (strongest first) and, for each associated
    one, a heatmap of out-of-sample accuracy over label x value with the worst group."""
    atts = _records(info.get("attributes"), "attribute") or []
    groups = info.get("groups") if isinstance(info.get("groups"), dict) else {}
    if not atts and not groups:
        return ""
    parts = []
    if info.get("associated") is not None:
        assoc = info.get("associated") or []
        parts.append(
            "<p>Associated with the label: <b>"
            + (_e(", ".join(map(str, assoc))) or "none")
            + "</b>; majority-class baseline accuracy "
            + _e(_fmt(info.get("majority_baseline")))
            + ".</p>"
        )
    if atts:
        keep = (
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
        rows = [{k: a[k] for k in keep if k in a} or _flat(a) for a in atts]
        parts.append("<h4>Attributes tested</h4>" + _table(rows))
    for name, g in list(groups.items())[:6]:
        cells = _group_cells(g)
        if not cells:
            continue
        worst = g.get("worst_group") if isinstance(g, dict) else None
        note = ""
        if isinstance(worst, dict):
            note = (
                f'<p class="muted">worst group: label {_e(worst.get("label"))}, {_e(name)} = '
                f"{_e(worst.get('value'))} (n={_e(_fmt(worst.get('count')))}, accuracy "
                f"{_e(_fmt(worst.get('accuracy')))})</p>"
            )
        parts.append(
            f'<div class="heatwrap" data-heatmap="{_e(name)}">'
            + _svg_heatmap(cells, "label", "value", f"out-of-sample accuracy by label x {name}")
            + note
            + "</div>"
        )
    return "".join(parts)


def _token_view(info: dict) -> str:
    recs = _records(info.get("cues") or info.get("tokens"), "token")
    return "<h4>Strongest cues</h4>" + _table([_flat(r) for r in recs], limit=15) if recs else ""


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
    parts = []
    splits = man.get("splits")
    recs = _records(splits, "split")
    if recs:
        parts.append("<h4>Rows per split</h4>" + _table([_flat(r) for r in recs]))
    applied = man.get("edits_applied")
    if isinstance(applied, dict) and applied:
        rows = [
            {"edit": k, "reason": r, "edits": n}
            for k, v in applied.items()
            for r, n in (v.items() if isinstance(v, dict) else [("", v)])
        ]
        parts.append("<h4>Edits applied</h4>" + _table(rows))
    text = json.dumps(man, indent=1, ensure_ascii=False, default=str)[:8000]
    parts.append(f"<details><summary>manifest.json</summary><pre>{_e(text)}</pre></details>")
    return "".join(parts)


def _example_rows(examples: list[dict], image: bool) -> str:
    if not examples:
        return '<p class="muted">no flagged rows</p>'
    head = (
        "<tr><th>row</th><th>split</th><th>score</th><th>"
        + ("image" if image else "text")
        + "</th><th>label</th><th>suggested</th><th>details</th></tr>"
    )
    body = []
    for ex in examples:
        if image:
            thumb = ex.get("_thumb")
            content = (
                f'<img src="{thumb}" alt="row {_e(ex[S.ROW_ID])}" width="{THUMB_PX}">'
                if thumb
                else f'<span class="muted">no image: {_e(ex.get("image_path"))}</span>'
            )
        else:
            content = f'<span class="snip">{_e(ex.get("text"))}</span>'
        det = "; ".join(f"{k}={_fmt(v)}" for k, v in (ex.get("details") or {}).items())
        sugg = ex.get("suggested_label")
        changed = sugg is not None and str(sugg) != str(ex.get("label"))
        body.append(
            f'<tr><td class="num">{_e(ex[S.ROW_ID])}</td><td>{_e(ex.get("split"))}</td>'
            f'<td class="num">{_e(_fmt(ex.get("score")))}</td><td>{content}</td>'
            f'<td>{_e(ex.get("label"))}</td><td class="{"sugg" if changed else ""}">'
            f"{_e(sugg if sugg is not None else '')}</td>"
            f'<td class="det">{_e(det[:400])}</td></tr>'
        )
    return (
        f'<table class="examples filterable"><thead>{head}</thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )
