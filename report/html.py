"""The HTML report: one standalone file summarising a store's latest audit, repairs and export.

`render_html(summary)` turns `build_summary`'s dict into one HTML file: the page is a Jinja2
template with autoescape (report/templates/report.html) around sections built by report/views.py,
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
from .summary import STEPS, THUMB_PX, build_summary
from .svg import PALETTE, UNFLAGGED, _e, _fmt, _svg_bar, _svg_histogram, _svg_map
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

HERE = Path(__file__).resolve().parent


def _page(summary: dict, sections: list[tuple[str, str, str]]) -> str:
    """The page around the sections: report/templates/report.html, autoescaped; the sections'
    HTML (built and escaped by views.py) and the static CSS/JS go in as markup."""
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        keep_trailing_newline=True,
    )
    static = {n: Markup((HERE / "static" / n).read_text(encoding="utf-8")) for n in _STATIC}
    return env.get_template("report.html").render(
        title=f"datacure report: {Path(summary['store']).name}",
        store=summary["store"],
        generated_at=summary["generated_at"],
        version=summary["tool_version"],
        css=static["report.css"],
        js_errors=static["errors.js"],
        js_ui=static["ui.js"],
        sections=[{"id": i, "title": t, "html": Markup(h)} for i, t, h in sections],
    )


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
    summary, ds, run, auds, image = c.summary, c.ds, c.run, c.auds, c.image
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
    ov = [
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v in cards)
        + "</div>"
    ]
    split_rows = [
        {"split": s, "rows": n, "labelled": ds["labelled"].get(s, 0)}
        for s, n in ds["splits"].items()
    ]
    ov.append("<h4>Splits</h4>" + _table(split_rows))
    if ds["classes"]:
        sp = list(ds["splits"])
        cls_rows = [
            {"label": lab, **{s: c.get(s, 0) for s in sp}} for lab, c in ds["classes"].items()
        ]
        more = (
            f' <span class="muted">(the {len(cls_rows)} commonest of {ds["num_classes"]})</span>'
            if ds["num_classes"] > len(cls_rows)
            else ""
        )
        ov.append(f"<h4>Labels by split{more}</h4>" + _table(cls_rows, ["label"] + sp))
    content = (
        ("text column <code>" + _e(ds.get("text_column")) + "</code>")
        if ds.get("text_column")
        else (
            "image column <code>" + _e(ds.get("image_column")) + "</code>"
            if image
            else "no text or image column"
        )
    )
    embs = (
        ", ".join(
            f"{e['table']} ({e['model']}, {e['rows']:,} x {e['dim']})" for e in ds["embeddings"]
        )
        or "none"
    )
    ov.append(f"<p>{content}; embeddings: {_e(embs)}.</p>")
    if run:
        ov.append(
            f'<p class="muted">audit run {run["run_id"]}, finished {_e(run.get("finished_at"))}, '
            f"datacure {_e(run.get('version'))}.</p>"
        )
    else:
        ov.append(
            '<p class="notrun">No audit has run on this store yet: '
            "run <code>datacure audit</code>.</p>"
        )
    sections.append(("overview", "Overview", "".join(ov)))


def _auditor_table(c: _Ctx, sections: list) -> None:
    """Auditors: summary table + one block per auditor."""
    summary, auds, colours, image = c.summary, c.auds, c.colours, c.image
    own_by_name = c.own_by_name
    if auds or summary.get("skipped"):
        rows = []
        for a in sorted(auds, key=lambda a: -a["share"]):
            rows.append(
                f'<tr><td><a href="#auditor-{_slug(a["name"])}">{_e(a["name"])}</a></td>'
                f'<td class="num">{a["flagged"]:,}</td><td class="num">{a["rows"]:,}</td>'
                f'<td class="num">{a["share"]:.2%}</td><td>{_svg_bar(a["share"])}</td>'
                f'<td class="num">{_e(_fmt(a["score"]))}</td>'
                f"<td>{_e(KIND_LABEL.get(a.get('kind'), ''))}{_e(a['description'][:120])}</td>"
                "</tr>"
            )
        for s in summary.get("skipped") or []:
            rows.append(
                f'<tr class="notrun"><td>{_e(s["name"])}</td>'
                f'<td colspan="5">not run: {_e(s["reason"])}</td>'
                f"<td>{_e(s['description'][:120])}</td></tr>"
            )
        sections.append(
            (
                "auditors",
                "Auditors",
                '<table class="summary"><thead><tr><th>auditor</th><th>flagged</th>'
                "<th>rows</th><th>share</th>"
                "<th></th><th>dataset score</th><th>checks</th></tr></thead><tbody>"
                + "".join(rows)
                + '</tbody></table><p class="muted">Scores are in [0, 1]; lower is more severe. '
                "The dataset score summarises each auditor (1 = no problem found). A row check's "
                "flag means the row needs a decision; a finding is about the data set, and "
                "flags rows only where the finding is practically significant.</p>",
            )
        )
        blocks = [
            (
                '<p><input id="dc-filter" class="filter" type="search" '
                'placeholder="filter the example tables"></p>'
            )
        ]
        for a in sorted(auds, key=lambda a: -a["share"]):  # the order of the table above
            per = "; ".join(
                f"{sp}: {v['flagged']:,} of {v['rows']:,}" for sp, v in a["per_split"].items()
            )
            own = own_by_name.get(a["name"])
            view = auditor_view(a["name"])
            special = (
                f'<p><a href="#{own[0]}">{_e(own[1])}: see its section</a></p>'
                if own
                else (view(a["info"] if isinstance(a["info"], dict) else {}) if view else "")
            )
            info_txt = json.dumps(a["info"], indent=1, ensure_ascii=False, default=str)
            if len(info_txt) > INFO_CHARS:
                info_txt = (
                    info_txt[:INFO_CHARS]
                    + f"\n... ({len(info_txt) - INFO_CHARS:,} more characters)"
                )
            worst = (
                f"<h4>Worst flagged rows</h4>{_example_rows(a['examples'], image)}"
                if a["flagged"]
                else ""
            )
            blocks.append(
                f'<div class="aud" id="auditor-{_slug(a["name"])}" data-auditor="{_e(a["name"])}">'
                f'<h3><i style="display:inline-block;width:12px;height:12px;border-radius:6px;'
                f'background:{colours.get(a["name"])}"></i> {_e(a["name"])}</h3>'
                f"<p>{_e(a['description'])}</p>"
                f'<div class="grid"><div><p><b>{a["flagged"]:,}</b> of {a["rows"]:,} rows flagged '
                f"({a['share']:.2%}); dataset score {_e(_fmt(a['score']))}.</p>"
                f'<p class="muted">{_e(per)}</p></div>{_svg_histogram(a["histogram"])}</div>'
                f"{key_info(a['name'], a['info'] if isinstance(a['info'], dict) else {})}"
                f"{special}{worst}"
                f"<details><summary>info</summary><pre>{_e(info_txt)}</pre></details></div>"
            )
        sections.append(("auditor-details", "Findings by auditor", "".join(blocks)))


def _own_sections(c: _Ctx, sections: list) -> None:
    """Drift / spurious: short pointers so these questions have a named place even when not run."""
    summary, auds, own_by_name = c.summary, c.auds, c.own_by_name
    ran = {a["name"]: a for a in auds}
    skipped = {s["name"]: s for s in summary.get("skipped") or []}
    for name, (sid, title) in own_by_name.items():
        if name in ran:
            view = auditor_view(name)
            info = ran[name]["info"] if isinstance(ran[name]["info"], dict) else {}
            body = view(info) if view else ""
            body = body or '<p class="muted">nothing to show in its info.</p>'
            body += f'<p><a href="#auditor-{_slug(name)}">flagged rows of {name}</a></p>'
        elif name in skipped:
            body = f'<p class="notrun">not run: {_e(skipped[name]["reason"])}</p>'
        else:
            body = f'<p class="notrun">not run ({name} was not part of this audit).</p>'
        sections.append((sid, title, body))


def _slices(c: _Ctx, sections: list) -> None:
    """Slices."""
    summary, run = c.summary, c.run
    sl = summary.get("slices") or []
    if sl:
        sections.append(
            (
                "slices",
                "Slices",
                _table(
                    [
                        {
                            "slice": s["slice_id"],
                            "auditor": s["auditor"],
                            "description": s["description"],
                            "size": s["size"],
                            "error rate": s["error_rate"],
                        }
                        for s in sl
                    ]
                ),
            )
        )
    elif run:
        sections.append(
            ("slices", "Slices", '<p class="notrun">no slices recorded in this run.</p>')
        )


def _embedding_map(c: _Ctx, sections: list) -> None:
    """Embedding map."""
    summary, colours = c.summary, c.colours
    m = summary.get("embedding_map")
    if m:
        leg = "".join(
            f'<span><i style="background:{colours.get(g["group"], UNFLAGGED)}"></i>'
            f"{_e(g['group'])} ({g['count']:,})</span>"
            for g in m["legend"]
        )
        ev = m["explained_variance"]
        sections.append(
            (
                "embedding-map",
                "Embedding map",
                (
                    f'<p class="muted">{m["sampled"]:,} of {m["total"]:,} rows of '
                    f"{_e(m['embedding'])}, "
                    f"first two principal components ({ev[0]:.1%} and {ev[1]:.1%} "
                    "of the variance); "
                    "each row coloured by its rarest flag "
                    "(the auditor flagging the fewest rows).</p>"
                    f'<p class="legend">{leg}</p>' + _svg_map(m, colours)
                ),
            )
        )


def _repairs(c: _Ctx, sections: list) -> None:
    """Edits, reviews, export."""
    summary = c.summary
    ed = summary.get("edits")
    if ed:
        body = [
            f"<p>{ed['total']:,} planned edits.</p>",
            _table(ed["counts"]),
            "<h4>First edits</h4>",
            _table(ed["sample"]),
        ]
        gen = ed.get("generated")
        if gen:
            body.append("<h4>Generated samples</h4>" + _table(gen["counts"]))
            ex = gen["examples"]
            if any(e.get("_thumb") for e in ex):
                body.append(
                    "".join(
                        f'<img src="{e["_thumb"]}" alt="generated {_e(e["gen_id"])}" '
                        f'title="label {_e(e["label"])}" width="{THUMB_PX}"> '
                        for e in ex
                        if e.get("_thumb")
                    )
                )
            body.append(_table(ex))
        sections.append(("edits", "Planned edits", "".join(body)))
    rv = summary.get("reviews")
    if rv:
        sections.append(("reviews", "Review decisions", _table(rv["counts"])))
    man = summary.get("export_manifest")
    if man:
        sections.append(
            (
                "export",
                "Export manifest",
                _manifest_view(man),
            )
        )


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
