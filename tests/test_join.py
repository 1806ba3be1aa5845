"""The Ray engine's join across tasks (engine/ray/join_tasks.py) against its one-process
reference (engine/partition.py `local_join`), without a cluster: the stages run in turn here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from datacure.engine import partition as P
from datacure.engine import shards
from datacure.engine.ray import join_tasks, search_tasks


class _Run:
    """What join_graph asks of the driver: stages run in turn, in this process."""

    def __init__(self, work):
        self.work = work

    def stage(self, name, fn, jobs, **kw):
        return [shards.read_meta(out) or fn(out, *args) for out, args in jobs]

    def state(self, name, compute):
        path = self.work / f"state-{name}"
        if shards.read_meta(path) is None:
            shards.write_meta(path, compute())
        return shards.read_meta(path)


def _clusters(n_clusters=150, size=20, d=24, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, d))
    x = np.repeat(centres / np.linalg.norm(centres, axis=1, keepdims=True), size, axis=0)
    return P.normalize((x + rng.normal(scale=0.12, size=x.shape)).astype(np.float32))


def _write_blocks(tmp_path, x, pos, sim, rid, block_of, part):
    """Each block's graph file (as the search writes it) and its rows' vectors and partitions
    beside it; (the graph files, those beside them)."""
    files, x_files = [], []
    for b in range(int(block_of.max()) + 1):
        rows = np.flatnonzero(block_of == b)
        valid = pos[rows] >= 0
        cols = {
            "row_id": pa.array(rid[rows]),
            "split": pa.array(np.zeros(len(rows), np.int16)),
            "label": pa.array((rid[rows] % 3).astype(np.int32)),
            "neighbors": shards.fixed_list(np.where(valid, rid[pos[rows]], -1), pa.int64()),
            "distances": shards.fixed_list((1.0 - sim[rows]).astype(np.float32), pa.float32()),
            "nb_split": shards.fixed_list(np.zeros(pos[rows].shape, np.int16), pa.int16()),
            "nb_label": shards.fixed_list(np.zeros(pos[rows].shape, np.int32), pa.int32()),
        }
        f = str(tmp_path / "graph" / f"g{b:05d}.parquet")
        shards.write_table(pa.table(cols), f)
        join_tasks.write_npy(join_tasks.row_file(f, "x"), x[rows])
        join_tasks.write_npy(join_tasks.row_file(f, "part"), part[rows])
        files.append(f)
        x_files += [join_tasks.row_file(f, name) for name in join_tasks.SEARCHED]
    return files, x_files


def test_the_join_across_blocks_finds_what_the_one_process_join_finds(tmp_path, monkeypatch):
    """3,000 rows of 150 tight clusters, searched with 2 of 20 partitions each, their graph rows
    spread over 4 blocks at random under shuffled row ids: the rounds across blocks give every
    row the same neighbours (by id) and similarities as local_join over all rows at once, in
    the same number of rounds, and the joined files carry the neighbours' labels."""
    monkeypatch.setattr(join_tasks, "put", lambda obj: obj)  # no cluster: the object itself
    x = _clusters()
    n, k = len(x), 10
    rng = np.random.default_rng(1)
    cent = P.train_centroids(x[rng.choice(n, 800, replace=False)], 20, 0)
    rows = np.arange(n)
    part = P.assign(x, cent)
    pos, sim = P.scan(x, x, part, rows, rows, P.probes(x, cent, 2), k)
    ref_pos, ref_sim, ref = P.local_join(x, rows, pos, sim)
    assert ref["rounds"] >= 2 and P.recall(ref_pos, ref_sim, _exact(x, k)) > 0.95
    rid = rng.permutation(n).astype(np.int64) * 7 + 100  # ids unlike positions
    block_of = rng.integers(0, 4, n)
    files, x_files = _write_blocks(tmp_path, x, pos, sim, rid, block_of, part)
    query_ids = rid[:200]
    exact = _exact(x[:200], k, x)
    run = _Run(tmp_path)
    outs, metas, info = join_tasks.join_graph(run, files, k, {}, query_ids, exact)
    assert info["join_rounds"] == ref["rounds"] and info["join_changed"] == ref["changed"]
    assert info["join_scored"] == ref["scored"]  # the same candidates skipped
    assert info["join_recall"][-1] == pytest.approx(P.recall(ref_pos[:200], ref_sim[:200], exact))
    got = {}
    for f in outs:
        t = shards.read_parquet([f])
        nb = shards.list_column(t, "neighbors", np.int64)
        ds = shards.list_column(t, "distances")
        lab = shards.list_column(t, "nb_label", np.int32)
        assert (lab == np.where(nb >= 0, (nb % 3), -1)).all()  # the neighbours' own labels
        for r, a, d in zip(t.column("row_id").to_numpy(), nb, ds):
            got[int(r)] = (a, d)
    assert len(got) == n
    for i in rng.choice(n, 300, replace=False):
        a, d = got[int(rid[i])]
        assert set(a.tolist()) == set(rid[ref_pos[i]].tolist())
        assert np.allclose(1.0 - d, ref_sim[i], atol=1e-5)
    # the scratch is gone but the rows' tables (the refine's), and a rerun reads the joined
    # files back instead of joining again
    kept = sorted(p.name for p in (tmp_path / "join").iterdir())
    assert kept == sorted(f"{name}.npy" for name in join_tasks.ROW_TABLES)
    assert not [f for f in files + x_files if Path(f).exists()]
    again = join_tasks.join_graph(run, files, k, {}, query_ids, exact)
    assert again[0] == outs and again[2]["join_rounds"] == info["join_rounds"]

    # the outlier refine: some rows of each block, their 5 nearest neighbours taken away,
    # searched again from the tables (probing every partition: exactly)
    items = []
    for b, (f, start) in enumerate(zip(outs, join_tasks.block_starts(outs))):
        t = shards.read_parquet([f])
        took = np.arange(t.num_rows) % 25 == 0
        nb = shards.list_column(t, "neighbors", np.int64).copy()
        ds = shards.list_column(t, "distances").copy()
        nb[took, :5], ds[took, :5] = -1, np.inf
        rows = (nb, ds, *(shards.list_column(t, c, np.int32) for c in ("nb_split", "nb_label")))
        lost = str(tmp_path / f"lost{b}.parquet")
        shards.write_table(search_tasks.with_graph_columns(t, rows), lost, 65536)
        ids = t.column("row_id").to_numpy()[took]
        items.append((b, lost, str(tmp_path / f"refined{b}.parquet"), ids, start))
    model = {"basis": None, "centroids": cent, "query_ids": query_ids}
    meta = join_tasks.refine_job(
        str(tmp_path / "refine"), 0, items, str(tmp_path / "join"), model, 20, k, {}
    )
    assert meta["refined"] == sum(len(it[3]) for it in items) > 50
    exact_all = _exact(x, k)
    at = np.argsort(rid)
    for _, joined, refined, ids, _ in items:
        before, after = shards.read_parquet([joined]), shards.read_parquet([refined])
        assert after.column("row_id").equals(before.column("row_id"))
        took = np.isin(after.column("row_id").to_numpy(), ids)
        pos_of = at[np.searchsorted(rid[at], after.column("row_id").to_numpy())]
        d_after = shards.list_column(after, "distances")
        assert np.allclose(1.0 - d_after[took], exact_all[pos_of[took]], atol=1e-5)
        for c in ("neighbors", "distances"):  # the other rows as the join left them
            a, b = shards.list_column(after, c), shards.list_column(before, c)
            assert np.array_equal(a[~took], b[~took])
        assert (shards.list_column(after, "nb_label", np.int32)[took] >= 0).all()
    join_tasks.remove_tables(run)
    assert not (tmp_path / "join").exists()


def _exact(q, k, base=None):
    base = q if base is None else base
    sims, ids = P.exact_topk(q, base, k + 1)
    ids, sims = P.drop_self(ids, sims, np.arange(len(q)), k)
    return sims


def test_the_incremental_join_gives_the_lists_of_the_full_join_for_fewer_products():
    """After the first round the join scores only candidates the round before did not (a row
    reached through a neighbour the list held then, listed by it then): the lists and
    similarities of every round are those of scoring all, and each later round scores fewer.
    1,500 clusters of 20 rows, seeded with 2 of 200 partitions: five rounds."""
    x = _clusters(n_clusters=1500, seed=4)
    n, k = len(x), 10
    rng = np.random.default_rng(5)
    cent = P.train_centroids(x[rng.choice(n, 8000, replace=False)], 200, 0)
    rows = np.arange(n)
    pos, sim = P.scan(x, x, P.assign(x, cent), rows, rows, P.probes(x, cent, 2), k)
    by_round = {True: [], False: []}
    for inc in (True, False):
        out = P.local_join(
            x,
            rows,
            pos,
            sim,
            stop=0.0,
            incremental=inc,
            each_round=lambda p, s, inc=inc: by_round[inc].append((p.copy(), s.copy())),
        )
        by_round[inc].append(out[2])
    inc_info, full_info = by_round[True].pop(), by_round[False].pop()
    assert inc_info["changed"] == full_info["changed"] and inc_info["rounds"] == 5
    for (pa_, sa), (pb, sb) in zip(by_round[True], by_round[False]):
        assert np.array_equal(pa_, pb) and np.array_equal(sa, sb)
    assert inc_info["scored"][0] == full_info["scored"][0]  # the first round scores all
    for a, b in zip(inc_info["scored"][1:], full_info["scored"][1:]):
        assert a < 0.9 * b
    assert inc_info["scored"][-1] < 0.6 * full_info["scored"][-1]


def test_reverse_lists_keep_the_k_most_similar_that_list_each_row():
    """Against np.lexsort by (row listed, similarity descending), ties in the edges' order:
    similarities rounded to two decimals (many ties), zeros of both signs, rows listed more
    than k times and rows listed by none."""
    rng = np.random.default_rng(7)
    n, k, m = 400, 10, 6000
    src, dst = rng.integers(0, n, m), rng.integers(0, n // 2, m)  # half the rows unlisted
    sim = np.round(rng.uniform(-1, 1, m), 2).astype(np.float32)
    sim[:6] = [-0.0, 0.0, -0.0, 0.0, 0.0, -0.0]
    order = np.lexsort((-sim, dst))
    s, d = src[order], dst[order]
    _, start, count = np.unique(d, return_index=True, return_counts=True)
    rank = np.arange(m) - np.repeat(start, count)
    want = np.full((n, k), -1)
    want[d[rank < k], rank[rank < k]] = s[rank < k]
    got = P.reverse_lists(src, dst, sim, n, k)
    assert np.array_equal(got, want) and (got[n // 2 :] == -1).all()


def test_an_interrupted_join_resumes_from_the_rounds_it_finished(tmp_path, monkeypatch):
    """A task that fails in round 2 stops the join; a rerun keeps the blocks' finished tasks
    (their metas), runs the rest and ends with the graph an uninterrupted join makes."""
    monkeypatch.setattr(join_tasks, "put", lambda obj: obj)
    x = _clusters(seed=2)
    n, k = len(x), 10
    rng = np.random.default_rng(3)
    cent = P.train_centroids(x[rng.choice(n, 800, replace=False)], 20, 0)
    rows = np.arange(n)
    part = P.assign(x, cent)
    pos, sim = P.scan(x, x, part, rows, rows, P.probes(x, cent, 2), k)
    rid = rows.astype(np.int64)
    block_of = rng.integers(0, 3, n)
    exact = _exact(x[:100], k, x)
    runs = {}
    for name in ("whole", "cut"):
        d = tmp_path / name
        files, _ = _write_blocks(d, x, pos, sim, rid, block_of, part)
        run = _Run(d)
        if name == "cut":
            real = join_tasks.round_job

            def failing(out, block, *args, real=real):
                if block == 1 and args[2] == 2:
                    raise RuntimeError("worker lost")
                return real(out, block, *args)

            monkeypatch.setattr(join_tasks, "round_job", failing)
            with pytest.raises(RuntimeError, match="worker lost"):
                join_tasks.join_graph(run, files, k, {}, rid[:100], exact)
            monkeypatch.setattr(join_tasks, "round_job", real)
            assert shards.read_meta(d / "join" / "b00000" / "round1") is not None
            assert shards.read_meta(d / "join" / "b00001" / "round2") is None
        runs[name] = join_tasks.join_graph(run, files, k, {}, rid[:100], exact)
    assert runs["cut"][2] == runs["whole"][2]
    for a, b in zip(runs["cut"][0], runs["whole"][0]):
        ta, tb = shards.read_parquet([a]), shards.read_parquet([b])
        assert ta.column("neighbors").equals(tb.column("neighbors"))


def test_join_width_takes_the_fewest_probes_that_seed_the_join():
    curve = {"1": 0.4, "2": 0.5, "4": 0.6, "8": 0.7, "16": 0.8}
    assert P.join_width(curve, 16) == 8  # the first to reach JOIN_SEED (0.65)
    assert P.join_width(curve, 6) == 6  # never past the widest the search affords
    assert P.join_width({"1": 0.9, "2": 0.95}, 2) == 2  # one probe: a closed world, not joined
    assert P.join_width({"1": 0.2, "2": 0.3}, 2) == 2  # none reaches it: the widest


def test_refined_rows_keep_the_joined_neighbours_the_wider_probes_miss():
    """refine_job's merge: the k nearest of the old and new rows, each neighbour once (with its
    split and label), -1 / inf where fewer than k."""
    from datacure.engine.ray.search_tasks import _merge_rows

    old = (
        np.array([[5, 7, -1]]),
        np.array([[0.1, 0.4, np.inf]], np.float32),
        np.array([[0, 1, -1]], np.int16),
        np.array([[2, 3, -1]], np.int32),
    )
    new = (
        np.array([[7, 9, 8]]),
        np.array([[0.4, 0.2, 0.9]], np.float32),
        np.array([[1, 0, 0]], np.int16),
        np.array([[3, 4, 5]], np.int32),
    )
    ids, dist, split, label = _merge_rows(old, new, 3)
    assert ids.tolist() == [[5, 9, 7]] and np.allclose(dist, [[0.1, 0.2, 0.4]])
    assert split.tolist() == [[0, 0, 1]] and label.tolist() == [[2, 4, 3]]
    assert dist.dtype == np.float32 and split.dtype == np.int16
    few = _merge_rows(tuple(a[:, :1] for a in old), tuple(a[:, :1] for a in old), 2)
    assert few[0].tolist() == [[5, -1]] and np.isinf(few[1][0, 1]) and few[3].tolist() == [[2, -1]]


def test_choose_redo_takes_the_far_rows_the_wider_probes_would_mend():
    """After a join, rows whose probes found none of their own neighbours list strangers: the
    longest mean distances and recall near 0. `choose_redo` cuts at the distance that takes
    those (the fewest whose predicted recall clears the target), not the near rows, and takes
    none where the graph already clears it or where wider probes would not help."""
    rng = np.random.default_rng(3)
    m = 500
    orphan = rng.random(m) < 0.07
    recall_q = np.where(orphan, 0.0, rng.uniform(0.97, 1.0, m))
    score = np.where(orphan, 0.55, 0.3) + rng.normal(0, 0.03, m)  # mean neighbour distance
    cut, info = P.choose_redo(score, recall_q, np.full(m, 0.95))
    chosen = score >= cut
    assert not (chosen & ~orphan).any() and chosen.sum() >= 0.5 * orphan.sum()  # strangers' rows
    assert info["redo_share"] == chosen.mean() and info["redo_predicted"] >= P.TARGET_RECALL
    # negative controls: a graph that clears the target; wider probes that find no more
    assert P.choose_redo(score, np.full(m, 0.99), np.full(m, 0.2))[0] is None
    assert P.choose_redo(score, recall_q, recall_q)[0] is None
    # short of the target even with the most allowed: the fewest that gain all they can
    few = np.where(orphan, 0.3, recall_q)
    cut, info = P.choose_redo(score, recall_q, few)
    assert (score >= cut).sum() == orphan.sum() and info["redo_predicted"] < P.TARGET_RECALL
    # the cap: rows far from their neighbours everywhere are searched again at most this share
    cut, info = P.choose_redo(score, np.full(m, 0.5), np.full(m, 1.0))
    assert info["redo_share"] == P.REDO_SHARE and (score >= cut).mean() == P.REDO_SHARE


def test_per_query_coverage_is_choose_widths_curve_per_query():
    rng = np.random.default_rng(4)
    qprobes = np.argsort(rng.random((200, 30)), axis=1)[:, :12]
    nb_part = rng.integers(0, 30, size=(200, 20))
    tied = np.zeros((200, 20), bool)
    tied[:, :10] = True
    _, curve = P.choose_width(qprobes, nb_part, np.ones(30), 10, tied, target=1.01)
    for w in (1, 5, 10):  # (choose_width stops past a third of the rows)
        per_q = P.per_query_coverage(qprobes, nb_part, tied, 10, w)
        assert per_q.shape == (200,)
        assert round(float(per_q.mean()), 4) == curve["coverage_by_probes"][w]
