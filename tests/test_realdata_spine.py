"""The spine on real data: NoisyAG-News (../shared/data/noisy_ag_news) ingested, 1,000 rows embedded
with the bundled MiniLM, a kNN graph cached, and everything checked through SQL.

The ground truth: `label` is the annotators' majority vote, `gt` the original AG News label;
`label != gt` on 19.75% of train rows (real human label noise)."""

from __future__ import annotations

import pytest
from helpers import shared_data

pytestmark = pytest.mark.realdata


def test_noisy_ag_news_ingest_embed_knn_and_sql(tmp_path):
    folder = shared_data("noisy_ag_news")
    from datacure.store import Store
    from datacure.store.embed import embed
    from datacure.store.knn import cached_knn
    from datacure.store.query import run_sql

    db = tmp_path / "ag.duckdb"
    with Store(db) as st:
        try:
            from datacure.store.ingest import ingest
        except ImportError:  # pragma: no cover - the minimal core only
            pytest.skip("store.ingest.ingest is not available")
        ingest(st, folder / "train_10k.csv", split="train", label="label", text="text")
        ingest(st, folder / "test.csv", split="test", label="label", text="text")
        assert st.split_counts() == {"test": 7600, "train": 10000}

        rep = embed(st, limit=1000)  # the 1,000 lowest row ids: train rows
        assert rep.embedded == 1000 and rep.dim == 384 and rep.model == "all-MiniLM-L6-v2"
        rid, vec = st.load_embeddings(rep.key)
        graph = cached_knn(st, rep.key, rid, vec, 10)
        assert graph.index_kind == "flat"
    table = f"embeddings_{rep.key}"

    def sql(query: str):
        return run_sql(str(db), query).rows()

    # ingest kept every source column, with the real noise rate
    [(noise,)] = sql("SELECT avg((label::INT != gt)::INT) FROM samples WHERE split = 'train'")
    assert noise == pytest.approx(0.1975, abs=1e-4)
    # the subset: 1,000 train rows, unit-length 384-d vectors
    [(n, n_train, worst)] = sql(
        f"SELECT count(*), count(*) FILTER (s.split = 'train'), "
        f"max(abs(array_inner_product(e.vector, e.vector) - 1)) "
        f"FROM {table} e JOIN samples s USING (row_id)"
    )
    assert (n, n_train) == (1000, 1000) and worst < 1e-4
    # the neighbours mean something: a row's nearest neighbour shares its true topic far more
    # often than chance (0.25)
    [(knn_key, k, kind)] = sql("SELECT key, k, index_kind FROM knn_graphs")
    assert (k, kind) == (10, "flat")
    [(agree,)] = sql(
        f"SELECT avg((a.gt = b.gt)::INT) FROM knn_{knn_key} g "
        "JOIN samples a USING (row_id) JOIN samples b ON b.row_id = g.neighbors[1]"
    )
    assert agree > 0.7
    # and real label noise shows: rows whose given label is wrong agree less with their
    # neighbours' given labels than rows whose label is right
    rows = sql(
        f"SELECT (a.label::INT != a.gt) AS noisy, avg((a.label = b.label)::INT) "
        f"FROM knn_{knn_key} k JOIN samples a USING (row_id), "
        "unnest(k.neighbors) AS u(nb) JOIN samples b ON b.row_id = u.nb GROUP BY 1"
    )
    vote = dict(rows)
    assert vote[True] < vote[False] - 0.2
