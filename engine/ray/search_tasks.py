"""The search tasks of `audit --engine ray` (stage 6, see engine/ray/audit.py): one group of
partitions searched on a worker, and the rows it may have flagged as outliers wrongly searched
again. Same contract as engine/ray/audit_tasks.py: inputs from files, output written atomically,
then its meta; a task owns one CPU and the rows of its group with their halo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...store import schema as S
from .. import partition as P
from .. import plans, shards
from .. import scan as PS
from .audit_tasks import _Clock
from .cluster import fault_point, task_threads


# --- P3: the search of one group of partitions ----------------------------------------------------
def search_job(
    out: str,
    index: int,
    group_dir: str,
    items: list,
    model: dict,
    width: int,
    k: int,
    labels: dict | None,
    leak: dict | None,
    reduce: dict,
    join: bool = False,
) -> dict:
    """Search the rows of groups of partitions, each row probing its `width` nearest partitions
    (its own group's rows and the halo read from other groups' files), and write each group's
    graph rows of its audited rows with what the row auditors need: neighbours' splits and
    labels, pred_probs logits, leakage's partners in other splits. `items`: (group, its graph
    file) of each group this task searches: one, or several when each group's halo is most of
    the data, so the rows are read once for all of them. Each graph file gets its meta (what
    the driver reduces); with several, the task's own meta marks it done. `join`: the probes
    cannot reach the target recall, so the graph rows will be joined across tasks
    (engine/ray/join_tasks.py): the queries' normalised vectors and partitions are written
    beside each graph file (join_tasks.row_file)."""
    task_threads(1)
    fault_point("search", index, out)
    clk = _Clock()
    text = labels is not None and labels["text"] is not None
    groups = np.array([int(grp) for grp, _ in items])
    own_parts = np.flatnonzero(np.isin(model["group_of"], groups))
    need = np.flatnonzero((model["rank_min"][groups] < width).any(axis=0))
    g = _load_parts(group_dir, np.union1d(own_parts, need), model, own_parts, text)
    metas = []
    if g is not None:
        clk.lap("read")
        # the vectors once: the queries' raw rows kept for the logits, the rest scaled in place
        # (the halo can be every row: one copy of it, not three)
        g["raw_at"] = np.flatnonzero(g["own"] & g["audited"])
        g["raw"] = g["x"][g["raw_at"]]
        _scale(g, model)
        clk.lap("project")
    alone = len(items) == 1 and items[0][1] == out  # the task's output is its group's file
    for grp, graph in items:
        mine = np.flatnonzero(model["group_of"] == grp)
        q = np.flatnonzero(np.isin(g["part"], mine) & g["audited"]) if g is not None else []
        if not len(q):
            metas.append({"rows": 0})
        else:
            metas.append(_search_group(g, q, mine, width, k, leak, clk))
            metas[-1].update(_finish_group(g, q, graph, labels, leak, reduce, model, clk, join))
        if not alone:
            shards.write_meta(graph, metas[-1])
    if alone:
        meta = {**metas[0], **clk.out}
    else:
        meta = {"groups": len(items), "rows": sum(int(m["rows"]) for m in metas), **clk.out}
    shards.write_meta(out, meta)
    return meta


def _search_group(g, q, mine, width, k, leak, clk) -> dict:
    """The graph rows of one group's queries `q` (its partitions `mine`) among the loaded rows
    `g`, with leakage's candidates from the same scan: kept in `g` for `_finish_group`
    ("cols", "leak_rows"); returns the group's first meta."""
    rid, part, split, label = (g[c] for c in ("rid", "part", "split", "label"))
    qprobes = np.ascontiguousarray(g["probes"][q, :width])
    pos, sim, short, g["leak_rows"] = _neighbours(g, q, qprobes, k, leak)
    clk.lap("scan")
    g["cols"] = {
        S.ROW_ID: pa.array(rid[q]),
        "split": pa.array(split[q]),
        "label": pa.array(label[q]),
        **graph_columns(_graph_rows(pos, sim, rid, split, label)),
    }
    return {
        "rows": len(q),
        "partitions": int(len(mine)),
        "halo_rows": int(len(part) - np.isin(part, mine).sum()),
        "short_rows": int(short),
    }


def _finish_group(g, q, graph, labels, leak, reduce, model, clk, join) -> dict:
    """The rest of one group's graph file (label's views, leakage's partners), written; its
    meta's values for the driver's reductions. With `join`, its queries' vectors and
    partitions beside it (join_tasks.row_file)."""
    cols, meta = g.pop("cols"), {}
    if join:  # the graph rows are joined across tasks
        from .join_tasks import row_file, write_npy

        write_npy(row_file(graph, "x"), g["xn"][q].astype(np.float32))
        write_npy(row_file(graph, "part"), g["part"][q].astype(np.int32))
    if labels is not None:
        x_q = g["raw"][np.searchsorted(g["raw_at"], q)]
        _label_logits(g, q, x_q, labels, cols, meta, clk)
    if leak is not None:
        cols.update(_leak_columns(q, g["rid"], g["split"], g.pop("leak_rows"), leak["threshold"]))
    shards.write_table(pa.table(cols), graph, 65536)
    clk.lap("write")
    # per-row values the driver reduces (exact quantiles and medians)
    meta.update(_reduce_values(pa.table(cols), reduce, model["query_ids"]))
    return meta


def _label_logits(g: dict, q: np.ndarray, x_q, labels: dict, cols: dict, meta: dict, clk) -> None:
    """label's views of the queries `q` of a loaded group (raw vectors `x_q`), out of fold: the
    pred_probs model's logits (`logits`) and, with the text view, naive Bayes logits
    (`text_logits`), added to `cols`; the rows the driver fits temperatures on, with theirs,
    added to `meta`."""
    rid, label, fold = g["rid"], g["label"], g["fold"]
    logits = _logits(x_q, label[q], fold[q], labels)
    clk.lap("logits")
    cols["logits"] = shards.fixed_list(logits.astype(np.float32), pa.float32())
    fit = np.isin(rid[q], labels["fit_ids"])
    meta["fit_ids"] = rid[q][fit]
    meta["fit_logits"] = logits[fit].astype(np.float32)
    if labels["text"] is not None:  # label's text view: naive Bayes out of fold
        from .text_view import text_logits, tfidf_from_columns

        nb = labels["text"]
        own_pos = np.cumsum(g["own"]) - 1  # "tf" holds the own rows, in their order
        tf = tfidf_from_columns(g["tf"].take(own_pos[q]), len(nb["kept"]))
        tl = text_logits(tf, label[q], fold[q], nb).astype(np.float32)
        clk.lap("text_logits")
        cols["text_logits"] = shards.fixed_list(tl, pa.float32())
        meta["fit_text_logits"] = tl[fit]


def _leak_columns(q, rid, split, leak_rows: list, threshold: float) -> dict:
    """The leakage columns of the queries `q`: the best cross-split similarity, and the
    partners at or above `threshold` (ids, similarities, splits) as lists."""
    best = np.full(len(q), np.nan)
    qa, ida, sima, spa = [], [], [], []
    for qrows, lp, ls in leak_rows:
        at = np.searchsorted(q, qrows)
        s64 = ls.astype(np.float64)
        best[at] = np.where(lp[:, 0] >= 0, s64[:, 0], np.nan)
        r, c = np.nonzero((s64 >= threshold) & (lp >= 0))
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

    return {
        "leak_best": pa.array(best),
        "leak_ids": lists(ida, np.int64),
        "leak_sims": lists(sima, np.float64),
        "leak_splits": lists(spa, np.int16),
    }


GRAPH_COLUMNS = {  # a graph file's neighbour columns, in `_graph_rows`' order
    "neighbors": pa.int64(),
    "distances": pa.float32(),
    "nb_split": pa.int16(),
    "nb_label": pa.int32(),
}


def graph_columns(rows: tuple) -> dict:
    """The neighbour columns of a graph file from `_graph_rows`' arrays."""
    return {
        name: shards.fixed_list(np.asarray(v, dtype.to_pandas_dtype()), dtype)
        for (name, dtype), v in zip(GRAPH_COLUMNS.items(), rows)
    }


def with_graph_columns(t: pa.Table, rows: tuple) -> pa.Table:
    """A graph table with its neighbour columns replaced by `_graph_rows`' arrays `rows`."""
    for name, col in graph_columns(rows).items():
        t = t.set_column(t.column_names.index(name), name, col)
    return t


def _graph_rows(pos, sim, rid, split, label):
    """The graph columns of searched rows from their neighbours' positions and similarities:
    (neighbour ids, distances, neighbours' splits, neighbours' labels); -1 / inf where none."""
    valid = pos >= 0
    safe = np.maximum(pos, 0)
    neighbors = np.where(valid, rid[safe], -1)
    distances = np.where(valid, np.clip(1.0 - sim, 0.0, 2.0), np.inf).astype(np.float32)
    nb_split = np.where(valid, split[safe], -1).astype(np.int16)
    nb_label = np.where(valid, label[safe], -1).astype(np.int32)
    return neighbors, distances, nb_split, nb_label


TF_COLUMNS = ["tf_idx", "tf_val"]  # the TF-IDF rows of label's text view (engine/ray/text_view.py)


HALO_COLUMNS = [S.ROW_ID, "part", "split", "label", "audited", "x"]  # what a halo row needs


def _runs(wanted: np.ndarray, starts) -> list[tuple[int, int]]:
    """The row ranges of a file's wanted partitions (`wanted[i]`: partition i of the file),
    neighbours merged: one slice for a run of wanted partitions, not one per partition."""
    edges = np.diff(np.concatenate([[0], wanted.astype(np.int8), [0]]))
    first, stop = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(starts[i]), int(starts[j])) for i, j in zip(first, stop)]


def _load_parts(
    group_dir: str, parts: np.ndarray, model: dict, own_parts, text: bool = False
) -> dict | None:
    """The rows of the partitions `parts`, read from the files of the groups that hold them
    (memory-mapped Arrow; only the slices of those partitions are copied, a run of them at
    once): the own partitions' rows first, with every column, then the halo's with the columns
    a neighbour needs ("probes" and "fold" cover the own rows only). With `text`, "tf" holds the
    TF-IDF columns of the own rows, in their order (the halo's are never read: only the group's
    own rows are scored)."""
    group_of = model["group_of"]
    own_pieces, halo_pieces, tf_pieces = [], [], []
    own_set = np.asarray(own_parts)
    for g in np.unique(group_of[parts]):
        wanted = parts[group_of[parts] == g]
        for f in sorted(Path(group_dir, f"g{int(g):05d}").glob("s*.arrow")):
            t, info = shards.read_ipc(f)
            fparts = np.asarray(info["parts"])
            has_tf = "tf_idx" in t.column_names
            for mine in (True, False):
                take = np.isin(fparts, wanted) & (np.isin(fparts, own_set) == mine)
                for lo, hi in _runs(take, info["starts"]):
                    piece = t.slice(lo, hi - lo)
                    if not mine:
                        halo_pieces.append(piece.select(HALO_COLUMNS))
                        continue
                    if has_tf:
                        if text:
                            tf_pieces.append(piece.select(TF_COLUMNS))
                        piece = piece.drop_columns(TF_COLUMNS)
                    own_pieces.append(piece)
    own_t = pa.concat_tables(own_pieces) if own_pieces else None
    n_own = own_t.num_rows if own_t is not None else 0
    pieces = ([own_t.select(HALO_COLUMNS)] if own_t is not None else []) + halo_pieces
    tbl = pa.concat_tables(pieces) if pieces else None
    if tbl is None or not tbl.num_rows:
        return None
    part = tbl.column("part").to_numpy()
    return {
        "rid": tbl.column(S.ROW_ID).to_numpy().astype(np.int64),
        "part": part,
        "split": tbl.column("split").to_numpy().astype(np.int16),
        "label": tbl.column("label").to_numpy().astype(np.int32),
        "fold": own_t.column("fold").to_numpy() if n_own else np.zeros(0, np.int8),
        "audited": tbl.column("audited").to_numpy(zero_copy_only=False).astype(bool),
        "x": shards.list_column(tbl, "x"),
        "probes": shards.list_column(own_t, "probes", np.int32) if n_own else None,
        "own": np.arange(len(part)) < n_own,
        "tf": pa.concat_tables(tf_pieces) if tf_pieces else None,
    }


def _scale(g: dict, model: dict) -> None:
    """The loaded rows' vectors scaled in place ("x" becomes "xn", P.normalize without the
    copy: the halo can be every row), and their projection "z" (the scaled rows themselves
    when there is no basis, or when the projection loses neighbours that no affordable number
    of candidates brings back: `model["candidates"]` 0), with the candidates "cand" the scan
    keeps from it."""
    cand = int(model.get("candidates", P.CANDIDATES))
    basis = model["basis"] if cand else None
    x = np.asarray(g.pop("x"), dtype=np.float32)
    if not x.flags.writeable:
        x = x.copy()
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    x /= norms
    g["xn"] = x
    g["z"] = x if basis is None else P.project(x, basis)
    g["cand"] = cand or P.CANDIDATES


def _neighbours(g: dict, q, qprobes, k, leak: dict | None = None):
    """Graph rows of the queries `q` among the audited loaded rows of `g`, `g["cand"]`
    candidates per neighbour kept from the projection, and with `leak` leakage's candidates
    from the same products: the top `leak["k"]` of the queries of the examined splits among
    the rows of other splits (audited or not). Returns (positions, sims, rows searched exactly
    because their probed partitions held fewer than k candidates, leakage's [(queries,
    positions, sims)] or None)."""
    audited = g["audited"]
    # the scanned rows: the audited ones, or every row when leakage's candidates (rows of
    # other splits, audited or not) come from the same products
    wants = [PS.Want(k, cols=None if leak is None or audited.all() else audited)]
    examined = None
    if leak is not None:
        examined = np.isin(g["split"][q], leak["examined"])
        if examined.any():
            wants.append(PS.Want(leak["k"], examined, split=g["split"], exclude_self=False))
    key = "grouped_all" if leak is not None else "grouped_audited"
    if key not in g:  # a task scans the same rows for each of its groups: sorted once
        base = np.arange(len(audited)) if leak is not None else np.flatnonzero(audited)
        g[key] = PS.group_rows(g["part"], base)
    found = PS.scan_wants(g["xn"], g["z"], g[key], q, qprobes, wants, g["cand"])
    pos, sim = found[0]
    short = np.flatnonzero((pos < 0).any(axis=1))
    if len(short) and audited.sum() > 1:
        pos[short], sim[short] = P.exact_rows(g["xn"], q[short], np.flatnonzero(audited), k)
    leak_rows = None if leak is None else []
    if len(found) > 1:
        leak_rows.append((q[examined], *found[1]))
    return pos, sim, len(short), leak_rows


def refine_job(
    out: str,
    index: int,
    items: list,
    group_dir: str,
    model: dict,
    width: int,
    k: int,
    reduce: dict,
) -> dict:
    """Search rows again with `width` probes (the rows an approximate graph may have flagged as
    outliers: a missed neighbour only lengthens a row's distances) and write each group's graph
    with their rows merged in. `items`: (group, its graph file, the file to write, the rows) of
    each group this task refines: one, or several when every task would read nearly every row
    (the join regime), so the partitions they probe are read once. Each group's file gets its
    own meta (what the driver reduces); the task's marks it done."""
    task_threads(1)
    fault_point("refine", index, out)
    groups = [int(it[0]) for it in items]
    wanted = np.concatenate([np.asarray(it[3], np.int64) for it in items])
    own_parts = np.flatnonzero(np.isin(model["group_of"], groups))
    # the partitions these rows probe: memory follows the rows searched again, not the groups
    mine = _load_parts(group_dir, own_parts, model, own_parts)
    parts = np.zeros(0, np.int64)
    if mine is not None:
        parts = np.unique(mine["probes"][np.isin(mine["rid"], wanted), :width])
    del mine
    g = _load_parts(group_dir, parts, model, own_parts) if len(parts) else None
    if g is not None:
        _scale(g, model)
        g["order"] = np.argsort(g["rid"])
    refined = 0
    for _, graph, group_out, rows in items:
        t = pq.read_table(graph)
        take = np.isin(t.column(S.ROW_ID).to_numpy(), rows)
        if g is not None and take.any():
            t = _refine_rows(t, take, g, width, k)
        write_graph(t, group_out, reduce, model["query_ids"], refined=int(take.sum()))
        refined += int(take.sum())
    meta = {"groups": len(items), "refined": refined}
    shards.write_meta(out, meta)
    return meta


def _refine_rows(t: pa.Table, take: np.ndarray, g: dict, width: int, k: int) -> pa.Table:
    """A graph table with the rows `take` searched again among the loaded rows `g` and merged
    with the rows they had (a joined graph may hold neighbours the wider probes miss)."""
    rid_q = t.column(S.ROW_ID).to_numpy()[take]
    q = g["order"][np.searchsorted(g["rid"][g["order"]], rid_q)]
    qprobes = np.ascontiguousarray(g["probes"][q, :width])
    pos, sim, _, _ = _neighbours(g, q, qprobes, k)
    return merge_graph_rows(t, take, _graph_rows(pos, sim, g["rid"], g["split"], g["label"]), k)


def merge_graph_rows(t: pa.Table, take: np.ndarray, new: tuple, k: int) -> pa.Table:
    """A graph table with the rows `take` (a mask or positions) merged with `new`, their graph
    rows found again (`_graph_rows`' tuple): each keeps the k nearest of both."""
    cols = [
        shards.list_column(t, c, dt.to_pandas_dtype()).copy() for c, dt in GRAPH_COLUMNS.items()
    ]
    merged = _merge_rows(tuple(c[take] for c in cols), new, k)
    for c, m in zip(cols, merged):
        c[take] = m
    return with_graph_columns(t, tuple(cols))


def _merge_rows(old: tuple, new: tuple, k: int) -> tuple:
    """The k nearest of two sets of graph rows of the same queries, each (neighbour ids,
    distances, splits, labels) [q, k]: each neighbour once, nearest first."""
    cols = [np.hstack([a, b]) for a, b in zip(old, new)]
    ids, dist = cols[0], cols[1].astype(np.float64)
    by_id = np.argsort(ids, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(ids, by_id, 1)
    repeat = np.zeros(ids.shape, bool)
    repeat[:, 1:] = (sorted_ids[:, 1:] == sorted_ids[:, :-1]) & (sorted_ids[:, 1:] >= 0)
    dup = np.zeros(ids.shape, bool)
    np.put_along_axis(dup, by_id, repeat, 1)  # a repeat's distance equals the first's
    dist = np.where(dup | (ids < 0), np.inf, dist)
    top = np.argsort(dist, axis=1, kind="stable")[:, :k]
    out = [np.take_along_axis(c, top, 1) for c in cols]
    none = ~np.isfinite(np.take_along_axis(dist, top, 1))
    out[0], out[1] = np.where(none, -1, out[0]), np.where(none, np.inf, out[1])
    out[2], out[3] = np.where(none, -1, out[2]), np.where(none, -1, out[3])
    return tuple(o.astype(c.dtype) for o, c in zip(out, old))


def write_graph(t: pa.Table, out: str, reduce: dict, query_ids: np.ndarray, **extra) -> dict:
    """A graph file written again (a refine's, the join's), then its meta: the values the
    driver reduces from it, with `extra`. Returns the meta."""
    shards.write_table(t, out, 65536)
    meta = {**_reduce_values(t, reduce, query_ids), **extra}
    shards.write_meta(out, meta)
    return meta


def _reduce_values(t: pa.Table, reduce: dict, query_ids: np.ndarray) -> dict:
    """What the driver reduces from a group's graph rows: outlier mean distances, nearest
    same-split distances, the recall sample's rows (neighbours and similarities)."""
    rid = t.column(S.ROW_ID).to_numpy()
    neighbors = shards.list_column(t, "neighbors", np.int64)
    distances = shards.list_column(t, "distances")
    meta: dict = {"rows": len(rid)}
    for name, kk in reduce.items():
        if name in ("outlier", "list"):  # "list": a joined graph's rows (graph._redo_cut)
            meta[f"{name}_mean"] = plans.outlier_mean(neighbors[:, :kk], distances[:, :kk])
            meta[f"{name}_ids"] = rid
        elif name == "near_duplicate":
            meta["near_nn"] = _nearest_same_split(t, neighbors, distances, kk)
        elif name == "leakage":  # the within-split spacing leakage's near bar is set by
            meta["leak_nn"] = _nearest_same_split(t, neighbors, distances, kk)
            meta["leak_nn_split"] = t.column("split").to_numpy()
    mask = np.isin(rid, query_ids)
    meta["recall_ids"] = rid[mask]
    meta["recall_nb"] = neighbors[mask]
    meta["recall_sims"] = 1.0 - distances[mask]
    return meta


def _nearest_same_split(t: pa.Table, neighbors, distances, kk: int) -> np.ndarray:
    """Each graph row's distance to its nearest neighbour in its own split (NaN: none)."""
    nn, _, _ = plans.nearest_same_split(
        neighbors[:, :kk],
        distances[:, :kk],
        shards.list_column(t, "nb_split", np.int16)[:, :kk],
        t.column("split").to_numpy(),
    )
    return nn


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
