"""What the driver of `audit --engine ray` writes for its workers (stage 1, see
engine/ray/audit.py): the few numbers it keeps per row (`_Codes`), the row-id ranges of the
vector files, and per range the codes file, the rows file, and the vectors of an embedding held
in a DuckDB table exported as Parquet."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa

from ...store import schema as S
from ...store.db import Store
from .. import shards

if TYPE_CHECKING:
    from .audit import _Run


def _fingerprint(*parts) -> str:
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


@dataclass
class _Codes:
    """The driver's few numbers per row (about 20 bytes a row), in row-id order."""

    rid_all: np.ndarray  # every row id, sorted
    split_names: list[str]  # split values in code order
    split_code: np.ndarray  # int16 per row
    audited: np.ndarray  # bool per row: in an audited split
    classes: list  # label values of the audited rows, in code order
    label: np.ndarray  # int32 label code per row (-1: unlabelled or not audited)
    fold: np.ndarray  # int8 cross-validation fold per row (-1: none)
    folds: int  # folds of the pred_probs model (0: none)


def _row_codes(store: Store, ctx, seed: int) -> _Codes:
    """Row ids, split and label codes, and the folds auditor/predict.py would cross-validate
    the audited rows with."""
    frame = store.polars(f"SELECT row_id, split, label FROM {S.SAMPLES} ORDER BY row_id")
    rid_all = frame[S.ROW_ID].to_numpy().astype(np.int64)
    split_names = sorted(frame["split"].unique().to_list())
    split_code = (
        frame.select(pl.col("split").replace_strict(split_names, list(range(len(split_names)))))
        .to_series()
        .to_numpy()
        .astype(np.int16)
    )
    audited = np.isin(frame["split"].to_numpy(), ctx.splits)
    lab_vals = frame.filter(pl.Series(audited))["label"].drop_nulls().unique().to_list()
    classes = sorted(lab_vals, key=lambda v: (str(type(v)), v))
    mapping = pl.DataFrame({"_v": classes, "_code": np.arange(len(classes))}) if classes else None
    if mapping is not None:
        codes = (
            frame.select(pl.col("label").alias("_v"))
            .join(mapping, on="_v", how="left", maintain_order="left")["_code"]
            .fill_null(-1)
            .to_numpy()
            .astype(np.int32)
        )
    else:
        codes = np.full(len(frame), -1, np.int32)
    del frame
    label = np.where(audited, codes, -1).astype(np.int32)
    # folds, as auditor/predict.py cross-validates the audited rows
    num_classes = len(classes)
    fold = np.full(len(rid_all), -1, np.int8)
    folds = 0
    y_aud = label[audited]
    lab_pos = np.flatnonzero(y_aud >= 0)
    if num_classes >= 2 and len(np.unique(y_aud[lab_pos])) >= 2:
        from ...auditor.predict import stratified_folds

        counts = np.bincount(y_aud[lab_pos], minlength=num_classes)
        folds = int(max(2, min(ctx.cv_folds, counts[counts > 0].min())))
        if len(lab_pos) >= 2 * folds:
            aud_idx = np.flatnonzero(audited)
            for f, part in enumerate(stratified_folds(y_aud[lab_pos], folds, seed)):
                fold[aud_idx[lab_pos[part]]] = f
        else:
            folds = 0
    return _Codes(rid_all, split_names, split_code, audited, classes, label, fold, folds)


def _export_codes(run: _Run, ranges, rc: _Codes) -> list[str]:
    """Stage 1: the codes of each range's rows as a Parquet file (kept for a resumed run)."""
    codes_files = []
    for i, (lo, hi, _) in enumerate(ranges):
        path = run.work / "codes" / f"c{i:06d}.parquet"
        if not path.exists():
            a, b = np.searchsorted(rc.rid_all, [lo, hi + 1])
            shards.write_table(
                pa.table(
                    {
                        S.ROW_ID: pa.array(rc.rid_all[a:b]),
                        "split": pa.array(rc.split_code[a:b]),
                        "label": pa.array(rc.label[a:b]),
                        "fold": pa.array(rc.fold[a:b]),
                        "audited": pa.array(rc.audited[a:b]),
                    }
                ),
                path,
            )
        codes_files.append(str(path))
    return codes_files


def _export_vectors(run: _Run, key: str) -> list[str]:
    """An embedding kept in a DuckDB table, written once as Parquet files of EXPORT_ROWS rows
    (reused while the table is unchanged)."""
    store = run.store
    table = S.quote(S.embedding_table(key))
    cnt, lo, hi = store.fetchone(f"SELECT count(*), min(row_id), max(row_id) FROM {table}")
    folder = run.root / "export" / f"{key}-{_fingerprint(cnt, lo, hi, run.export_rows)}"
    done = folder / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    shards.remove_tree(folder)
    ids = store.execute(f"SELECT row_id FROM {table} ORDER BY row_id").fetchnumpy()[S.ROW_ID]
    out = []
    t0 = time.perf_counter()
    run.say(f"exporting {S.embedding_table(key)} to Parquet ({len(ids)} rows)")
    for i, a in enumerate(range(0, len(ids), run.export_rows)):
        b0, b1 = int(ids[a]), int(ids[min(a + run.export_rows, len(ids)) - 1])
        path = folder / f"part-{i:06d}.parquet"
        _copy_parquet(
            store,
            f"SELECT row_id, vector FROM {table} WHERE row_id BETWEEN {b0} AND {b1} "
            "ORDER BY row_id",
            path,
            16384,
        )
        out.append(str(path))
    done.write_text(json.dumps(out))
    run.driver["export vectors"] = round(time.perf_counter() - t0, 2)
    return out


RANGE_ROWS = 100_000  # rows of vector files merged into one range (ingest's shard size) ...
RANGES_PER_CPU = 4  # ... while every CPU keeps at least this many ranges to work through


def _ranges(
    files: list[str], rid_all: np.ndarray, cpus: float = 1
) -> list[tuple[int, int, list[str]]]:
    """Row-id ranges covering every row, each with the vector files that hold its vectors
    (the files of an embedding hold disjoint ranges): adjacent files merged up to `RANGE_ROWS`
    rows, or fewer so that each of `cpus` has `RANGES_PER_CPU` ranges. A range is a task in
    each per-range stage, and a task has a fixed cost: `embed --engine ray` writes files of
    20,000 rows, and the 10M-row text audit ran its per-range stages on 500 of them (stats 65
    s, against 25 s for the 10M vectors' 100 files of 100,000 rows)."""
    if not files:
        return [
            (int(rid_all[0]) if len(rid_all) else 0, int(rid_all[-1]) if len(rid_all) else 0, [])
        ]
    fr = shards.file_ranges(files)
    total = sum(r[3] for r in fr)
    cap = max(1, min(RANGE_ROWS, math.ceil(total / max(1.0, RANGES_PER_CPU * cpus))))
    merged: list[list] = []  # [first row id, rows, files]
    for f, lo, _hi, rows in fr:
        if merged and merged[-1][1] + rows <= cap:
            merged[-1][1] += rows
            merged[-1][2].append(f)
        else:
            merged.append([lo, rows, [f]])
    out = []
    for i, (lo, _rows, fl) in enumerate(merged):
        first = -(2**62) if i == 0 else lo
        last = 2**62 if i == len(merged) - 1 else merged[i + 1][0] - 1
        out.append((first, last, fl))
    return out


def _export_rows(run: _Run, ranges) -> list[str]:
    """The rows of `samples` (every column) in the same ranges, for the auditors that read
    content on shards."""
    out = []
    for i, (lo, hi, _) in enumerate(ranges):
        path = run.work / "rows" / f"r{i:06d}.parquet"
        if not path.exists():
            _copy_parquet(
                run.store,
                f"SELECT * FROM {S.SAMPLES} WHERE row_id BETWEEN {lo} AND {hi} ORDER BY row_id",
                path,
                65536,
            )
        out.append(str(path))
    return out


def _copy_parquet(store, select: str, path: Path, row_group_size: int | None = None, params=None):
    """The rows of `select` written by DuckDB to `path` as Parquet, atomically (a temporary
    name, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    size = f", ROW_GROUP_SIZE {row_group_size}" if row_group_size else ""
    store.execute(f"COPY ({select}) TO '{tmp}' (FORMAT parquet{size})", params)
    tmp.replace(path)
