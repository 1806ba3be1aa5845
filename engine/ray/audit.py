"""`audit --engine ray`: the kNN graph in partitions and the row auditors as tasks over shards.

The driver holds the store (and its lock) and a few numbers per row (row id, split, label code,
fold: about 20 bytes a row); vectors are only ever read by workers, a range or a group at a
time. Stages (each a set of Ray tasks over files in `<db>.shards/work/<token>/`, resumable):

1. export: per-row codes (split, label, fold, audited) and, when an auditor reads the rows'
   content, the rows themselves, in the row-id ranges of the vector files;
2. stats (one task per range): labelled vector sums (the pred_probs model's mean), a uniform
   sample of vectors (k-means, projection, the sample that dataset-level auditors run on), the
   recall queries' vectors;
3. driver: projection basis, k-means centroids, groups of nearby partitions;
4. assign (per range): partitions, fold statistics of the pred_probs model, exact neighbours of
   the recall queries among the range's rows; rows written grouped for the search;
5. driver: the number of probes w from the recall sample, the out-of-fold models;
6. search (per group): the graph rows, the pred_probs logits, leakage's cross-split partners;
   the rows it may have flagged as outliers wrongly are searched again with 3w probes;
7. driver: calibration temperature, outlier quantiles, near-duplicate radius, graph recall;
8. edges (per group) and the near-duplicate sets on the driver; 9. finish (per group): rows;
10. hash (per range) and buckets: `exact_duplicate` (the auditor itself per bucket) and
    leakage's exact pairs; `null` and `contamination` unchanged per range; dataset-level
    auditors unchanged on the uniform sample; `class_imbalance` on the label column alone;
11. one transaction: `runs`, `issues` (inserted from the result files by DuckDB), summaries, the
    graph attached as `knn_<...>` with its recall in `knn_graphs`. The work folder is deleted
    after the commit; until then a rerun with the same inputs resumes where it stopped.

Stages 3-6 are in engine/ray/graph.py, 7-9 in graph_rows.py; the tasks themselves in
engine/ray/audit_tasks.py, search_tasks.py and finish_tasks.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from ...auditor.base import details_sql
from ...store import schema as S
from ...store.db import Store, capped_memory
from ...store.errors import DatacureError, InputError
from .. import partition as P
from .. import plans, shards
from . import audit_tasks as T
from .cluster import StageReport, run_stage
from .graph import GraphRun, examined_splits
from .graph_rows import graph_and_rows

GROUP_ROWS = 100_000  # rows per search task (a group of partitions, before its halo)
SAMPLE_ROWS = 200_000  # rows of the uniform sample dataset-level auditors run on
BUCKET_ROWS = 200_000  # rows per hash bucket
EXPORT_ROWS = 100_000  # rows per exported vector file (an embedding held in a DuckDB table)
CHECK_ROWS = 2_000  # rows of the sample the skip rules are checked on
# DuckDB's buffer pool while the driver exports and commits (bytes; it spills past it): the
# driver's memory stays bounded by its per-row arrays, not by DuckDB's default of 80% of RAM
DRIVER_DUCKDB_MEMORY = 10**9


def _fingerprint(*parts) -> str:
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class _Run:
    """One `audit --engine ray` (see the module docstring for the stages)."""

    def __init__(
        self,
        store: Store,
        progress,
        cluster,
        group_rows: int,
        sample_rows: int,
        partition_rows: int,
    ):
        self.store = store
        self.partition_rows = partition_rows
        self.say = progress or (lambda msg: None)
        self.cluster = cluster
        self.group_rows = group_rows
        self.sample_rows = sample_rows
        self.reports: list[StageReport] = []
        self.driver: dict[str, float] = {}
        self.root = shards.shard_root(store.path)

    # --- state kept across a resumed run ----------------------------------------------------------
    @contextlib.contextmanager
    def clock(self, name: str):
        """Seconds the driver spends in `name` (recorded in the run's config)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.driver[name] = round(self.driver.get(name, 0.0) + time.perf_counter() - t0, 2)

    def state(self, name: str, compute):
        """A driver result saved in the work folder, reused by a resumed run (so every task of
        a stage sees the same centroids, models and thresholds whichever run computed them)."""
        path = self.work / f"state-{name}"
        got = shards.read_meta(path)
        if got is not None:
            return got
        with self.clock(name):
            value = compute()
        shards.write_meta(path, value)
        return shards.read_meta(path)

    def stage(self, name, fn, jobs, **kw):
        self.say(f"{name} ({len(jobs)} tasks)")
        metas = run_stage(name, fn, jobs, None, reports=self.reports, **kw)
        phases: dict[str, float] = {}
        for m in metas:
            for key, v in m.items():
                if key.startswith("t_"):
                    phases[key[2:]] = phases.get(key[2:], 0.0) + float(v)
        self.reports[-1].phases = {k: round(v, 2) for k, v in phases.items()}
        return metas


def ray_audit(
    store: Store,
    auditors: list[str] | None = None,
    config: dict | list | None = None,
    splits: list[str] | None = None,
    reference: str | None = None,
    embedding: str | None = None,
    k: int = 10,
    seed: int = 0,
    pred_probs=None,
    progress=None,
    context_options: dict | None = None,
    cluster=None,
    group_rows: int = GROUP_ROWS,
    sample_rows: int = SAMPLE_ROWS,
    partition_rows: int | None = None,
    export_rows: int = EXPORT_ROWS,
    keep_work: bool = False,
):
    """Run the auditors with the Ray engine and record one run (see the module docstring)."""
    from ...auditor.base import get_auditor
    from ...auditor.context import AuditContext
    from ...auditor.runner import default_auditors, parse_config

    t_run = time.perf_counter()
    if pred_probs is not None:
        raise InputError(
            "--pred-probs is not supported by --engine ray (it cross-validates its own)",
            "drop --pred-probs, or use --engine local",
        )
    params = parse_config(config)
    names = list(auditors) if auditors else default_auditors()
    names += [n for n in params if n not in names and auditors is None]
    instances = [get_auditor(n)(**params.get(n, {})) for n in names]
    for a in instances:
        if a.name == "label" and a.params.noise_model == "auto":
            raise InputError(
                "label noise_model: auto is not supported by --engine ray yet (its flip-channel "
                "test is not distributed)",
                "set noise_model: class_conditional (the default), mixed or annotator, or use "
                "--engine local",
            )
    options = dict(context_options or {})
    ctx = AuditContext(
        store,
        splits=splits,
        reference=reference,
        embedding=embedding,
        k=k,
        seed=seed,
        options=options,
    )
    run = _Run(store, progress, cluster, group_rows, sample_rows, partition_rows)
    run.export_rows = export_rows
    with capped_memory(store, DRIVER_DUCKDB_MEMORY):
        return _audit(run, ctx, instances, k, seed, options, t_run, keep_work)


def _audit(
    run: _Run, ctx, instances, k: int, seed: int, options: dict, t_run: float, keep_work: bool
):
    from ...auditor.runner import RunReport

    store = run.store
    key = ctx.embedding_key
    t_rows = time.perf_counter()
    rc = _row_codes(store, ctx, seed)
    run.driver["rows"] = round(time.perf_counter() - t_rows, 2)
    aud_rid = rc.rid_all[rc.audited]
    n = len(aud_rid)
    by_mode = {a.name: plans.mode_of(a.name) for a in instances}
    cfgs = {a.name: a.params.model_dump(mode="json") for a in instances}
    # --- which auditors can run (the local rules, checked on the sample context below) ------------
    files = shards.embedding_files(store, key) if key else None
    inputs = (key, aud_rid, rc.split_code, rc.label, sorted(cfgs.items()), k, seed)
    run.work = run.root / "work" / ("audit-" + _fingerprint(*inputs, files or "table", options))
    run.work.mkdir(parents=True, exist_ok=True)
    if key is not None and files is None:
        files = _export_vectors(run, key)
    ranges = _ranges(files or [], rc.rid_all)
    run.say(f"engine ray: {n} audited rows in {len(ranges)} ranges on {run.cluster.cpus:g} CPUs")

    # --- 1. export codes (and rows when an auditor reads content) ---------------------------------
    codes_files = _export_codes(run, ranges, rc)
    with run.clock("export"):
        rows_files = _export_rows(run, ranges)

    # --- 2. stats ---------------------------------------------------------------------------------
    nparts = P.num_partitions(n, run.partition_rows)
    rng = np.random.default_rng(seed + 3)
    n_sample = min(n, max(run.sample_rows, P.TRAIN_POINTS * nparts))
    sample_ids = np.sort(rng.choice(aud_rid, n_sample, replace=False)) if n else aud_rid
    qpos = np.sort(
        np.random.default_rng(seed + 1).choice(n, P.recall_sample_size(n), replace=False)
    )
    query_ids = aud_rid[qpos]
    fp_ids = aud_rid[np.linspace(0, n - 1, 1024).astype(int)] if n else aud_rid
    stats, emb_ok, emb_reason = _stats(run, key, ranges, codes_files, sample_ids, query_ids, fp_ids)
    # the local rules for skipping an auditor, checked on a small sample (no auditor's rule
    # depends on more than a few rows); the dataset-level auditors get the full sample below
    check = _sample_store(run, ctx, stats, sample_ids, rows_files, key, CHECK_ROWS)
    sctx = _context(check, ctx, options)
    runnable, outcomes = _runnable(instances, sctx, cfgs, emb_ok, emb_reason, key)

    results: dict[str, dict] = {}
    if "exact_duplicate" in runnable or "leakage" in runnable:
        _hash_stage(run, ctx, runnable, cfgs, rows_files, results)
    graph_info = None
    if emb_ok and any(by_mode[nm] == "map_reduce" for nm in runnable):
        gr = GraphRun(
            runnable=runnable,
            cfgs=cfgs,
            stats=stats,
            ranges=ranges,
            codes_files=codes_files,
            rows_files=rows_files,
            k=k,
            seed=seed,
            n=n,
            nparts=nparts,
            query_ids=query_ids,
            classes=rc.classes,
            label=rc.label,
            audited=rc.audited,
            rid_all=rc.rid_all,
            split_names=rc.split_names,
            folds=rc.folds,
            results=results,
        )
        graph_info = graph_and_rows(run, ctx, gr)
    # --- auditors on shards, on the label column, on the sample -----------------------------------
    for name in ("null", "contamination"):
        if name in runnable:
            _shard_stage(run, ctx, name, cfgs[name], rows_files, key, options, results)
    local = [nm for nm in runnable if by_mode[nm] in ("reduced", "sample")]
    sample_ctx = None
    if any(by_mode[nm] == "sample" for nm in local):
        with run.clock("sample"):
            sample = _sample_store(run, ctx, stats, sample_ids, rows_files, key, run.sample_rows)
            sample_ctx = _context(sample, ctx, options)
    for name in local:
        c = (
            sample_ctx
            if by_mode[name] == "sample"
            else _context(_labels_store(run, rows_files), ctx, options)
        )
        engine = (
            {"ran_on": "uniform sample", "rows": c.n, "of": n, "seed": seed + 3}
            if by_mode[name] == "sample"
            else {"ran_on": "the label column of every audited row", "rows": c.n}
        )
        outcomes += _run_local(runnable[name], c, engine, results)

    # --- write the run in one transaction ---------------------------------------------------------
    outcomes += [_ok_outcome(a.name, results[a.name]) for a in instances if a.name in results]
    order = {a.name: i for i, a in enumerate(instances)}
    outcomes.sort(key=lambda o: order[o.name])
    with run.clock("commit"):
        run_id = _commit(run, ctx, instances, outcomes, results, graph_info, k, seed, t_run)
    if not keep_work:
        shards.remove_tree(run.work)
    return RunReport(run_id, outcomes, time.perf_counter() - t_run)


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


def _stats(run: _Run, key, ranges, codes_files, sample_ids, query_ids, fp_ids):
    """Stage 2 (with an embedding): the stats tasks. Returns (their metadata, whether every
    audited row has a vector, why not)."""
    emb_ok, emb_reason = key is not None, "needs embeddings: run `datacure embed` first"
    if key is None:
        return [], emb_ok, emb_reason
    jobs = [
        (
            str(run.work / "stats" / f"s{i:06d}.parquet"),
            (i, codes_files[i], fl, sample_ids, query_ids, fp_ids),
        )
        for i, (_, _, fl) in enumerate(ranges)
    ]
    stats = run.stage("stats", T.stats_job, jobs)
    for (out, _), m in zip(jobs, stats):
        m["file"] = out if Path(out).exists() else None
    missing = sum(int(m["missing"]) for m in stats)
    if missing:
        emb_ok = False
        emb_reason = f"needs embeddings: {missing} audited rows have no vector in embedding {key!r}"
    return stats, emb_ok, emb_reason


def _runnable(instances, sctx, cfgs: dict, emb_ok: bool, emb_reason: str, key):
    """The auditors that run (name -> instance) and the skipped ones' outcomes: the local
    skip rules on the sample context, and what the Ray engine does not support."""
    from ...auditor.runner import AuditorOutcome

    outcomes, runnable = [], {}
    for aud in instances:
        reason = _missing(aud, sctx, emb_ok, emb_reason) or aud.skip_reason(sctx)
        reason = reason or plans.unsupported(aud.name, cfgs[aud.name])
        if aud.name == "near_duplicate" and not reason and sctx.copy_groups is not None:
            reason = (
                "the rows record copies of one original (datacure_row_id of an export), which "
                "the Ray engine's near-duplicate sets do not follow yet; use --engine local"
            )
        if aud.name == "leakage" and not emb_ok and key is not None:
            reason = reason or emb_reason
        if reason:
            outcomes.append(AuditorOutcome(aud.name, "skipped", reason))
        else:
            runnable[aud.name] = aud
    return runnable, outcomes


def _run_local(aud, c, engine: dict, results: dict) -> list:
    """Run `aud` on the driver's context `c` (the sample or the label column); its validated
    result goes in `results`, a refusal comes back as a skipped outcome."""
    from ...auditor.base import validate_result
    from ...auditor.runner import AuditorOutcome

    t0 = time.perf_counter()
    try:
        res = aud.audit(c)
    except DatacureError as exc:
        return [AuditorOutcome(aud.name, "skipped", exc.problem)]
    res = validate_result(aud.name, res, None)
    res.info = dict(res.info)
    res.info["engine"] = engine
    results[aud.name] = {"result": res, "seconds": time.perf_counter() - t0}
    return []


def _ok_outcome(name: str, r: dict):
    """The outcome of an auditor that ran: from its AuditResult (on the driver) or from the
    totals of its tasks."""
    from ...auditor.runner import AuditorOutcome

    if "result" in r:
        res = r["result"]
        counts = {"num_issues": res.num_issues, "num_rows": len(res.rows), "score": res.score}
        info = res.info
    else:
        counts = {"num_issues": r["issues"], "num_rows": r["rows"], "score": r["score"]}
        info = r["info"]
    return AuditorOutcome(name, "ok", **counts, seconds=r["seconds"], info=info)


# --- inputs ---------------------------------------------------------------------------------------
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
        tmp = folder / f".part-{i:06d}.tmp"
        folder.mkdir(parents=True, exist_ok=True)
        store.execute(
            f"COPY (SELECT row_id, vector FROM {table} WHERE row_id BETWEEN {b0} AND {b1} "
            f"ORDER BY row_id) TO '{tmp}' (FORMAT parquet, ROW_GROUP_SIZE 16384)"
        )
        tmp.replace(path)
        out.append(str(path))
    done.write_text(json.dumps(out))
    run.driver["export vectors"] = round(time.perf_counter() - t0, 2)
    return out


def _ranges(files: list[str], rid_all: np.ndarray) -> list[tuple[int, int, list[str]]]:
    """Row-id ranges covering every row: one per vector file (the files of an embedding hold
    disjoint ranges), with the files that hold its vectors."""
    if not files:
        return [
            (int(rid_all[0]) if len(rid_all) else 0, int(rid_all[-1]) if len(rid_all) else 0, [])
        ]
    fr = shards.file_ranges(files)
    lows = [r[1] for r in fr]
    out = []
    for i, (f, _lo, _hi, _n) in enumerate(fr):
        lo = -(2**62) if i == 0 else lows[i]
        hi = 2**62 if i == len(fr) - 1 else lows[i + 1] - 1
        out.append((lo, hi, [f]))
    return out


def _export_rows(run: _Run, ranges) -> list[str]:
    """The rows of `samples` (every column) in the same ranges, for the auditors that read
    content on shards."""
    out = []
    for i, (lo, hi, _) in enumerate(ranges):
        path = run.work / "rows" / f"r{i:06d}.parquet"
        if not path.exists():
            tmp = path.with_name(f".{path.name}.tmp")
            path.parent.mkdir(parents=True, exist_ok=True)
            run.store.execute(
                f"COPY (SELECT * FROM {S.SAMPLES} WHERE row_id BETWEEN {lo} AND {hi} "
                f"ORDER BY row_id) TO '{tmp}' (FORMAT parquet, ROW_GROUP_SIZE 65536)"
            )
            tmp.replace(path)
        out.append(str(path))
    return out


def _sample_store(run: _Run, ctx, stats: list[dict], sample_ids, rows_files, key, size: int):
    """A store over a uniform sample of `size` rows: their rows (every column), their vectors."""
    ids = np.asarray(sample_ids)
    if len(sample_ids) > size:
        ids = np.sort(np.random.default_rng(ctx.seed + 4).choice(sample_ids, size, replace=False))
    path = run.work / "sample" / f"ids-{size}.parquet"
    shards.write_table(pa.table({S.ROW_ID: pa.array(ids)}), path)
    sql = (
        f"SELECT * FROM read_parquet({shards.sql_list(rows_files)}) WHERE row_id IN "
        f"(SELECT row_id FROM read_parquet('{path}'))"
    )
    emb_files = {}
    embeddings = run.store.embedding_keys()
    if key is not None:
        emb_files[key] = [m["file"] for m in stats if m.get("file")]
    st = shards.ShardStore(
        sql, shards.store_meta(run.store), embeddings, emb_files, memory_limit="2GB"
    )
    return st


def _labels_store(run: _Run, rows_files):
    sql = (
        f"SELECT row_id, split, label, NULL::UBIGINT AS {S.CONTENT_HASH} "
        f"FROM read_parquet({shards.sql_list(rows_files)})"
    )
    meta = shards.store_meta(run.store)
    return shards.ShardStore(sql, meta)


def _context(st, ctx, options):
    from ...auditor.context import AuditContext

    present = set(st.splits())
    return AuditContext(
        st,
        splits=[s for s in ctx.splits if s in present] or None,
        reference=ctx.reference if ctx.reference_given and ctx.reference in present else None,
        embedding=ctx.embedding_key
        if ctx.embedding_key in [e["key"] for e in st.embedding_keys()]
        else None,
        k=ctx.k,
        seed=ctx.seed,
        cv_folds=ctx.cv_folds,
        options=options,
    )


def _missing(aud, sctx, emb_ok: bool, emb_reason: str) -> str | None:
    from ...auditor.base import Requires

    needs_emb = Requires.EMBEDDINGS in aud.requires or Requires.PRED_PROBS in aud.requires
    if needs_emb and not emb_ok:
        return emb_reason
    return sctx.missing(aud.requires)


# --- the graph and the map-reduce auditors --------------------------------------------------------
# --- hash shuffle, shards -------------------------------------------------------------------------
def _hash_stage(run, ctx, runnable, cfgs, rows_files, results):
    content = ctx.text_column or (S.IMAGE_PATH if ctx.image_column else None)
    if content is None:
        return
    kind = "text" if ctx.text_column else "image"
    total = int(run.store.scalar(f"SELECT count(*) FROM {S.SAMPLES}"))
    buckets = max(int(run.cluster.cpus), math.ceil(total / BUCKET_ROWS))
    want = [w for w in ("exact_duplicate", "leakage") if w in runnable]
    hjobs = [
        (str(run.work / "hash" / f"h{i:06d}"), (i, f, content, kind, buckets, ctx.splits, want))
        for i, f in enumerate(rows_files)
    ]
    run.stage("hash shuffle", T.hash_job, hjobs)
    meta = shards.store_meta(run.store)
    if "exact_duplicate" in want and "exact_duplicate" not in results:
        t0 = time.perf_counter()
        dirs = sorted((run.work / "hash" / "dup").glob("b*"))
        djobs = [
            (
                str(run.work / "dup_results" / f"{d.name}.parquet"),
                (
                    sorted(str(p) for p in d.glob("*.parquet")),
                    meta,
                    cfgs.get("exact_duplicate", {}),
                    content,
                ),
            )
            for d in dirs
        ]
        done = run.stage("exact duplicates", T.dup_bucket_job, djobs)
        rows = sum(int(m["rows"]) for m in done)
        in_sets = sum(int(m["info"].get("num_rows_in_sets", 0)) for m in done)
        info = plans.merge_info(
            "exact_duplicate", [m["info"] for m in done], [m["rows"] for m in done]
        )
        info["engine"] = {"ran_on": "hash buckets", "buckets": len(done), "rows": rows}
        results["exact_duplicate"] = {
            "files": [out for out, _ in djobs],
            "rows": rows,
            "issues": sum(int(m["issues"]) for m in done),
            "score": 1.0 - in_sets / rows if rows else 1.0,
            "info": info,
            "seconds": time.perf_counter() - t0,
        }
    if "leakage" in want:
        examined = examined_splits(ctx)
        dirs = sorted((run.work / "hash" / "leak").glob("b*"))
        ljobs = [
            (
                str(run.work / "leak_pairs" / f"{d.name}.parquet"),
                (sorted(str(p) for p in d.glob("*.parquet")), examined),
            )
            for d in dirs
        ]
        run.stage("exact leakage", T.leak_bucket_job, ljobs)


def _shard_stage(run, ctx, name, cfg, rows_files, key, options, results):
    t0 = time.perf_counter()
    meta = shards.store_meta(run.store)
    embeddings = run.store.embedding_keys()
    emb_files = {}
    if key is not None:
        emb_files[key] = shards.embedding_files(run.store, key) or _export_vectors(run, key)
    ref_sql = ""
    if name == "contamination" and not options.get("benchmark"):
        ref = run.work / "rows" / "reference.parquet"
        if not ref.exists():
            tmp = ref.with_name(".reference.tmp")
            run.store.execute(
                f"COPY (SELECT * FROM {S.SAMPLES} WHERE split = ? ORDER BY row_id) TO '{tmp}' "
                "(FORMAT parquet)",
                [ctx.reference],
            )
            tmp.replace(ref)
        ref_sql = f" UNION ALL SELECT * FROM read_parquet('{ref}')"
    opts = {k: v for k, v in options.items() if k not in ("judge_url", "judge_model")}
    ctx_args = {
        "splits": list(ctx.splits),
        "reference": ctx.reference if ctx.reference_given else None,
        "embedding": key,
        "k": ctx.k,
        "seed": ctx.seed,
        "options": opts,
    }
    jobs = []
    for i, f in enumerate(rows_files):
        own = f"SELECT * FROM read_parquet('{f}')"
        if ref_sql:
            own += f" WHERE split <> '{ctx.reference}'" + ref_sql
        jobs.append(
            (
                str(run.work / name / f"r{i:06d}.parquet"),
                (i, name, cfg, own, meta, embeddings, emb_files, ctx_args),
            )
        )
    done = run.stage(name, T.shard_audit_job, jobs)
    ran = [(out, m) for (out, _), m in zip(jobs, done) if not m.get("skipped")]
    rows = sum(int(m["rows"]) for _, m in ran)
    issues = sum(int(m["issues"]) for _, m in ran)
    score = sum(float(m["score"]) * int(m["rows"]) for _, m in ran) / rows if rows else 1.0
    info = plans.merge_info(name, [m["info"] for _, m in ran], [m["rows"] for _, m in ran])
    if name == "contamination":
        score = 1.0 - issues / max(rows, 1)
        if options.get("judge_url"):
            info["tier3"] = {"skipped": "the judge (tier 3) is not run by --engine ray"}
    results[name] = {
        "files": [out for out, _ in ran],
        "rows": rows,
        "issues": issues,
        "score": score,
        "info": info,
        "seconds": time.perf_counter() - t0,
    }


# --- the commit -----------------------------------------------------------------------------------
def _commit(run, ctx, instances, outcomes, results, graph_info, k, seed, t_run) -> int:
    from ...auditor.runner import _write_result, tool_version
    from ...store.knn import METRIC, scope_fingerprint

    store = run.store
    old_graph = None
    with store.transaction():
        run_id = int(store.scalar(f"SELECT coalesce(max(run_id), 0) + 1 FROM {S.RUNS}"))
        cfg = {
            "splits": ctx.splits,
            "reference": ctx.reference,
            "embedding": ctx.embedding_key,
            "k": k,
            "seed": seed,
            "pred_probs": None,
            "engine": "ray",
            "knn": None
            if graph_info is None
            else {"index_kind": graph_info["kind"], "recall": graph_info["recall"]}
            | graph_info["info"],
            "driver_seconds": run.driver,
            "stages": [
                {
                    "stage": r.name,
                    "tasks": r.tasks,
                    "resumed": r.resumed,
                    "seconds": round(r.seconds, 2),
                    "task_seconds": r.phases,
                }
                for r in run.reports
            ],
        }
        store.execute(
            f"INSERT INTO {S.RUNS} "
            "VALUES (?, now() - to_microseconds(?::BIGINT), now(), ?, ?, ?, 'ok')",
            [
                run_id,
                int((time.perf_counter() - t_run) * 1e6),
                json.dumps([a.config() | {"fingerprint": a.fingerprint()} for a in instances]),
                json.dumps(cfg),
                tool_version(),
            ],
        )
        for o in outcomes:
            if o.status == "skipped":
                store.execute(
                    f"INSERT INTO {S.SKIPPED} VALUES (?, ?, ?)", [run_id, o.name, o.reason]
                )
                continue
            r = results[o.name]
            if "result" in r:
                _write_result(store, run_id, o.name, r["result"])
                continue
            files = [f for f in r["files"] if Path(f).exists()]
            if files:
                cols = [
                    r[0]
                    for r in store.fetchall(
                        f"DESCRIBE SELECT * FROM read_parquet({shards.sql_list(files[:1])})"
                    )
                ]
                store.execute(
                    f"INSERT INTO {S.ISSUES} SELECT ?, ?, row_id, "
                    f"{r.get('flag_sql') or 'is_issue'}, score, "
                    f"{details_sql(cols)} FROM read_parquet({shards.sql_list(files)}, "
                    "union_by_name = true)",
                    [run_id, o.name],
                )
            store.execute(
                f"INSERT INTO {S.ISSUE_SUMMARY} VALUES (?, ?, ?, ?, ?)",
                [run_id, o.name, r["score"], r["issues"], json.dumps(_safe(r["info"]))],
            )
        if graph_info is not None:
            old_graph = _attach_graph(run, ctx, graph_info, METRIC, scope_fingerprint)
    for old in old_graph or []:
        shards.remove_tree(old)
    return run_id


def _attach_graph(run, ctx, g, metric, scope_fingerprint) -> list[str]:
    """The graph files become `knn_<embedding>_cosine_<rows>` with its row in `knn_graphs`, as
    store/knn.py caches a graph (so a later local audit of the same rows reuses it)."""
    store = run.store
    aud = (
        store.execute(
            f"SELECT row_id FROM {S.SAMPLES} WHERE split IN ({', '.join('?' for _ in ctx.splits)}) "
            "ORDER BY row_id",
            list(ctx.splits),
        )
        .fetchnumpy()[S.ROW_ID]
        .astype(np.int64)
    )
    rows_fp = scope_fingerprint(aud)
    # store/knn.py's vectors fingerprint: the shape and 1,024 evenly spaced rows
    order = np.argsort(g["fp_ids"])
    fp_vec = np.asarray(g["fp_vec"], np.float32)[order]
    h = hashlib.sha1(str((len(aud), fp_vec.shape[1])).encode())
    pick = np.searchsorted(g["fp_ids"][order], aud[np.linspace(0, len(aud) - 1, 1024).astype(int)])
    h.update(np.ascontiguousarray(fp_vec[pick]).tobytes())
    scope = f"{rows_fp}:{h.hexdigest()[:12]}"
    key = f"{ctx.embedding_key}_{metric}_{rows_fp}"
    table = S.knn_table(key)
    folder = run.root / table / run.work.name
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for f in g["files"]:
        dest = folder / Path(f).name
        if Path(f).exists() or not dest.exists():  # a rerun of a kept run moved it already
            Path(f).replace(dest)
        files.append(str(dest))
    if store.table_exists(table):
        kind = "VIEW" if shards.is_view(store, table) else "TABLE"
        store.execute(f"DROP {kind} {S.quote(table)}")
    kk = int(g["k"])
    store.execute(
        f"CREATE VIEW {S.quote(table)} AS SELECT row_id, neighbors::BIGINT[{kk}] AS neighbors, "
        f"distances::FLOAT[{kk}] AS distances FROM read_parquet({shards.sql_list(files)})"
    )
    store.execute(
        f"INSERT OR REPLACE INTO {S.KNN_GRAPHS} VALUES (?, ?, ?, '{metric}', ?, ?, ?, ?, ?, now())",
        [key, ctx.embedding_key, kk, scope, len(aud), g["kind"], g["recall"], g["seconds"]],
    )
    return [str(o) for o in (run.root / table).iterdir() if o.name != folder.name]


def _safe(v):
    from ...auditor.base import _json_safe

    return _json_safe(v)


__all__ = ["ray_audit"]
