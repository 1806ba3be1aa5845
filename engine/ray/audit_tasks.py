"""The tasks of `audit --engine ray`, each run on a worker over files (see engine/ray/audit.py).

Every task reads its inputs from Parquet, writes its output atomically, then its meta file
(`shards.write_meta`), and returns the meta: a rerun skips a task whose meta exists. A task owns
one CPU (`task_threads(1)`); its memory is bounded by the rows it is given (one vector file, one
group of partitions with its halo, or one hash bucket), never by the data set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ...auditor.base import result_table
from ...store import schema as S
from .. import partition as P
from .. import plans, shards
from .cluster import fault_point, task_threads


class _Clock:
    """Seconds spent in each phase of a task, returned in its meta as `t_<phase>`."""

    def __init__(self):
        import time

        self._now = time.perf_counter
        self.t = self._now()
        self.out: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = self._now()
        self.out[f"t_{name}"] = self.out.get(f"t_{name}", 0.0) + now - self.t
        self.t = now


# --- helpers --------------------------------------------------------------------------------------
def _codes(path: str) -> dict:
    t = pq.read_table(path)
    return {c: t.column(c).to_numpy() for c in t.column_names}


def _vectors(files: list[str], lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    if not files:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    t = pa.concat_tables(
        pq.read_table(
            f, columns=[S.ROW_ID, "vector"], filters=[(S.ROW_ID, ">=", lo), (S.ROW_ID, "<=", hi)]
        )
        for f in files
    )
    t = t.sort_by(S.ROW_ID) if len(files) > 1 else t
    ids = t.column(S.ROW_ID).to_numpy().astype(np.int64)
    if not len(ids):
        return ids, np.zeros((0, 0), np.float32)
    return ids, shards.list_column(t, "vector")


def _aligned(codes: dict, files: list[str]):
    """The codes of a range and the vectors of its rows that have one: (codes restricted to rows
    with a vector, raw vectors aligned with them, number of audited rows without a vector)."""
    rid = codes[S.ROW_ID]
    if not len(rid):
        return codes, np.zeros((0, 0), np.float32), 0
    vid, vec = _vectors(files, int(rid[0]), int(rid[-1]))
    pos = np.searchsorted(vid, rid)
    pos[pos >= len(vid)] = 0
    has = (vid[pos] == rid) if len(vid) else np.zeros(len(rid), bool)
    missing = int((~has & codes["audited"]).sum())
    kept = {k: v[has] for k, v in codes.items()}
    return kept, (vec[pos[has]] if len(vid) else np.zeros((0, 0), np.float32)), missing


# --- P1: statistics and samples -------------------------------------------------------------------
def stats_job(
    out: str,
    index: int,
    codes_file: str,
    vec_files: list[str],
    sample_ids: np.ndarray,
    query_ids: np.ndarray,
    fp_ids: np.ndarray,
) -> dict:
    """Labelled sums (for the mean of the pred_probs model), and the vectors of the rows chosen
    for the k-means sample, the recall queries and the vector fingerprint."""
    task_threads(1)
    fault_point("stats", index, out)
    codes = _codes(codes_file)
    codes, x, missing = _aligned(codes, vec_files)
    rid = codes[S.ROW_ID]
    lab = codes["audited"] & (codes["label"] >= 0)
    d = x.shape[1] if x.size else 0
    total = x[lab].sum(axis=0, dtype=np.float64) if d else np.zeros(0)
    take = np.isin(rid, sample_ids)
    q = np.isin(rid, query_ids)
    f = np.isin(rid, fp_ids)
    sample = pa.table({S.ROW_ID: pa.array(rid[take])}) if d else None
    if sample is not None:
        shards.write_table(shards.vectors_table(rid[take], x[take]), out)
    meta = {
        "rows": len(rid),
        "missing": missing,
        "dim": d,
        "sum": total,
        "count": int(lab.sum()),
        "sample_ids": rid[take],
        "query_ids": rid[q],
        "query_vec": x[q] if d else np.zeros((0, 0), np.float32),
        "fp_ids": rid[f],
        "fp_vec": x[f] if d else np.zeros((0, 0), np.float32),
    }
    shards.write_meta(out, meta)
    return meta


# --- P2: assignment, fold statistics, exact neighbours of the recall sample -----------------------
def assign_job(
    out: str,
    index: int,
    codes_file: str,
    vec_files: list[str],
    model: dict,
    group_dir: str,
    queries: np.ndarray,
    k: int,
    num_classes: int,
    folds: int,
) -> dict:
    """Assign the rows of one vector range to partitions and write them, grouped, for the
    search; gather fold statistics; top-(k+1) of the recall queries among these rows."""
    from ...auditor.predict import _fold_stats

    task_threads(1)
    fault_point("assign", index, out)
    clk = _Clock()
    codes = _codes(codes_file)
    codes, x, _ = _aligned(codes, vec_files)
    rid = codes[S.ROW_ID]
    clk.lap("read")
    xn = P.normalize(x) if len(rid) else x
    z = P.project(x, model["basis"]) if len(rid) else x
    # each row's nearest partitions: the first is its own, the rest say which partitions a
    # search of its group may probe
    pr = P.probes(z, model["centroids"], model["max_probes"])
    part = pr[:, 0] if len(rid) else np.zeros(0, np.int32)
    clk.lap("assign")
    group = model["group_of"][part] if len(rid) else np.zeros(0, np.int32)
    # fold statistics of the audited labelled rows (raw vectors, as auditor/predict.py)
    stats = []
    lab = np.flatnonzero(codes["audited"] & (codes["label"] >= 0))
    if num_classes >= 2 and folds >= 2 and len(rid):
        y = np.where(codes["label"] >= 0, codes["label"], 0).astype(np.int64)
        for f in range(folds):
            rows = lab[codes["fold"][lab] == f]
            stats.append(_fold_stats(x, rows, y, num_classes, model["mean"]))
    clk.lap("fold_stats")
    # exact neighbours of the recall queries among this range's audited rows
    aud = np.flatnonzero(codes["audited"])
    base = xn[aud] if len(aud) else np.zeros((0, queries.shape[1]), np.float32)
    sims, pos = P.exact_topk(queries, base, k + 1)
    ids = np.where(pos >= 0, rid[aud][np.maximum(pos, 0)], -1) if len(aud) else pos
    parts = np.where(pos >= 0, part[aud][np.maximum(pos, 0)], -1) if len(aud) else pos
    clk.lap("recall_sample")
    # the probe rank at which each group first reaches each partition (its halo for any w)
    nparts = len(model["centroids"])
    present = np.unique(group)
    rank = np.full((len(present), nparts), 255, np.uint8)
    if len(rid):
        gi = np.searchsorted(present, group)
        for r in range(pr.shape[1] - 1, -1, -1):  # the smallest rank is written last
            rank[gi, pr[:, r]] = r
    clk.lap("probe_ranks")
    # rows grouped for the search, sorted by partition; each file lists where its partitions
    # start, so a search reads only the partitions it probes (memory-mapped, no decoding)
    order = np.argsort(part, kind="stable")
    for g in present:
        sel = order[group[order] == g]
        pg, starts = np.unique(part[sel], return_index=True)
        tbl = pa.table(
            {
                "part": pa.array(part[sel].astype(np.int32)),
                S.ROW_ID: pa.array(rid[sel]),
                "split": pa.array(codes["split"][sel].astype(np.int16)),
                "label": pa.array(codes["label"][sel].astype(np.int32)),
                "fold": pa.array(codes["fold"][sel].astype(np.int8)),
                "audited": pa.array(codes["audited"][sel]),
                "x": shards.fixed_list(x[sel], pa.float32()),
                # the row's nearest partitions, kept: a search reads its probes, not recomputes
                "probes": shards.fixed_list(pr[sel].astype(np.int32), pa.int32()),
            }
        )
        shards.write_ipc(
            tbl,
            f"{group_dir}/g{int(g):05d}/s{index:06d}.arrow",
            {"parts": pg.tolist(), "starts": starts.tolist() + [len(sel)]},
        )
    clk.lap("write")
    meta = {
        **clk.out,
        "rows": len(rid),
        "part_counts": np.bincount(part, minlength=nparts),
        "q_sims": sims,
        "q_ids": ids,
        "q_parts": parts,
        "rank_groups": present,
        "rank_min": rank,
    }
    for f, (sc, sm, cn) in enumerate(stats):
        meta[f"scatter{f}"], meta[f"sums{f}"], meta[f"counts{f}"] = sc, sm, cn
    shards.write_meta(out, meta)
    return meta


# --- P3: the search of one group of partitions ----------------------------------------------------
def search_job(
    out: str,
    index: int,
    group_dir: str,
    group: int,
    model: dict,
    width: int,
    k: int,
    labels: dict | None,
    leak: dict | None,
    reduce: dict,
) -> dict:
    """Search the rows of one group of partitions, each probing its `width` nearest partitions
    (its own group's rows and the halo read from other groups' files), and write the graph rows
    of its audited rows with what the row auditors need: neighbours' splits and labels,
    pred_probs logits, leakage's partners in other splits."""
    task_threads(1)
    fault_point("search", index, out)
    clk = _Clock()
    g = _load_group(group_dir, group, model, width)
    if g is None:
        shards.write_meta(out, {"rows": 0})
        return {"rows": 0}
    rid, part, split, label, fold, x = (
        g["rid"],
        g["part"],
        g["split"],
        g["label"],
        g["fold"],
        g["x"],
    )
    own, audited = g["own"], g["audited"]
    clk.lap("read")
    xn = P.normalize(x)
    z = P.project(x, model["basis"])
    q = np.flatnonzero(own & audited)
    if not len(q):
        shards.write_meta(out, {"rows": 0})
        return {"rows": 0}
    qprobes = np.ascontiguousarray(g["probes"][q, :width])
    clk.lap("project")
    pos, sim, short = _neighbours(xn, z, part, audited, q, qprobes, k)
    clk.lap("scan")
    leak_rows = []
    if leak is not None:
        for s in np.unique(split[q]):
            if s not in leak["examined"]:
                continue
            sel = np.flatnonzero(split[q] == s)
            others = np.flatnonzero(split != s)
            if not len(others):
                continue
            lp, ls = P.scan(
                xn, z, part, others, q[sel], qprobes[sel], leak["k"], exclude_self=False
            )
            leak_rows.append((q[sel], lp, ls))
    clk.lap("leak_scan")
    valid = pos >= 0
    safe = np.maximum(pos, 0)
    neighbors = np.where(valid, rid[safe], -1)
    distances = np.where(valid, np.clip(1.0 - sim, 0.0, 2.0), np.inf).astype(np.float32)
    nb_split = np.where(valid, split[safe], -1).astype(np.int16)
    nb_label = np.where(valid, label[safe], -1).astype(np.int32)
    cols = {
        S.ROW_ID: pa.array(rid[q]),
        "split": pa.array(split[q]),
        "label": pa.array(label[q]),
        "neighbors": shards.fixed_list(neighbors, pa.int64()),
        "distances": shards.fixed_list(distances, pa.float32()),
        "nb_split": shards.fixed_list(nb_split, pa.int16()),
        "nb_label": shards.fixed_list(nb_label, pa.int32()),
    }
    meta: dict = {"rows": len(q), "partitions": int(len(g["own_parts"]))}
    if labels is not None:
        logits = _logits(x[q], label[q], fold[q], labels)
        clk.lap("logits")
        cols["logits"] = shards.fixed_list(logits.astype(np.float32), pa.float32())
        fit = np.isin(rid[q], labels["fit_ids"])
        meta["fit_ids"] = rid[q][fit]
        meta["fit_logits"] = logits[fit].astype(np.float32)
    if leak is not None:
        best = np.full(len(q), np.nan)
        qa, ida, sima, spa = [], [], [], []
        for qrows, lp, ls in leak_rows:
            at = np.searchsorted(q, qrows)
            s64 = ls.astype(np.float64)
            best[at] = np.where(lp[:, 0] >= 0, s64[:, 0], np.nan)
            r, c = np.nonzero((s64 >= leak["threshold"]) & (lp >= 0))
            qa.append(at[r])
            ida.append(rid[lp[r, c]])
            sima.append(np.round(s64[r, c], 6))
            spa.append(split[lp[r, c]])
        qa = np.concatenate(qa) if qa else np.zeros(0, np.int64)
        order = np.argsort(qa, kind="stable")
        offsets = pa.array(
            np.concatenate([[0], np.cumsum(np.bincount(qa, minlength=len(q)))]).astype(np.int32)
        )

        def lists(parts, dtype):
            values = np.concatenate(parts)[order] if parts else np.zeros(0)
            return pa.ListArray.from_arrays(offsets, pa.array(values.astype(dtype)))

        cols["leak_best"] = pa.array(best)
        cols["leak_ids"] = lists(ida, np.int64)
        cols["leak_sims"] = lists(sima, np.float64)
        cols["leak_splits"] = lists(spa, np.int16)
    shards.write_table(pa.table(cols), out, 65536)
    clk.lap("write")
    # per-row values the driver reduces (exact quantiles and medians)
    meta.update(_reduce_values(pa.table(cols), reduce, model["query_ids"]))
    meta["halo_rows"] = int((~own).sum())
    meta["short_rows"] = int(short)
    meta.update(clk.out)
    shards.write_meta(out, meta)
    return meta


def _load_group(group_dir: str, group: int, model: dict, width: int) -> dict | None:
    """The rows a search of `group` needs: its own partitions, and the partitions its rows
    probe within `width` in other groups (memory-mapped; only those partitions' slices)."""
    own_parts = np.flatnonzero(model["group_of"] == group)
    need = np.flatnonzero(model["rank_min"][group] < width)
    return _load_parts(group_dir, np.union1d(own_parts, need), model, own_parts)


def _load_parts(group_dir: str, parts: np.ndarray, model: dict, own_parts) -> dict | None:
    """The rows of the partitions `parts`, read from the files of the groups that hold them
    (memory-mapped Arrow; only the slices of those partitions are copied)."""
    group_of = model["group_of"]
    pieces = []
    for g in np.unique(group_of[parts]):
        wanted = set(parts[group_of[parts] == g].tolist())
        for f in sorted(Path(group_dir, f"g{int(g):05d}").glob("s*.arrow")):
            t, info = shards.read_ipc(f)
            st = info["starts"]
            pieces += [
                t.slice(st[i], st[i + 1] - st[i])
                for i, p in enumerate(info["parts"])
                if p in wanted
            ]
    tbl = pa.concat_tables(pieces) if pieces else None
    if tbl is None or not tbl.num_rows:
        return None
    part = tbl.column("part").to_numpy()
    return {
        "rid": tbl.column(S.ROW_ID).to_numpy().astype(np.int64),
        "part": part,
        "split": tbl.column("split").to_numpy().astype(np.int16),
        "label": tbl.column("label").to_numpy().astype(np.int32),
        "fold": tbl.column("fold").to_numpy(),
        "audited": tbl.column("audited").to_numpy(zero_copy_only=False).astype(bool),
        "x": shards.list_column(tbl, "x"),
        "probes": shards.list_column(tbl, "probes", np.int32),
        "own": np.isin(part, own_parts),
        "own_parts": own_parts,
    }


def _neighbours(xn, z, part, audited, q, qprobes, k):
    """Graph rows of the queries `q` among the audited rows: (positions, sims, rows searched
    exactly because their probed partitions held fewer than k candidates)."""
    aud = np.flatnonzero(audited)
    pos, sim = P.scan(xn, z, part, aud, q, qprobes, k)
    short = np.flatnonzero((pos < 0).any(axis=1))
    if len(short) and len(aud) > 1:
        pos[short], sim[short] = P.exact_rows(xn, q[short], aud, k)
    return pos, sim, len(short)


def refine_job(
    out: str,
    index: int,
    graph: str,
    group_dir: str,
    group: int,
    model: dict,
    width: int,
    k: int,
    rows: np.ndarray,
    reduce: dict,
) -> dict:
    """Search the rows `rows` of one group again with `width` probes (the rows an approximate
    graph may have flagged as outliers: a missed neighbour only lengthens a row's distances),
    and write the group's graph with their rows replaced."""
    task_threads(1)
    fault_point("refine", index, out)
    t = pq.read_table(graph)
    rid_q = t.column(S.ROW_ID).to_numpy()
    take = np.isin(rid_q, rows)
    g = None
    if take.any():
        # the partitions these rows probe: memory follows the rows searched again, not the group
        own_parts = np.flatnonzero(model["group_of"] == group)
        mine = _load_parts(group_dir, own_parts, model, own_parts)
        at = np.isin(mine["rid"], rid_q[take])
        parts = np.unique(mine["probes"][at, :width])
        del mine
        g = _load_parts(group_dir, parts, model, own_parts)
    if g is not None and take.any():
        xn = P.normalize(g["x"])
        z = P.project(g["x"], model["basis"])
        order = np.argsort(g["rid"])
        q = order[np.searchsorted(g["rid"][order], rid_q[take])]
        qprobes = np.ascontiguousarray(g["probes"][q, :width])
        pos, sim, _ = _neighbours(xn, z, g["part"], g["audited"], q, qprobes, k)
        valid = pos >= 0
        safe = np.maximum(pos, 0)
        nb = shards.list_column(t, "neighbors", np.int64).copy()
        ds = shards.list_column(t, "distances").copy()
        ns = shards.list_column(t, "nb_split", np.int16).copy()
        nl = shards.list_column(t, "nb_label", np.int32).copy()
        nb[take] = np.where(valid, g["rid"][safe], -1)
        ds[take] = np.where(valid, np.clip(1.0 - sim, 0.0, 2.0), np.inf)
        ns[take] = np.where(valid, g["split"][safe], -1)
        nl[take] = np.where(valid, g["label"][safe], -1)
        cols = {
            "neighbors": shards.fixed_list(nb, pa.int64()),
            "distances": shards.fixed_list(ds.astype(np.float32), pa.float32()),
            "nb_split": shards.fixed_list(ns, pa.int16()),
            "nb_label": shards.fixed_list(nl, pa.int32()),
        }
        for name, col in cols.items():
            t = t.set_column(t.column_names.index(name), name, col)
    shards.write_table(t, out, 65536)
    meta = _reduce_values(t, reduce, model["query_ids"])
    meta["refined"] = int(take.sum())
    shards.write_meta(out, meta)
    return meta


def _reduce_values(t: pa.Table, reduce: dict, query_ids: np.ndarray) -> dict:
    """What the driver reduces from a group's graph rows: outlier mean distances, nearest
    same-split distances, the recall sample's rows."""
    rid = t.column(S.ROW_ID).to_numpy()
    neighbors = shards.list_column(t, "neighbors", np.int64)
    distances = shards.list_column(t, "distances")
    meta: dict = {"rows": len(rid)}
    for name, kk in reduce.items():
        if name == "outlier":
            meta["outlier_mean"] = plans.outlier_mean(neighbors[:, :kk], distances[:, :kk])
            meta["outlier_ids"] = rid
        elif name == "near_duplicate":
            nn, _, _ = plans.nearest_same_split(
                neighbors[:, :kk],
                distances[:, :kk],
                shards.list_column(t, "nb_split", np.int16)[:, :kk],
                t.column("split").to_numpy(),
            )
            meta["near_nn"] = nn
        elif name == "leakage":  # the within-split spacing leakage's near bar is set by
            nn, _, _ = plans.nearest_same_split(
                neighbors[:, :kk],
                distances[:, :kk],
                shards.list_column(t, "nb_split", np.int16)[:, :kk],
                t.column("split").to_numpy(),
            )
            meta["leak_nn"] = nn
            meta["leak_nn_split"] = t.column("split").to_numpy()
    mask = np.isin(rid, query_ids)
    meta["recall_ids"] = rid[mask]
    meta["recall_nb"] = neighbors[mask]
    return meta


def _logits(x: np.ndarray, y: np.ndarray, fold: np.ndarray, labels: dict) -> np.ndarray:
    """(x - mean) @ W + b with each labelled row's out-of-fold model, the all-rows model for
    unlabelled rows (auditor/predict.py)."""
    from ...auditor.predict import _logits as lin

    out = np.zeros((len(x), len(labels["all_model"][1])))  # [rows, k x shrinkages]
    rows = np.arange(len(x))
    for f, (w, b) in enumerate(labels["models"]):
        sel = rows[(y >= 0) & (fold == f)]
        if len(sel):
            out[sel] = lin(x, sel, labels["mean"], w, b)
    sel = rows[y < 0]
    if len(sel):
        w, b = labels["all_model"]
        out[sel] = lin(x, sel, labels["mean"], w, b)
    return out


# --- P4: near pairs -------------------------------------------------------------------------------
def edges_job(out: str, graph: str, k: int, radius: float) -> dict:
    task_threads(1)
    t = pq.read_table(graph, columns=[S.ROW_ID, "split", "neighbors", "distances", "nb_split"])
    rid = t.column(S.ROW_ID).to_numpy()
    src, dst = plans.near_edges(
        rid,
        shards.list_column(t, "neighbors", np.int64)[:, :k],
        shards.list_column(t, "distances")[:, :k],
        shards.list_column(t, "nb_split", np.int16)[:, :k],
        t.column("split").to_numpy(),
        radius,
    )
    meta = {"src": src, "dst": dst}
    shards.write_meta(out, meta)
    return meta


# --- P5: the rows of the map-reduce auditors ------------------------------------------------------
def finish_job(out: str, index: int, graph: str, jobs: dict) -> dict:
    """Write this group's result rows for each map-reduce auditor, with what the driver sums."""
    task_threads(1)
    fault_point("finish", index, out)
    clk = _Clock()
    t = pq.read_table(graph)
    rid = t.column(S.ROW_ID).to_numpy().astype(np.int64)
    split = t.column("split").to_numpy()
    y = t.column("label").to_numpy().astype(np.int64)
    neighbors = shards.list_column(t, "neighbors", np.int64)
    distances = shards.list_column(t, "distances")
    nb_split = shards.list_column(t, "nb_split", np.int16)
    nb_label = shards.list_column(t, "nb_label", np.int32)
    meta: dict = {}
    clk.lap("read")
    for name, job in jobs.items():
        kk = job.get("k", neighbors.shape[1])
        if name == "outlier":
            mean = plans.outlier_mean(neighbors[:, :kk], distances[:, :kk])
            rows = plans.outlier_rows(rid, mean, job["stats"])
        elif name == "near_duplicate":
            nn, nn_row, has = plans.nearest_same_split(
                neighbors[:, :kk], distances[:, :kk], nb_split[:, :kk], split
            )
            rows = plans.near_rows(
                rid, nn, nn_row, has, job["median"], job["sets"], job["reference"]
            )
        elif name == "label":
            model, vote = _label_views(t, nb_label, distances, job)
            rows, cut, sums = plans.label_rows(
                rid, y, model, vote, job["classes"], job["stack"], job["cfg"]
            )
            for key, v in sums.items():
                meta[f"{name}_{key}"] = v
            if job["cfg"]["filter_by"] == "expected_f1":  # the driver makes the cut
                for key, v in zip(("cut_ids", "cut_y", "cut_score", "cut_q"), cut):
                    meta[f"{name}_{key}"] = v
        elif name == "leakage":
            ex = np.isin(split, job["examined"])
            names = job["split_names"]
            examined = pl.DataFrame(
                {
                    S.ROW_ID: rid[ex],
                    "_best": t.column("leak_best").to_numpy()[ex]
                    if "leak_best" in t.column_names
                    else np.full(int(ex.sum()), np.nan),
                    "split": np.asarray(names, dtype=object)[split[ex]].astype(str),
                }
            )
            near = _near_pairs(t, ex, rid, names)
            exact = job["exact"].filter(pl.col(S.ROW_ID).is_in(rid[ex].tolist()))
            rows, by_pair = plans.leakage_rows(
                examined, exact, near, job["max_partners"], job["calibration"]
            )
            meta["leakage_pairs"] = np.frombuffer(by_pair.write_ipc(None).getvalue(), np.uint8)
            any_exact = rows["kind"].to_numpy() == "exact"
            meta["leakage_exact"] = int(any_exact.sum())
            meta["leakage_near_only"] = int((rows["is_issue"].to_numpy() & ~any_exact).sum())
        else:  # pragma: no cover - the driver sends only the names above
            raise ValueError(name)
        clk.lap(name)
        _check(name, rows)
        path = Path(out).parent / name / f"{Path(graph).stem}.parquet"
        shards.write_table(result_table(rows), path)
        clk.lap(f"{name}_write")
        meta[f"{name}_file"] = str(path)
        meta[f"{name}_rows"] = len(rows)
        meta[f"{name}_issues"] = int(rows["is_issue"].sum())
        meta[f"{name}_score_sum"] = float(rows["score"].sum())
    meta.update(clk.out)
    shards.write_meta(out, meta)
    return meta


def _label_views(t: pa.Table, nb_label, distances, job: dict):
    """(model, vote) of a group's rows: the chosen shrinkage's out-of-fold probabilities at
    the fitted temperature, and the neighbours' vote (None when the vote is not used)."""
    k = len(job["classes"])
    logits = shards.list_column(t, "logits", np.float64)
    block = job["block"]
    model = plans.softmax_probs(logits[:, block * k : (block + 1) * k], job["temperature"])
    vote = None
    if job["use_knn"]:
        kk = job["k"]
        vote = plans.knn_vote(nb_label[:, :kk], distances[:, :kk], job["prior"])
    return model, vote


def label_views_job(out: str, graph: str, ids: np.ndarray, job: dict) -> dict:
    """The label views of the rows `ids` in this group (the rows the stack's fit draws)."""
    task_threads(1)
    t = pq.read_table(graph, columns=[S.ROW_ID, "label", "logits", "distances", "nb_label"])
    rid = t.column(S.ROW_ID).to_numpy().astype(np.int64)
    take = np.isin(rid, ids)
    t = t.filter(pa.array(take))
    model, vote = _label_views(
        t, shards.list_column(t, "nb_label", np.int32), shards.list_column(t, "distances"), job
    )
    meta = {"ids": rid[take], "model": model}
    if vote is not None:
        meta["knn"] = vote
    shards.write_meta(out, meta)
    return meta


def _near_pairs(t: pa.Table, ex: np.ndarray, rid: np.ndarray, names: list[str]) -> pl.DataFrame:
    if "leak_ids" not in t.column_names:
        return pl.DataFrame(schema=plans.PAIR_SCHEMA)
    f = pl.from_arrow(t.select([S.ROW_ID, "leak_ids", "leak_sims", "leak_splits"]))
    f = f.filter(pl.Series(ex)).explode(["leak_ids", "leak_sims", "leak_splits"]).drop_nulls()
    lut = pl.Series(names)
    return f.select(
        pl.col(S.ROW_ID).cast(pl.Int64),
        pl.col("leak_ids").cast(pl.Int64).alias("partner"),
        pl.col("leak_splits")
        .map_batches(lambda s: lut.gather(s.cast(pl.Int64)), return_dtype=pl.Utf8)
        .alias("partner_split"),
        pl.col("leak_sims").cast(pl.Float64).alias("similarity"),
        pl.lit(False).alias("exact"),
    )


def _check(name: str, rows: pl.DataFrame) -> None:
    from ...auditor.base import AuditResult, validate_result

    validate_result(name, AuditResult(rows, score=1.0), None)


# --- hash shuffle: exact duplicates and exact leakage ---------------------------------------------
def hash_job(
    out: str,
    index: int,
    rows_file: str,
    content: str,
    kind: str,
    buckets: int,
    audited_splits: list[str],
    want: list[str],
) -> dict:
    """Key every row of one range by content and write it to its hash bucket: the auditor's
    own duplicate key (`exact_duplicate`, audited rows) and leakage's key (every row)."""
    from ...auditor.duplicates import _image_keys, normalize_text

    task_threads(1)
    fault_point("hash", index, out)
    cols = [S.ROW_ID, S.SPLIT, content]
    t = pl.from_arrow(shards.read_parquet([rows_file], cols))
    base = Path(out).parent
    if "exact_duplicate" in want:
        a = t.filter(pl.col(S.SPLIT).is_in(audited_splits))
        if kind == "text":
            key = a.select(normalize_text(pl.col(content)).alias("k"))["k"]
            key = key.set(key == "", None) if len(key) else key
            h = key.hash(seed=11).to_numpy()
            empty = key.is_null().to_numpy()
        else:
            bkeys, pkeys = _image_keys(a[content].to_numpy())
            key = pl.Series([p or b for b, p in zip(bkeys, pkeys)], dtype=pl.Utf8)
            h = key.hash(seed=11).to_numpy()
            empty = key.is_null().to_numpy()
        bucket = np.where(empty, a[S.ROW_ID].to_numpy() % buckets, h % buckets)
        for b in np.unique(bucket):
            shards.write_table(
                a.filter(pl.Series(bucket == b)).to_arrow(),
                base / "dup" / f"b{int(b):05d}" / f"r{index:06d}.parquet",
            )
    if "leakage" in want:
        if kind == "text":
            from ...auditor.textnorm import text_hashes

            texts = t[content].cast(pl.Utf8)
            usable = (texts.fill_null("").str.strip_chars().str.len_bytes() > 0).to_numpy()
            keys = text_hashes(texts)
        else:
            from ...auditor.contamination import image_hashes

            keys, _, _, usable = image_hashes(t[content].to_numpy())
        keys = np.asarray(keys, dtype=np.uint64)
        bucket = (keys % np.uint64(buckets)).astype(np.int64)
        kf = pl.DataFrame(
            {S.ROW_ID: t[S.ROW_ID], "split": t[S.SPLIT], "key": keys, "bucket": bucket}
        ).filter(pl.Series(usable))
        for b in kf["bucket"].unique().to_list():
            shards.write_table(
                kf.filter(pl.col("bucket") == b).drop("bucket").to_arrow(),
                base / "leak" / f"b{int(b):05d}" / f"r{index:06d}.parquet",
            )
    meta = {"rows": len(t)}
    shards.write_meta(out, meta)
    return meta


def dup_bucket_job(
    out: str, files: list[str], meta_store: dict, params: dict, content: str
) -> dict:
    """One hash bucket of `exact_duplicate`: the auditor unchanged on a store over it."""
    from ...auditor.base import get_auditor
    from ...auditor.context import AuditContext

    task_threads(1)
    sql = (
        f"SELECT row_id, split, {S.quote(content)}, NULL::UBIGINT AS {S.CONTENT_HASH} "
        f"FROM read_parquet({shards.sql_list(files)})"
    )
    if content == S.IMAGE_PATH:
        meta_store = dict(meta_store)
    st = shards.ShardStore(sql, meta_store)
    try:
        ctx = AuditContext(st)
        res = get_auditor("exact_duplicate")(**params).audit(ctx)
    finally:
        st.close()
    shards.write_table(result_table(res.rows), out)
    meta = {
        "rows": len(res.rows),
        "issues": res.num_issues,
        "score_sum": float((res.rows["score"]).sum()),
        "info": res.info,
    }
    shards.write_meta(out, meta)
    return meta


def leak_bucket_job(out: str, files: list[str], examined: list[str]) -> dict:
    """One hash bucket of leakage's exact pairs: same key, different split."""
    task_threads(1)
    kf = pl.from_arrow(shards.read_parquet(files))
    pairs = (
        kf.filter(pl.col("split").is_in(examined))
        .join(kf, on="key", suffix="_p")
        .filter(pl.col("split") != pl.col("split_p"))
        .select(
            pl.col(S.ROW_ID).cast(pl.Int64),
            pl.col("row_id_p").cast(pl.Int64).alias("partner"),
            pl.col("split_p").cast(pl.Utf8).alias("partner_split"),
            pl.lit(1.0).alias("similarity"),
            pl.lit(True).alias("exact"),
        )
    )
    shards.write_table(pairs.to_arrow(), out)
    meta = {"pairs": len(pairs)}
    shards.write_meta(out, meta)
    return meta


# --- auditors unchanged on one range of rows ------------------------------------------------------
def shard_audit_job(
    out: str,
    index: int,
    name: str,
    params: dict,
    samples_sql: str,
    meta_store: dict,
    embeddings: list[dict],
    emb_files: dict,
    ctx_args: dict,
) -> dict:
    """An auditor unchanged on a `ShardStore` over one range of rows (null, contamination)."""
    from ...auditor.base import get_auditor, validate_result
    from ...auditor.context import AuditContext

    task_threads(1)
    fault_point(name, index, out)
    st = shards.ShardStore(samples_sql, meta_store, embeddings, emb_files)
    try:
        present = set(st.splits())
        splits = [s for s in ctx_args["splits"] if s in present]
        if not splits or (ctx_args.get("reference") and ctx_args["reference"] not in present):
            shards.write_meta(out, {"rows": 0, "skipped": True})
            return {"rows": 0, "skipped": True}
        args = dict(ctx_args, splits=splits)
        ctx = AuditContext(st, **args)
        aud = get_auditor(name)(**params)
        reason = aud.skip_reason(ctx)
        if reason:
            shards.write_meta(out, {"rows": 0, "skipped": True, "reason": reason})
            return {"rows": 0, "skipped": True}
        res = validate_result(name, aud.audit(ctx), None)
    finally:
        st.close()
    shards.write_table(result_table(res.rows), out)
    meta = {
        "rows": len(res.rows),
        "issues": res.num_issues,
        "score": float(res.score),
        "info": res.info,
    }
    shards.write_meta(out, meta)
    return meta
