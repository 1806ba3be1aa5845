"""`ingest --engine ray`: sharded sources read in parallel, vectors kept as Parquet shards.

Sources: a folder or glob of Parquet, JSONL or CSV/TSV files (one task per file; a single
Parquet file is split by row groups), or an image folder (images verified in parallel, in
chunks). What runs where:

1. workers read their shard with DuckDB (the local readers' calls), validate the `--vector`
   column with the local ingest's own check, and write (a) the vectors with their final row ids
   to `<db>.shards/embeddings_user_<col>/<token>/`, (b) every other column to a staging folder;
   for an `--image` column they resolve and verify the images (`_check_images`, unchanged);
2. the driver runs the local ingest (`store.ingest._ingest`, unchanged: roles, splits, labels,
   reserved names, content hashes, row ids) on the staging folder inside one transaction, and in
   the same transaction attaches the vector files as the view `embeddings_user_<col>`. The rows
   never carry their vectors through one process, so memory is bounded by a shard's vectors on
   a worker and by the non-vector columns on the driver.

Row ids are the local ingest's: `start + position` (positions in file order), with `start`
read before the workers run and checked after (the store's lock is held throughout). `--replace`
with `--vector` is refused (re-matched ids would not line up with vectors written before).
"""

from __future__ import annotations

import functools
import glob
import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...store import datadef
from ...store import schema as S
from ...store.db import Store
from ...store.errors import DatacureError, InputError
from .. import shards
from .cluster import fault_point, run_stage, task_threads

CHECKED = "__dc_checked_image"  # staging column: image paths resolved and verified by a worker
IMAGE_CHUNK = 2000  # images verified per task
TABLE_FORMATS = ("parquet", "jsonl", "csv", "tsv")


def _files(source: str, fmt: str | None) -> tuple[list[Path], str, str | None]:
    """(files, format, image-folder root or None) of a sharded source."""
    from ...store.sources import _SUFFIX_FORMAT, detect_format

    src = str(source)
    if any(ch in src for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(src)) if Path(p).is_file())
        if not files:
            raise InputError(f"no files match {src}", "check the pattern (quote it in the shell)")
    else:
        path = Path(src).expanduser()
        if not path.exists():
            raise InputError(f"source {src} does not exist", "check the path")
        if path.is_file():
            files = [path]
        else:
            kind = fmt or detect_format(path)
            if kind == "imagefolder":
                return [], "imagefolder", str(path.resolve())
            if kind == "hf":
                raise InputError(
                    f"{src} is a Hugging Face dataset folder, which --engine ray does not read",
                    "ingest it with --engine local, or export it to Parquet files first",
                )
            want = kind
            files = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and _SUFFIX_FORMAT.get(p.suffix.lower()) == want
            )
            if not files:
                raise InputError(f"{src} holds no {want} files", "point at a folder of shards")
    kinds = {fmt or detect_format(f) for f in files}
    if len(kinds) > 1:
        raise InputError(
            f"{src} mixes formats ({', '.join(sorted(kinds))})",
            "give shards of one format, or pass --format",
        )
    kind = kinds.pop()
    if kind not in TABLE_FORMATS:
        raise InputError(f"--engine ray cannot read {kind} shards", "use Parquet, JSONL or CSV")
    return files, kind, None


def _read_sql(fmt: str) -> str:
    return {
        "csv": "read_csv(?, header = true)",
        "tsv": "read_csv(?, header = true, delim = '\t')",
        "jsonl": "read_json(?, format = 'auto')",
        "parquet": "read_parquet(?)",
    }[fmt]


class _Con:
    """What `_check_vectors` needs of a store: a connection and `arrow()`."""

    def __init__(self):
        import duckdb

        self.con = duckdb.connect()
        self.con.execute("SET threads = 1")

    def arrow(self, sql, params=None):
        return self.con.sql(sql, params=params or None).to_arrow_table()


def read_job(
    out: str,
    index: int,
    file: str,
    fmt: str,
    row_groups: list[int] | None,
    vector: str | None,
    vec_out: str | None,
    first_row_id: int | None,
    image: str | None,
    root: str,
    allow_outside: bool,
) -> dict:
    """Worker: read one shard, split off its vectors (with their row ids), write the rest."""
    from ...store.ingest_checks import _check_images, _check_vectors
    from ...store.sources import _read_error

    task_threads(1)
    fault_point("ingest", index, out)
    con = _Con()
    name = Path(file).name
    try:
        if row_groups is not None:
            tbl = pq.ParquetFile(file).read_row_groups(row_groups)
        else:
            try:
                tbl = con.arrow(f"SELECT * FROM {_read_sql(fmt)}", [file])
            except Exception as exc:  # noqa: BLE001 - DuckDB's reader errors, re-worded
                raise _read_error(Path(file), name, fmt, str(exc)) from None
        n = tbl.num_rows
        dim = None
        if vector is not None:
            if vector not in tbl.column_names:
                raise InputError(
                    f"shard {name} has no column {vector!r} (--vector)",
                    "give every shard the vector column",
                )
            types = {r[0]: r[1] for r in _describe(con, tbl)}
            tbl, dim = _check_vectors(con, tbl, vector, types[vector], name)
            ids = first_row_id + np.arange(n, dtype=np.int64)
            vec = pa.table({S.ROW_ID: pa.array(ids), "vector": tbl.column(vector)})
            shards.write_table(vec, vec_out, row_group_size=16384)
            tbl = tbl.drop_columns([vector])
        if image is not None:
            if image not in tbl.column_names:
                raise InputError(f"shard {name} has no column {image!r} (--image)", "add it")
            checked = _check_images(tbl.column(image), Path(root), allow_outside, name, image)
            tbl = tbl.append_column(CHECKED, checked)
        shards.write_table(tbl, out)
    finally:
        con.con.close()
    meta = {"rows": n, "dim": dim or 0, "schema": [[f.name, str(f.type)] for f in tbl.schema]}
    shards.write_meta(out, meta)
    return meta


def _describe(con: _Con, tbl: pa.Table):
    con.con.register("_dc_t", tbl)
    try:
        return con.con.execute("DESCRIBE SELECT * FROM _dc_t").fetchall()
    finally:
        con.con.unregister("_dc_t")


def count_job(out: str, file: str, fmt: str) -> dict:
    """Worker: the number of rows of a CSV/JSONL shard."""
    from ...store.sources import _read_error

    con = _Con()
    try:
        n = con.con.execute(f"SELECT count(*) FROM {_read_sql(fmt)}", [file]).fetchall()[0][0]
    except Exception as exc:  # noqa: BLE001 - DuckDB's reader errors, re-worded
        raise _read_error(Path(file), Path(file).name, fmt, str(exc)) from None
    finally:
        con.con.close()
    meta = {"rows": int(n)}
    shards.write_meta(out, meta)
    return meta


def cast_job(out: str, file: str, schema: pa.Schema) -> dict:
    """Worker: cast a staging file to the schema shared by every shard."""
    tbl = pq.read_table(file)
    target = pa.schema([f for f in schema if f.name in tbl.column_names])
    try:
        tbl = tbl.select(target.names).cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(
            f"shard {Path(file).name} cannot be read with the other shards' column types: {exc}",
            "give the column one type in every shard (or convert the shards to Parquet)",
        ) from None
    shards.write_table(tbl, file)
    meta = {"rows": tbl.num_rows}
    shards.write_meta(out, meta)
    return meta


def check_images_job(
    out: str, paths: list[str], root: str, allow_outside: bool, name: str, image: str
) -> dict:
    """Worker: resolve and verify a chunk of an image folder (the local check, unchanged)."""
    from ...store.ingest_checks import _check_images

    task_threads(1)
    checked = _check_images(pa.array(paths, pa.string()), Path(root), allow_outside, name, image)
    shards.write_table(pa.table({"p": checked}), out)
    meta = {"rows": len(paths)}
    shards.write_meta(out, meta)
    return meta


def _unified(schemas: list[pa.Schema]) -> pa.Schema:
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(
            f"the shards' columns do not agree: {exc}",
            "give every shard the same columns, each of one type",
        ) from None


def ray_ingest(
    store: Store,
    source,
    *,
    split: str | None = None,
    split_column: str | None = None,
    label: str | None = None,
    text: str | None = None,
    image: str | None = None,
    vector: str | None = None,
    fmt: str | None = None,
    replace: bool = False,
    allow_outside: bool = False,
    progress=None,
    reports: list | None = None,
):
    """Ingest a sharded source with the Ray engine (see the module docstring)."""
    _refuse(source, vector, replace)
    files, kind, image_root = _files(str(source), fmt.lower().strip() if fmt else None)
    root = shards.shard_root(store.path)
    token = uuid.uuid4().hex[:10]
    work = root / "work" / f"ingest-{token}"
    written: list[Path] = []
    vec_dir = None
    local = {"split_column": split_column, "label": label, "text": text, "image": image}
    local |= {"replace": replace, "allow_outside": allow_outside}
    ingest_rows = functools.partial(_local_ingest, store, split=split, options=local)
    try:
        if kind == "imagefolder":
            return _ingest_imagefolder(
                image_root, source, split, allow_outside, work, ingest_rows, progress, reports
            )
        units = _plan_units(files, kind)
        bases = _row_bases(units, kind, work, progress)
        start = key = None
        if vector is not None:
            start = _next_row_id(store)
            key = S.sanitize_key("user", vector)
            vec_dir = root / S.embedding_table(key) / token
        img_root = str((Path(files[0]).parent).resolve())
        shard = (kind, vector, image, img_root, allow_outside)
        jobs = _read_jobs(units, bases, start, work, vec_dir, shard, written)
        metas = run_stage("read shards", read_job, jobs, progress, reports=reports)
        dims = _one_dim(metas, vector)
        _align_schemas(jobs, progress, reports)
        src = _staged_source(store, work, source, kind, img_root, split, files)
        n = int(bases[-1])
        # the local ingest over the staging folder, and the vectors view, in one transaction
        with store.transaction():
            report = ingest_rows(src)
            if vector is not None:
                vec_files = [str(p) for p in written]
                _attach_vectors(store, key, vector, vec_files, dims.pop(), start, n, src.path)
                report.vector_key = key
                _mark_vector_column(store, vector, report)
        report.notes.append(f"engine ray: {len(jobs)} shards read in parallel")
        written = []  # attached: keep
        return report
    except BaseException:
        _remove_vectors(written, vec_dir)
        raise
    finally:
        shards.remove_tree(work)


def _refuse(source, vector: str | None, replace: bool) -> None:
    """What `ingest --engine ray` does not take, refused before any work."""
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(
            "--engine ray ingests files (a folder or glob of shards), not in-memory tables",
            "write the table to Parquet shards first, or use engine='local'",
        )
    if vector is not None and replace:
        raise InputError(
            "--replace with --vector is not supported by --engine ray",
            "ingest the split under a new name, or use --engine local",
        )


def _local_ingest(store: Store, src, split: str | None, options: dict):
    """The local ingest of the rows read here (vectors are attached as shards, apart)."""
    from ...store.ingest import _ingest

    return _ingest(
        store,
        src,
        split=split if src.split_values is None else None,
        vector=None,
        infer=True,
        **options,
    )


def _remove_vectors(written: list[Path], vec_dir: Path | None) -> None:
    """A failed run's vector files (and, when it wrote any, its folder: temporary files too)."""
    for p in written:
        p.unlink(missing_ok=True)
    if vec_dir is not None and written:
        shards.remove_tree(vec_dir)


def _ingest_imagefolder(
    image_root, source, split, allow_outside: bool, work: Path, ingest_rows, progress, reports
):
    """An image folder: its images resolved and verified in parallel chunks, then the local
    ingest of the rows with the verified paths."""
    from ...store.sources import _read_imagefolder

    src = _read_imagefolder(Path(image_root), str(source), split)
    col = src.table.column(src.image)
    paths = col.to_pylist()
    jobs = [
        (
            str(work / f"img-{i:06d}.parquet"),
            (paths[lo : lo + IMAGE_CHUNK], str(src.root), allow_outside, src.name, "image"),
        )
        for i, lo in enumerate(range(0, len(paths), IMAGE_CHUNK))
    ]
    run_stage("verify images", check_images_job, jobs, progress, reports=reports)
    checked = pa.concat_arrays([pq.read_table(out).column("p").combine_chunks() for out, _ in jobs])
    src.checked_images = checked
    report = ingest_rows(src)
    report.notes.append(f"engine ray: {len(jobs)} image chunks verified in parallel")
    return report


def _plan_units(files: list[Path], kind: str) -> list[tuple[str, list[int] | None]]:
    """The read jobs: one per file, or a single Parquet file's row groups (about 64 jobs)."""
    units: list[tuple[str, list[int] | None]] = []
    for f in files:
        if kind == "parquet":
            ngroups = pq.ParquetFile(f).num_row_groups
            if len(files) == 1 and ngroups > 1:
                step = max(1, ngroups // 64)
                units += [
                    (str(f), list(range(g, min(g + step, ngroups))))
                    for g in range(0, ngroups, step)
                ]
                continue
        units.append((str(f), None))
    return units


def _row_bases(units: list, kind: str, work: Path, progress) -> np.ndarray:
    """Each unit's first position in file order (and the total last): Parquet rows counted from
    the footers, other formats counted by the workers."""
    if kind == "parquet":
        counts = []
        for f, groups in units:
            md = pq.ParquetFile(f).metadata
            gs = groups if groups is not None else range(md.num_row_groups)
            counts.append(sum(md.row_group(g).num_rows for g in gs))
    else:
        cjobs = [(str(work / f"count-{i:06d}"), (f, kind)) for i, (f, _) in enumerate(units)]
        counts = [m["rows"] for m in run_stage("count rows", count_job, cjobs, progress)]
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _next_row_id(store: Store) -> int:
    """The row id the local ingest gives the first new row."""
    floor = (
        int(store.scalar(f"SELECT max(row_id) + 1 FROM {S.SAMPLES}") or 0)
        if store.table_exists(S.SAMPLES)
        else 0
    )
    return max(int(store.meta_get("next_row_id", 0)), floor)


def _one_dim(metas: list[dict], vector) -> set:
    """The vector lengths the shards saw (at most one, else an InputError)."""
    dims = {m["dim"] for m in metas if m.get("dim")}
    if len(dims) > 1:
        raise InputError(
            f"--vector {vector!r} has vectors of different lengths across shards: {sorted(dims)}",
            "give every row a vector of the same length (one model for all rows)",
        )
    return dims


def _align_schemas(jobs: list, progress, reports) -> None:
    """One schema for the staging files: those that differ are cast to the unified one."""
    schemas = [pq.read_schema(out) for out, _ in jobs]
    unified = _unified(schemas)
    if any(not s.equals(unified) for s in schemas):
        cast = [
            (out + ".cast", (out, unified))
            for (out, _), s in zip(jobs, schemas)
            if not s.equals(unified)
        ]
        run_stage("align shard schemas", cast_job, cast, progress, reports=reports)


def _staged_source(store: Store, work: Path, source, kind: str, img_root: str, split, files):
    """The staging folder read as the source the local ingest takes, named as the original
    (its default split from a lone file's name), verified image paths moved aside."""
    from ...store.sources import SPLIT_STEMS, read_source

    src = read_source(store, work, fmt="parquet", split=split)
    src.name, src.path, src.fmt = str(source), str(Path(str(source)).resolve()), kind
    src.root = Path(img_root)
    word = Path(str(source)).name.lower().split(".")[0].split("_")[0].split("-")[0]
    if len(files) == 1 and word in SPLIT_STEMS:
        src.default_split = word
    if CHECKED in src.table.column_names:
        src.checked_images = src.table.column(CHECKED).combine_chunks()
        src.table = src.table.drop_columns([CHECKED])
    return src


def _read_jobs(units, bases, start, work: Path, vec_dir, shard: tuple, written: list) -> list:
    """One `read_job` per unit: its staging file, and its vector file (appended to `written`
    as planned, so a failed run removes it) with the row id of its first row."""
    kind, vector, image, img_root, allow_outside = shard
    jobs = []
    for i, (f, groups) in enumerate(units):
        out = str(work / f"part-{i:06d}.parquet")
        vec_out = str(vec_dir / f"part-{i:06d}.parquet") if vec_dir else None
        first = int(start + bases[i]) if start is not None else None
        jobs.append(
            (out, (i, f, kind, groups, vector, vec_out, first, image, img_root, allow_outside))
        )
        if vec_out:
            written.append(Path(vec_out))
    return jobs


def _mark_vector_column(store: Store, vector: str, report) -> None:
    """Record the vector column on the sources rows of the splits the ingest wrote."""
    splits = list(report.split_counts)
    store.execute(
        f"UPDATE {S.SOURCES} SET vector_column = ? WHERE split IN "
        f"({', '.join('?' for _ in splits)})",
        [vector, *splits],
    )


def _attach_vectors(
    store: Store, key: str, vector: str, files: list[str], dim: int, start: int, n: int, source: str
) -> None:
    """The vector files become (part of) `embeddings_<key>`; the row ids they hold must be the
    ones the ingest gave the rows."""
    got = store.fetchone(
        f"SELECT min(row_id), max(row_id), count(*) FROM {S.SAMPLES} WHERE row_id >= ?", [start]
    )
    if got is None or tuple(int(v or 0) for v in got) != (start, start + n - 1, n):
        raise DatacureError(
            f"the ingest gave row ids {got}, not {start}..{start + n - 1} as the vector shards "
            "were written with",
            "report this; ingest with --engine local meanwhile",
        )
    table = S.embedding_table(key)
    existing = {e["key"]: e for e in store.embedding_keys()}
    if key in existing and int(existing[key]["dim"]) != dim:
        raise InputError(
            f"embedding {key!r} has dimension {existing[key]['dim']}, not {dim}",
            f"drop it first (`datacure sql 'DROP VIEW {table}' --write`) or rename the column",
        )
    if key in existing and not shards.is_view(store, table):
        store.execute(
            f"INSERT INTO {S.quote(table)} SELECT row_id, vector::FLOAT[{dim}] "
            f"FROM read_parquet({shards.sql_list(files)})"
        )
    else:
        before = shards.embedding_files(store, key) or []
        shards.attach_embedding(
            store,
            key,
            before + files,
            dim,
            f"user column {vector}",
            vector,
            "user",
            False,
            info={"source": source},
        )
    datadef.record(store, vector=vector)
