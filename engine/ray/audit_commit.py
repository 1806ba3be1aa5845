"""The commit of `audit --engine ray` (stage 11, see engine/ray/audit.py): in one transaction
the run, its issues (inserted from the tasks' result files by DuckDB), the summaries, and the
kNN graph attached as `knn_<...>` with its row in `knn_graphs`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ...auditor.base import details_sql
from ...store import schema as S
from .. import shards


def _commit(run, ctx, instances, outcomes, results, graph_info, k, seed, t_run) -> int:
    """Write the run in one transaction (see the module docstring); returns its run id. The
    files of the graph it replaces are removed after the commit."""
    from ...auditor.runner import record_run
    from ...store.knn import METRIC, scope_fingerprint

    store = run.store
    old_graph = None
    with store.transaction():
        run_id = record_run(store, instances, _run_config(run, ctx, graph_info, k, seed), t_run)
        for o in outcomes:
            _write_outcome(store, run_id, o, results)
        if graph_info is not None:
            old_graph = _attach_graph(run, ctx, graph_info, METRIC, scope_fingerprint)
    for old in old_graph or []:
        shards.remove_tree(old)
    return run_id


def _run_config(run, ctx, graph_info, k: int, seed: int) -> dict:
    """The run's config row: the local runner's keys, the graph, the driver's and stages' times."""
    return {
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


def _write_outcome(store, run_id: int, o, results: dict) -> None:
    """One auditor's rows of the run: skipped, its result from the driver, or its tasks' result
    files inserted by DuckDB, with its summary row."""
    from ...auditor.runner import _write_result

    if o.status == "skipped":
        store.execute(f"INSERT INTO {S.SKIPPED} VALUES (?, ?, ?)", [run_id, o.name, o.reason])
        return
    r = results[o.name]
    if "result" in r:
        _write_result(store, run_id, o.name, r["result"])
        return
    files = [f for f in r["files"] if Path(f).exists()]
    if files:
        cols = [
            c[0]
            for c in store.fetchall(
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
