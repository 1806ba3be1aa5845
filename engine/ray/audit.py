"""`audit --engine ray`: the kNN graph in partitions and the row auditors as tasks over shards.

The driver holds the store (and its lock) and a few numbers per row (row id, split, label code,
fold: about 20 bytes a row); vectors are only ever read by workers, a range or a group at a
time. Stages (each a set of Ray tasks over files in `<db>.shards/work/<token>/`, resumable):

1. export: per-row codes (split, label, fold, audited) and, when an auditor reads the rows'
   content, the rows themselves, in the row-id ranges of the vector files;
2. stats (one task per range): labelled vector sums (the pred_probs model's mean), a uniform
   sample of vectors (k-means, projection, the sample that dataset-level auditors run on), the
   recall queries' vectors;
3. driver: projection basis, k-means centroids, groups of nearby partitions; with `label`'s
   text view, its terms (one task per range hashes the texts; the driver keeps the terms);
4. assign (per range): partitions, fold statistics of the pred_probs model (and of the text
   view's naive Bayes model), exact neighbours of the recall queries among the range's rows;
   rows written grouped for the search (with their TF-IDF for the text view);
5. driver: the number of probes w from the recall sample, the out-of-fold models;
6. search (per group, or several groups per task where each group's halo is most of the data):
   the graph rows, the pred_probs (and text view) logits, leakage's cross-split partners; when
   no affordable w covers the target, the graph rows joined across tasks (6b,
   engine/ray/join_tasks.py); the rows it may have flagged as outliers wrongly are searched
   again with 3w probes;
7. driver: calibration temperatures, outlier quantiles, near-duplicate radius, graph recall;
8. edges (per group) and the near-duplicate sets on the driver; 9. finish (per group): rows;
10. hash (per range) and buckets: `exact_duplicate` (the auditor itself per bucket) and
    leakage's exact pairs; `null` and `contamination` unchanged per range; dataset-level
    auditors unchanged on the uniform sample; `class_imbalance` on the label column alone;
11. one transaction: `runs`, `issues` (inserted from the result files by DuckDB), summaries, the
    graph attached as `knn_<...>` with its recall in `knn_graphs`. The work folder is deleted
    after the commit; until then a rerun with the same inputs resumes where it stopped.

Stages 3-6 are in engine/ray/graph.py, 7-9 in graph_rows.py; the tasks themselves in
engine/ray/audit_tasks.py, search_tasks.py and finish_tasks.py; the text view's in
engine/ray/text_view.py.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...store.db import Store, capped_memory
from ...store.errors import DatacureError, InputError
from .. import partition as P
from .. import plans, shards
from . import audit_tasks as T
from .audit_commit import _commit
from .audit_inputs import (
    _Codes,
    _export_codes,
    _export_rows,
    _export_vectors,
    _fingerprint,
    _ranges,
    _row_codes,
)
from .audit_shards import _context, _hash_stage, _labels_store, _sample_store, _shard_stage
from .cluster import StageReport, run_stage
from .graph import GraphRun
from .graph_rows import graph_and_rows
from .text_view import text_column

GROUP_ROWS = 100_000  # rows per search task (a group of partitions, before its halo)
SAMPLE_ROWS = 200_000  # rows of the uniform sample dataset-level auditors run on
EXPORT_ROWS = 100_000  # rows per exported vector file (an embedding held in a DuckDB table)
CHECK_ROWS = 2_000  # rows of the sample the skip rules are checked on
# DuckDB's buffer pool while the driver exports and commits (bytes; it spills past it): the
# driver's memory stays bounded by its per-row arrays, not by DuckDB's default of 80% of RAM
DRIVER_DUCKDB_MEMORY = 10**9


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

    cfgs = {a.name: a.params.model_dump(mode="json") for a in instances}
    inp = _prepare(run, ctx, cfgs, k, seed, options)
    # which auditors can run: the local rules for skipping an auditor, checked on a small sample
    # (no auditor's rule depends on more than a few rows); the dataset-level auditors get the
    # full sample below
    check = _sample_store(run, ctx, inp.stats, inp.sample_ids, inp.rows_files, inp.key, CHECK_ROWS)
    sctx = _context(check, ctx, options)
    runnable, outcomes = _runnable(instances, sctx, cfgs, inp.emb_ok, inp.emb_reason, inp.key)

    results: dict[str, dict] = {}
    if "exact_duplicate" in runnable or "leakage" in runnable:
        _hash_stage(run, ctx, runnable, cfgs, inp.rows_files, results)
    graph_info = None
    if inp.emb_ok and any(plans.mode_of(nm) == "map_reduce" for nm in runnable):
        graph_info = graph_and_rows(
            run, ctx, _graph_run(ctx, inp, runnable, cfgs, k, seed, results)
        )
    outcomes += _row_auditors(run, ctx, inp, runnable, cfgs, options, results)

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
class _Inputs:
    """What stages 1-2 prepared for the auditors: the driver's codes, the files per range, the
    rows drawn from the audited rows, and the stats tasks' metadata."""

    rc: _Codes
    key: str | None  # the embedding (None: none)
    ranges: list  # (first row id, last row id, vector files) per range
    codes_files: list[str]  # per range: row_id, split, label, fold, audited
    rows_files: list[str]  # per range: the rows of `samples` (every column)
    n: int  # audited rows
    nparts: int  # k-means partitions
    sample_ids: np.ndarray  # the uniform sample's row ids
    query_ids: np.ndarray  # the recall sample's row ids
    stats: list[dict]  # the stats tasks' metadata, one per range
    emb_ok: bool  # every audited row has a vector
    emb_reason: str  # why not


def _prepare(run: _Run, ctx, cfgs: dict, k: int, seed: int, options: dict) -> _Inputs:
    """The driver's codes, the work folder (named by the run's inputs, so a rerun resumes),
    stage 1 (codes and rows per range) and stage 2 (the stats tasks over the drawn rows)."""
    store = run.store
    key = ctx.embedding_key
    t_rows = time.perf_counter()
    rc = _row_codes(store, ctx, seed)
    run.driver["rows"] = round(time.perf_counter() - t_rows, 2)
    aud_rid = rc.rid_all[rc.audited]
    n = len(aud_rid)
    files = shards.embedding_files(store, key) if key else None
    inputs = (key, aud_rid, rc.split_code, rc.label, sorted(cfgs.items()), k, seed)
    run.work = run.root / "work" / ("audit-" + _fingerprint(*inputs, files or "table", options))
    run.work.mkdir(parents=True, exist_ok=True)
    if key is not None and files is None:
        files = _export_vectors(run, key)
    ranges = _ranges(files or [], rc.rid_all, run.cluster.cpus)
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
    return _Inputs(
        rc,
        key,
        ranges,
        codes_files,
        rows_files,
        n,
        nparts,
        sample_ids,
        query_ids,
        stats,
        emb_ok,
        emb_reason,
    )


def _graph_run(ctx, inp: _Inputs, runnable, cfgs, k: int, seed: int, results: dict) -> GraphRun:
    """What the graph stages (engine/ray/graph.py) read of the prepared inputs."""
    rc = inp.rc
    return GraphRun(
        runnable=runnable,
        cfgs=cfgs,
        stats=inp.stats,
        ranges=inp.ranges,
        codes_files=inp.codes_files,
        rows_files=inp.rows_files,
        k=k,
        seed=seed,
        n=inp.n,
        nparts=inp.nparts,
        query_ids=inp.query_ids,
        classes=rc.classes,
        label=rc.label,
        audited=rc.audited,
        rid_all=rc.rid_all,
        split_names=rc.split_names,
        folds=rc.folds,
        results=results,
        text_column=text_column(ctx, cfgs, runnable, rc.folds),
    )


def _row_auditors(run: _Run, ctx, inp: _Inputs, runnable, cfgs, options, results) -> list:
    """The auditors on shards (`null`, `contamination`), and on the driver: the dataset-level
    ones on the uniform sample, `class_imbalance` on the label column. Returns the outcomes of
    those that refused to run; the results go in `results`."""
    outcomes = []
    for name in ("null", "contamination"):
        if name in runnable:
            _shard_stage(run, ctx, name, cfgs[name], inp.rows_files, inp.key, options, results)
    by_mode = {nm: plans.mode_of(nm) for nm in runnable}
    local = [nm for nm in runnable if by_mode[nm] in ("reduced", "sample")]
    sample_ctx = None
    if any(by_mode[nm] == "sample" for nm in local):
        with run.clock("sample"):
            sample = _sample_store(
                run, ctx, inp.stats, inp.sample_ids, inp.rows_files, inp.key, run.sample_rows
            )
            sample_ctx = _context(sample, ctx, options)
    for name in local:
        c = (
            sample_ctx
            if by_mode[name] == "sample"
            else _context(_labels_store(run, inp.rows_files), ctx, options)
        )
        engine = (
            {"ran_on": "uniform sample", "rows": c.n, "of": inp.n, "seed": ctx.seed + 3}
            if by_mode[name] == "sample"
            else {"ran_on": "the label column of every audited row", "rows": c.n}
        )
        outcomes += _run_local(runnable[name], c, engine, results)
    return outcomes


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


def _missing(aud, sctx, emb_ok: bool, emb_reason: str) -> str | None:
    from ...auditor.base import Requires

    needs_emb = Requires.EMBEDDINGS in aud.requires or Requires.PRED_PROBS in aud.requires
    if needs_emb and not emb_ok:
        return emb_reason
    return sctx.missing(aud.requires)


__all__ = ["ray_audit"]
