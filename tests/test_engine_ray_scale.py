"""The Ray engine's "same answers" bar at 100k rows, on a 2-node local test cluster.

`ray.cluster_utils.Cluster` starts two nodes of one CPU each (each its own raylet and object
store, capped at 300 MB); the data are 100,000 seeded rows of 384-d low-rank vectors with text,
two splits and planted defects. Both engines audit the same shards; for every row auditor the
flagged rows agree with Jaccard >= 0.98, and the partitioned kNN graph reaches recall@10 >= 0.95
against exact search (as recorded in `knn_graphs`, and measured here on 1,000 rows).
"""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from test_engine_ray import ROW_AUDITORS, flags, jaccard, make_data, write_shards  # noqa: E402

from datacure.engine import get_engine  # noqa: E402
from datacure.store import Store  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 300 * 2**20},
    )
    try:
        cluster.add_node(num_cpus=1, object_store_memory=300 * 2**20)
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        try:
            yield cluster
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()


def test_100k_rows_on_two_nodes_give_the_local_answers(two_nodes, tmp_path):
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    frame, truth = make_data(100_000, seed=11, d=384, label_noise=0.1)
    src = write_shards(frame, tmp_path / "src", parts=10)
    del frame
    local = Store(tmp_path / "local.duckdb")
    get_engine("local").ingest(local, str(src), vector="vec", text="text")
    get_engine("local").audit(local, auditors=ROW_AUDITORS)
    dist = Store(tmp_path / "ray.duckdb")
    eng = get_engine("ray", address=two_nodes.address)
    eng.ingest(dist, str(src), vector="vec", text="text")
    rep = eng.audit(dist, auditors=ROW_AUDITORS)
    assert all(o.status == "ok" for o in rep.outcomes), rep.outcomes
    for name in ROW_AUDITORS:
        assert jaccard(flags(local, name), flags(dist, name)) >= 0.98, name
    kind, recall = dist.fetchone("SELECT index_kind, recall FROM knn_graphs")
    assert kind.startswith("partitioned") and recall >= 0.95
    # recall on 1,000 other rows, against exact search over all 100k
    import faiss

    key = dist.scalar("SELECT key FROM knn_graphs")
    rid, vec = dist.load_embeddings("user_vec")
    vec = vec / np.linalg.norm(vec, axis=1, keepdims=True)
    pick = np.random.default_rng(5).choice(len(rid), 1000, replace=False)
    _, ex = faiss.knn(vec[pick], vec, 11, metric=faiss.METRIC_INNER_PRODUCT)
    exact = np.array([r[r != p][:10] for r, p in zip(ex, pick)])
    got = dist.arrow(
        f"SELECT neighbors FROM knn_{key} WHERE row_id IN ({', '.join(map(str, rid[pick]))}) "
        "ORDER BY row_id"
    )
    order = np.argsort(rid[pick])
    nb = np.asarray(got.column("neighbors").to_pylist())
    hit = (nb[:, :, None] == rid[exact[order]][:, None, :]).any(axis=1).mean()
    assert hit >= 0.95
    # the planted defects are found by the Ray engine
    assert set(truth["near"]) <= flags(dist, "near_duplicate")
    assert set(truth["far"]) <= flags(dist, "outlier")
    assert flags(dist, "exact_duplicate") >= set(truth["dup"])
    assert flags(dist, "null") == set(truth["nulls"])
    noisy = set(truth["noisy"])
    assert len(noisy & flags(dist, "label")) >= 0.9 * len(noisy)
