"""The join of `audit --engine ray`'s kNN graph across tasks (stage 6b, see engine/ray/graph.py):
NN-descent's local join (engine/partition.py `local_join`, its reference in one process) over the
graph rows of every group, for data whose clusters outnumber the partitions.

The rows are numbered in join order (the groups' graph rows one after another), so group g's
rows are one block `[offsets[g], offsets[g + 1])`. What a task looks up by row number (the
vectors, the lists of the round before, the reverse lists) is one `.npy` table over all rows,
memory-mapped: each task writes its block's rows in place, and reads any row's without a copy
of the rest (the pages it touches come through the page cache, shared by the tasks of a
machine). Each round is two stages of one task per block:

- **reverse**: the edges src -> dst the previous round wrote (each block's, sorted by the block
  of dst, with its cuts) are read for the block's own rows: their reverse lists, the k rows
  most similar to each that list it (a shuffle by dst, `reverse_lists`);
- **join**: each of the block's rows takes as candidates its neighbours, their neighbours and
  the rows that list them, scores them by exact inner products of the vectors and keeps the
  best k; the new lists and their edges are written for the next round.

An `index` stage before the rounds turns the search's graph rows (row ids) into row numbers; a
`graph` stage after them writes each group's graph file again with the joined neighbours. The
rows' tables (`ROW_TABLES`: vectors, partitions, ids, splits, labels) stay until the graph is
whole: the rows it may flag as outliers wrongly are searched again among them (`refine_job`,
3x the probes, touching only the probed partitions' rows). Same
contract as the other tasks: a task's outputs written whole (its rows of a table, or its
files, atomically), then its meta; a rerun task writes its rows again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ...store import schema as S
from .. import partition as P
from .. import shards
from .audit_tasks import _Clock
from .cluster import fault_point, put, task_threads

ROW_TABLES = ("x", "part", "rid", "split", "label")  # what a row number looks up (the refine's)
SEARCHED = ("x", "part")  # what the search writes beside a graph file for the join (`row_file`)


def row_file(graph: str, name: str) -> str:
    """The search's `name` array of a graph file's rows, in its order (`SEARCHED`)."""
    return f"{graph}.{name}.npy"


def block_file(jdir: str, block: int, name: str) -> str:
    return str(Path(jdir, f"b{block:05d}", f"{name}.npy"))


def table_file(jdir: str, name: str) -> str:
    return str(Path(jdir, f"{name}.npy"))


def write_npy(path: str, arr: np.ndarray) -> None:
    """An array as a .npy file, atomically (the next stage memory-maps it)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp.npy")
    np.save(tmp, np.ascontiguousarray(arr))
    tmp.replace(p)


def make_table(jdir: str, name: str, shape: tuple, dtype) -> None:
    """A table over all rows (the driver, before the stage whose tasks fill it; kept when it
    exists: a resumed stage's finished tasks have written their rows)."""
    path = Path(table_file(jdir, name))
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape).flush()
    tmp.replace(path)


def write_rows(jdir: str, name: str, start: int, arr: np.ndarray) -> None:
    """A task's rows of a table, written in place from row `start` (a byte range of the file:
    other tasks write theirs beside it)."""
    path = table_file(jdir, name)
    m = np.load(path, mmap_mode="r")
    offset, dtype, row = m.offset, m.dtype, m.dtype.itemsize * int(np.prod(m.shape[1:]))
    del m
    with open(path, "r+b") as f:
        f.seek(offset + start * row)
        f.write(np.ascontiguousarray(arr, dtype=dtype).tobytes())


def table(jdir: str, name: str) -> np.ndarray:
    return np.load(table_file(jdir, name), mmap_mode="r")


def _edge_names(r: int) -> tuple[str, ...]:
    return tuple(f"e{r}_{part}" for part in ("src", "dst", "sim", "cuts"))


def _write_edges(jdir: str, block: int, r: int, offsets, nb: np.ndarray, sim: np.ndarray):
    """The edges src -> dst of a block's lists, sorted by dst, with the cuts of dst's blocks
    (the reverse stage of block h reads `[cuts[h], cuts[h + 1])` of every block's)."""
    k = nb.shape[1]
    src = np.repeat(np.arange(len(nb), dtype=np.int64) + offsets[block], k)
    dst, s = nb.ravel(), sim.ravel()
    keep = dst >= 0
    src, dst, s = src[keep], dst[keep], s[keep]
    order = np.argsort(dst, kind="stable")
    dst = dst[order]
    cuts = np.searchsorted(dst, offsets)
    for name, arr in zip(_edge_names(r), (src[order], dst, s[order].astype(np.float32), cuts)):
        write_npy(block_file(jdir, block, name), arr)


def index_job(out: str, block: int, graph: str, jdir: str, offsets, id_map) -> dict:
    """Round 0: a group's graph rows (row ids) as row numbers, with its rows' ids, splits,
    labels and vectors, written at its block's rows of the tables; its lists' edges."""
    task_threads(1)
    fault_point("join index", block, out)
    offsets = np.asarray(offsets, np.int64)
    t = pq.read_table(graph, columns=[S.ROW_ID, "split", "label", "neighbors", "distances"])
    nb_rid = shards.list_column(t, "neighbors", np.int64)
    sorted_ids, number = id_map["sorted"], id_map["number"]
    at = np.clip(np.searchsorted(sorted_ids, nb_rid), 0, len(sorted_ids) - 1)
    nb = np.where((nb_rid >= 0) & (sorted_ids[at] == nb_rid), number[at], -1)
    sim = np.where(nb >= 0, 1.0 - shards.list_column(t, "distances"), -np.inf).astype(np.float32)
    for name, arr in (
        ("rid", t.column(S.ROW_ID).to_numpy()),
        ("split", t.column("split").to_numpy()),
        ("label", t.column("label").to_numpy()),
        *((name, np.load(row_file(graph, name))) for name in SEARCHED),
        ("nb0", nb),
    ):
        write_rows(jdir, name, int(offsets[block]), arr)
    _write_edges(jdir, block, 0, offsets, nb, sim)
    meta = {"rows": t.num_rows}
    shards.write_meta(out, meta)
    return meta


def reverse_job(out: str, block: int, jdir: str, offsets, r: int, k: int) -> dict:
    """Round r's reverse lists of the block's rows, from every block's edges of round r - 1."""
    task_threads(1)
    fault_point("join reverse", block, out)
    offsets = np.asarray(offsets, np.int64)
    src, dst, sim = [], [], []
    for b in range(len(offsets) - 1):
        cuts = np.load(block_file(jdir, b, f"e{r - 1}_cuts"))
        lo, hi = int(cuts[block]), int(cuts[block + 1])
        if hi > lo:
            src.append(np.load(block_file(jdir, b, f"e{r - 1}_src"), mmap_mode="r")[lo:hi])
            dst.append(np.load(block_file(jdir, b, f"e{r - 1}_dst"), mmap_mode="r")[lo:hi])
            sim.append(np.load(block_file(jdir, b, f"e{r - 1}_sim"), mmap_mode="r")[lo:hi])
    rows = int(offsets[block + 1] - offsets[block])
    if src:
        dst_local = np.concatenate(dst) - offsets[block]
        rev = P.reverse_lists(np.concatenate(src), dst_local, np.concatenate(sim), rows, k)
    else:
        rev = np.full((rows, k), -1, P.id_dtype(int(offsets[-1])))
    lo = int(offsets[block])
    write_rows(jdir, f"rev{r}", lo, rev)
    if r > 1:  # which of its places are new: the join's incremental search (`round_job`)
        before = np.array(table(jdir, f"rev{r - 1}")[lo : lo + rows])
        write_rows(jdir, f"rnew{r}", lo, P.new_places(rev, before))
    meta = {"rows": rows}
    shards.write_meta(out, meta)
    return meta


def round_job(out: str, block: int, jdir: str, offsets, r: int, sample: np.ndarray) -> dict:
    """Round r of the join for the block's rows: candidates from the lists of round r - 1 and
    the reverse lists of round r, scored exactly; the new lists and their edges written.
    Meta: the places changed, and the similarities of the recall sample's rows."""
    task_threads(1)
    fault_point("join", block, out)
    clk = _Clock()
    offsets = np.asarray(offsets, np.int64)
    x, lists, rev = table(jdir, "x"), table(jdir, f"nb{r - 1}"), table(jdir, f"rev{r}")
    # after the first round, which places are new (the lists' and the reverse lists'): only
    # the candidates the round before did not score are scored (`P.join_candidates`' `seen`)
    fresh = (table(jdir, f"fnew{r - 1}"), table(jdir, f"rnew{r}")) if r > 1 else None
    lo_row, hi_row = int(offsets[block]), int(offsets[block + 1])
    nb = np.array(lists[lo_row:hi_row])
    rows, k = nb.shape
    me = np.arange(lo_row, hi_row, dtype=np.int64)
    new_nb, new_sim = np.empty_like(nb), np.empty((rows, k), np.float32)
    new_fresh = np.empty((rows, k), bool)
    scored = 0
    clk.lap("read")
    for lo in range(0, rows, P.JOIN_BLOCK):
        b = slice(lo, min(rows, lo + P.JOIN_BLOCK))
        new_nb[b], new_sim[b], new_fresh[b], n_scored = P.join_block(
            x, lists, rev, nb[b], me[b], fresh, clk.lap
        )
        scored += n_scored
        clk.lap("score")
    moved = int(new_fresh.sum())
    write_rows(jdir, f"nb{r}", lo_row, new_nb)
    write_rows(jdir, f"fnew{r}", lo_row, new_fresh)
    write_npy(block_file(jdir, block, f"sim{r}"), new_sim)
    _write_edges(jdir, block, r, offsets, new_nb, new_sim)
    clk.lap("write")
    mine = np.flatnonzero((sample >= lo_row) & (sample < hi_row))
    meta = {
        "rows": rows,
        "moved": moved,
        "scored": scored,
        "sample_at": mine,
        "sample_sims": new_sim[sample[mine] - lo_row],
        **clk.out,
    }
    shards.write_meta(out, meta)
    return meta


def graph_job(out: str, block: int, graph: str, jdir: str, offsets, r: int, reduce, query_ids):
    """A group's graph file again, with the joined lists of round r (neighbours' ids, splits
    and labels from the tables); with what the driver reduces from it."""
    from .search_tasks import _graph_rows, with_graph_columns, write_graph

    task_threads(1)
    fault_point("join graph", block, out)
    lo, hi = int(offsets[block]), int(offsets[block + 1])
    nb = np.array(table(jdir, f"nb{r}")[lo:hi])
    sim = np.load(block_file(jdir, block, f"sim{r}"))
    rows = _graph_rows(nb, sim, table(jdir, "rid"), table(jdir, "split"), table(jdir, "label"))
    return write_graph(with_graph_columns(pq.read_table(graph), rows), out, reduce, query_ids)


# --- the driver -----------------------------------------------------------------------------------
def join_graph(run, files: list[str], k: int, reduce: dict, query_ids, exact):
    """Stage 6b (run by the driver, engine/ray/graph.py): join the graph rows of the group
    files `files` (their rows' vectors and partitions beside them: `row_file`) across tasks;
    rounds while more than P.JOIN_STOP of the places change, at most P.JOIN_ROUNDS. Returns
    (the joined files, their tasks' metas, info: rounds, changed share and the sample's
    recall@k after each round). The rows' tables stay for `refine_job` (`remove_tables`)."""
    jdir = str(Path(run.work) / "join")
    outs = [str(Path(f).with_name(Path(f).stem + ".joined.parquet")) for f in files]
    done = [shards.read_meta(o) for o in outs]
    state = shards.read_meta(Path(run.work) / "state-join")
    if outs and state is not None and all(m is not None for m in done):
        return outs, done, state  # a resumed run: the joined files are all written
    rows = [int(pq.read_metadata(f).num_rows) for f in files]
    offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    blocks = range(len(files))

    def rounds() -> dict:
        ids = [pq.read_table(f, columns=[S.ROW_ID]).column(0).to_numpy() for f in files]
        ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        order = np.argsort(ids, kind="stable")
        id_map = {"sorted": ids[order], "number": order.astype(np.int64)}
        at = np.clip(np.searchsorted(id_map["sorted"], query_ids), 0, max(len(ids) - 1, 0))
        sample = np.where(id_map["sorted"][at] == query_ids, order[at], -1)
        map_ref = put(id_map)
        n = int(offsets[-1])
        d = np.load(row_file(files[0], "x"), mmap_mode="r").shape[1] if files else 0
        for name, shape, dtype in (
            ("rid", (n,), np.int64),
            ("split", (n,), np.int16),
            ("label", (n,), np.int32),
            ("x", (n, d), np.float32),
            ("part", (n,), np.int32),
            ("nb0", (n, k), P.id_dtype(n)),
        ):
            make_table(jdir, name, shape, dtype)
        jobs = [(f"{jdir}/b{b:05d}/index", (b, files[b], jdir, offsets, map_ref)) for b in blocks]
        run.stage("join: index", index_job, jobs)
        changed, recall, scored = [], [], []
        for r in range(1, P.JOIN_ROUNDS + 1):
            _round_tables(jdir, r, n, k)
            jobs = [(f"{jdir}/b{b:05d}/rev{r}", (b, jdir, offsets, r, k)) for b in blocks]
            run.stage(f"join: reverse lists {r}", reverse_job, jobs)
            jobs = [(f"{jdir}/b{b:05d}/round{r}", (b, jdir, offsets, r, sample)) for b in blocks]
            metas = run.stage(f"join: round {r}", round_job, jobs)
            _drop_round_inputs(jdir, blocks, r)
            changed.append(round(sum(int(m["moved"]) for m in metas) / max(offsets[-1] * k, 1), 4))
            scored.append(sum(int(m.get("scored", 0)) for m in metas))
            sims = np.full((len(query_ids), k), -np.inf, np.float32)
            for m in metas:
                sims[np.asarray(m["sample_at"], np.int64)] = m["sample_sims"]
            found = np.where(np.isfinite(sims), 0, -1)
            recall.append(round(P.recall(found, sims, exact), 4))
            if changed[-1] <= P.JOIN_STOP:
                break
        return {
            "join_rounds": len(changed),
            "join_changed": changed,
            "join_recall": recall,
            "join_scored": scored,
        }

    info = run.state("join", rounds)
    r = int(info["join_rounds"])
    jobs = [
        (outs[b], (b, files[b], jdir, offsets, r, reduce, np.asarray(query_ids))) for b in blocks
    ]
    metas = run.stage("join: graph rows", graph_job, jobs)
    for f in files:
        Path(f).unlink(missing_ok=True)  # the joined copy replaces it
        for name in SEARCHED:
            Path(row_file(f, name)).unlink(missing_ok=True)
    # the rows' tables stay for `refine_job` (the caller removes them: `remove_tables`)
    for entry in Path(jdir).iterdir() if Path(jdir).exists() else ():
        if entry.is_dir():
            shards.remove_tree(entry)
        elif entry.name not in {f"{name}.npy" for name in ROW_TABLES}:
            entry.unlink()
    return outs, metas, info


def _round_tables(jdir: str, r: int, n: int, k: int) -> None:
    """The tables round r's stages fill: the reverse lists, the new lists, and which places of
    the new lists (`fnew`) and, after the first round, of the reverse lists (`rnew`) are new."""
    for name, dtype in (("rev", P.id_dtype(n)), ("nb", P.id_dtype(n)), ("fnew", bool)):
        make_table(jdir, f"{name}{r}", (n, k), dtype)
    if r > 1:
        make_table(jdir, f"rnew{r}", (n, k), bool)


def _drop_round_inputs(jdir: str, blocks, r: int) -> None:
    """What only round r read (a resumed run starts after it). The reverse lists stay a round
    longer: the next round's new places are counted against them."""
    for name in (f"nb{r - 1}", f"rev{r - 1}", f"fnew{r - 1}", f"rnew{r}"):
        Path(table_file(jdir, name)).unlink(missing_ok=True)
    for b in blocks:
        for name in (f"sim{r - 1}", *_edge_names(r - 1)):
            Path(block_file(jdir, b, name)).unlink(missing_ok=True)


def block_starts(files: list[str]) -> list[int]:
    """The first row number of each joined graph file's block (its rows, in order)."""
    return np.cumsum([0] + [int(pq.read_metadata(f).num_rows) for f in files])[:-1].tolist()


def remove_tables(run) -> None:
    shards.remove_tree(Path(run.work) / "join")


# --- the outlier rows searched again ---------------------------------------------------------
def refine_job(
    out: str, index: int, items: list, jdir: str, model: dict, width: int, k: int, reduce
):
    """The rows a joined graph may have flagged as outliers wrongly (a missed neighbour only
    lengthens a row's distances) searched again with `width` probes, as
    search_tasks.refine_job does, but among the join's memory-mapped tables (the vectors and
    partitions of every graph row): no partition file is read again, and only the probed
    partitions' rows are touched. Merged with the rows they had; each group's graph file
    written again. `items`: (group, its graph file, the file to write, the rows' ids, its
    block's first row number). Each file gets its meta (what the driver reduces); the task's
    marks it done."""
    from .search_tasks import _graph_rows, merge_graph_rows, write_graph

    task_threads(1)
    fault_point("refine", index, out)
    x, part, rid, split, label = (table(jdir, name) for name in ROW_TABLES)
    takes, ats = [], []
    for _, graph, _, ids, start in items:  # the ids only: a file is read whole when written
        file_ids = pq.read_table(graph, columns=[S.ROW_ID]).column(0).to_numpy()
        take = np.flatnonzero(np.isin(file_ids, ids))
        at = int(start) + take  # the graph file's rows are its block's, in order
        if not np.array_equal(rid[at], file_ids[take]):
            raise RuntimeError(f"{graph}: its rows are not the join's block at {start}")
        takes.append(take)
        ats.append(at)
    at = np.concatenate(ats) if ats else np.zeros(0, np.int64)
    if len(at):  # every item's rows in one scan: the partitions they probe are read once
        xq = np.ascontiguousarray(x[at])
        zq = xq if model["basis"] is None else P.project(xq, model["basis"])
        probes = P.probes(zq, model["centroids"], width)
        # the full vectors score the candidates directly (no projection of the other rows)
        pos, sim = P.scan(x, x, part, np.arange(len(part)), at, probes, k)
        rows = _graph_rows(pos, sim, rid, split, label)
    refined, lo = 0, 0
    for (_, graph, group_out, _, _), take in zip(items, takes):
        t = pq.read_table(graph)
        if len(take):
            mine = slice(lo, lo + len(take))
            t = merge_graph_rows(t, take, tuple(r[mine] for r in rows), k)
            lo += len(take)
        write_graph(t, group_out, reduce, model["query_ids"], refined=len(take))
        refined += len(take)
    meta = {"groups": len(items), "refined": refined}
    shards.write_meta(out, meta)
    return meta
