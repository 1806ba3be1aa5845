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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from ...auditor.label import error_model_prior
from ...store import schema as S
from ...store.db import Store
from ...store.errors import DatacureError, InputError
from .. import partition as P
from .. import plans, shards
from . import audit_tasks as T
from .cluster import StageReport, put, run_stage

GROUP_ROWS = 100_000  # rows per search task (a group of partitions, before its halo)
SAMPLE_ROWS = 200_000  # rows of the uniform sample dataset-level auditors run on
BUCKET_ROWS = 200_000  # rows per hash bucket
EXPORT_ROWS = 100_000  # rows per exported vector file (an embedding held in a DuckDB table)
GRID = (None, 0.1, 0.2, 0.4, 0.6, 0.8)  # auditor/predict.py's shrinkages (None: OAS)
CHECK_ROWS = 2_000  # rows of the sample the skip rules are checked on
DRIVER_DUCKDB_MEMORY = "1GB"


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
                "set noise_model: mixed (the default), class_conditional or annotator, or use "
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
    with _duckdb_memory(store, DRIVER_DUCKDB_MEMORY):
        return _audit(run, ctx, instances, k, seed, options, t_run, keep_work)


@contextlib.contextmanager
def _duckdb_memory(store: Store, limit: str):
    """DuckDB's buffer pool capped while the driver exports and commits (it spills to disk
    past it): the driver's memory stays bounded by its per-row arrays, not by DuckDB's default
    of 80% of the machine."""
    before = store.scalar("SELECT current_setting('memory_limit')")
    store.execute(f"SET memory_limit = '{limit}'")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            store.execute(f"SET memory_limit = '{before}'")


def _audit(
    run: _Run, ctx, instances, k: int, seed: int, options: dict, t_run: float, keep_work: bool
):
    from ...auditor.runner import AuditorOutcome, RunReport

    store = run.store
    key = ctx.embedding_key
    t_rows = time.perf_counter()
    # --- rows, codes ------------------------------------------------------------------------------
    frame = store.polars(f"SELECT row_id, split, label FROM {S.SAMPLES} ORDER BY row_id")
    rid_all = frame["row_id"].to_numpy().astype(np.int64)
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

    aud_rid = rid_all[audited]
    n = len(aud_rid)
    num_classes = len(classes)
    # folds, as auditor/predict.py cross-validates the audited rows
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

    run.driver["rows"] = round(time.perf_counter() - t_rows, 2)
    by_mode = {a.name: plans.mode_of(a.name) for a in instances}
    cfgs = {a.name: a.params.model_dump(mode="json") for a in instances}
    # --- which auditors can run (the local rules, checked on the sample context below) ------------
    files = shards.embedding_files(store, key) if key else None
    run.work = (
        run.root
        / "work"
        / (
            "audit-"
            + _fingerprint(
                key,
                aud_rid,
                split_code,
                label,
                sorted(cfgs.items()),
                k,
                seed,
                files or "table",
                options,
            )
        )
    )
    run.work.mkdir(parents=True, exist_ok=True)
    if key is not None and files is None:
        files = _export_vectors(run, key)
    ranges = _ranges(files or [], rid_all)
    run.say(f"engine ray: {n} audited rows in {len(ranges)} ranges on {run.cluster.cpus:g} CPUs")

    # --- 1. export codes (and rows when an auditor reads content) ---------------------------------
    codes_files = []
    for i, (lo, hi, _) in enumerate(ranges):
        path = run.work / "codes" / f"c{i:06d}.parquet"
        if not path.exists():
            a, b = np.searchsorted(rid_all, [lo, hi + 1])
            shards.write_table(
                pa.table(
                    {
                        "row_id": pa.array(rid_all[a:b]),
                        "split": pa.array(split_code[a:b]),
                        "label": pa.array(label[a:b]),
                        "fold": pa.array(fold[a:b]),
                        "audited": pa.array(audited[a:b]),
                    }
                ),
                path,
            )
        codes_files.append(str(path))
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
    emb_ok, emb_reason = key is not None, "needs embeddings: run `datacure embed` first"
    stats = []
    if key is not None:
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
            emb_reason = (
                f"needs embeddings: {missing} audited rows have no vector in embedding {key!r}"
            )
    # the local rules for skipping an auditor, checked on a small sample (no auditor's rule
    # depends on more than a few rows); the dataset-level auditors get the full sample below
    check = _sample_store(run, ctx, stats, sample_ids, rows_files, key, CHECK_ROWS)
    sctx = _context(check, ctx, options)

    outcomes: list[AuditorOutcome] = []
    runnable = {}
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
    graph_needed = any(by_mode[nm] == "map_reduce" for nm in runnable)

    results: dict[str, dict] = {}
    if "exact_duplicate" in runnable or "leakage" in runnable:
        _hash_stage(run, ctx, runnable, cfgs, rows_files, results)
    graph_info = None
    if graph_needed and emb_ok:
        graph_info = _graph_and_rows(
            run,
            ctx,
            runnable,
            cfgs,
            stats,
            ranges,
            codes_files,
            k,
            seed,
            n,
            nparts,
            query_ids,
            classes,
            label,
            audited,
            rid_all,
            split_names,
            folds,
            results,
            rows_files,
        )
    # --- auditors on shards, on the label column, on the sample -----------------------------------
    for name in ("null", "contamination"):
        if name in runnable:
            _shard_stage(run, ctx, name, cfgs[name], rows_files, key, options, results)
    sample_ctx = None
    if any(by_mode[name] == "sample" for name in runnable):
        with run.clock("sample"):
            sample = _sample_store(run, ctx, stats, sample_ids, rows_files, key, run.sample_rows)
            sample_ctx = _context(sample, ctx, options)
    for name, aud in runnable.items():
        if by_mode[name] in ("reduced", "sample"):
            c = (
                sample_ctx
                if by_mode[name] == "sample"
                else _context(_labels_store(run, rows_files), ctx, options)
            )
            t0 = time.perf_counter()
            try:
                res = aud.audit(c)
            except DatacureError as exc:
                outcomes.append(AuditorOutcome(name, "skipped", exc.problem))
                continue
            from ...auditor.base import validate_result

            res = validate_result(name, res, None)
            res.info = dict(res.info)
            res.info["engine"] = (
                {"ran_on": "uniform sample", "rows": c.n, "of": n, "seed": seed + 3}
                if by_mode[name] == "sample"
                else {"ran_on": "the label column of every audited row", "rows": c.n}
            )
            results[name] = {"result": res, "seconds": time.perf_counter() - t0}

    # --- write the run in one transaction ---------------------------------------------------------
    for aud in instances:
        if aud.name in results:
            r = results[aud.name]
            if "result" in r:
                res = r["result"]
                outcomes.append(
                    AuditorOutcome(
                        aud.name,
                        "ok",
                        num_issues=res.num_issues,
                        num_rows=len(res.rows),
                        score=res.score,
                        seconds=r["seconds"],
                        info=res.info,
                    )
                )
            else:
                outcomes.append(
                    AuditorOutcome(
                        aud.name,
                        "ok",
                        num_issues=r["issues"],
                        num_rows=r["rows"],
                        score=r["score"],
                        seconds=r["seconds"],
                        info=r["info"],
                    )
                )
    order = {a.name: i for i, a in enumerate(instances)}
    outcomes.sort(key=lambda o: order[o.name])
    with run.clock("commit"):
        run_id = _commit(run, ctx, instances, outcomes, results, graph_info, k, seed, t_run)
    if not keep_work:
        shards.remove_tree(run.work)
    return RunReport(run_id, outcomes, time.perf_counter() - t_run)


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
    ids = store.execute(f"SELECT row_id FROM {table} ORDER BY row_id").fetchnumpy()["row_id"]
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
    shards.write_table(pa.table({"row_id": pa.array(ids)}), path)
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
def _graph_and_rows(
    run,
    ctx,
    runnable,
    cfgs,
    stats,
    ranges,
    codes_files,
    k,
    seed,
    n,
    nparts,
    query_ids,
    classes,
    label,
    audited,
    rid_all,
    split_names,
    folds,
    results,
    rows_files,
):
    from ...auditor.predict import _fit_linear

    num_classes = len(classes)
    t_graph = time.perf_counter()

    # --- 3. the partition model -------------------------------------------------------------------
    def make_model():
        xs = np.vstack([_vec(m, "sample") for m in stats if m.get("file")])
        basis = P.train_basis(xs)
        zs = P.project(xs, basis)
        cent = P.train_centroids(zs, nparts, seed)
        sizes = np.bincount(P.assign(zs, cent), minlength=len(cent)) * (n / max(len(zs), 1))
        groups = max(int(run.cluster.cpus), math.ceil(n / run.group_rows))
        group_of = P.group_partitions(cent, sizes, groups, seed)
        total = sum(m["sum"] for m in stats if m["count"])
        count = sum(int(m["count"]) for m in stats)
        return {
            "basis": basis if basis is not None else np.zeros((0, 0), np.float32),
            "centroids": cent,
            "group_of": group_of,
            "mean": total / max(count, 1) if count else np.zeros(xs.shape[1]),
        }

    model = run.state("model", make_model)
    if model["basis"].size == 0:
        model["basis"] = None
    model["query_ids"] = np.asarray(query_ids)
    model["max_probes"] = int(min(P.MAX_PROBES, len(model["centroids"])))
    qv = {}
    for m in stats:
        for r, v in zip(m["query_ids"], m["query_vec"]):
            qv[int(r)] = v
    queries_raw = np.vstack([qv[int(r)] for r in query_ids])
    queries = P.normalize(queries_raw)
    gdir = str(run.work / "groups")
    model_ref = put(model)  # one copy in the object store, not one per task
    jobs = [
        (
            str(run.work / "assign" / f"a{i:06d}"),
            (i, codes_files[i], fl, model_ref, gdir, queries, k, num_classes, folds),
        )
        for i, (_, _, fl) in enumerate(ranges)
    ]
    # --- 4. assign --------------------------------------------------------------------------------
    assigned = run.stage("assign", T.assign_job, jobs)

    # --- 5. width and models ----------------------------------------------------------------------
    def make_width():
        sims, ids = P.merge_topk([(m["q_sims"], m["q_ids"]) for m in assigned], k + 1)
        ids_all = np.hstack([m["q_ids"] for m in assigned]).ravel()
        parts_all = np.hstack([m["q_parts"] for m in assigned]).ravel()
        keep = ids_all >= 0
        uniq, first = np.unique(ids_all[keep], return_index=True)
        part_of = parts_all[keep][first]
        ex_ids, _ = P.drop_self(ids, sims, np.asarray(query_ids), k)
        at = np.clip(np.searchsorted(uniq, ex_ids), 0, max(len(uniq) - 1, 0))
        nb_part = np.where((ex_ids >= 0) & (uniq[at] == ex_ids), part_of[at], -1)
        zq = P.project(queries_raw, model["basis"])
        qprobes = P.probes(zq, model["centroids"], model["max_probes"])
        sizes = sum(np.asarray(m["part_counts"]) for m in assigned)
        width, info = P.choose_width(qprobes, nb_part, sizes)
        rank = np.full((int(model["group_of"].max()) + 1, len(sizes)), 255, np.uint8)
        for m in assigned:
            g = np.asarray(m["rank_groups"], np.int64)
            rank[g] = np.minimum(rank[g], m["rank_min"])
        return {"width": width, "exact": ex_ids, "curve": json.dumps(info), "rank_min": rank}

    wid = run.state("width", make_width)
    width = int(wid["width"])
    model["rank_min"] = wid["rank_min"]
    labels_job = None
    lab_run = "label" in runnable
    if lab_run or any(a == "label" for a in runnable):

        def make_models():
            out = {}
            if folds >= 2:
                parts = [
                    (m[f"scatter{f}"], m[f"sums{f}"], m[f"counts{f}"])
                    for m in assigned
                    for f in range(folds)
                    if f"scatter{f}" in m
                ]
                per = [
                    tuple(sum(p[j] for p in parts[f::folds]) for j in range(3))
                    for f in range(folds)
                ]
                tot = tuple(sum(p[j] for p in per) for j in range(3))
                # every shrinkage of auditor/predict.py's grid, one [d, k] block each: the
                # search writes the out-of-fold logits of all, the driver picks one after it
                for f in range(folds):
                    w, b = _fit_linear(*(tot[j] - per[f][j] for j in range(3)), GRID)
                    out[f"w{f}"], out[f"b{f}"] = w, b
                out["w_all"], out["b_all"] = _fit_linear(*tot, GRID)
            return out

        lm = run.state("models", make_models)
        d = model["centroids"].shape[1] if model["basis"] is None else model["basis"].shape[0]
        zero = (np.zeros((d, num_classes * len(GRID))), np.zeros(num_classes * len(GRID)))
        sel_ids, fit_ids = _pred_ids(rid_all, label, audited, seed)
        labels_job = {
            "num_classes": num_classes,
            "mean": model["mean"],
            "models": [(lm[f"w{f}"], lm[f"b{f}"]) for f in range(folds)] if folds else [],
            "all_model": (lm["w_all"], lm["b_all"]) if folds else zero,
            "fit_ids": np.union1d(sel_ids, fit_ids),
        }
    leak_job = None
    if "leakage" in runnable and cfgs["leakage"].get("near", True):
        examined = [s for s in ctx.splits if s != ctx.reference] or [ctx.reference]
        leak_job = {
            "examined": np.array([split_names.index(s) for s in examined], np.int16),
            "k": int(cfgs["leakage"]["k"]),
            # every candidate is kept (the bar is set after the search, from the graph's
            # within-split spacing) unless an absolute near_threshold is given
            "threshold": float(cfgs["leakage"]["near_threshold"])
            if cfgs["leakage"].get("near_threshold") is not None
            else -np.inf,
        }
    reduce = {}
    for name in ("outlier", "near_duplicate"):
        if name in runnable:
            reduce[name] = int(min(cfgs[name].get("k") or k, k))
    if leak_job is not None:
        reduce["leakage"] = k
    groups = int(model["group_of"].max()) + 1
    model_ref, labels_ref = put(model), put(labels_job)
    gjobs = [
        (
            str(run.work / "graph" / f"g{g:05d}.parquet"),
            (g, gdir, g, model_ref, width, k, labels_ref, leak_job, reduce),
        )
        for g in range(groups)
    ]
    # --- 6. search --------------------------------------------------------------------------------
    searched = run.stage("search", T.search_job, gjobs)
    graph_files = [out for (out, _), m in zip(gjobs, searched) if m.get("rows")]
    refined = 0
    if "outlier" in runnable and width < model["max_probes"]:
        # an approximate graph can only lengthen a row's distances, so only rows it flags may
        # be flagged wrongly: search those again with three times the probes
        th = float(cfgs["outlier"]["threshold"])
        means = np.concatenate([m["outlier_mean"] for m in searched if "outlier_mean" in m])
        cut = plans.outlier_reduce(means, th)["issue_distance"]
        wide = int(min(model["max_probes"], 3 * width))
        rjobs, where = [], []
        for g, ((out, _), m) in enumerate(zip(gjobs, searched)):
            if not m.get("rows"):
                continue
            rows = np.asarray(m["outlier_ids"])[np.asarray(m["outlier_mean"]) > cut]
            if len(rows):
                rjobs.append(
                    (
                        str(run.work / "graph" / f"g{g:05d}.refined.parquet"),
                        (g, out, gdir, g, model_ref, wide, k, rows, reduce),
                    )
                )
                where.append(g)
        if rjobs:
            done = run.stage("refine outlier rows", T.refine_job, rjobs)
            for g, (out, _), m in zip(where, rjobs, done):
                searched[g] = {**searched[g], **m}
                graph_files[graph_files.index(gjobs[g][0])] = out
                refined += int(m["refined"])
    seconds_graph = time.perf_counter() - t_graph
    # recall of the graph on the sample
    got = {}
    for m in searched:
        for r, nb in zip(m.get("recall_ids", []), m.get("recall_nb", [])):
            got[int(r)] = nb
    graph_rows = np.vstack([got[int(r)] for r in query_ids])
    recall = P.recall(graph_rows, np.asarray(wid["exact"]))
    halo = sum(int(m.get("halo_rows", 0)) for m in searched)
    graph_info = {
        "files": graph_files,
        "k": k,
        "recall": recall,
        "seconds": seconds_graph,
        "kind": f"partitioned(partitions={len(model['centroids'])},probes={width},"
        f"groups={groups}" + (",dim=64)" if model["basis"] is not None else ")"),
        "fp_ids": np.hstack([m["fp_ids"] for m in stats]),
        "fp_vec": np.vstack([_vec(m, "fp") for m in stats if len(m["fp_ids"])]),
        "info": {
            "partitions": len(model["centroids"]),
            "probes": width,
            "groups": groups,
            "halo_rows": halo,
            "refined_rows": refined,
            **json.loads(wid["curve"]),
            "recall_sample": len(query_ids),
        },
    }
    run.say(f"kNN graph: {graph_info['kind']}, recall@{k} {recall:.3f}")

    # --- 7. reductions ----------------------------------------------------------------------------
    t_red = time.perf_counter()
    jobs = {}
    if "outlier" in runnable:
        th = float(cfgs["outlier"]["threshold"])
        means = np.concatenate([m["outlier_mean"] for m in searched if "outlier_mean" in m])
        jobs["outlier"] = {"k": reduce["outlier"], "stats": plans.outlier_reduce(means, th)}
    if "near_duplicate" in runnable:
        c = cfgs["near_duplicate"]
        nn = np.concatenate([m["near_nn"] for m in searched if "near_nn" in m])
        rad = plans.near_radius(nn, float(c["threshold"]), c.get("max_distance"))
        kk = reduce["near_duplicate"]
        ejobs = [
            (str(run.work / "edges" / f"e{g:05d}"), (f, kk, rad["radius"]))
            for g, f in enumerate(graph_files)
        ]
        edges = run.stage("near pairs", T.edges_job, ejobs)
        src = np.concatenate([e["src"] for e in edges]) if edges else np.zeros(0, np.int64)
        dst = np.concatenate([e["dst"] for e in edges]) if edges else np.zeros(0, np.int64)
        sets = plans.near_sets(src.astype(np.int64), dst.astype(np.int64))
        jobs["near_duplicate"] = {
            "k": kk,
            "median": rad["median_nn_distance"],
            "sets": sets,
            "radius": rad["radius"],
            "has_nn": int((~np.isnan(nn)).sum()),
            "reference": np.sort(nn[np.isfinite(nn)]),
        }
    if "label" in runnable:
        c = cfgs["label"]
        fit = {}
        for m in searched:
            for r, lg in zip(m.get("fit_ids", []), m.get("fit_logits", [])):
                fit[int(r)] = lg
        if folds:
            pick = run.state(
                "temperature",
                lambda: _pick_model(fit, rid_all, label, audited, seed, num_classes),
            )
        else:
            pick = {"block": 0, "t": 1.0}
        del fit
        y_aud = label[audited]
        lab_ids = rid_all[audited][y_aud >= 0]
        prior = np.bincount(y_aud[y_aud >= 0], minlength=num_classes) / max(len(lab_ids), 1)
        use_knn = c.get("knn_weight") is None or c["knn_weight"] > 0
        label_job = {
            "k": int(min(c.get("k") or k, k)),
            "temperature": float(pick["t"]),
            "block": int(pick["block"]),
            "prior": prior,
            "classes": classes,
            "use_knn": use_knn,
            "cfg": c,
        }
        # the rows auditor/predict.py's fit_log_pool draws from the labelled rows (all up to
        # _POOL_ROWS): their views fit the stack and the confident joint on the driver
        from ...auditor.predict import _POOL_ROWS

        pool = np.arange(len(lab_ids))
        if len(pool) > _POOL_ROWS:
            pool = np.sort(np.random.default_rng(seed).choice(len(pool), _POOL_ROWS, False))
        pool_ids = lab_ids[pool]
        pool_ref = put(pool_ids)
        vjobs = [
            (str(run.work / "label_views" / f"v{g:05d}"), (f, pool_ref, label_job))
            for g, f in enumerate(graph_files)
        ]
        got = run.stage("label views", T.label_views_job, vjobs)
        ids = np.concatenate([np.asarray(m["ids"]) for m in got])
        order = np.argsort(ids)
        views = {"model": np.vstack([m["model"] for m in got])[order]}
        if use_knn:
            views["knn"] = np.vstack([m["knn"] for m in got])[order]
        y_pool = label[np.searchsorted(rid_all, ids[order])]
        label_job["stack"] = plans.label_stack(views, y_pool, c, seed)
        label_job["pool_rows"] = len(pool_ids)
        jobs["label"] = label_job
    if "leakage" in runnable:
        exact = _leak_exact(run, ctx, runnable, rows_files, split_names)
        examined = [s for s in ctx.splits if s != ctx.reference] or [ctx.reference]
        jobs["leakage"] = {
            "examined": np.array([split_names.index(s) for s in examined if s in split_names]),
            "split_names": split_names,
            "exact": exact,
            "max_partners": int(cfgs["leakage"]["max_partners"]),
            "calibration": None,
        }
        if leak_job is not None:
            nn = np.concatenate([m["leak_nn"] for m in searched if "leak_nn" in m])
            nn_split = np.concatenate([m["leak_nn_split"] for m in searched if "leak_nn" in m])
            jobs["leakage"]["calibration"] = plans.leakage_calibration(
                nn,
                nn_split,
                [split_names.index(s) for s in examined if s in split_names],
                split_names,
                cfgs["leakage"],
            )
    run.driver["reductions"] = round(time.perf_counter() - t_red, 2)
    # --- 9. finish --------------------------------------------------------------------------------
    t0 = time.perf_counter()
    jobs_ref = put(jobs)
    fjobs = [
        (str(run.work / "results" / f"f{g:05d}"), (g, f, jobs_ref))
        for g, f in enumerate(graph_files)
    ]
    finished = run.stage("auditor rows", T.finish_job, fjobs)
    secs = (time.perf_counter() - t0) / max(len(jobs), 1)
    for name, job in jobs.items():
        rows = sum(int(m[f"{name}_rows"]) for m in finished)
        issues = sum(int(m[f"{name}_issues"]) for m in finished)
        ssum = sum(float(m[f"{name}_score_sum"]) for m in finished)
        flag_sql = None
        if name == "label" and job["cfg"]["filter_by"] == "expected_f1":
            cfg = job["cfg"]
            prior = error_model_prior(
                cfg["noise_model"], job["stack"]["noise"], cfg["random_noise_prior"]
            )
            ids, y, score = (
                np.concatenate([np.asarray(m[f"label_{c}"]) for m in finished])
                for c in ("cut_ids", "cut_y", "cut_score")
            )
            # one column per error model (mixed: both, weighted by the prior)
            q = np.concatenate(
                [np.asarray(m["label_cut_q"]).reshape(-1, len(prior)) for m in finished]
            )
            cut = plans.label_cut(ids, y, score, q, len(job["classes"]), prior)
            job["cut"] = cut
            issues = cut["m"]
            flag_sql = (
                "false"
                if not cut["m"]
                else f"(score < {cut['score']!r}::DOUBLE OR (score = {cut['score']!r}::DOUBLE "
                f"AND row_id <= {cut['row_id']}))"
            )
        info = _info(name, job, cfgs[name], finished, graph_info, ctx, rows, issues, k)
        score = _score(name, rows, issues, ssum, info, job)
        results[name] = {
            "files": [m[f"{name}_file"] for m in finished],
            "rows": rows,
            "issues": issues,
            "score": score,
            "info": info,
            "seconds": secs,
            "flag_sql": flag_sql,
        }
    return graph_info


def _pred_ids(rid_all, label, audited, seed) -> tuple[np.ndarray, np.ndarray]:
    """(rows that judge the shrinkage, rows that fit the temperature), the row ids
    auditor/predict.py draws, in its order."""
    from ...auditor.predict import _SELECT_ROWS, _TEMPERATURE_ROWS

    lab_pos = np.flatnonzero(label[audited] >= 0)
    rng = np.random.default_rng(seed)
    sel = np.sort(rng.choice(len(lab_pos), min(len(lab_pos), _SELECT_ROWS), replace=False))
    fit_rows = np.arange(len(lab_pos))
    if len(lab_pos) > _TEMPERATURE_ROWS:
        fit_rows = rng.choice(len(lab_pos), _TEMPERATURE_ROWS, replace=False)
    ids = rid_all[audited][lab_pos]
    return ids[sel], ids[fit_rows]


def _pick_model(logits: dict, rid_all, label, audited, seed, k: int) -> dict:
    """auditor/predict.py's choice from the grid's out-of-fold logits of the drawn rows: the
    shrinkage with the lowest log-loss at its best temperature, then its temperature."""
    from ...auditor.predict import _temperature

    sel_ids, fit_ids = _pred_ids(rid_all, label, audited, seed)
    y_of = label[np.searchsorted(rid_all, sel_ids)]
    z = np.vstack([logits[int(r)] for r in sel_ids]).astype(np.float64)
    losses = [
        _temperature(z[:, j * k : (j + 1) * k], y_of, xatol=1e-3)[1] for j in range(len(GRID))
    ]
    best = int(np.argmin(losses))
    z = np.vstack([logits[int(r)][best * k : (best + 1) * k] for r in fit_ids]).astype(np.float64)
    t = _temperature(z, label[np.searchsorted(rid_all, fit_ids)])[0]
    return {"block": best, "t": float(t)}


def _vec(meta: dict, which: str) -> np.ndarray:
    if which == "sample":
        return shards.list_column(shards.read_parquet([meta["file"]]), "vector")
    return np.asarray(meta[f"{which}_vec"])


def _score(name, rows, issues, ssum, info, job) -> float:
    if name == "label":
        return 1.0 - issues / rows if rows else 1.0
    if name == "leakage":
        return 1.0 - issues / max(rows, 1)
    return ssum / rows if rows else 1.0


def _info(name, job, cfg, finished, graph_info, ctx, rows, issues, k) -> dict:
    if name == "outlier":
        return {
            "k": job["k"],
            "metric": "cosine",
            "scale": job["stats"]["scale"],
            "threshold": cfg["threshold"],
            "issue_distance": job["stats"]["issue_distance"],
            "index_kind": graph_info["kind"],
        }
    if name == "near_duplicate":
        sets = job["sets"]
        return {
            "k": job["k"],
            "metric": "cosine",
            "threshold": cfg["threshold"],
            "max_distance": cfg.get("max_distance"),
            "radius": job["radius"],
            "median_nn_distance": job["median"],
            "min_similarity": 1.0 - job["radius"],
            "num_sets": int(sets["set_id"].n_unique()) if len(sets) else 0,
            "num_rows_in_sets": len(sets),
        }
    if name == "label":
        classes = job["classes"]
        total = {
            key: sum(m[f"label_{key}"] for m in finished)
            for key in (
                "num_labelled",
                "model_correct",
                "knn_correct",
                "combined_correct",
                "expected_errors",
            )
        }
        flagged = (
            job["cut"]["flagged"]
            if "cut" in job
            else sum(np.asarray(m["label_flagged"]) for m in finished)
        )
        labelled = int(total["num_labelled"])
        stack, cfg = job["stack"], job["cfg"]

        def acc(key):
            return total[key] / labelled if labelled else None

        noise = stack["noise"]
        return {
            "filter_by": cfg["filter_by"],
            "noise_model": cfg["noise_model"],
            "random_noise_prior": cfg["random_noise_prior"]
            if cfg["noise_model"] == "mixed"
            else None,
            "error_prob_model": cfg["noise_model"]
            if noise is not None
            else "annotator (no confident joint)",
            "knn_weight": 0.0 if not job["use_knn"] else cfg.get("knn_weight"),
            "view_weights": None
            if stack["weights"] is None
            else {n: float(w) for n, w in zip(stack["names"], stack["weights"])},
            "text_smoothing": None,
            "k": job["k"] if job["use_knn"] else 0,
            "num_labelled": labelled,
            "flagged_by_given_label": {str(c): int(v) for c, v in zip(classes, flagged)},
            "estimated_noise_rate": stack["noise_rate"],
            "expected_errors": float(total["expected_errors"]),
            "expected_f1": job["cut"]["expected_f1"] if "cut" in job else None,
            "model_accuracy": acc("model_correct"),
            "knn_accuracy": acc("knn_correct") if job["use_knn"] else None,
            "text_accuracy": None,
            "combined_accuracy": acc("combined_correct"),
            "pred_probs": "cross-validated",
            "engine": {
                "fitted_on": f"the view weights and the confident joint on {job['pool_rows']} "
                "labelled rows (all of them up to 30,000, as the local stack fit draws)",
                "text_view": "not used: the TF-IDF naive Bayes view runs on the local engine only",
                "temperature": job["temperature"],
                "shrinkage": GRID[job["block"]],
            },
        }
    if name == "leakage":
        by_pair = pl.concat([pl.read_ipc(bytes(np.asarray(m["leakage_pairs"]))) for m in finished])
        key_kind = "normalised text" if ctx.text_column else "decoded image pixels"
        return {
            "examined_splits": [s for s in ctx.splits if s != ctx.reference] or [ctx.reference],
            "reference": ctx.reference,
            "exact_key": key_kind,
            "threshold": cfg["threshold"],
            "near_threshold": cfg.get("near_threshold"),
            "calibration": [
                {
                    "split": s,
                    "reference_rows": len(c["reference"]),
                    "median_nn_similarity": 1.0 - c["median"],
                    "min_similarity": 1.0 - c["radius"],
                }
                for s, c in (job["calibration"] or {}).items()
            ],
            "num_examined": rows,
            "num_exact": sum(int(m["leakage_exact"]) for m in finished),
            "num_near_only": sum(int(m["leakage_near_only"]) for m in finished),
            "by_split_pair": plans.leakage_by_pair(by_pair),
        }
    return {}


def _leak_exact(run, ctx, runnable, rows_files, split_names) -> pl.DataFrame:
    """Leakage's exact pairs, from the hash buckets (written by `_hash_stage`)."""
    files = sorted(str(p) for p in (run.work / "leak_pairs").glob("b*.parquet"))
    if not files:
        return pl.DataFrame(schema=plans.PAIR_SCHEMA)
    return pl.from_arrow(shards.read_parquet(files)).cast(plans.PAIR_SCHEMA)


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
        examined = [s for s in ctx.splits if s != ctx.reference] or [ctx.reference]
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
                    f"{plans.details_sql(cols)} FROM read_parquet({shards.sql_list(files)}, "
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
        .fetchnumpy()["row_id"]
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
