"""Stages 7-9 of `audit --engine ray` (see engine/ray/audit.py's docstring): the driver's
reductions per auditor (thresholds, near-duplicate sets, the label stack, leakage's calibration)
and the finish tasks that write each auditor's rows. `graph_and_rows(run, ctx, GraphRun(...))`
runs stages 3-9: the graph (engine/ray/graph.py), then these."""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from ...auditor.label import error_model_prior
from ...auditor.leakage import by_split_pair
from ...store import schema as S
from .. import plans, shards
from . import finish_tasks
from .cluster import put
from .graph import (
    GRID,
    GraphRun,
    _outlier_stats,
    _pick_model,
    _pred_ids,
    examined_splits,
    search_graph,
)

if TYPE_CHECKING:
    from .audit import _Run


def graph_and_rows(run: _Run, ctx, gr: GraphRun) -> dict:
    """Stages 3-9: the graph (engine/ray/graph.py), the driver's reductions and the auditors'
    rows; fills `gr.results` and returns the graph's info."""
    g = search_graph(run, ctx, gr)
    # --- 7. reductions ----------------------------------------------------------------------------
    t_red = time.perf_counter()
    jobs = _reductions(run, ctx, gr, g.searched, g.info["files"], g.reduce, g.leak_job)
    run.driver["reductions"] = round(time.perf_counter() - t_red, 2)
    _finish(run, ctx, gr, jobs, g.info["files"], g.info)
    return g.info


def _reductions(run: _Run, ctx, gr: GraphRun, searched, graph_files, reduce, leak_job) -> dict:
    """Stage 7 (and 8: the near-duplicate edges): per auditor, what the finish tasks need."""
    jobs = {}
    if "outlier" in gr.runnable:
        jobs["outlier"] = {"k": reduce["outlier"], "stats": _outlier_stats(gr, searched)}
    if "near_duplicate" in gr.runnable:
        c = gr.cfgs["near_duplicate"]
        nn = np.concatenate([m["near_nn"] for m in searched if "near_nn" in m])
        rad = plans.near_radius(nn, float(c["threshold"]), c.get("max_distance"))
        kk = reduce["near_duplicate"]
        ejobs = [
            (str(run.work / "edges" / f"e{g:05d}"), (f, kk, rad["radius"]))
            for g, f in enumerate(graph_files)
        ]
        edges = run.stage("near pairs", finish_tasks.edges_job, ejobs)
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
    if "label" in gr.runnable:
        jobs["label"] = _label_reduction(run, gr, searched, graph_files)
    if "leakage" in gr.runnable:
        exact = _leak_exact(run, ctx, gr.runnable, gr.rows_files, gr.split_names)
        examined = [gr.split_names.index(s) for s in examined_splits(ctx) if s in gr.split_names]
        jobs["leakage"] = {
            "examined": np.array(examined),
            "split_names": gr.split_names,
            "exact": exact,
            "max_partners": int(gr.cfgs["leakage"]["max_partners"]),
            "calibration": None,
        }
        if leak_job is not None:
            nn = np.concatenate([m["leak_nn"] for m in searched if "leak_nn" in m])
            nn_split = np.concatenate([m["leak_nn_split"] for m in searched if "leak_nn" in m])
            jobs["leakage"]["calibration"] = plans.leakage_calibration(
                nn, nn_split, examined, gr.split_names, gr.cfgs["leakage"]
            )
    return jobs


def _label_reduction(run: _Run, gr: GraphRun, searched, graph_files) -> dict:
    """`label`'s job for the finish tasks: the model and temperature picked on the out-of-fold
    logits, the class prior, and the stack fitted on the views of a pool of labelled rows."""
    num_classes = len(gr.classes)
    c = gr.cfgs["label"]
    fit, fit_text = {}, {}
    for m in searched:
        for r, lg in zip(m.get("fit_ids", []), m.get("fit_logits", [])):
            fit[int(r)] = lg
        for r, lg in zip(m.get("fit_ids", []), m.get("fit_text_logits", [])):
            fit_text[int(r)] = lg
    if gr.folds:
        args = (fit, gr.rid_all, gr.label, gr.audited, gr.seed, num_classes)
        pick = run.state("temperature", functools.partial(_pick_model, *args))
        del args
    else:
        pick = {"block": 0, "t": 1.0}
    text_t = None
    if fit_text:  # each naive Bayes smoothing's temperature, on the rows the local engine uses
        temps = functools.partial(_text_temperatures, gr, fit_text)
        text_t = run.state("text_temperature", temps)["t"]
    del fit, fit_text
    y_aud = gr.label[gr.audited]
    lab_ids = gr.rid_all[gr.audited][y_aud >= 0]
    prior = np.bincount(y_aud[y_aud >= 0], minlength=num_classes) / max(len(lab_ids), 1)
    use_knn = c.get("knn_weight") is None or c["knn_weight"] > 0
    label_job = {
        "k": int(min(c.get("k") or gr.k, gr.k)),
        "temperature": float(pick["t"]),
        "block": int(pick["block"]),
        "prior": prior,
        "classes": gr.classes,
        "use_knn": use_knn,
        "text_t": None if text_t is None else np.asarray(text_t, np.float64),
        "cfg": c,
    }
    # the rows auditor/predict.py's fit_log_pool draws from the labelled rows (all up to
    # _POOL_ROWS): their views fit the stack and the confident joint on the driver
    from ...auditor.predict import _POOL_ROWS

    pool = np.arange(len(lab_ids))
    if len(pool) > _POOL_ROWS:
        pool = np.sort(np.random.default_rng(gr.seed).choice(len(pool), _POOL_ROWS, False))
    pool_ids = lab_ids[pool]
    pool_ref = put(pool_ids)
    vjobs = [
        (str(run.work / "label_views" / f"v{g:05d}"), (f, pool_ref, label_job))
        for g, f in enumerate(graph_files)
    ]
    got = run.stage("label views", finish_tasks.label_views_job, vjobs)
    ids = np.concatenate([np.asarray(m["ids"]) for m in got])
    order = np.argsort(ids)
    views = {
        name: np.vstack([m[name] for m in got])[order]
        for name in finish_tasks.view_names(label_job)
    }
    y_pool = gr.label[np.searchsorted(gr.rid_all, ids[order])]
    label_job["stack"] = plans.label_stack(views, y_pool, c, gr.seed)
    label_job["pool_rows"] = len(pool_ids)
    return label_job


def _text_temperatures(gr: GraphRun, fit_text: dict) -> dict:
    """{"t": each smoothing's temperature} from the text logits of the temperature rows."""
    from ...auditor.predict import nb_temperatures

    _, fit_ids = _pred_ids(gr.rid_all, gr.label, gr.audited, gr.seed)
    z = np.vstack([fit_text[int(r)] for r in fit_ids]).astype(np.float64)
    y = gr.label[np.searchsorted(gr.rid_all, fit_ids)]
    return {"t": np.asarray(nb_temperatures(z, y, len(gr.classes)))}


def _finish(run: _Run, ctx, gr: GraphRun, jobs: dict, graph_files, graph_info) -> None:
    """Stage 9: the finish tasks write each auditor's rows; its totals, info and score go in
    `gr.results`."""
    t0 = time.perf_counter()
    jobs_ref = put(jobs)
    fjobs = [
        (str(run.work / "results" / f"f{g:05d}"), (g, f, jobs_ref))
        for g, f in enumerate(graph_files)
    ]
    finished = run.stage("auditor rows", finish_tasks.finish_job, fjobs)
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
                f"AND row_id <= {cut[S.ROW_ID]}))"
            )
        info = _info(name, job, gr.cfgs[name], finished, graph_info, ctx, rows)
        score = _score(name, rows, issues, ssum, info, job)
        gr.results[name] = {
            "files": [m[f"{name}_file"] for m in finished],
            "rows": rows,
            "issues": issues,
            "score": score,
            "info": info,
            "seconds": secs,
            "flag_sql": flag_sql,
        }


def _score(name, rows, issues, ssum, info, job) -> float:
    if name == "label":
        return 1.0 - issues / rows if rows else 1.0
    if name == "leakage":
        return 1.0 - issues / max(rows, 1)
    return ssum / rows if rows else 1.0


def _info(name, job, cfg, finished, graph_info, ctx, rows) -> dict:
    """An auditor's info, with the keys its local run records (and what the engine did)."""
    if name == "outlier":
        return _outlier_info(job, cfg, graph_info)
    if name == "near_duplicate":
        return _near_info(job, cfg)
    if name == "label":
        return _label_info(job, finished)
    if name == "leakage":
        return _leakage_info(job, cfg, finished, ctx, rows)
    return {}


def _outlier_info(job, cfg, graph_info) -> dict:
    return {
        "k": job["k"],
        "metric": "cosine",
        "scale": job["stats"]["scale"],
        "threshold": cfg["threshold"],
        "issue_distance": job["stats"]["issue_distance"],
        "index_kind": graph_info["kind"],
    }


def _near_info(job, cfg) -> dict:
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


def _label_info(job, finished) -> dict:
    """`label`'s info: the local run's keys from the finish tasks' sums, and how the engine
    fitted the model (temperature, shrinkage, the rows the stack was fitted on)."""
    classes = job["classes"]
    total = {
        key: sum(m[f"label_{key}"] for m in finished)
        for key in (
            "num_labelled",
            "model_correct",
            "knn_correct",
            "text_correct",
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
    text = next((n for n in stack["names"] if n.startswith("text:")), None)
    return {
        "filter_by": cfg["filter_by"],
        "noise_model": cfg["noise_model"],
        "random_noise_prior": cfg["random_noise_prior"] if cfg["noise_model"] == "mixed" else None,
        "error_prob_model": cfg["noise_model"]
        if noise is not None
        else "annotator (no confident joint)",
        "knn_weight": 0.0 if not job["use_knn"] else cfg.get("knn_weight"),
        "view_weights": None
        if stack["weights"] is None
        else {n.split(":")[0]: float(w) for n, w in zip(stack["names"], stack["weights"])},
        "text_smoothing": float(text.split(":")[1]) if text else None,
        "k": job["k"] if job["use_knn"] else 0,
        "num_labelled": labelled,
        "flagged_by_given_label": {str(c): int(v) for c, v in zip(classes, flagged)},
        "estimated_noise_rate": stack["noise_rate"],
        "expected_errors": float(total["expected_errors"]),
        "expected_f1": job["cut"]["expected_f1"] if "cut" in job else None,
        "model_accuracy": acc("model_correct"),
        "knn_accuracy": acc("knn_correct") if job["use_knn"] else None,
        "text_accuracy": acc("text_correct") if text else None,
        "combined_accuracy": acc("combined_correct"),
        "pred_probs": "cross-validated",
        "engine": {
            "fitted_on": f"the view weights and the confident joint on {job['pool_rows']} "
            "labelled rows (all of them up to 30,000, as the local stack fit draws)",
            "text_view": "not used"
            if job["text_t"] is None
            else "the naive Bayes statistics reduced across the range tasks; the temperatures "
            "on the rows the local engine fits them on",
            "temperature": job["temperature"],
            "shrinkage": GRID[job["block"]],
        },
    }


def _leakage_info(job, cfg, finished, ctx, rows) -> dict:
    by_pair = pl.concat([pl.read_ipc(bytes(np.asarray(m["leakage_pairs"]))) for m in finished])
    key_kind = "normalised text" if ctx.text_column else "decoded image pixels"
    return {
        "examined_splits": examined_splits(ctx),
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
        "by_split_pair": by_split_pair(by_pair),
    }


def _leak_exact(run, ctx, runnable, rows_files, split_names) -> pl.DataFrame:
    """Leakage's exact pairs, from the hash buckets (written by `_hash_stage`)."""
    files = sorted(str(p) for p in (run.work / "leak_pairs").glob("b*.parquet"))
    if not files:
        return pl.DataFrame(schema=plans.PAIR_SCHEMA)
    return pl.from_arrow(shards.read_parquet(files)).cast(plans.PAIR_SCHEMA)
