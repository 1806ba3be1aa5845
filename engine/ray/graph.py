"""Stages 3-9 of `audit --engine ray` (see engine/ray/audit.py's docstring): the partition
model, assign, the number of probes and the pred_probs models, the search (and the outlier rows
searched again), the driver's reductions per auditor, and the finish tasks that write each
auditor's rows. `graph_and_rows(run, ctx, GraphRun(...))` runs them all."""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from ...auditor.label import error_model_prior
from ...store import schema as S
from .. import partition as P
from .. import plans, shards
from . import audit_tasks, finish_tasks, search_tasks
from .cluster import put

if TYPE_CHECKING:
    from .audit import _Run

GRID = (None, 0.1, 0.2, 0.4, 0.6, 0.8)  # auditor/predict.py's shrinkages (None: OAS)


@dataclass
class GraphRun:
    """What the graph stages read from the driver's earlier steps (and `results`, which they
    fill): the audited rows' codes, the inputs written per range, the recall queries."""

    runnable: dict  # auditor name -> instance, the auditors that run
    cfgs: dict  # auditor name -> its parameters (JSON)
    stats: list[dict]  # the stats stage's metadata, one per range
    ranges: list  # (first row id, last row id, vector files) per range
    codes_files: list[str]  # the per-range codes files (row_id, split, label, fold, audited)
    rows_files: list[str]  # the per-range rows files (content), when an auditor reads them
    k: int
    seed: int
    n: int  # audited rows
    nparts: int  # k-means partitions
    query_ids: np.ndarray  # the recall sample's row ids
    classes: list  # label values in code order
    label: np.ndarray  # label code per row (-1: unlabelled or not audited)
    audited: np.ndarray  # bool per row
    rid_all: np.ndarray  # every row id, sorted
    split_names: list[str]  # split values in code order
    folds: int  # cross-validation folds of the pred_probs model (0: none)
    results: dict  # auditor name -> its result, filled by the stages


def graph_and_rows(run: _Run, ctx, gr: GraphRun):
    """Stages 3-9 (see the module docstring): the partition model, assign, the probes and
    models, the search, the driver's reductions and the auditors' rows; fills `gr.results` and
    returns the graph's info."""
    t_graph = time.perf_counter()
    model, queries_raw, gdir, assigned = _assign(run, gr)
    # --- 5. width and models ----------------------------------------------------------------------
    wid = run.state("width", lambda: _width(gr, model, queries_raw, assigned))
    width = int(wid["width"])
    model["rank_min"] = wid["rank_min"]
    labels_job = _labels_job(run, gr, model, assigned) if "label" in gr.runnable else None
    leak_job = _leak_job(ctx, gr)
    reduce = {}
    for name in ("outlier", "near_duplicate"):
        if name in gr.runnable:
            reduce[name] = int(min(gr.cfgs[name].get("k") or gr.k, gr.k))
    if leak_job is not None:
        reduce["leakage"] = gr.k
    searched, graph_files, groups, refined = _search(
        run, gr, model, gdir, width, labels_job, leak_job, reduce
    )
    seconds_graph = time.perf_counter() - t_graph
    # recall of the graph on the sample
    got = {}
    for m in searched:
        for r, nb in zip(m.get("recall_ids", []), m.get("recall_nb", [])):
            got[int(r)] = nb
    graph_rows = np.vstack([got[int(r)] for r in gr.query_ids])
    recall = P.recall(graph_rows, np.asarray(wid["exact"]))
    halo = sum(int(m.get("halo_rows", 0)) for m in searched)
    graph_info = {
        "files": graph_files,
        "k": gr.k,
        "recall": recall,
        "seconds": seconds_graph,
        "kind": f"partitioned(partitions={len(model['centroids'])},probes={width},"
        f"groups={groups}" + (",dim=64)" if model["basis"] is not None else ")"),
        "fp_ids": np.hstack([m["fp_ids"] for m in gr.stats]),
        "fp_vec": np.vstack([_vec(m, "fp") for m in gr.stats if len(m["fp_ids"])]),
        "info": {
            "partitions": len(model["centroids"]),
            "probes": width,
            "groups": groups,
            "halo_rows": halo,
            "refined_rows": refined,
            **json.loads(wid["curve"]),
            "recall_sample": len(gr.query_ids),
        },
    }
    run.say(f"kNN graph: {graph_info['kind']}, recall@{gr.k} {recall:.3f}")
    # --- 7. reductions ----------------------------------------------------------------------------
    t_red = time.perf_counter()
    jobs = _reductions(run, ctx, gr, searched, graph_files, reduce, leak_job)
    run.driver["reductions"] = round(time.perf_counter() - t_red, 2)
    _finish(run, ctx, gr, jobs, graph_files, graph_info)
    return graph_info


def examined_splits(ctx) -> list[str]:
    """The splits leakage examines: every audited split but the reference (or the reference)."""
    return [s for s in ctx.splits if s != ctx.reference] or [ctx.reference]


def _outlier_stats(gr: GraphRun, searched: list[dict]) -> dict:
    """`outlier`'s thresholds from the rows' mean neighbour distances the search returned."""
    th = float(gr.cfgs["outlier"]["threshold"])
    means = np.concatenate([m["outlier_mean"] for m in searched if "outlier_mean" in m])
    return plans.outlier_reduce(means, th)


def _assign(run: _Run, gr: GraphRun):
    """Stages 3-4: the partition model (projection, centroids, groups; saved for a resumed run)
    and the assign tasks. Returns (model, the recall queries' vectors, the groups' folder, the
    assign tasks' metadata)."""

    def make_model():
        xs = np.vstack([_vec(m, "sample") for m in gr.stats if m.get("file")])
        basis = P.train_basis(xs)
        zs = P.project(xs, basis)
        cent = P.train_centroids(zs, gr.nparts, gr.seed)
        sizes = np.bincount(P.assign(zs, cent), minlength=len(cent)) * (gr.n / max(len(zs), 1))
        groups = max(int(run.cluster.cpus), math.ceil(gr.n / run.group_rows))
        group_of = P.group_partitions(cent, sizes, groups, gr.seed)
        total = sum(m["sum"] for m in gr.stats if m["count"])
        count = sum(int(m["count"]) for m in gr.stats)
        return {
            "basis": basis if basis is not None else np.zeros((0, 0), np.float32),
            "centroids": cent,
            "group_of": group_of,
            "mean": total / max(count, 1) if count else np.zeros(xs.shape[1]),
        }

    model = run.state("model", make_model)
    if model["basis"].size == 0:
        model["basis"] = None
    model["query_ids"] = np.asarray(gr.query_ids)
    model["max_probes"] = int(min(P.MAX_PROBES, len(model["centroids"])))
    qv = {}
    for m in gr.stats:
        for r, v in zip(m["query_ids"], m["query_vec"]):
            qv[int(r)] = v
    queries_raw = np.vstack([qv[int(r)] for r in gr.query_ids])
    queries = P.normalize(queries_raw)
    gdir = str(run.work / "groups")
    model_ref = put(model)  # one copy in the object store, not one per task
    num_classes = len(gr.classes)
    jobs = [
        (
            str(run.work / "assign" / f"a{i:06d}"),
            (i, gr.codes_files[i], fl, model_ref, gdir, queries, gr.k, num_classes, gr.folds),
        )
        for i, (_, _, fl) in enumerate(gr.ranges)
    ]
    assigned = run.stage("assign", audit_tasks.assign_job, jobs)
    return model, queries_raw, gdir, assigned


def _width(gr: GraphRun, model: dict, queries_raw: np.ndarray, assigned: list[dict]) -> dict:
    """Stage 5: the number of probes from the recall queries' exact neighbours, and each
    group's lowest partition rank."""
    sims, ids = P.merge_topk([(m["q_sims"], m["q_ids"]) for m in assigned], gr.k + 1)
    ids_all = np.hstack([m["q_ids"] for m in assigned]).ravel()
    parts_all = np.hstack([m["q_parts"] for m in assigned]).ravel()
    keep = ids_all >= 0
    uniq, first = np.unique(ids_all[keep], return_index=True)
    part_of = parts_all[keep][first]
    ex_ids, _ = P.drop_self(ids, sims, np.asarray(gr.query_ids), gr.k)
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


def _labels_job(run: _Run, gr: GraphRun, model: dict, assigned: list[dict]) -> dict:
    """Stage 5: the pred_probs models (one per fold and one on all rows, every shrinkage of
    auditor/predict.py's grid) from the assign tasks' fold statistics, for the search."""
    from ...auditor.predict import _fit_linear

    num_classes = len(gr.classes)

    def make_models():
        out = {}
        if gr.folds >= 2:
            parts = [
                (m[f"scatter{f}"], m[f"sums{f}"], m[f"counts{f}"])
                for m in assigned
                for f in range(gr.folds)
                if f"scatter{f}" in m
            ]
            per = [
                tuple(sum(p[j] for p in parts[f :: gr.folds]) for j in range(3))
                for f in range(gr.folds)
            ]
            tot = tuple(sum(p[j] for p in per) for j in range(3))
            # every shrinkage of auditor/predict.py's grid, one [d, k] block each: the
            # search writes the out-of-fold logits of all, the driver picks one after it
            for f in range(gr.folds):
                w, b = _fit_linear(*(tot[j] - per[f][j] for j in range(3)), GRID)
                out[f"w{f}"], out[f"b{f}"] = w, b
            out["w_all"], out["b_all"] = _fit_linear(*tot, GRID)
        return out

    lm = run.state("models", make_models)
    d = model["centroids"].shape[1] if model["basis"] is None else model["basis"].shape[0]
    zero = (np.zeros((d, num_classes * len(GRID))), np.zeros(num_classes * len(GRID)))
    sel_ids, fit_ids = _pred_ids(gr.rid_all, gr.label, gr.audited, gr.seed)
    return {
        "num_classes": num_classes,
        "mean": model["mean"],
        "models": [(lm[f"w{f}"], lm[f"b{f}"]) for f in range(gr.folds)] if gr.folds else [],
        "all_model": (lm["w_all"], lm["b_all"]) if gr.folds else zero,
        "fit_ids": np.union1d(sel_ids, fit_ids),
    }


def _leak_job(ctx, gr: GraphRun) -> dict | None:
    """What the search collects for leakage's near pairs (None: leakage does not run, or
    runs without them)."""
    if "leakage" not in gr.runnable or not gr.cfgs["leakage"].get("near", True):
        return None
    return {
        "examined": np.array([gr.split_names.index(s) for s in examined_splits(ctx)], np.int16),
        "k": int(gr.cfgs["leakage"]["k"]),
        # every candidate is kept (the bar is set after the search, from the graph's
        # within-split spacing) unless an absolute near_threshold is given
        "threshold": float(gr.cfgs["leakage"]["near_threshold"])
        if gr.cfgs["leakage"].get("near_threshold") is not None
        else -np.inf,
    }


def _search(run: _Run, gr: GraphRun, model, gdir, width, labels_job, leak_job, reduce):
    """Stage 6: the search per group, then the rows it may have flagged as outliers wrongly
    searched again with 3x the probes. Returns (tasks' metadata, graph files, groups, rows
    refined)."""
    groups = int(model["group_of"].max()) + 1
    model_ref, labels_ref = put(model), put(labels_job)
    gjobs = [
        (
            str(run.work / "graph" / f"g{g:05d}.parquet"),
            (g, gdir, g, model_ref, width, gr.k, labels_ref, leak_job, reduce),
        )
        for g in range(groups)
    ]
    searched = run.stage("search", search_tasks.search_job, gjobs)
    graph_files = [out for (out, _), m in zip(gjobs, searched) if m.get("rows")]
    refined = 0
    if "outlier" in gr.runnable and width < model["max_probes"]:
        # an approximate graph can only lengthen a row's distances, so only rows it flags may
        # be flagged wrongly: search those again with three times the probes
        cut = _outlier_stats(gr, searched)["issue_distance"]
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
                        (g, out, gdir, g, model_ref, wide, gr.k, rows, reduce),
                    )
                )
                where.append(g)
        if rjobs:
            done = run.stage("refine outlier rows", search_tasks.refine_job, rjobs)
            for g, (out, _), m in zip(where, rjobs, done):
                searched[g] = {**searched[g], **m}
                graph_files[graph_files.index(gjobs[g][0])] = out
                refined += int(m["refined"])
    return searched, graph_files, groups, refined


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
    fit = {}
    for m in searched:
        for r, lg in zip(m.get("fit_ids", []), m.get("fit_logits", [])):
            fit[int(r)] = lg
    if gr.folds:
        args = (fit, gr.rid_all, gr.label, gr.audited, gr.seed, num_classes)
        pick = run.state("temperature", functools.partial(_pick_model, *args))
        del args
    else:
        pick = {"block": 0, "t": 1.0}
    del fit
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
    views = {"model": np.vstack([m["model"] for m in got])[order]}
    if use_knn:
        views["knn"] = np.vstack([m["knn"] for m in got])[order]
    y_pool = gr.label[np.searchsorted(gr.rid_all, ids[order])]
    label_job["stack"] = plans.label_stack(views, y_pool, c, gr.seed)
    label_job["pool_rows"] = len(pool_ids)
    return label_job


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
        info = _info(name, job, gr.cfgs[name], finished, graph_info, ctx, rows, issues, gr.k)
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
            "by_split_pair": plans.leakage_by_pair(by_pair),
        }
    return {}


def _leak_exact(run, ctx, runnable, rows_files, split_names) -> pl.DataFrame:
    """Leakage's exact pairs, from the hash buckets (written by `_hash_stage`)."""
    files = sorted(str(p) for p in (run.work / "leak_pairs").glob("b*.parquet"))
    if not files:
        return pl.DataFrame(schema=plans.PAIR_SCHEMA)
    return pl.from_arrow(shards.read_parquet(files)).cast(plans.PAIR_SCHEMA)
