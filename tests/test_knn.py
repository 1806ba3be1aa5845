"""kNN graphs: exact neighbours, each approximate index kind against exact search on seeded data,
the fallback to exact where no index can reach the target, and the cache in the store."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest
from helpers import make_store

from datacure.store import knn as K
from datacure.store import knn_exact
from datacure.store.knn import (
    KnnGraph,
    build_knn,
    cached_knn,
    knn_search,
    normalize,
    recall_at_k,
    search,
)


def lowrank(n: int, d: int = 384, latent: int = 16, centers: int = 30, seed: int = 0):
    """Vectors with the structure of real embeddings: a low-dimensional latent with clusters,
    projected to d dimensions, plus isotropic noise."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, latent))
    z = c[rng.integers(0, centers, n)] + rng.normal(scale=0.5, size=(n, latent))
    proj = rng.normal(size=(latent, d)) / np.sqrt(latent)
    return (z @ proj + rng.normal(scale=0.1, size=(n, d))).astype(np.float32)


def isotropic(n: int, d: int = 384, seed: int = 0):
    """The worst case for any index: neighbours nearly equidistant in high dimension."""
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def brute(x, q=None, k=10):
    """Reference: cosine neighbours by numpy (self excluded when q is None)."""
    xn = normalize(x)
    qn = xn if q is None else normalize(q)
    sims = qn @ xn.T
    if q is None:
        np.fill_diagonal(sims, -np.inf)
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return idx, 1.0 - np.take_along_axis(sims, idx, axis=1)


def test_exact_graph_matches_brute_force():
    x = lowrank(400, d=32, seed=1)
    g = build_knn(x, 7)
    ref_idx, ref_dist = brute(x, k=7)
    assert g.index_kind == "flat" and g.recall == 1.0
    assert g.indices.shape == (400, 7) and g.indices.dtype == np.int64
    assert g.distances.dtype == np.float32
    assert not (g.indices == np.arange(400)[:, None]).any()  # never its own neighbour
    assert (np.diff(g.distances, axis=1) >= -1e-6).all()  # ascending
    np.testing.assert_allclose(g.distances, ref_dist, atol=1e-5)
    assert recall_at_k(g.indices, ref_idx) > 0.999


def test_exact_search_in_query_blocks_matches_numpy(monkeypatch):
    # blocks of 37 queries: several FAISS calls and a ragged last block, written into one result
    monkeypatch.setattr(knn_exact, "EXACT_QUERY_BLOCK", 37)
    base = normalize(lowrank(997, d=48, seed=3))
    queries = normalize(lowrank(203, d=48, seed=4))
    sims, idx = K._exact(base, queries, 12, use_gpu=False)
    full = queries @ base.T
    ref_idx = np.argsort(-full, axis=1, kind="stable")[:, :12]
    ref_sims = np.take_along_axis(full, ref_idx, axis=1)
    assert sims.dtype == np.float32 and idx.dtype == np.int64 and idx.shape == (203, 12)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    assert (np.diff(sims, axis=1) <= 1e-6).all()  # descending
    assert recall_at_k(idx, ref_idx) > 0.999
    # the self-graph through the blocked path: never its own neighbour, numpy's neighbours
    x = lowrank(300, d=32, seed=5)
    g = build_knn(x, 5)
    ref_idx, ref_dist = brute(x, k=5)
    assert not (g.indices == np.arange(300)[:, None]).any()
    np.testing.assert_allclose(g.distances, ref_dist, atol=1e-5)
    assert recall_at_k(g.indices, ref_idx) > 0.999


def test_self_is_excluded_among_exact_duplicates():
    x = np.repeat(lowrank(50, d=16, seed=2), 3, axis=0)  # every row three times
    g = build_knn(x, 4)
    assert not (g.indices == np.arange(len(x))[:, None]).any()
    # the two copies of each row are its nearest neighbours, at distance 0
    np.testing.assert_allclose(g.distances[:, :2], 0.0, atol=1e-5)
    assert (g.indices[:, :2] // 3 == np.arange(len(x))[:, None] // 3).all()


@pytest.mark.parametrize("d", [384, 32])  # 384: candidates from the 64-d projection; 32: full
def test_ivf_reaches_target_recall_on_structured_data(d):
    x = lowrank(4000, d=d, seed=3)
    g = build_knn(x, 10, index="ivf")
    assert g.index_kind.startswith("ivf(")
    assert ("dim=64" in g.index_kind) == (d == 384)
    ref_idx, _ = brute(x, k=10)
    true_recall = recall_at_k(g.indices, ref_idx)
    assert g.recall >= 0.95 and true_recall >= 0.95
    assert abs(true_recall - g.recall) < 0.03  # the sample estimate is honest
    assert not (g.indices == np.arange(len(x))[:, None]).any()
    assert (np.diff(g.distances, axis=1) >= -1e-6).all()
    # distances returned by the approximate path are exact cosine distances of those pairs
    xn = normalize(x)
    pair = 1.0 - np.einsum("nd,nkd->nk", xn, xn[g.indices])
    np.testing.assert_allclose(g.distances, pair, atol=1e-5)
    assert g.info["nprobe"] >= 1 and g.info["scanned"] < 0.5


def test_recall_counts_rows_tied_with_the_kth_neighbour():
    exact = np.array([[0.9, 0.8], [0.9, 0.8]], np.float32)
    ids = np.array([[5, 7], [5, 7]])
    # the second query's second neighbour is less similar than the k-th exact one: a miss
    found = np.array([[0.9, 0.8], [0.9, 0.79]], np.float32)
    assert knn_exact.recall_per_query(ids, found, exact).tolist() == [1.0, 0.5]
    # a place left empty (-1) is never a hit, whatever its similarity slot holds
    missing = knn_exact.recall_per_query(
        np.array([[5, -1]]), np.array([[0.9, 0.95]], np.float32), exact[:1]
    )
    assert missing.tolist() == [0.5]
    # a query with fewer exact neighbours than k is scored on those it has
    short = np.array([[0.9, -np.inf]], np.float32)
    assert knn_exact.recall_per_query(ids[:1], found[:1], short).tolist() == [1.0]


def test_ivf_on_tied_similarities_is_not_mistaken_for_a_poor_index():
    """Rows in groups of exact copies: any 10 of a row's 14 copies are its 10 nearest neighbours,
    so which ones a search returns is a tie-break. Compared by id with another search's picks,
    the IVF graph read as well under the target and the builder fell back to exact search."""
    x = np.repeat(lowrank(300, d=96, seed=8), 15, axis=0)
    g = build_knn(x, 10, index="ivf")
    assert g.index_kind.startswith("ivf(") and g.recall >= 0.95
    assert np.allclose(g.distances, 0.0, atol=1e-5)  # every neighbour is a copy: exact up to ties


def test_partition_width_counts_tied_rows_in_nearer_partitions():
    """The Ray engine's number of probes: a row tied with the k-th exact neighbour that lies in a
    nearer partition fills its place as well as the neighbour the exact search picked."""
    from datacure.engine import partition as P

    sims = np.array([[1.0, 0.9, 0.9, 0.5]], np.float32)  # k = 2: rows 11 and 12 tie
    ids = np.array([[10, 11, 12, 13]])
    tied = P.tied_neighbours(sims, ids, 2)
    assert tied.tolist() == [[True, True, True, False]]
    parts = np.array([[0, 3, 1, 1]])  # row 12 sits in the second-nearest partition
    probes = np.array([[0, 1, 2, 3]])
    sizes = np.array([1, 1, 1, 1, 100])  # a large fifth partition: cost never stops the sweep
    assert P.choose_width(probes, parts, sizes, 2, tied)[0] == 2
    assert P.choose_width(probes, parts, sizes, 2)[0] == 4  # the exact search's own picks only


def test_local_join_finds_the_neighbours_the_probes_missed():
    """300 tight clusters of 20 rows in 40 partitions: a cluster's rows land in several
    partitions, so 2 probes miss part of each row's neighbours; NN-descent's local join
    (rows sharing a neighbour are candidates for each other) finds them. Invariants: no row
    is its own neighbour, no neighbour twice, similarities exact and sorted, and every place
    at least as near as before (the join only adds candidates)."""
    from datacure.engine import partition as P

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(300, 32))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, 20, axis=0) + rng.normal(scale=0.12, size=(6000, 32))
    x = P.normalize(x.astype(np.float32))
    cent = P.train_centroids(x[rng.choice(6000, 1200, replace=False)], 40, 0)
    part = P.assign(x, cent)
    rows = np.arange(6000)
    ex_sims, ex_ids = P.exact_topk(x, x, 11)
    ex_ids, ex_sims = P.drop_self(ex_ids, ex_sims, rows, 10)
    pos, sim = P.scan(x, x, part, rows, rows, P.probes(x, cent, 2), 10)
    before = P.recall(pos, sim, ex_sims)
    jpos, jsim, info = P.local_join(x, rows, pos, sim)
    after = P.recall(jpos, jsim, ex_sims)
    assert before < 0.85 and after > 0.95
    assert 2 <= info["rounds"] <= P.JOIN_ROUNDS and info["changed"][0] > 0.1
    assert (jpos != rows[:, None]).all() and (jpos >= 0).all()
    assert all(len(set(r)) == 10 for r in jpos.tolist())
    assert np.allclose(jsim, np.einsum("qd,qkd->qk", x, x[jpos]), atol=1e-5)
    assert (np.diff(jsim, axis=1) <= 1e-6).all() and (jsim >= sim - 1e-6).all()
    # one probe: every neighbour and its neighbours sit in the row's own partition, so the
    # join has nothing to add and stops after one round
    pos1, sim1 = P.scan(x, x, part, rows, rows, P.probes(x, cent, 1), 10)
    _, same, info1 = P.local_join(x, rows, pos1, sim1)
    assert (info1["rounds"], info1["changed"]) == (1, [0.0]) and np.array_equal(same, sim1)


def test_best_keeps_the_top_k_with_ties_to_the_earlier_column():
    """P._best (a partition, then a sort of k) returns what a stable sort of every candidate
    returns, on rows full of ties and of -inf (no candidate), for k below and above the
    candidates' count."""
    from datacure.engine import partition as P

    rng = np.random.default_rng(0)
    for _ in range(300):
        m, c, k = (int(v) for v in rng.integers(1, [40, 60, 15]))
        sims = rng.choice([-np.inf, 0.1, 0.2, 0.5, 0.9], size=(m, c)).astype(np.float32)
        cand = rng.integers(-1, 1000, size=(m, c))
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        want = np.take_along_axis(sims, top, 1)
        s, ids = P._best(sims, cand, k)
        assert np.array_equal(s, want)
        assert np.array_equal(
            ids, np.where(np.isfinite(want), np.take_along_axis(cand, top, 1), -1)
        )


def test_openblas_core_is_read_from_the_cpu_flags(tmp_path):
    def core(flags: str):
        f = tmp_path / "cpuinfo"
        f.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        return knn_exact.openblas_core(str(f))

    avx512 = "fpu sse2 avx avx2 fma avx512f avx512cd avx512bw avx512dq avx512vl avx512_fp16"
    assert core(avx512) == "SKYLAKEX"
    assert core("fpu sse2 avx avx2 fma") == "HASWELL"
    assert core("fpu sse2 avx") is None
    assert knn_exact.openblas_core(str(tmp_path / "absent")) is None


def test_load_faiss_names_the_kernel_and_leaves_the_environment_as_it_was():
    """FAISS's bundled OpenBLAS picks the kernel the CPU supports (its own detection falls back
    to generic SSE3 code on CPUs newer than it); a value the user set wins; the variable is
    not left behind for other libraries or child processes."""
    import subprocess
    import sys

    code = (
        "import os; from datacure.store.knn_exact import load_faiss, openblas_core; "
        "load_faiss(); from threadpoolctl import threadpool_info; "
        "arch = [i.get('architecture') for i in threadpool_info() "
        "if 'faiss' in i['filepath'] and i['internal_api'] == 'openblas']; "
        "print(openblas_core(), os.environ.get('OPENBLAS_CORETYPE'), arch)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split(maxsplit=2)
    core, left, arch = out
    assert left == "None"
    if core != "None" and arch != "[]":  # FAISS's wheel bundles its own OpenBLAS here
        assert arch.strip().lower() == f"['{core.lower()}']"
    env["OPENBLAS_CORETYPE"] = "Haswell"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split(maxsplit=2)
    assert out[1] == "Haswell"


def test_auto_switches_to_ivf_above_the_threshold_and_stays_exact_below():
    x = lowrank(3000, d=64, seed=4)
    assert build_knn(x, 10, exact_threshold=5000).index_kind == "flat"
    g = build_knn(x, 10, exact_threshold=1000)
    assert g.index_kind.startswith("ivf(") and g.recall >= 0.95


def test_hnsw_reaches_target_recall():
    x = lowrank(3000, d=64, seed=5)
    g = build_knn(x, 10, index="hnsw")
    assert g.index_kind.startswith("hnsw(")
    ref_idx, _ = brute(x, k=10)
    assert recall_at_k(g.indices, ref_idx) >= 0.95 and g.recall >= 0.95


def test_isotropic_data_falls_back_to_exact():
    """No index reaches recall 0.95 cheaply on isotropic 384-d data: the builder must notice on
    its sample and return the exact graph rather than a poor one."""
    x = isotropic(3000, seed=6)
    g = build_knn(x, 10, index="ivf")
    assert g.index_kind == "flat" and g.recall == 1.0
    assert "fallback" in g.info and g.info["recall_by_nprobe"]
    ref_idx, _ = brute(x, k=10)
    assert recall_at_k(g.indices, ref_idx) > 0.999


def test_search_queries_against_a_base():
    base = lowrank(4000, d=96, seed=7)
    queries = lowrank(4000, d=96, seed=7)[:500] + np.float32(0.01)
    ref_idx, ref_dist = brute(base, queries, k=5)
    idx, dist = search(base, queries, 5)  # small: exact
    assert recall_at_k(idx, ref_idx) > 0.999
    np.testing.assert_allclose(dist, ref_dist, atol=1e-5)
    g = knn_search(base, queries, 5, index="ivf")
    assert g.index_kind.startswith("ivf(") and recall_at_k(g.indices, ref_idx) >= 0.95


def test_bad_inputs():
    from datacure.store.errors import InputError

    with pytest.raises(InputError, match="at least 2 rows"):
        build_knn(np.ones((1, 4), np.float32))
    with pytest.raises(InputError, match="unknown kNN index"):
        build_knn(lowrank(20, d=8), 3, index="annoy")
    g = build_knn(lowrank(5, d=8), 10)  # k larger than the data: every other row
    assert g.k == 4


def test_threads_follow_the_environment(monkeypatch):
    monkeypatch.setenv("DATACURE_THREADS", "1")
    assert K.num_threads() == 1
    monkeypatch.delenv("DATACURE_THREADS")
    assert 1 <= K.num_threads() <= (os.cpu_count() or 1)


@pytest.mark.skipif(not K.gpu_available(), reason="no GPU visible to FAISS here")
def test_gpu_gives_the_cpu_results():  # pragma: no cover - runs where faiss-gpu sees a GPU
    x = lowrank(5000, d=64, seed=8)
    cpu = build_knn(x, 10, use_gpu=False)
    gpu = build_knn(x, 10, use_gpu=True)
    assert gpu.index_kind == "flat+gpu"
    assert recall_at_k(gpu.indices, cpu.indices) > 0.999
    np.testing.assert_allclose(gpu.distances, cpu.distances, atol=1e-4)


# --- cache -------------------------------------------------------------------------------------
def _store(db_path, x):
    frame = pl.DataFrame({"label": np.arange(len(x)) % 3})
    return make_store(db_path, frame, vectors=x, key="e")


def test_cache_is_reused_and_a_larger_k_serves_a_smaller(db_path, monkeypatch):
    x = lowrank(600, d=24, seed=9)
    st = _store(db_path, x)
    rid, vec = st.load_embeddings("e")
    calls = []
    real = K.build_knn
    monkeypatch.setattr(K, "build_knn", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))

    g10 = cached_knn(st, "e", rid, vec, 10)
    assert calls == [10]
    row = st.fetchone("SELECT k, metric, num_rows, index_kind, recall FROM knn_graphs")
    assert row == (10, "cosine", 600, "flat", 1.0)
    g10b = cached_knn(st, "e", rid, vec, 10)
    g5 = cached_knn(st, "e", rid, vec, 5)
    assert calls == [10]  # both served from the store
    assert g10b.info.get("cached") and g5.k == 5
    np.testing.assert_array_equal(g10b.indices, g10.indices)
    np.testing.assert_array_equal(g5.indices, g10.indices[:, :5])
    np.testing.assert_allclose(g5.distances, g10.distances[:, :5])

    cached_knn(st, "e", rid, vec, 15)  # more neighbours than cached: rebuilt and replaced
    assert calls == [10, 15]
    assert st.scalar("SELECT k FROM knn_graphs") == 15
    assert st.scalar("SELECT count(*) FROM knn_graphs") == 1

    sub = rid[::2]  # another scope (a subset of rows): its own graph, positions into `sub`
    gs = cached_knn(st, "e", sub, vec[::2], 5)
    assert calls == [10, 15, 5] and gs.indices.max() < len(sub)
    assert st.scalar("SELECT count(*) FROM knn_graphs") == 2

    changed = vec.copy()
    changed[:, 0] += 1.0  # the embedding was recomputed: the cached graph is stale
    cached_knn(st, "e", rid, changed, 10)
    assert calls == [10, 15, 5, 10]


def test_cache_records_the_approximate_index(db_path):
    x = lowrank(3000, d=64, seed=10)
    st = _store(db_path, x)
    rid, vec = st.load_embeddings("e")
    g = cached_knn(st, "e", rid, vec, 10, exact_threshold=1000)
    kind, recall = st.fetchone("SELECT index_kind, recall FROM knn_graphs")
    assert kind == g.index_kind and kind.startswith("ivf(") and recall >= 0.95
    again = cached_knn(st, "e", rid, vec, 10, exact_threshold=1000)
    assert again.index_kind == kind and again.recall == pytest.approx(recall)
    np.testing.assert_array_equal(again.indices, g.indices)
    assert isinstance(again, KnnGraph)


@pytest.mark.parametrize(
    "at, probed, want",
    [
        ((1, 2), True, 2),  # the neighbours lead the projection: the fewest candidates do
        ((8, 9), True, 4),  # ranked 8th and 9th: 4 x (k + 1) - 1 = 11 others are kept
        (None, True, 0),  # further down than 4 keep: score in the full dimension
        ((3, 4), False, 2),  # in partitions the probes do not reach: nothing to keep them for
    ],
)
def test_choose_candidates_keeps_as_many_as_the_neighbours_need(at, probed, want):
    from datacure.engine import partition as P

    k, m, size = 2, 3, P.candidate_list_size(2)
    own = np.array([1000, 1001, 1002])
    z_ids = np.tile(np.arange(2000, 2000 + size), (m, 1))
    z_ids[:, 0] = own  # a row is nearest to itself in the projection too
    ex_ids = np.tile([7, 8], (m, 1))
    if at is not None:
        z_ids[:, list(at)] = ex_ids
    z_parts = np.zeros_like(z_ids)
    ex_part = np.zeros_like(ex_ids) if probed else np.ones_like(ex_ids)
    tied = np.ones(ex_ids.shape, bool)
    probes = np.zeros((m, 1), np.int32)
    c, info = P.choose_candidates(z_ids, z_parts, probes, own, ex_ids, ex_part, tied, k)
    assert c == want, info
    assert info["coverage"] == (1.0 if probed else 0.0)
    if want:  # the steps before the chosen one fell short of the coverage
        assert all(
            r < info["coverage"] - P.CANDIDATE_LOSS
            for s, r in info["candidate_recall"].items()
            if s < want
        )
