"""What the report shows, as data: `build_summary(store)` aggregates the store's tables with SQL
into a bounded, JSON-safe dict (counts, histograms, a few worst examples per auditor, a sampled
embedding map), so the report's size does not grow with the data: a 1M-row store gives a report
of the same order as a 10k-row one. serve/ reuses these queries.

The tables are read generically (`issues`, `issue_summary`, `skipped_auditors`, `slices`,
`edits`, `generated`, `reviews`, `runs`, `embeddings_<key>`): an auditor added later shows up
with its count, share, histogram and worst examples without any change here.
"""

from __future__ import annotations

import base64
import datetime as _dt
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
from .embedding_map import embedding_map

MAX_EXAMPLES = 10  # worst flagged rows shown per auditor
MAP_POINTS = 5000  # rows sampled for the embedding map
HIST_BINS = 20
SNIPPET_CHARS = 240
THUMB_PX = 56
TABLE_ROWS = 40  # rows of any table drawn from an auditor's info


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
    from ..auditor import load_builtin  # a broken auditor module is an error here too, not a gap

    return {n: (c.description or "") for n, c in load_builtin().items()}


def _auditor_kinds() -> dict[str, str]:
    """`row` (a flag is a row decision) or `finding` (dataset-level) per registered auditor."""
    from ..auditor import load_builtin

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
    definition = store.data_definition()
    shown = [c for c in definition.columns if c.role != "internal"]
    return {
        "rows": int(sum(counts.values())),
        "splits": counts,
        "labelled": labelled,
        "num_classes": num_classes,
        "classes": classes,
        "text_column": definition.text_column,
        "image_column": definition.image_column,
        "columns": [c.name for c in shown],
        # the data definition: role and type of each column (store/datadef.py)
        "column_roles": {c.name: {"role": c.role, "type": c.type} for c in shown},
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


def _run(store: Store, run_id: int | None) -> dict | None:
    """The audit run's record (None when there is none)."""
    if run_id is None:
        return None
    r = _rows(store, f"SELECT * FROM {S.RUNS} WHERE run_id = ?", [run_id])
    if not r:
        return None
    return {
        "run_id": run_id,
        "started_at": r[0]["started_at"],
        "finished_at": r[0]["finished_at"],
        "version": r[0]["version"],
        "config": _loads(r[0]["config"]),
        "auditors": _loads(r[0]["auditors"]),
    }


def _flagged(store: Store, run_id: int, auditors: list[dict]) -> dict:
    """Rows any auditor flagged, and the headline: rows some row check flagged (a row
    decision); findings are apart."""
    n_any = store.scalar(
        f"SELECT count(DISTINCT row_id) FROM {S.ISSUES} WHERE run_id = ? AND is_issue", [run_id]
    )
    row_checks = [a["name"] for a in auditors if a["kind"] == "row"]
    marks = ", ".join("?" for _ in row_checks) or "NULL"
    n_rows = store.scalar(
        f"SELECT count(DISTINCT row_id) FROM {S.ISSUES} WHERE run_id = ? AND is_issue "
        f"AND auditor IN ({marks})",
        [run_id, *row_checks],
    )
    return {
        "flagged_any": int(n_any or 0),
        "row_checks": row_checks,
        "flagged_rows": int(n_rows or 0),
    }


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
    from ..auditor.runner import tool_version

    run_id = run_id if run_id is not None else store.latest_run_id()
    run = _run(store, run_id)
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
        summary |= _flagged(store, run_id, summary["auditors"])
        summary["slices"] = _slices(store, run_id)
    else:
        summary["slices"] = []
    say(STEPS[2])
    summary["embedding_map"] = (
        embedding_map(store, run_id if run else None, map_points, seed) if map_points > 0 else None
    )
    say(STEPS[3])
    summary["edits"] = _edits(store)
    summary["reviews"] = _reviews(store)
    summary["export_manifest"] = _manifest(store, manifest_path)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return _safe(summary)
