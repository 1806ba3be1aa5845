"""The HTML report: one standalone file summarising a store's latest audit, repairs and export.

`render_html(summary)` turns `build_summary`'s dict into one HTML file: the page is a Jinja2
template with autoescape (report/templates/report.html) around the sections (the macros of
report/templates/sections.html, fed by the builders here, and the views of report/views.py),
with the CSS and scripts of report/static inlined and SVG plots; no network assets (a
Content-Security-Policy forbids them, so a browser shows nothing the file does not carry).
`write_report` writes the HTML and, on request, the same summary as JSON. Sections for auditors
that did not run say so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..store.db import Store
from ..store.errors import InputError
from .jinja import HERE, env, macro, markup
from .summary import STEPS, build_summary
from .svg import PALETTE, UNFLAGGED, _fmt, _svg_bar, _svg_histogram, _svg_map
from .views import (
    KIND_LABEL,
    _example_rows,
    _manifest_view,
    _slug,
    _table,
    auditor_view,
    key_info,
    own_sections,
)


def _page(summary: dict, sections: list[tuple[str, str, str]]) -> str:
    """The page around the sections: report/templates/report.html, autoescaped; the sections'
    HTML (rendered from the templates) and the static CSS/JS go in as markup."""
    static = {n: markup((HERE / "static" / n).read_text(encoding="utf-8")) for n in _STATIC}
    return (
        env()
        .get_template("report.html")
        .render(
            title=f"datacure report: {Path(summary['store']).name}",
            store=summary["store"],
            generated_at=summary["generated_at"],
            version=summary["tool_version"],
            css=static["report.css"],
            js_errors=static["errors.js"],
            js_ui=static["ui.js"],
            sections=[{"id": i, "title": t, "html": markup(h)} for i, t, h in sections],
        )
    )


def _section(which: str, /, **values) -> str:
    """The macro `which` of report/templates/sections.html with `values`."""
    return macro("sections.html", which)(**values)


_STATIC = ("report.css", "errors.js", "ui.js")


INFO_CHARS = 4000  # raw `info` JSON shown per auditor, truncated beyond this


def _public(obj: Any) -> Any:
    """The summary without render-only keys (those starting with `_`, e.g. thumbnails)."""
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list):
        return [_public(v) for v in obj]
    return obj


# The first script in <head>: collects script errors into the DOM (#dc-errors, data-count), so a
# headless browser's --dump-dom shows them, and so does a person opening the file.

# After the body: a filter box for the example tables, sortable table headers, a ready marker.


@dataclass
class _Ctx:
    """What every section builder reads."""

    summary: dict
    ds: dict
    run: dict | None
    auds: list[dict]
    colours: dict[str, str]
    image: bool
    own_by_name: dict[str, tuple[str, str]]


def _overview(c: _Ctx, sections: list) -> None:
    """Overview."""
    summary, ds, auds = c.summary, c.ds, c.auds
    cards = [
        ("rows", _fmt(ds["rows"])),
        ("splits", _fmt(len(ds["splits"]))),
        ("classes", _fmt(ds["num_classes"])),
        ("auditors run", _fmt(len(auds))),
        ("auditors not run", _fmt(len(summary.get("skipped") or []))),
    ]
    if summary.get("flagged_rows") is not None and ds["rows"]:
        cards.append(
            (
                "rows flagged by any row check (rows needing a decision; findings not counted)",
                f"{summary['flagged_rows']:,} ({summary['flagged_rows'] / ds['rows']:.1%})",
            )
        )
        found = [a["name"] for a in auds if a.get("kind") == "finding" and a["flagged"]]
        cards.append(("findings with flagged rows", _fmt(len(found))))
    sp = list(ds["splits"])
    html = _section(
        "overview",
        cards=cards,
        split_rows=[
            {"split": s, "rows": n, "labelled": ds["labelled"].get(s, 0)}
            for s, n in ds["splits"].items()
        ],
        class_rows=[
            {"label": lab, **{s: n.get(s, 0) for s in sp}} for lab, n in ds["classes"].items()
        ],
        class_columns=["label"] + sp,
        num_classes=ds["num_classes"],
        ds=ds,
        image=c.image,
        embeddings=", ".join(
            f"{e['table']} ({e['model']}, {e['rows']:,} x {e['dim']})" for e in ds["embeddings"]
        )
        or "none",
        run=c.run,
    )
    sections.append(("overview", "Overview", html))


def _auditor_table(c: _Ctx, sections: list) -> None:
    """Auditors: summary table + one block per auditor."""
    skipped = c.summary.get("skipped") or []
    if not c.auds and not skipped:
        return
    auds = sorted(c.auds, key=lambda a: -a["share"])
    rows = [
        {
            "name": a["name"],
            "slug": _slug(a["name"]),
            "flagged": a["flagged"],
            "rows": a["rows"],
            "share": a["share"],
            "bar": markup(_svg_bar(a["share"])),
            "score": a["score"],
            "checks": KIND_LABEL.get(a.get("kind"), "") + a["description"][:120],
        }
        for a in auds
    ]
    sections.append(("auditors", "Auditors", _section("auditors", rows=rows, skipped=skipped)))
    blocks = [_auditor_block(c, a) for a in auds]  # the order of the table above
    sections.append(
        (
            "auditor-details",
            "Findings by auditor",
            _section("details", blocks=blocks),
        )
    )


def _auditor_block(c: _Ctx, a: dict) -> dict:
    """What one auditor's block in "Findings by auditor" shows."""
    info = a["info"] if isinstance(a["info"], dict) else {}
    own = c.own_by_name.get(a["name"])
    view = auditor_view(a["name"]) if not own else None
    info_txt = json.dumps(a["info"], indent=1, ensure_ascii=False, default=str)
    if len(info_txt) > INFO_CHARS:
        more = len(info_txt) - INFO_CHARS
        info_txt = info_txt[:INFO_CHARS] + f"\n... ({more:,} more characters)"
    return {
        "name": a["name"],
        "slug": _slug(a["name"]),
        "colour": c.colours.get(a["name"]),
        "description": a["description"],
        "flagged": a["flagged"],
        "rows": a["rows"],
        "share": a["share"],
        "score": a["score"],
        "per_split": "; ".join(
            f"{sp}: {v['flagged']:,} of {v['rows']:,}" for sp, v in a["per_split"].items()
        ),
        "histogram": markup(_svg_histogram(a["histogram"])),
        "key_info": markup(key_info(a["name"], info)),
        "own": own,
        "view": markup(view(info)) if view else "",
        "examples": _example_rows(a["examples"], c.image) if a["flagged"] else "",
        "info_text": info_txt,
    }


def _own_sections(c: _Ctx, sections: list) -> None:
    """Drift / spurious: short pointers so these questions have a named place even when not run."""
    ran = {a["name"]: a for a in c.auds}
    skipped = {s["name"]: s for s in c.summary.get("skipped") or []}
    for name, (sid, title) in c.own_by_name.items():
        view = auditor_view(name) if name in ran else None
        info = ran[name]["info"] if name in ran else None
        body = _section(
            "own",
            name=name,
            view=markup(view(info if isinstance(info, dict) else {})) if view else "",
            ran=name in ran,
            skipped=name in skipped,
            reason=skipped[name]["reason"] if name in skipped else None,
        )
        sections.append((sid, title, body))


def _slices(c: _Ctx, sections: list) -> None:
    """Slices."""
    sl = c.summary.get("slices") or []
    if sl or c.run:
        rows = [
            {
                "slice": s["slice_id"],
                "auditor": s["auditor"],
                "description": s["description"],
                "size": s["size"],
                "error rate": s["error_rate"],
            }
            for s in sl
        ]
        sections.append(("slices", "Slices", _section("slices", rows=rows)))


def _embedding_map(c: _Ctx, sections: list) -> None:
    """Embedding map."""
    m = c.summary.get("embedding_map")
    if m:
        legend = [(g, c.colours.get(g["group"], UNFLAGGED)) for g in m["legend"]]
        html = _section("embedding_map", m=m, legend=legend, svg=markup(_svg_map(m, c.colours)))
        sections.append(("embedding-map", "Embedding map", html))


def _repairs(c: _Ctx, sections: list) -> None:
    """Edits, reviews, export."""
    ed = c.summary.get("edits")
    if ed:
        gen = ed.get("generated")
        thumbs = [e for e in gen["examples"] if e.get("_thumb")] if gen else []
        sections.append(("edits", "Planned edits", _section("edits", ed=ed, thumbs=thumbs)))
    rv = c.summary.get("reviews")
    if rv:
        sections.append(("reviews", "Review decisions", _table(rv["counts"])))
    man = c.summary.get("export_manifest")
    if man:
        sections.append(("export", "Export manifest", _manifest_view(man)))


def render_html(summary: dict) -> str:
    """The report as one HTML document (see module doc): the sections in order, then the page."""
    ds = summary["dataset"]
    auds = summary.get("auditors") or []
    colours = {"not flagged": UNFLAGGED}
    names = sorted(a["name"] for a in auds)
    colours.update({n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)})
    c = _Ctx(
        summary,
        ds,
        summary.get("run"),
        auds,
        colours,
        bool(ds.get("image_column")),
        own_sections(),  # auditors that declare a section of their own
    )
    sections: list[tuple[str, str, str]] = []  # (id, title, html)
    for build in (_overview, _auditor_table, _own_sections, _slices, _embedding_map, _repairs):
        build(c, sections)
    return _page(summary, sections)


def write_report(
    store: Store,
    out_path: str | Path,
    json_path: str | Path | None = None,
    run_id: int | None = None,
    progress: Callable[[str], None] | None = None,
    manifest_path: str | Path | None = None,
) -> Path:
    """Write the standalone HTML report (and the same summary as JSON when `json_path` is given).

    Reads the store only (a read-only store is fine). `manifest_path` names an export's
    manifest.json to include (default: the last export recorded in the store). Returns the HTML
    path."""
    from ..store.progress import progress_bar

    if manifest_path is not None and not Path(manifest_path).is_file():
        raise InputError(
            f"no manifest at {manifest_path}",
            "point --manifest at the manifest.json inside a `datacure export` folder",
        )
    with progress_bar(len(STEPS), "report", unit="steps") as bar:

        def step(msg: str) -> None:
            bar.describe(f"report: {msg}")
            bar.advance(1)
            if progress is not None:
                progress(f"report: {msg}")

        summary = build_summary(store, run_id=run_id, progress=step, manifest_path=manifest_path)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(render_html(summary), encoding="utf-8")
    tmp.replace(out_path)  # never leave a half-written report behind
    if json_path is not None:
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(
            json.dumps(_public(summary), indent=1, ensure_ascii=False, default=str),
            encoding="utf-8",
        )
    return out_path
