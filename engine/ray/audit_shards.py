"""The auditors `audit --engine ray` runs unchanged on part of the rows (see engine/ray/audit.py):
the hash shuffle (`exact_duplicate` per bucket, leakage's exact pairs), `null` and
`contamination` per range of rows, and the stores the driver runs the dataset-level auditors on
(a uniform sample) and `class_imbalance` on (the label column)."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ...store import schema as S
from .. import plans, shards
from . import audit_tasks as T
from .audit_inputs import _copy_parquet, _export_vectors
from .graph import examined_splits

if TYPE_CHECKING:
    from .audit import _Run


BUCKET_ROWS = 200_000  # rows per hash bucket


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
            _copy_parquet(
                run.store,
                f"SELECT * FROM {S.SAMPLES} WHERE split = ? ORDER BY row_id",
                ref,
                params=[ctx.reference],
            )
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
