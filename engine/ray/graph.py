"""Stages 3-6 of `audit --engine ray` (see engine/ray/audit.py's docstring): the partition
model, assign, the number of probes and the pred_probs models, the search (and the outlier rows
searched again). `search_graph(run, ctx, GraphRun(...))` runs them; the driver's reductions and
the finish tasks (stages 7-9) are in engine/ray/graph_rows.py, whose `graph_and_rows` runs all."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...store.knn_exact import recall_per_query
from .. import partition as P
from .. import plans, shards
from . import audit_tasks, join_tasks, search_tasks
from .cluster import put
from .text_view import text_model, text_terms

if TYPE_CHECKING:
    from .audit import _Run

GRID = (None, 0.1, 0.2, 0.4, 0.6, 0.8)  # auditor/predict.py's shrinkages (None: OAS)
JOIN_LISTS = ("changed", "recall", "scored")  # the join's per-round figures in the graph info


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
    text_column: str | None = None  # the text `label`'s text view reads (None: no text view)
    text_terms: dict | None = None  # its kept terms, IDF and hashed counts per range


@dataclass
class Graph:
    """The searched graph: what the reductions (stage 7) and the finish tasks (9) read."""

    info: dict  # files, k, recall, kind, the fingerprint rows: attached at the commit
    searched: list[dict]  # the search tasks' metadata, one per group
    reduce: dict  # auditor name -> the k its per-row values are reduced at
    leak_job: dict | None  # what the search collected for leakage's near pairs


def search_graph(run: _Run, ctx, gr: GraphRun) -> Graph:
    """Stages 3-6 (see the module docstring): the partition model, assign, the probes and
    models, the search; with the graph's info (its recall on the sample)."""
    t_graph = time.perf_counter()
    if gr.text_column:  # label's text view: the texts hashed once, the terms chosen
        gr.text_terms = text_terms(run, gr)
    model, queries_raw, gdir, assigned = _assign(run, gr)
    # --- 5. width and models ----------------------------------------------------------------------
    wid = run.state("width", lambda: _width(gr, model, queries_raw, assigned))
    width = int(wid["width"])
    model["rank_min"] = wid["rank_min"]
    model["candidates"] = int(wid.get("candidates", P.CANDIDATES))
    labels_job = _labels_job(run, gr, model, assigned) if "label" in gr.runnable else None
    leak_job = _leak_job(ctx, gr)
    reduce = {}
    for name in ("outlier", "near_duplicate"):
        if name in gr.runnable:
            reduce[name] = int(min(gr.cfgs[name].get("k") or gr.k, gr.k))
    if leak_job is not None:
        reduce["leakage"] = gr.k
    curve = json.loads(wid["curve"])
    # no affordable width covers the target: the graph rows are joined across tasks
    join = not curve.get("coverage_reached", True)
    searched, graph_files, groups, refined, joined = _search(
        run, gr, model, gdir, width, labels_job, leak_job, reduce, join, wid
    )
    seconds_graph = time.perf_counter() - t_graph
    # recall of the graph on the sample
    got = _sample_rows(searched)
    graph_rows = np.vstack([got[int(r)][0] for r in gr.query_ids])
    graph_sims = np.vstack([got[int(r)][1] for r in gr.query_ids])
    recall = P.recall(graph_rows, graph_sims, np.asarray(wid["exact_sims"]))
    halo = sum(int(m.get("halo_rows", 0)) for m in searched)
    graph_info = {
        "files": graph_files,
        "k": gr.k,
        "recall": recall,
        "seconds": seconds_graph,
        "kind": f"partitioned(partitions={len(model['centroids'])},probes={width},"
        f"groups={groups}" + _projection_kind(model) + (",join)" if join else ")"),
        "fp_ids": np.hstack([m["fp_ids"] for m in gr.stats]),
        "fp_vec": np.vstack([_vec(m, "fp") for m in gr.stats if len(m["fp_ids"])]),
        "info": {
            "partitions": len(model["centroids"]),
            "probes": width,
            "groups": groups,
            "halo_rows": halo,
            "refined_rows": refined,
            "join_rounds": int(joined.get("join_rounds", 0)),
            **{f"join_{v}": list(joined.get(f"join_{v}", [])) for v in JOIN_LISTS},
            **joined.get("redo", {}),
            **curve,
            "recall_sample": len(gr.query_ids),
        },
    }
    run.say(f"kNN graph: {graph_info['kind']}, recall@{gr.k} {recall:.3f}")
    if recall < P.TARGET_RECALL:
        note = (
            f"kNN recall@{gr.k} {recall:.3f} on {len(gr.query_ids)} sample rows is below the "
            f"target {P.TARGET_RECALL} at {width} probes per row (at most {model['max_probes']}): "
            "outlier, near_duplicate and leakage see part of each row's neighbours; a stronger "
            "embedding, or fewer and larger partitions (the engine's partition_rows), raises it"
        )
        graph_info["info"]["notes"] = [note]
        run.say(f"warning: {note}")
    return Graph(graph_info, searched, reduce, leak_job)


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
        # a range without audited rows (an audit of other splits) draws no sample rows
        xs = [_vec(m, "sample") for m in gr.stats if m.get("file")]
        xs = np.vstack([x for x in xs if len(x)])
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
    terms_ref = None
    if gr.text_terms:  # label's text view: the kept terms and IDF, for each range's TF-IDF
        terms_ref = put({"kept": gr.text_terms["kept"], "idf": gr.text_terms["idf"]})
    jobs = [
        (
            str(run.work / "assign" / f"a{i:06d}"),
            (
                i,
                gr.codes_files[i],
                fl,
                model_ref,
                gdir,
                queries,
                gr.k,
                num_classes,
                gr.folds,
                gr.text_terms["counts"][i] if gr.text_terms else None,
                terms_ref,
            ),
        )
        for i, (_, _, fl) in enumerate(gr.ranges)
    ]
    assigned = run.stage("assign", audit_tasks.assign_job, jobs)
    if gr.text_terms:  # the hashed texts are in the groups now (a rerun skips assign)
        for f in gr.text_terms["counts"]:
            Path(f"{f}.meta.npz").unlink(missing_ok=True)
    return model, queries_raw, gdir, assigned


def _projection_kind(model: dict) -> str:
    """The graph kind's word on the projection: its dimension and candidates per neighbour, or
    nothing when the scan scored in the full dimension."""
    if model["basis"] is None or model["candidates"] == 0:
        return ""
    return f",dim={model['basis'].shape[1]},candidates={model['candidates']}"


def _width(gr: GraphRun, model: dict, queries_raw: np.ndarray, assigned: list[dict]) -> dict:
    """Stage 5: the number of probes from the recall queries' exact neighbours, and each
    group's lowest partition rank."""
    # each query's exact top 2k (own row dropped): the first k and the rows tied with the k-th
    width_k = 2 * gr.k
    sims, ids = P.merge_topk([(m["q_sims"], m["q_ids"]) for m in assigned], width_k + 1)
    ex_ids, ex_sims = P.drop_self(ids, sims, np.asarray(gr.query_ids), width_k)
    nb_part = _partitions_of(assigned, "q", ex_ids)
    zq = P.project(queries_raw, model["basis"])
    qprobes = P.probes(zq, model["centroids"], model["max_probes"])
    sizes = sum(np.asarray(m["part_counts"]) for m in assigned)
    tied = P.tied_neighbours(ex_sims, ex_ids, gr.k)
    width, info = P.choose_width(qprobes, nb_part, sizes, gr.k, tied)
    if not info["coverage_reached"]:  # the graph rows will be joined: fewer probes seed it
        info["probes_before_join"] = width
        width = P.join_width(info["coverage_by_probes"], width)
    # each query's coverage at the probes a joined graph's far rows are searched again with
    wide_coverage = P.per_query_coverage(qprobes, nb_part, tied, gr.k, model["max_probes"])
    candidates = P.CANDIDATES
    if model["basis"] is not None:  # how many candidates the projection must keep, or none
        candidates, cinfo = _candidates(gr, assigned, qprobes[:, :width], ex_ids, nb_part, tied)
        info.update(cinfo)
    rank = np.full((int(model["group_of"].max()) + 1, len(sizes)), 255, np.uint8)
    for m in assigned:
        g = np.asarray(m["rank_groups"], np.int64)
        rank[g] = np.minimum(rank[g], m["rank_min"])
    # merge_topk left -inf where a query has fewer rows: recall_per_query's empty places
    return {
        "width": width,
        "candidates": candidates,  # per neighbour; 0: the scan scores in the full dimension
        "sizes": sizes,  # rows per partition
        "exact_sims": ex_sims[:, : gr.k],
        "wide_coverage": wide_coverage,
        "curve": json.dumps(info),
        "rank_min": rank,
    }


def _candidates(gr: GraphRun, assigned: list[dict], qprobes, ex_ids, nb_part, tied):
    """Stage 5: the candidates per neighbour the scan keeps from the projection, from the
    recall queries' nearest rows in it (each assign task's, merged; `P.choose_candidates`)."""
    size = P.candidate_list_size(gr.k)
    _, z_ids = P.merge_topk([(m["z_sims"], m["z_ids"]) for m in assigned], size)
    z_parts = _partitions_of(assigned, "z", z_ids)
    own = np.asarray(gr.query_ids)
    return P.choose_candidates(z_ids, z_parts, qprobes, own, ex_ids, nb_part, tied, gr.k)


def _partitions_of(assigned: list[dict], lists: str, ids: np.ndarray) -> np.ndarray:
    """The partition of each row id in `ids` (-1 for none), from the assign tasks' lists of the
    recall queries' rows (`{lists}_ids`, `{lists}_parts`: "q" the exact, "z" the projected)."""
    ids_all = np.hstack([m[f"{lists}_ids"] for m in assigned]).ravel()
    parts_all = np.hstack([m[f"{lists}_parts"] for m in assigned]).ravel()
    keep = ids_all >= 0
    uniq, first = np.unique(ids_all[keep], return_index=True)
    if not len(uniq):
        return np.full(ids.shape, -1, np.int64)
    part_of = parts_all[keep][first]
    at = np.clip(np.searchsorted(uniq, ids), 0, len(uniq) - 1)
    return np.where((ids >= 0) & (uniq[at] == ids), part_of[at], -1)


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
        "text": run.state(
            "text_model",
            lambda: text_model(gr.text_terms, assigned, gr.folds, num_classes),
        )
        if gr.text_terms
        else None,
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


def _pooled(model: dict, width: int, sizes, cpus: int) -> list[list[int]] | None:
    """The groups searched together, one task per CPU, when a group's halo (the rows of other
    groups' partitions its rows probe) is most of the other groups' rows: each task would read
    nearly every row, so reading them once per CPU instead of once per group costs the same
    memory and a fraction of the reading. None: one task per group (the halos are small)."""
    groups = int(model["group_of"].max()) + 1
    if sizes is None or groups <= cpus:
        return None
    sizes = np.asarray(sizes, np.float64)
    own = model["group_of"][None, :] == np.arange(groups)[:, None]
    need = (np.asarray(model["rank_min"]) < width) & ~own
    share = (need * sizes).sum(axis=1) / np.maximum((~own * sizes).sum(axis=1), 1.0)
    if float(share.mean()) <= 0.5:
        return None
    return [list(range(i, groups, cpus)) for i in range(cpus)]


def _search(run: _Run, gr: GraphRun, model, gdir, width, labels_job, leak_job, reduce, join, wid):
    """Stage 6: the search per group (or the groups pooled: `_pooled`); when `join`, the graph
    rows joined across the groups (engine/ray/join_tasks.py; the recall sample's exact
    similarities in `wid`, `_width`'s, give the recall after each round); then the rows it may
    have flagged as outliers wrongly searched again with 3x the probes, and with them the
    joined rows the sample says the join left far from their neighbours (`_redo_cut`), all
    then with the most probes.
    Returns (each group's metadata, graph files, groups, rows refined, join info)."""
    groups = int(model["group_of"].max()) + 1
    model_ref, labels_ref = put(model), put(labels_job)
    files = [str(run.work / "graph" / f"g{g:05d}.parquet") for g in range(groups)]
    pooled = _pooled(model, width, wid.get("sizes"), int(run.cluster.cpus))
    chunks = pooled or [[g] for g in range(groups)]
    sjobs = [
        (
            str(run.work / "graph" / f"search{i:05d}") if pooled else files[chunk[0]],
            (
                i,
                gdir,
                [(g, files[g]) for g in chunk],
                model_ref,
                width,
                gr.k,
                labels_ref,
                leak_job,
                reduce,
                join,
            ),
        )
        for i, chunk in enumerate(chunks)
    ]
    run.stage("search", search_tasks.search_job, sjobs)
    searched = [shards.read_meta(f) or {} for f in files]
    graph_files = [out for out, m in zip(files, searched) if m.get("rows")]
    joined: dict = {}
    if join:
        with_rows = [g for g, m in enumerate(searched) if m.get("rows")]
        graph_files, metas, joined = join_tasks.join_graph(
            run, graph_files, gr.k, {**reduce, "list": gr.k}, gr.query_ids, wid["exact_sims"]
        )
        for g, out, m in zip(with_rows, graph_files, metas):
            searched[g] = {**searched[g], **m}
            files[g] = out
    refined, redo_cut = 0, None
    if join and width < model["max_probes"] and "wide_coverage" in wid:
        redo_cut, joined["redo"] = _redo_cut(gr, searched, wid)
    if ("outlier" in gr.runnable or redo_cut is not None) and width < model["max_probes"]:
        refined, redo_rows = _refine(
            run, gr, model, model_ref, gdir, width, reduce, join, pooled, files, searched, redo_cut
        )
        if redo_cut is not None:
            joined["redo"]["redo_rows"] = redo_rows
        graph_files = [f for f, m in zip(files, searched) if m.get("rows")]
    # the graph is whole: the rows grouped for the search (the vectors a second time) and the
    # join's tables are not read again, by this run or a resumed one (their tasks' metas are
    # kept)
    shards.remove_tree(Path(gdir))
    join_tasks.remove_tables(run)
    return searched, graph_files, groups, refined, joined


def _refine(
    run: _Run,
    gr: GraphRun,
    model,
    model_ref,
    gdir,
    width,
    reduce,
    join,
    pooled,
    files,
    searched,
    redo_cut=None,
):
    """Stage 6c: an approximate graph can only lengthen a row's distances, so only rows it
    flags may be flagged wrongly: those are searched again with three times the probes (when
    the graph was joined, among the join's tables: no partition file read again); with them,
    a joined graph's rows whose mean neighbour distance is `redo_cut` or more (`_redo_cut`),
    and then all with the most probes.
    Each group's refined file replaces its file in `files` and its meta is merged into
    `searched` (`model_ref`: the model, put in the object store by the search). Returns (the
    rows refined, those of them `redo_cut` chose)."""
    cut = _outlier_stats(gr, searched)["issue_distance"] if "outlier" in gr.runnable else None
    # the far rows are few: they probe as widely as the search affords
    wide = model["max_probes"] if redo_cut is not None else _wide(model, width)
    with_rows = [g for g, m in enumerate(searched) if m.get("rows")]
    starts = {}
    if join:
        starts = dict(zip(with_rows, join_tasks.block_starts([files[g] for g in with_rows])))
    items, redo_rows = [], 0
    for g in with_rows:
        m = searched[g]
        rows = np.zeros(0, np.int64)
        if cut is not None:
            rows = np.asarray(m["outlier_ids"])[np.asarray(m["outlier_mean"]) > cut]
        if redo_cut is not None:
            far = np.asarray(m["list_ids"])[np.asarray(m["list_mean"]) >= redo_cut]
            redo_rows += len(far)
            rows = np.union1d(rows, far)
        if len(rows):
            refined_out = str(run.work / "graph" / f"g{g:05d}.refined.parquet")
            items.append((g, files[g], refined_out, rows) + ((starts[g],) if join else ()))
    # one task per group; where the search's halos were most of the data (or the graph was
    # joined), one task per CPU
    tasks = min(len(items), int(run.cluster.cpus)) if join or pooled else len(items)
    where = str(run.work / "join") if join else gdir  # the join's tables, or the grouped rows
    rjobs = [
        (
            str(run.work / "graph" / f"refine{i:05d}"),
            (i, items[i::tasks], where, model_ref, wide, gr.k, reduce),
        )
        for i in range(tasks)
    ]
    if not rjobs:
        return 0, redo_rows
    stage = "refine outlier rows" if redo_cut is None else "refine rows"
    run.stage(stage, join_tasks.refine_job if join else search_tasks.refine_job, rjobs)
    refined = 0
    for g, out, refined_out, *_ in items:
        searched[g] = {**searched[g], **shards.read_meta(refined_out)}
        files[g] = refined_out
        refined += int(searched[g]["refined"])
        Path(out).unlink(missing_ok=True)  # the refined copy replaces it
    return refined, redo_rows


def _wide(model: dict, width: int) -> int:
    """The probes rows are searched again with (`_refine`): three times the search's."""
    return int(min(model["max_probes"], 3 * width))


def _sample_rows(searched: list[dict]) -> dict:
    """The recall sample's graph rows from the groups' metas: row id -> (neighbour ids,
    similarities)."""
    got = {}
    for m in searched:
        for r, nb, sim in zip(m.get("recall_ids", []), m.get("recall_nb", []), m["recall_sims"]):
            got[int(r)] = (nb, sim)
    return got


def _redo_cut(gr: GraphRun, searched: list[dict], wid: dict) -> tuple[float | None, dict]:
    """The mean neighbour distance from which a joined graph's rows are searched again
    (`P.choose_redo`, on the recall sample's joined rows: their recall against exact search,
    their distances, their coverage at the most probes), None for none; with its info."""
    qids = [int(r) for r in gr.query_ids]
    got, far = _sample_rows(searched), {}
    for m in searched:
        ids = np.asarray(m.get("list_ids", []), np.int64)
        mine = np.flatnonzero(np.isin(ids, qids))
        far.update(zip(ids[mine].tolist(), np.asarray(m["list_mean"])[mine].tolist()))
    if not qids or any(r not in got or r not in far for r in qids):
        return None, {}
    recall_q = recall_per_query(
        np.vstack([got[r][0] for r in qids]),
        np.vstack([got[r][1] for r in qids]),
        np.asarray(wid["exact_sims"]),
    )
    score = np.array([far[r] for r in qids], np.float64)
    return P.choose_redo(score, recall_q, np.asarray(wid["wide_coverage"]))


def _pred_ids(rid_all, label, audited, seed) -> tuple[np.ndarray, np.ndarray]:
    """(rows that judge the shrinkage, rows that fit the temperatures), the row ids
    auditor/predict.py draws (`calibration_rows`), in its order."""
    from ...auditor.predict import calibration_rows

    lab_pos = np.flatnonzero(label[audited] >= 0)
    sel, fit_rows = calibration_rows(len(lab_pos), seed)
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
