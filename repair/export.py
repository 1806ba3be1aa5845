"""Export each split with the edits applied, plus OUT/manifest.json.

Edits that are pending or accepted are applied; rejected ones are not. Per split:
- rows with a `drop` edit are left out;
- a `relabel` edit replaces the label (in `label`, or in the user's own label column when it had
  another name), cast back to the label's type;
- an `add` edit of kind `oversample` repeats its row `copies` times (copies sit next to it);
- an `add` edit of kind `generated` adds the row of `generated`: the parent's source columns
  (none for a sample drawn from noise), with the generated text or image, the target label, and
  the target value of the rebalanced column.

Rows keep their source columns and gain `synthetic` (true for generated rows), the provenance
columns `synthetic_parent`, `synthetic_generator`, `synthetic_backend`, `synthetic_model`,
`synthetic_prompt`, `synthetic_seed` (null for real rows), and `datacure_row_id` (the row's id
in the store; a copy repeats its original's id).

Formats: `parquet`, `csv`, `jsonl` write `OUT/<split>.<ext>`; `hf` writes a datasets
`DatasetDict` saved to disk in OUT (`OUT/<split>/`, `OUT/dataset_dict.json`); `imagefolder` writes
`OUT/<split>/<label>/<file>` plus `OUT/<split>/metadata.csv` (`file_name` and the other columns).
For image data in the other formats the images are linked (or copied) to `OUT/images/<split>/`
and the image column holds paths relative to OUT, so `datacure ingest OUT/train.parquet --image
<col>` reads the export back. Output is sorted by row id, or shuffled per split with `seed`
when one is given (a copy then no longer sits next to its original): the same store, edits and
seed give the same files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from ..generators.common import versions
from ..store import schema as S
from ..store.errors import InputError
from .policy import ADD, DROP, GENERATED, OVERSAMPLE, REJECTED, RELABEL

FORMATS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl", "hf": None, "imagefolder": None}
PROVENANCE = (
    ("synthetic_parent", "BIGINT"),
    ("synthetic_generator", "VARCHAR"),
    ("synthetic_backend", "VARCHAR"),
    ("synthetic_model", "VARCHAR"),
    ("synthetic_prompt", "VARCHAR"),
    ("synthetic_seed", "BIGINT"),
)
ADDED = ("synthetic", *(p for p, _ in PROVENANCE), "datacure_row_id")
assert ADDED == S.EXPORT_COLUMNS, "the store's list of export columns must match"


@dataclass
class ExportReport:
    out_dir: Path
    fmt: str
    files: dict = field(default_factory=dict)  # split -> path written
    counts: dict = field(default_factory=dict)  # split -> {rows_in, dropped, ...}
    manifest: Path | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"exported to {self.out_dir} ({self.fmt}, {self.seconds:.1f} s):"]
        for sp, c in self.counts.items():
            lines.append(
                f"  {sp}: {c['rows_out']} rows (from {c['rows_in']}: -{c['dropped']} dropped, "
                f"{c['relabelled']} relabelled, +{c['copies']} copies, +{c['synthetic']} synthetic)"
                f" -> {self.files.get(sp)}"
            )
        lines.append(f"  manifest: {self.manifest}")
        return "\n".join(lines)


def _label_columns(store) -> list[str]:
    d = store.data_definition()
    return d.label_sources or ([S.LABEL] if S.LABEL in d.samples_columns else [])


def export_columns(store) -> list[str]:
    """The source columns an export keeps: the data definition's columns from the user's data,
    less the provenance columns of a re-ingested export (an export writes its own) and, where
    the labels live in the user's own column, datacure's copy in `label`."""
    d = store.data_definition()
    skip = set(ADDED)  # the export writes its own provenance columns
    if d.label_sources:
        skip.add(S.LABEL)  # the label lives in the user's own column
    return [c for c in d.source_columns if c not in skip]


def _json_path(name: str) -> str:
    return "'$.columns.\"" + name.replace("'", "''").replace('"', '\\"') + "\"'"


def _select_lists(store, types: dict[str, str]) -> tuple[list[str], list[str]]:
    """The exported columns as selected from real rows (`b`, relabels `r`) and from generated
    rows (`g`, the parent row `p`): a generated row takes its label, text or image, the
    columns its details override, and its parent's other values."""
    cols = export_columns(store)
    labels = set(_label_columns(store))
    text_col, image_col = store.text_column(), store.image_column()
    override_keys = {
        r[0]
        for r in store.fetchall(
            f"SELECT DISTINCT unnest(json_keys(json_extract(details, '$.columns'))) FROM "
            f"{S.GENERATED} WHERE json_extract(details, '$.columns') IS NOT NULL"
        )
    }
    real_sel, gen_sel = [], []
    for c in cols:
        q, t = S.quote(c), types[c]
        if c in labels:
            real_sel.append(
                f"CASE WHEN r.new_label IS NULL THEN b.{q} "
                f"ELSE TRY_CAST(r.new_label AS {t}) END AS {q}"
            )
            gen_sel.append(f"TRY_CAST(g.label AS {t}) AS {q}")
            continue
        real_sel.append(f"b.{q}")
        if c == text_col:
            gen_sel.append(f"g.text::{t} AS {q}")
        elif c == image_col:
            gen_sel.append(f"g.image_path::{t} AS {q}")
        elif c in override_keys:
            p = _json_path(c)
            gen_sel.append(
                f"CASE WHEN json_extract_string(g.details, {p}) IS NULL THEN p.{q} "
                f"ELSE TRY_CAST(json_extract_string(g.details, {p}) AS {t}) END AS {q}"
            )
        else:
            gen_sel.append(f"p.{q}")
    return real_sel, gen_sel


def split_query(store, split: str) -> tuple[str, list]:
    """SQL for one split with the effective edits applied (ordered, deterministic)."""
    types = dict(store.columns(S.SAMPLES))
    real_sel, gen_sel = _select_lists(store, types)
    has_img = S.IMAGE_PATH in types
    img_real = f"b.{S.IMAGE_PATH}" if has_img else "NULL::VARCHAR"
    prov_null = ", ".join(f"NULL::{t} AS {n}" for n, t in PROVENANCE)
    live = f"(SELECT * FROM {S.EDITS} WHERE status != '{REJECTED}')"
    n_copies = "sum(coalesce(json_extract(details, '$.copies')::BIGINT, 1))::BIGINT"
    not_dropped = "row_id NOT IN (SELECT row_id FROM drops)"
    sql = f"""
    WITH e AS {live},
    drops AS (SELECT DISTINCT row_id FROM e WHERE action = '{DROP}'),
    rel AS (SELECT row_id, arg_max(new_label, edit_id) AS new_label FROM e
            WHERE action = '{RELABEL}' GROUP BY row_id),
    cop AS (SELECT row_id, {n_copies} AS n FROM e
            WHERE action = '{ADD}' AND json_extract_string(details, '$.kind') = '{OVERSAMPLE}'
            GROUP BY row_id),
    base AS (SELECT * FROM {S.SAMPLES} WHERE split = ? AND {not_dropped}),
    real AS (
        SELECT {", ".join(real_sel) + "," if real_sel else ""} false AS synthetic, {prov_null},
               b.row_id AS datacure_row_id, 0 AS _copy, {img_real} AS _src
        FROM base b LEFT JOIN rel r USING (row_id)
    ),
    copies AS (
        SELECT real.* EXCLUDE (_copy), unnest(range(1, cop.n + 1)) AS _copy
        FROM real JOIN cop ON cop.row_id = real.datacure_row_id
    ),
    gen AS (
        SELECT {", ".join(gen_sel) + "," if gen_sel else ""} true AS synthetic,
               g.parent_row_id AS synthetic_parent, g.generator AS synthetic_generator,
               g.backend AS synthetic_backend, g.model AS synthetic_model,
               g.prompt AS synthetic_prompt, g.seed AS synthetic_seed,
               g.row_id AS datacure_row_id, 0 AS _copy, g.image_path AS _src
        FROM {S.GENERATED} g
        JOIN (SELECT DISTINCT row_id FROM e WHERE action = '{ADD}'
              AND json_extract_string(details, '$.kind') = '{GENERATED}') a USING (row_id)
        LEFT JOIN {S.SAMPLES} p ON p.row_id = g.parent_row_id
        WHERE g.split = ? AND g.row_id NOT IN (SELECT row_id FROM drops)
    )
    SELECT * FROM real UNION ALL BY NAME SELECT * FROM copies UNION ALL BY NAME SELECT * FROM gen
    ORDER BY datacure_row_id, _copy
    """
    return sql, [split, split]


def _split_counts(store, split: str, table: pl.DataFrame) -> dict:
    live = f"status != '{REJECTED}'"
    rows_in = int(store.scalar(f"SELECT count(*) FROM {S.SAMPLES} WHERE split = ?", [split]))
    dropped = int(
        store.scalar(
            f"SELECT count(DISTINCT e.row_id) FROM {S.EDITS} e JOIN {S.SAMPLES} s USING (row_id) "
            f"WHERE {live} AND action = '{DROP}' AND s.split = ?",
            [split],
        )
    )
    relabelled = int(
        store.scalar(
            f"SELECT count(DISTINCT e.row_id) FROM {S.EDITS} e JOIN {S.SAMPLES} s USING (row_id) "
            f"WHERE {live} AND action = '{RELABEL}' AND s.split = ? AND e.row_id NOT IN "
            f"(SELECT row_id FROM {S.EDITS} WHERE {live} AND action = '{DROP}')",
            [split],
        )
    )
    synth = int(table["synthetic"].sum()) if len(table) else 0
    copies = int((table["_copy"] > 0).sum()) if len(table) else 0
    return {
        "rows_in": rows_in,
        "dropped": dropped,
        "relabelled": relabelled,
        "copies": copies,
        "synthetic": synth,
        "rows_out": len(table),
    }


def _link(src: str, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)  # same file system: no copy
    except OSError:
        shutil.copy2(src, dst)


def _safe(name: str) -> str:
    s = re.sub(r"[^\w.\-]+", "_", str(name)).strip("._")
    return s or "_"


def _place_images(table: pl.DataFrame, out: Path, split: str, image_col: str) -> pl.DataFrame:
    """Link each distinct source image to OUT/images/<split>/<row id><ext>; rewrite the column."""
    src = table["_src"].to_list()
    rid = table["datacure_row_id"].to_list()
    rel = []
    done: dict[int, str] = {}
    for s, r in zip(src, rid):  # one file per image: I/O, not table work
        if s is None:
            rel.append(None)
            continue
        if r not in done:
            name = f"images/{_safe(split)}/{r}{Path(s).suffix.lower() or '.png'}"
            if not Path(s).exists():
                raise InputError(
                    f"image file {s} (row {r}) is missing", "restore it or drop the row"
                )
            _link(s, out / name)
            done[r] = name
        rel.append(done[r])
    return table.with_columns(pl.Series(image_col, rel, dtype=pl.Utf8))


def _write_imagefolder(
    table: pl.DataFrame, out: Path, split: str, image_col: str | None, label_col: str
) -> Path:
    root = out / _safe(split)
    if root.exists():
        shutil.rmtree(root)
    names = []
    for s, r, c, y in zip(
        table["_src"].to_list(),
        table["datacure_row_id"].to_list(),
        table["_copy"].to_list(),
        table[label_col].to_list(),
    ):
        if s is None:
            raise InputError(f"row {r} has no image", "imagefolder export needs an image per row")
        suffix = f"_c{c}" if c else ""
        name = f"{_safe(y)}/{r}{suffix}{Path(s).suffix.lower() or '.png'}"
        _link(s, root / name)
        names.append(name)
    meta = table.drop([c for c in ("_src", "_copy", image_col) if c and c in table.columns])
    meta = meta.with_columns(pl.Series("file_name", names)).select(
        ["file_name", *[c for c in meta.columns if c != "file_name"]]
    )
    _flat(meta).write_csv(root / "metadata.csv")
    return root


def _flat(df: pl.DataFrame) -> pl.DataFrame:
    """Nested columns as JSON text (CSV cannot hold lists or structs)."""
    nested = [
        c
        for c, t in zip(df.columns, df.dtypes)
        if isinstance(t, (pl.List, pl.Array, pl.Struct, pl.Object))
    ]
    if not nested:
        return df
    return df.with_columns(
        pl.col(c).map_elements(
            lambda v: json.dumps(v.to_list() if hasattr(v, "to_list") else v, default=str),
            return_dtype=pl.Utf8,
        )
        for c in nested
    )


# Written first, removed after manifest.json: an export that was interrupted leaves it (and no
# manifest), so a rerun knows the folder is its own and may clear what the marker lists.
INCOMPLETE = ".datacure-export-incomplete"


def _remove_inside(out: Path, names) -> None:
    """Delete OUT/<name> for each name, never anything outside OUT (names come from a manifest
    found on disk, which may have been edited, and from split names, which may be `..`)."""
    root = out.resolve()
    for p in names:
        target = out / str(p)
        real = target.resolve()
        if real == root or not real.is_relative_to(root):
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def _prepare_out(out: Path, planned: list[str] | None = None) -> None:
    """Refuse to write into a non-empty folder that is not an earlier export (complete, or
    interrupted); clear an earlier export's files; then mark the folder incomplete until the
    manifest is written."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder", "choose another OUT folder")
    if out.exists() and any(out.iterdir()):
        man = out / "manifest.json"
        marker = out / INCOMPLETE
        if not man.exists() and not marker.exists():
            raise InputError(
                f"{out} is not empty and holds no datacure manifest.json",
                "export into a new or empty folder (nothing there is overwritten)",
            )
        old: dict = {}
        for f in (man, marker):
            try:
                old_files = json.loads(f.read_text()).get("files", {}) if f.exists() else {}
            except (json.JSONDecodeError, AttributeError, OSError):
                old_files = {}
            if isinstance(old_files, dict):
                old_files = list(old_files.values())
            old.setdefault("files", []).extend(old_files if isinstance(old_files, list) else [])
        _remove_inside(out, [*old["files"], "images", "dataset_dict.json", "manifest.json"])
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE).write_text(json.dumps({"files": planned or []}))


def export(
    store, out_dir, fmt: str = "parquet", seed: int | None = None, splits: list[str] | None = None
):
    """Write every split (or `splits`) with the edits applied, and OUT/manifest.json; with a
    `seed`, each split's rows are shuffled (seeded by the seed and the split's name)."""
    t0 = time.perf_counter()
    store.require_samples()
    fmt, splits, image_col = _check_request(store, fmt, splits)
    out = Path(out_dir)
    ext = FORMATS[fmt]
    planned = [f"{_safe(sp)}.{ext}" if ext else _safe(sp) for sp in splits]
    _prepare_out(out, planned + [str(sp) for sp in splits if fmt == "hf"])
    rep = ExportReport(out, fmt)
    label_cols = _label_columns(store)
    tables = {}
    for sp in splits:
        sql, params = split_query(store, sp)
        table = store.polars(sql, params)
        if seed is not None:
            rng = np.random.default_rng([int(seed), zlib.crc32(str(sp).encode())])
            table = table[rng.permutation(len(table))]
        rep.counts[sp] = _split_counts(store, sp, table)
        if image_col and image_col in table.columns and fmt != "imagefolder":
            table = _place_images(table, out, sp, image_col)
        if fmt == "imagefolder":
            root = _write_imagefolder(
                table, out, sp, image_col, label_cols[0] if label_cols else S.LABEL
            )
            rep.files[sp] = str(root.relative_to(out))
            continue
        table = table.drop("_copy", "_src")
        tables[sp] = table
        if ext is not None:
            rep.files[sp] = _write_split(table, out, sp, fmt)
    if fmt == "hf":
        rep.files.update(_write_hf(tables, out))
    rep.manifest = _write_manifest(store, out, fmt, seed, rep, splits)
    (out / INCOMPLETE).unlink(missing_ok=True)
    rep.seconds = time.perf_counter() - t0
    return rep


def _check_request(store, fmt: str, splits: list[str] | None) -> tuple[str, list[str], str | None]:
    """The format (lower case) and splits to export, and the image column; an unknown format or
    split, imagefolder without images, or a split name Hugging Face refuses is an InputError."""
    fmt = (fmt or "parquet").lower()
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    image_col = store.image_column()
    if fmt == "imagefolder" and not image_col:
        raise InputError("imagefolder export needs image data", "use parquet, csv, jsonl or hf")
    all_splits = store.splits()
    splits = splits or all_splits
    unknown = [s for s in splits if s not in all_splits]
    if unknown:
        raise InputError(
            f"unknown split(s) {', '.join(unknown)}", f"the store has {', '.join(all_splits)}"
        )
    if fmt == "hf":
        bad = [sp for sp in splits if not re.match(r"^\w+(\.\w+)*$", str(sp))]
        if bad:
            raise InputError(
                f"split name(s) {', '.join(map(repr, bad))} cannot be Hugging Face split names "
                "(letters, digits, _ and inner dots only)",
                "export with --format parquet/csv/jsonl, or rename the split: `datacure sql "
                "\"UPDATE samples SET split = 'new' WHERE split = 'old'\" --write`",
            )
    return fmt, splits, image_col


def _write_split(table: pl.DataFrame, out: Path, split: str, fmt: str) -> str:
    """One split's file in a one-file-per-split format; its name."""
    path = out / f"{_safe(split)}.{FORMATS[fmt]}"
    if fmt == "parquet":
        table.write_parquet(path, compression="zstd", statistics=False)
    elif fmt == "csv":
        _flat(table).write_csv(path)
    else:
        table.write_ndjson(path)
    return path.name


def _write_hf(tables: dict[str, pl.DataFrame], out: Path) -> dict:
    from datasets import Dataset, DatasetDict

    dd = DatasetDict({sp: Dataset(t.to_arrow()) for sp, t in tables.items()})
    _remove_inside(out, list(tables))  # split names were checked in export()
    dd.save_to_disk(str(out))
    return {sp: sp for sp in tables}


def manifest_data(store, fmt: str, seed: int | None, rep: ExportReport, splits: list[str]) -> dict:
    live = f"status != '{REJECTED}'"
    applied, rows_by = _edits_applied(store)
    status_counts = dict(
        store.fetchall(f"SELECT status, count(*) FROM {S.EDITS} GROUP BY 1 ORDER BY 1")
    )
    runs = [
        int(r[0])
        for r in store.fetchall(
            f"SELECT DISTINCT run_id FROM {S.EDITS} WHERE {live} AND run_id IS NOT NULL ORDER BY 1"
        )
    ]
    gens = store.fetchall(
        f"SELECT generator, backend, model, count(*) FROM {S.GENERATED} g JOIN "
        f"(SELECT DISTINCT row_id FROM {S.EDITS} WHERE {live} AND action = '{ADD}') a "
        f"USING (row_id) GROUP BY ALL ORDER BY ALL"
    )
    emb = [{"key": e["key"], "model": e["model"], "dim": e["dim"]} for e in store.embedding_keys()]
    plan = store.meta_get("repair_plan") or {}
    return {
        "tool": "datacure",
        "format": fmt,
        "seed": seed,
        "store": str(Path(store.path).name),
        "splits": rep.counts,
        "files": rep.files,
        "edits_applied": applied,
        "rows_by_edit": rows_by,
        "edits_by_status": {str(k): int(v) for k, v in status_counts.items()},
        "audit_runs": runs,
        "latest_audit_run": store.latest_run_id(),
        "repair_plan": plan,
        "generators": [
            {"generator": g, "backend": b, "model": m, "rows": int(n)} for g, b, m, n in gens
        ],
        "embeddings": emb,
        "columns_added": list(ADDED),
        "versions": versions(
            "duckdb",
            "polars",
            "pyarrow",
            "torch",
            "diffusers",
            "transformers",
            "scikit-learn",
            "sentence-transformers",
        ),
    }


def _edits_applied(store) -> tuple[dict, dict]:
    """Edits not rejected: {action[/kind]: {reason: edits}} and {action[/kind]: rows}."""
    by_kind = store.fetchall(
        f"SELECT action, coalesce(json_extract_string(details, '$.kind'), action), reason, "
        f"status, count(*), sum(coalesce(json_extract(details, '$.copies')::INT, 1)) "
        f"FROM {S.EDITS} GROUP BY ALL ORDER BY ALL"
    )
    applied: dict[str, dict[str, int]] = {}
    rows_by: dict[str, int] = {}
    for action, kind, reason, status, n, rows in by_kind:
        if status == REJECTED:
            continue
        applied.setdefault(f"{action}/{kind}" if kind != action else action, {})
        key = f"{action}/{kind}" if kind != action else action
        applied[key][reason] = applied[key].get(reason, 0) + int(n)
        rows_by[key] = rows_by.get(key, 0) + int(rows)
    return applied, rows_by


def _write_manifest(
    store, out: Path, fmt: str, seed: int | None, rep: ExportReport, splits
) -> Path:
    path = out / "manifest.json"
    path.write_text(
        json.dumps(
            manifest_data(store, fmt, seed, rep, splits), indent=1, sort_keys=True, default=str
        )
    )
    return path
