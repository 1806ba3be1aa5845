"""The HTML report: one standalone file summarising a store's latest audit, repairs and export.

`build_summary(store)` aggregates the store's tables with SQL into a bounded, JSON-safe dict
(counts, histograms, a few worst examples per auditor, a sampled embedding map), so the report's
size does not grow with the data: a 1M-row store gives a report of the same order as a 10k-row
one. `render_html(summary)` turns it into one HTML file with inline CSS, SVG plots and a small
script; no network assets (a Content-Security-Policy forbids them, so a browser shows nothing
the file does not carry). `write_report` writes the HTML and, on request, the same summary as
JSON.

The report reads tables generically (`issues`, `issue_summary`, `skipped_auditors`, `slices`,
`edits`, `generated`, `reviews`, `runs`, `embeddings_<key>`): an auditor added later shows up
with its count, share, histogram and worst examples without any change here. A few auditors get
an extra view built from their `info`: `split_drift` (drift table), `spurious_attribute` (group
accuracy heatmap), `spurious_token` (cue table). Sections for auditors that did not run say so.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..store import schema as S
from ..store.db import Store
from ..store.errors import InputError

MAX_EXAMPLES = 10  # worst flagged rows shown per auditor
MAP_POINTS = 5000  # rows sampled for the embedding map
HIST_BINS = 20
SNIPPET_CHARS = 240
THUMB_PX = 56
INFO_CHARS = 4000  # raw `info` JSON shown per auditor, truncated beyond this
TABLE_ROWS = 40  # rows of any table drawn from an auditor's info

# Colours for auditors in plots: a fixed, colour-blind-friendly cycle (Okabe-Ito + Tableau).
PALETTE = (
    "#d55e00",
    "#0072b2",
    "#009e73",
    "#cc79a7",
    "#e69f00",
    "#56b4e9",
    "#8c564b",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#9467bd",
    "#f0e442",
)
UNFLAGGED = "#c8ccd2"


# ------------------------------------------------------------------------------------------------
# summary: SQL aggregates into a bounded, JSON-safe dict
# ------------------------------------------------------------------------------------------------
def _safe(obj: Any) -> Any:
    """Plain JSON types (numpy scalars, datetimes, NaN -> None)."""
    if isinstance(obj, dict):
        return {str(k): _safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _safe(obj.tolist())
    if isinstance(obj, np.generic):
        return _safe(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return (
            obj.isoformat(sep=" ", timespec="seconds")
            if isinstance(obj, _dt.datetime)
            else str(obj)
        )
    if isinstance(obj, (bytes, bytearray)):
        return f"<{len(obj)} bytes>"
    return obj


def _loads(v: Any) -> Any:
    if v is None or isinstance(v, (dict, list)):
        return v
    try:
        return json.loads(v)
    except (TypeError, ValueError):
        return v


def _clip(obj: Any, items: int = 6, chars: int = 160) -> Any:
    """Shorten long lists and strings inside a details dict for display."""
    if isinstance(obj, dict):
        return {k: _clip(v, items, chars) for k, v in list(obj.items())[:24]}
    if isinstance(obj, list):
        head = [_clip(v, items, chars) for v in obj[:items]]
        return head + [f"... {len(obj) - items} more"] if len(obj) > items else head
    if isinstance(obj, str) and len(obj) > chars:
        return obj[: chars - 1] + "..."
    if isinstance(obj, float):
        return round(obj, 4)
    return obj


def _rows(store: Store, sql: str, params: list | None = None) -> list[dict]:
    cur = store.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _auditor_descriptions() -> dict[str, str]:
    from . import load_builtin  # a broken auditor module is an error here too, not a gap

    return {n: (c.description or "") for n, c in load_builtin().items()}


KIND_LABEL = {"row": "row check: ", "finding": "finding: "}


def _auditor_kinds() -> dict[str, str]:
    """`row` (a flag is a row decision) or `finding` (dataset-level) per registered auditor."""
    from . import load_builtin

    return {n: c.kind for n, c in load_builtin().items()}


def _thumbnail(path: str | None) -> str | None:
    """A small PNG of an image file as a data: URI, or None when it cannot be read."""
    if not path:
        return None
    try:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB_PX, THUMB_PX))
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    except Exception:  # noqa: BLE001 - a missing or corrupt file shows as "no image"
        return None


def _dataset(store: Store) -> dict:
    counts = store.split_counts()
    cols = [c for c, _ in store.columns(S.SAMPLES)] if store.table_exists(S.SAMPLES) else []
    labelled = {}
    classes: dict[str, dict[str, int]] = {}
    num_classes = 0
    if S.LABEL in cols:
        labelled = dict(store.fetchall(f"SELECT split, count(label) FROM {S.SAMPLES} GROUP BY 1"))
        num_classes = int(store.scalar(f"SELECT count(DISTINCT label) FROM {S.SAMPLES}") or 0)
        # the 30 commonest classes only: a store with 10k classes must not blow up the report
        top = store.fetchall(
            f"SELECT label::VARCHAR FROM {S.SAMPLES} WHERE label IS NOT NULL "
            "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 30"
        )
        keep = [t[0] for t in top]
        if keep:
            for sp, lab, n in store.fetchall(
                f"SELECT split, label::VARCHAR, count(*) FROM {S.SAMPLES} "
                "WHERE label::VARCHAR IN (SELECT unnest(?::VARCHAR[])) GROUP BY ALL",
                [keep],
            ):
                classes.setdefault(lab, {})[sp] = int(n)
            classes = {k: classes.get(k, {}) for k in keep}
    embs = []
    for e in store.embedding_keys():
        table = S.embedding_table(e["key"])
        n = (
            store.scalar(f"SELECT count(*) FROM {S.quote(table)}")
            if store.table_exists(table)
            else 0
        )
        embs.append(
            {
                "table": table,
                "model": e.get("model"),
                "dim": e.get("dim"),
                "rows": n,
                "column": e.get("column_name"),
                "kind": e.get("kind"),
            }
        )
    return {
        "rows": int(sum(counts.values())),
        "splits": counts,
        "labelled": labelled,
        "num_classes": num_classes,
        "classes": classes,
        "text_column": store.text_column(),
        "image_column": store.image_column(),
        "columns": [c for c in cols if c != S.CONTENT_HASH],
        "embeddings": embs,
    }


def _examples(store: Store, run_id: int, per: int) -> dict[str, list[dict]]:
    """The `per` worst flagged rows of each auditor, with their content and labels."""
    text_col = store.text_column()
    cols = {c for c, _ in store.columns(S.SAMPLES)}
    sel = ["s.split", "s.label::VARCHAR AS label"]
    if text_col and text_col in cols:
        sel.append(f"left(s.{S.quote(text_col)}::VARCHAR, {SNIPPET_CHARS + 1}) AS text")
    if S.IMAGE_PATH in cols:
        sel.append(f"s.{S.IMAGE_PATH} AS image_path")
    rows = _rows(
        store,
        f"""
        WITH w AS (
            SELECT auditor, row_id, score, details,
                   row_number() OVER (PARTITION BY auditor ORDER BY score, row_id) AS rn
            FROM {S.ISSUES} WHERE run_id = ? AND is_issue
        )
        SELECT w.auditor, w.row_id, w.score, w.details, {", ".join(sel)}
        FROM w LEFT JOIN {S.SAMPLES} s USING (row_id)
        WHERE w.rn <= ? ORDER BY w.auditor, w.rn
        """,
        [run_id, per],
    )
    out: dict[str, list[dict]] = {}
    for r in rows:
        det = _loads(r.pop("details")) or {}
        if not isinstance(det, dict):
            det = {"details": det}
        sugg = None
        for key in ("suggested_label", "given_label_suggestion", "suggestion"):
            if key in det:
                sugg = det.pop(key)
                break
        text = r.get("text")
        if isinstance(text, str) and len(text) > SNIPPET_CHARS:
            text = text[: SNIPPET_CHARS - 1] + "..."
        ex = {
            S.ROW_ID: r[S.ROW_ID],
            "split": r.get("split"),
            "score": r["score"],
            "label": r.get("label"),
            "suggested_label": None if sugg is None else str(sugg),
            "text": text,
            "image_path": r.get("image_path"),
            "details": _clip(det),
        }
        if ex["image_path"]:
            ex["_thumb"] = _thumbnail(ex["image_path"])
        out.setdefault(r["auditor"], []).append(ex)
    return out


def _histograms(store: Store, run_id: int) -> dict[str, dict]:
    rows = store.fetchall(
        f"SELECT auditor, least(greatest(floor(score * {HIST_BINS}), 0), {HIST_BINS - 1})::INT,"
        f" is_issue, count(*) FROM {S.ISSUES} WHERE run_id = ? GROUP BY ALL",
        [run_id],
    )
    out: dict[str, dict] = {}
    for aud, b, flagged, n in rows:
        h = out.setdefault(aud, {"flagged": [0] * HIST_BINS, "unflagged": [0] * HIST_BINS})
        h["flagged" if flagged else "unflagged"][b] += int(n)
    return out


def _per_split(store: Store, run_id: int) -> dict[str, dict]:
    rows = store.fetchall(
        f"SELECT i.auditor, s.split, count(*), count(*) FILTER (WHERE i.is_issue) "
        f"FROM {S.ISSUES} i JOIN {S.SAMPLES} s USING (row_id) WHERE i.run_id = ? GROUP BY ALL "
        "ORDER BY 1, 2",
        [run_id],
    )
    out: dict[str, dict] = {}
    for aud, sp, n, f in rows:
        out.setdefault(aud, {})[sp] = {"rows": int(n), "flagged": int(f)}
    return out


def _auditors(store: Store, run_id: int, max_examples: int) -> tuple[list[dict], list[dict]]:
    desc = _auditor_descriptions()
    kinds = _auditor_kinds()
    stats = {
        r["auditor"]: r
        for r in _rows(
            store,
            f"SELECT auditor, count(*) AS rows, count(*) FILTER (WHERE is_issue) AS flagged "
            f"FROM {S.ISSUES} WHERE run_id = ? GROUP BY 1",
            [run_id],
        )
    }
    summ = _rows(
        store,
        f"SELECT auditor, score, num_issues, info FROM {S.ISSUE_SUMMARY} WHERE run_id = ? "
        "ORDER BY auditor",
        [run_id],
    )
    hists = _histograms(store, run_id)
    per_split = _per_split(store, run_id)
    examples = _examples(store, run_id, max_examples)
    ran = []
    for s in summ:
        name = s["auditor"]
        st = stats.get(name, {"rows": 0, "flagged": 0})
        n, f = int(st["rows"]), int(st["flagged"])
        ran.append(
            {
                "name": name,
                "kind": kinds.get(name, "row"),
                "description": desc.get(name, ""),
                "rows": n,
                "flagged": f if n else int(s["num_issues"] or 0),
                "share": (f / n) if n else 0.0,
                "score": s["score"],
                "info": _loads(s["info"]) or {},
                "histogram": hists.get(
                    name, {"flagged": [0] * HIST_BINS, "unflagged": [0] * HIST_BINS}
                ),
                "per_split": per_split.get(name, {}),
                "examples": examples.get(name, []),
            }
        )
    skipped = []
    if store.table_exists(S.SKIPPED):
        for r in _rows(
            store, f"SELECT auditor, reason FROM {S.SKIPPED} WHERE run_id = ? ORDER BY 1", [run_id]
        ):
            skipped.append(
                {
                    "name": r["auditor"],
                    "reason": r["reason"],
                    "description": desc.get(r["auditor"], ""),
                }
            )
    return ran, skipped


def _slices(store: Store, run_id: int) -> list[dict]:
    if not store.table_exists(S.SLICES):
        return []
    rows = _rows(
        store,
        f"SELECT slice_id, auditor, description, size, error_rate, info FROM {S.SLICES} "
        "WHERE run_id = ? ORDER BY error_rate DESC NULLS LAST, size DESC LIMIT 50",
        [run_id],
    )
    for r in rows:
        r["info"] = _clip(_loads(r["info"]) or {})
    return rows


def _pca2(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Projection of centred rows `x` on their top two principal axes (sklearn's randomized
    PCA: a few [n, d] x [d, k] products, not a full SVD that can dominate the report on a busy
    machine). Returns (xy [n, 2], share of the variance along each axis)."""
    from sklearn.decomposition import PCA

    k = min(2, x.shape[1], len(x))
    if k == 0 or not np.any(x):
        return np.zeros((len(x), 2)), [0.0, 0.0]
    pca = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit(x)
    xy = pca.transform(x)
    explained = [float(v) for v in pca.explained_variance_ratio_]
    if k < 2:
        xy = np.hstack([xy, np.zeros((len(xy), 2 - k))])
        explained += [0.0] * (2 - k)
    return xy, explained


def _embedding_map(store: Store, run_id: int | None, points: int, seed: int) -> dict | None:
    """A 2-D PCA projection of a sample of rows, each coloured by its rarest flag."""
    key = store.default_embedding()
    if key is None:
        return None
    table = S.quote(S.embedding_table(key))
    if not store.table_exists(S.embedding_table(key)):
        return None
    total = int(store.scalar(f"SELECT count(*) FROM {table}") or 0)
    if total < 3:
        return None
    # A seeded reservoir sample in SQL: only `points` vectors ever leave DuckDB.
    sample = (
        f"SELECT row_id, vector FROM {table}"
        if total <= points
        else f"SELECT row_id, vector FROM {table} USING SAMPLE reservoir({points} ROWS) "
        f"REPEATABLE ({seed})"
    )
    tbl = store.arrow(f"SELECT * FROM ({sample}) ORDER BY row_id")
    rid = tbl.column(S.ROW_ID).to_numpy().astype(np.int64)
    col = tbl.column("vector").combine_chunks()
    x = col.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(rid), -1)
    x = x - x.mean(0)
    xy, explained = _pca2(x, seed)
    group = np.full(len(rid), "", dtype=object)
    if run_id is not None:
        store.con.register("_dc_map_ids", {S.ROW_ID: rid})
        try:
            # A row flagged by several auditors takes the colour of the one that flags the
            # fewest rows: the rarer flag says more (an auditor flagging most rows would paint
            # the whole map otherwise).
            worst = store.fetchall(
                f"""WITH share AS (
                        SELECT auditor, avg(is_issue::INT) AS share FROM {S.ISSUES}
                        WHERE run_id = ? GROUP BY 1)
                    SELECT i.row_id, arg_min(i.auditor, (s.share, i.score)) FROM {S.ISSUES} i
                    JOIN _dc_map_ids m USING (row_id) JOIN share s USING (auditor)
                    WHERE i.run_id = ? AND i.is_issue GROUP BY 1""",
                [run_id, run_id],
            )
        finally:
            store.con.unregister("_dc_map_ids")
        if worst:
            pos = np.searchsorted(rid, np.array([w[0] for w in worst], dtype=np.int64))
            group[pos] = [w[1] for w in worst]
    lo, hi = xy.min(0), xy.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    unit = np.round((xy - lo) / span, 4)
    names, counts = np.unique(group.astype(str), return_counts=True)
    legend = [{"group": n or "not flagged", "count": int(c)} for n, c in zip(names, counts)]
    legend.sort(key=lambda d: (d["group"] != "not flagged", -d["count"]))
    order = {d["group"]: i for i, d in enumerate(legend)}
    gidx = np.array([order[g or "not flagged"] for g in group.astype(str)], dtype=np.int64)
    return {
        "embedding": S.embedding_table(key),
        "sampled": len(rid),
        "total": total,
        "explained_variance": explained,
        "legend": legend,
        "x": unit[:, 0].tolist(),
        "y": unit[:, 1].tolist(),
        "group": gidx.tolist(),
        S.ROW_ID: rid.tolist(),
    }


def _edits(store: Store) -> dict | None:
    if not store.table_exists(S.EDITS) or not store.scalar(f"SELECT count(*) FROM {S.EDITS}"):
        return None
    counts = _rows(
        store,
        f"SELECT action, coalesce(auditor, '') AS auditor, coalesce(status, '') AS status, "
        f"count(*) AS n FROM {S.EDITS} GROUP BY ALL ORDER BY n DESC LIMIT 60",
    )
    text_col = store.text_column()
    cols = {c for c, _ in store.columns(S.SAMPLES)} if store.table_exists(S.SAMPLES) else set()
    content = (
        f", left(s.{S.quote(text_col)}::VARCHAR, 160) AS text"
        if text_col and text_col in cols
        else ""
    )
    sample = (
        _rows(
            store,
            "SELECT e.edit_id, e.row_id, e.action, s.label::VARCHAR AS label, e.new_label, "
            f"e.reason, e.auditor, e.status{content} FROM {S.EDITS} e "
            f"LEFT JOIN {S.SAMPLES} s USING (row_id) "
            "ORDER BY e.edit_id LIMIT 15",
        )
        if cols
        else []
    )
    gen = None
    if store.table_exists(S.GENERATED) and store.scalar(f"SELECT count(*) FROM {S.GENERATED}"):
        gen = {
            "counts": _rows(
                store,
                f"SELECT generator, coalesce(backend, '') AS backend, verified, count(*) AS n "
                f"FROM {S.GENERATED} GROUP BY ALL ORDER BY n DESC LIMIT 30",
            ),
            "examples": _rows(
                store,
                f"SELECT gen_id, parent_row_id, split, label, left(text, 160) AS text, image_path,"
                f" generator, verified, verify_score FROM {S.GENERATED} ORDER BY gen_id LIMIT 8",
            ),
        }
        for ex in gen["examples"]:
            if ex.get("image_path"):
                ex["_thumb"] = _thumbnail(ex["image_path"])
    return {
        "total": int(store.scalar(f"SELECT count(*) FROM {S.EDITS}")),
        "counts": counts,
        "sample": sample,
        "generated": gen,
    }


def _reviews(store: Store) -> dict | None:
    if not store.table_exists(S.REVIEWS) or not store.scalar(f"SELECT count(*) FROM {S.REVIEWS}"):
        return None
    return {
        "counts": _rows(
            store,
            f"SELECT coalesce(auditor, '') AS auditor, decision, count(*) AS n FROM {S.REVIEWS} "
            "GROUP BY ALL ORDER BY 1, 2",
        )
    }


def _manifest(store: Store, path: str | Path | None = None) -> dict | None:
    """The export manifest: the file at `path` when given, else the last export's as recorded in
    `meta` (`export_manifest` or `last_export`: the manifest itself, or where it lies)."""
    if path is not None and Path(path).is_file():
        try:
            return _clip(json.loads(Path(path).read_text()), items=20, chars=300)
        except ValueError:
            return None
    for key in ("export_manifest", "last_export"):
        m = store.meta_get(key)
        if isinstance(m, dict):
            if "manifest" in m and isinstance(m["manifest"], dict):
                return _clip(m["manifest"], items=20, chars=300)
            path = m.get("manifest_path") or (
                str(Path(m["out"]) / "manifest.json") if m.get("out") else None
            )
            if path and Path(path).is_file():
                try:
                    return _clip(json.loads(Path(path).read_text()), items=20, chars=300)
                except ValueError:
                    pass
            return _clip(m, items=20, chars=300)
    return None


STEPS = ("dataset overview", "auditors", "embedding map", "edits and export")


def build_summary(
    store: Store,
    run_id: int | None = None,
    max_examples: int = MAX_EXAMPLES,
    map_points: int = MAP_POINTS,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    manifest_path: str | Path | None = None,
) -> dict:
    """Everything the report shows, aggregated in SQL and bounded in size (see module doc)."""
    say = progress or (lambda _m: None)  # called once per entry of STEPS
    t0 = time.perf_counter()
    from .runner import tool_version

    run_id = run_id if run_id is not None else store.latest_run_id()
    run = None
    if run_id is not None:
        r = _rows(store, f"SELECT * FROM {S.RUNS} WHERE run_id = ?", [run_id])
        if r:
            run = {
                "run_id": run_id,
                "started_at": r[0]["started_at"],
                "finished_at": r[0]["finished_at"],
                "version": r[0]["version"],
                "config": _loads(r[0]["config"]),
                "auditors": _loads(r[0]["auditors"]),
            }
    say(STEPS[0])
    summary: dict[str, Any] = {
        "generated_at": _dt.datetime.now().isoformat(sep=" ", timespec="seconds"),
        "tool_version": tool_version(),
        "store": str(store.path),
        "dataset": _dataset(store),
        "run": run,
        "auditors": [],
        "skipped": [],
        "flagged_any": None,
        "flagged_rows": None,
        "row_checks": [],
    }
    if run is not None:
        say(STEPS[1])
        summary["auditors"], summary["skipped"] = _auditors(store, run_id, max_examples)
        n_any = store.scalar(
            f"SELECT count(DISTINCT row_id) FROM {S.ISSUES} WHERE run_id = ? AND is_issue", [run_id]
        )
        summary["flagged_any"] = int(n_any or 0)
        # the headline: rows some row check flagged (a row decision); findings are apart
        row_checks = [a["name"] for a in summary["auditors"] if a["kind"] == "row"]
        summary["row_checks"] = row_checks
        marks = ", ".join("?" for _ in row_checks) or "NULL"
        n_rows = store.scalar(
            f"SELECT count(DISTINCT row_id) FROM {S.ISSUES} WHERE run_id = ? AND is_issue "
            f"AND auditor IN ({marks})",
            [run_id, *row_checks],
        )
        summary["flagged_rows"] = int(n_rows or 0)
        summary["slices"] = _slices(store, run_id)
    else:
        summary["slices"] = []
    say(STEPS[2])
    summary["embedding_map"] = (
        _embedding_map(store, run_id if run else None, map_points, seed) if map_points > 0 else None
    )
    say(STEPS[3])
    summary["edits"] = _edits(store)
    summary["reviews"] = _reviews(store)
    summary["export_manifest"] = _manifest(store, manifest_path)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return _safe(summary)


def _public(obj: Any) -> Any:
    """The summary without render-only keys (those starting with `_`, e.g. thumbnails)."""
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list):
        return [_public(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------------
# rendering: inline SVG, escaped text, no external assets
# ------------------------------------------------------------------------------------------------
def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3g}"
        return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False, default=str)[:300]
    return str(v)


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


def _svg_histogram(h: dict, width: int = 300, height: int = 110) -> str:
    """Score histogram, bins of [0, 1], flagged rows stacked in red; heights on a log scale."""
    fl, un = h.get("flagged", []), h.get("unflagged", [])
    n = len(fl) or HIST_BINS
    tot = [a + b for a, b in zip(fl, un)]
    top = math.log1p(max(tot) if tot and max(tot) > 0 else 1)
    pad_l, pad_b, pad_t = 6, 18, 6
    bw = (width - 2 * pad_l) / n
    ph = height - pad_b - pad_t
    parts = [
        (
            f'<svg class="hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            'role="img" aria-label="score histogram">'
        )
    ]
    for i in range(n):
        t = tot[i]
        if t <= 0:
            continue
        hh = ph * math.log1p(t) / top
        hf = hh * (fl[i] / t)
        x = pad_l + i * bw
        y = pad_t + ph - hh
        lo, hi = i / n, (i + 1) / n
        tip = f"score {lo:.2f}-{hi:.2f}: {t:,} rows, {fl[i]:,} flagged"
        parts.append(
            f"<g><title>{_e(tip)}</title>"
            f'<rect x="{x + 0.5:.1f}" y="{y:.1f}" width="{bw - 1:.1f}" '
            f'height="{hh - hf:.1f}" fill="#9aa5b1"/>'
        )
        if hf > 0:
            parts.append(
                f'<rect x="{x + 0.5:.1f}" y="{y + hh - hf:.1f}" width="{bw - 1:.1f}" '
                f'height="{hf:.1f}" fill="#d55e00"/>'
            )
        parts.append("</g>")
    base = pad_t + ph
    parts.append(f'<line x1="{pad_l}" y1="{base}" x2="{width - pad_l}" y2="{base}" stroke="#555"/>')
    parts.append(
        f'<text x="{pad_l}" y="{height - 4}" class="ax">0 (worse)</text>'
        f'<text x="{width - pad_l}" y="{height - 4}" class="ax" text-anchor="end">1 (better)</text>'
        f'<text x="{width / 2}" y="{height - 4}" class="ax" text-anchor="middle">'
        "score (log count)</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _svg_bar(share: float, width: int = 120) -> str:
    w = max(0.0, min(1.0, share or 0.0)) * width
    return (
        f'<svg viewBox="0 0 {width} 10" width="{width}" height="10" class="bar">'
        f'<rect width="{width}" height="10" fill="#e6e8eb"/>'
        f'<rect width="{w:.1f}" height="10" fill="#d55e00"/></svg>'
    )


def _svg_map(m: dict, colours: dict[str, str], size: int = 560) -> str:
    """Scatter of the sampled rows. Each group is one path of zero-length round-capped segments
    (`M x y h0`), which draws a dot per row at a fraction of the bytes of one element per row."""
    pad = 10
    span = size - 2 * pad
    xs, ys, gs = m["x"], m["y"], m["group"]
    by: dict[int, list[str]] = {}
    for x, y, g in zip(xs, ys, gs):
        by.setdefault(g, []).append(f"M{pad + x * span:.1f} {pad + (1 - y) * span:.1f}h0")
    parts = [
        (
            f'<svg class="map" viewBox="0 0 {size} {size}" width="{size}" height="{size}" '
            'role="img" aria-label="embedding map">'
        ),
        f'<rect width="{size}" height="{size}" fill="#fbfbfc" stroke="#ddd"/>',
    ]
    for gi in sorted(by):  # group 0 (not flagged) first, so flags are drawn on top
        name = m["legend"][gi]["group"]
        sw = 3 if name == "not flagged" else 4.5
        parts.append(
            f'<path d="{"".join(by[gi])}" stroke="{colours.get(name, UNFLAGGED)}" '
            f'stroke-width="{sw}" stroke-linecap="round" fill="none" '
            f'data-group="{_e(name)}"><title>{_e(name)}</title></path>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _heat_colour(acc: float | None) -> str:
    if acc is None:
        return "#eeeeee"
    a = max(0.0, min(1.0, float(acc)))
    # red (0) -> amber (0.5) -> green (1)
    hue = 120 * a
    return f"hsl({hue:.0f},65%,{72 - 20 * a:.0f}%)"


def _svg_heatmap(cells: list[dict], row_key: str, col_key: str, title: str) -> str:
    """Group-accuracy heatmap: rows = label, columns = attribute value, fill = accuracy."""
    rows = list(dict.fromkeys(str(c[row_key]) for c in cells))[:20]
    cols = list(dict.fromkeys(str(c[col_key]) for c in cells))[:20]
    if not rows or not cols:
        return ""
    grid = {(str(c[row_key]), str(c[col_key])): c for c in cells}
    cw, ch, left, top = 96, 34, 90, 40
    w, h = left + cw * len(cols) + 10, top + ch * len(rows) + 10
    p = [
        (
            f'<svg class="heat" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
            f'aria-label="{_e(title)}">'
        ),
        f'<text x="{left}" y="14" class="ax">{_e(title)}</text>',
    ]
    for j, c in enumerate(cols):
        p.append(
            f'<text x="{left + j * cw + cw / 2}" y="{top - 6}" class="ax" '
            f'text-anchor="middle">{_e(c[:16])}</text>'
        )
    for i, r in enumerate(rows):
        p.append(
            f'<text x="{left - 6}" y="{top + i * ch + ch / 2 + 4}" class="ax" '
            f'text-anchor="end">{_e(r[:14])}</text>'
        )
        for j, c in enumerate(cols):
            cell = grid.get((r, c), {})
            acc = cell.get("accuracy")
            n = cell.get("count")
            tip = f"{row_key}={r}, {col_key}={c}: count {n}, accuracy {_fmt(acc)}"
            p.append(
                f'<g><title>{_e(tip)}</title><rect x="{left + j * cw}" y="{top + i * ch}" '
                f'width="{cw - 2}" height="{ch - 2}" fill="{_heat_colour(acc)}"/>'
                f'<text x="{left + j * cw + cw / 2 - 1}" y="{top + i * ch + 14}" class="cell" '
                f'text-anchor="middle">{_e(_fmt(acc) if acc is not None else "-")}</text>'
                f'<text x="{left + j * cw + cw / 2 - 1}" y="{top + i * ch + 27}" class="cellsm" '
                f'text-anchor="middle">n={_e(_fmt(n))}</text></g>'
            )
    p.append("</svg>")
    return "".join(p)


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


SPECIAL_VIEWS: dict[str, Callable[[dict], str]] = {
    "split_drift": _drift_view,
    "spurious_attribute": _spurious_view,
    "spurious_token": _token_view,
}


# Auditors whose info gets a section of its own (drift table, spurious heatmap).
OWN_SECTION = {
    "split_drift": ("drift", "Drift between splits"),
    "spurious_attribute": ("spurious", "Spurious attributes"),
}


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
                f'<img src="{thumb}" alt="row {_e(ex["row_id"])}" width="{THUMB_PX}">'
                if thumb
                else f'<span class="muted">no image: {_e(ex.get("image_path"))}</span>'
            )
        else:
            content = f'<span class="snip">{_e(ex.get("text"))}</span>'
        det = "; ".join(f"{k}={_fmt(v)}" for k, v in (ex.get("details") or {}).items())
        sugg = ex.get("suggested_label")
        changed = sugg is not None and str(sugg) != str(ex.get("label"))
        body.append(
            f'<tr><td class="num">{_e(ex["row_id"])}</td><td>{_e(ex.get("split"))}</td>'
            f'<td class="num">{_e(_fmt(ex.get("score")))}</td><td>{content}</td>'
            f'<td>{_e(ex.get("label"))}</td><td class="{"sugg" if changed else ""}">'
            f"{_e(sugg if sugg is not None else '')}</td>"
            f'<td class="det">{_e(det[:400])}</td></tr>'
        )
    return (
        f'<table class="examples filterable"><thead>{head}</thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


_CSS = """
:root{--fg:#1f2328;--muted:#6a737d;--line:#e1e4e8;--bg:#fff;--accent:#0b5cad}
*{box-sizing:border-box}body{margin:0;\
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);\
background:#f6f7f9}
header{background:#1f2a37;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}\
header p{margin:4px 0 0;color:#c9d1d9}
nav{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid var(--line);\
padding:8px 28px;display:flex;flex-wrap:wrap;gap:12px}
nav a{color:var(--accent);text-decoration:none;font-size:13px}
main{max-width:1180px;margin:0 auto;padding:18px 28px 60px}
section{overflow-x:auto;background:var(--bg);border:1px solid var(--line);border-radius:8px;\
padding:16px 20px;margin:16px 0}
h2{margin:0 0 10px;font-size:18px}h3{margin:0 0 6px;font-size:16px}\
h4{margin:14px 0 6px;font-size:14px}
.cards{display:flex;flex-wrap:wrap;gap:12px}\
.card{border:1px solid var(--line);border-radius:6px;padding:10px 14px;min-width:140px}
.card b{display:block;font-size:20px}.card span{color:var(--muted);font-size:12px}
table{border-collapse:collapse;width:auto;min-width:40%;margin:6px 0;font-size:13px}\
th,td{border-bottom:1px solid var(--line);padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f3f4f6;font-weight:600}\
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.examples{width:100%}\
td.det{color:var(--muted);font-size:12px;max-width:280px;word-break:break-word}\
td.sugg{font-weight:600;color:#b35900}
.snip{display:block;max-width:460px;white-space:pre-wrap;word-break:break-word}
.muted{color:var(--muted)}.grid{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.aud{border-top:1px solid var(--line);padding-top:12px;margin-top:14px}\
.aud:first-of-type{border-top:0;margin-top:0}
.ax{font-size:10px;fill:#555}.cell{font-size:11px;font-weight:600;fill:#111}\
.cellsm{font-size:9px;fill:#333}
.legend span{display:inline-block;margin-right:14px;font-size:12px}\
.legend i{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:4px;\
vertical-align:middle}
details pre{max-height:260px;overflow:auto;background:#f6f8fa;padding:8px;font-size:12px}
.notrun{color:var(--muted)}#dc-errors{color:#b00020}\
input.filter{padding:4px 8px;border:1px solid var(--line);border-radius:4px;width:260px}
"""

# The first script in <head>: collects script errors into the DOM (#dc-errors, data-count), so a
# headless browser's --dump-dom shows them, and so does a person opening the file.
_JS_ERRORS = """
(function(){var errs=[];function put(m){errs.push(String(m));\
var el=document.getElementById('dc-errors');
if(el){el.setAttribute('data-count',String(errs.length));el.textContent=errs.join('\\n');}}
window.__dcErrors=errs;window.addEventListener('error',function(e){\
put('error: '+(e.message||e.type));});
window.addEventListener('unhandledrejection',function(e){put('rejection: '+e.reason);});
document.addEventListener('securitypolicyviolation',function(e){put('blocked: '+e.blockedURI);});
var ce=console.error;console.error=function(){\
put('console: '+Array.prototype.join.call(arguments,' '));return ce.apply(console,arguments);};
document.addEventListener('DOMContentLoaded',function(){put.flush=1;\
var el=document.getElementById('dc-errors');
if(el&&errs.length){el.setAttribute('data-count',String(errs.length));\
el.textContent=errs.join('\\n');}});
})();
"""

# After the body: a filter box for the example tables, sortable table headers, a ready marker.
_JS_UI = """
(function(){
var box=document.getElementById('dc-filter');
if(box){box.addEventListener('input',function(){var q=box.value.toLowerCase();
document.querySelectorAll('table.filterable tbody tr').forEach(function(tr){
tr.style.display=(!q||tr.textContent.toLowerCase().indexOf(q)>=0)?'':'none';});});}
document.querySelectorAll('table').forEach(function(t){var ths=t.querySelectorAll('thead th');
ths.forEach(function(th,i){th.style.cursor='pointer';th.title='sort';\
th.addEventListener('click',function(){
var tb=t.tBodies[0];if(!tb)return;var rows=Array.prototype.slice.call(tb.rows);\
var asc=th.getAttribute('data-asc')!=='1';
th.setAttribute('data-asc',asc?'1':'0');rows.sort(function(a,b){\
var x=a.cells[i]?a.cells[i].textContent:'',y=b.cells[i]?b.cells[i].textContent:'';
var nx=parseFloat(x.replace(/,/g,'')),ny=parseFloat(y.replace(/,/g,''));\
var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return asc?c:-c;});
rows.forEach(function(r){tb.appendChild(r);});});});});
var n=document.querySelectorAll('section[data-section]').length;\
document.body.setAttribute('data-sections',String(n));
document.body.setAttribute('data-ready','1');
})();
"""


def render_html(summary: dict) -> str:
    """The report as one HTML document (see module doc)."""
    ds = summary["dataset"]
    run = summary.get("run")
    auds = summary.get("auditors") or []
    names = [a["name"] for a in auds]
    colours = {"not flagged": UNFLAGGED}
    colours.update({n: PALETTE[i % len(PALETTE)] for i, n in enumerate(sorted(names))})
    image = bool(ds.get("image_column"))
    sections: list[tuple[str, str, str]] = []  # (id, title, html)

    # overview
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

    # auditors: summary table + one block per auditor
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
            own = OWN_SECTION.get(a["name"])
            special = (
                f'<p><a href="#{own[0]}">{_e(own[1])}: see its section</a></p>'
                if own
                else SPECIAL_VIEWS.get(a["name"], lambda _i: "")(
                    a["info"] if isinstance(a["info"], dict) else {}
                )
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
                f"{special}{worst}"
                f"<details><summary>info</summary><pre>{_e(info_txt)}</pre></details></div>"
            )
        sections.append(("auditor-details", "Findings by auditor", "".join(blocks)))

    # drift / spurious: short pointers so these questions have a named place even when not run
    ran = {a["name"]: a for a in auds}
    skipped = {s["name"]: s for s in summary.get("skipped") or []}
    for name, (sid, title) in OWN_SECTION.items():
        if name in ran:
            body = SPECIAL_VIEWS[name](
                ran[name]["info"] if isinstance(ran[name]["info"], dict) else {}
            )
            body = body or '<p class="muted">nothing to show in its info.</p>'
            body += f'<p><a href="#auditor-{_slug(name)}">flagged rows of {name}</a></p>'
        elif name in skipped:
            body = f'<p class="notrun">not run: {_e(skipped[name]["reason"])}</p>'
        else:
            body = f'<p class="notrun">not run ({name} was not part of this audit).</p>'
        sections.append((sid, title, body))

    # slices
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

    # embedding map
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

    # edits, reviews, export
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

    nav = "".join(f'<a href="#{sid}">{_e(t)}</a>' for sid, t, _ in sections)
    body = "".join(
        f'<section id="{sid}" data-section="{sid}"><h2>{_e(t)}</h2>{h}</section>'
        for sid, t, h in sections
    )
    title = f"datacure report: {Path(summary['store']).name}"
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><script>{_JS_ERRORS}</script><style>{_CSS}</style></head>"
        f"<body><header><h1>{_e(title)}</h1><p>{_e(summary['store'])} &middot; generated "
        f"{_e(summary['generated_at'])} &middot; "
        f"datacure {_e(summary['tool_version'])}</p></header>"
        f"<nav>{nav}</nav><main>{body}"
        '<pre id="dc-errors" data-count="0"></pre></main>'
        f"<script>{_JS_UI}</script></body></html>\n"
    )


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
