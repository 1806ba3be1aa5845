"""`contamination`: planted benchmark items are found at each tier, with their evidence.

The judge tier talks to a real HTTP server on 127.0.0.1 speaking the OpenAI chat API, started
by the test, with fixed answers."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import polars as pl
import pytest
from helpers import make_store

from datacure.auditor.contamination import NgramIndex, evidence_score, image_hashes, nearest_hamming
from datacure.auditor.runner import run_audit
from datacure.auditor.textnorm import ngram_hashes, token_hashes

VOCAB = np.array([f"w{i}" for i in range(3000)])
D = 32


def _texts(rng, n, length):
    return [" ".join(rng.choice(VOCAB, length)) for _ in range(n)]


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _at_similarity(rng, target, cos):
    """A unit vector with cosine `cos` to the unit vector `target`."""
    noise = rng.normal(size=target.shape)
    noise -= (noise @ target) * target
    return (cos * target + np.sqrt(1 - cos**2) * _unit(noise)).astype(np.float32)


def _planted(seed=0, n_train=400, n_bench=100):
    """train + benchmark frames and vectors with planted contamination:
    train 0-4: a benchmark item verbatim inside a longer text (tier 1 only, vectors unrelated);
    train 5-9: unrelated text, vector at cosine 0.95 to an item (tier 2 only);
    train 10-14: text marked JUDGE-YES, vector at cosine 0.72 (judge band);
    train 15-19: text marked JUDGE-NO, vector at cosine 0.72 (judge band, judge says no)."""
    rng = np.random.default_rng(seed)
    bench_t = _texts(rng, n_bench, 30)
    train_t = _texts(rng, n_train, 40)
    bench_v = _unit(rng.normal(size=(n_bench, D))).astype(np.float32)
    train_v = _unit(rng.normal(size=(n_train, D))).astype(np.float32)
    items = rng.choice(n_bench, 20, replace=False)
    for i in range(5):
        train_t[i] = "intro words here " + bench_t[items[i]].upper() + ". and a tail"
    for i in range(5, 10):
        train_v[i] = _at_similarity(rng, bench_v[items[i]], 0.95)
    for i in range(10, 20):
        train_v[i] = _at_similarity(rng, bench_v[items[i]], 0.72)
        train_t[i] = ("JUDGE-YES " if i < 15 else "JUDGE-NO ") + train_t[i]
    return train_t, bench_t, train_v, bench_v, items


def _store_with_bench_split(db_path, **kw):
    train_t, bench_t, train_v, bench_v, items = _planted(**kw)
    frame = pl.DataFrame(
        {
            "text": train_t + bench_t,
            "label": [0, 1] * ((len(train_t) + len(bench_t)) // 2),
            "part": ["train"] * len(train_t) + ["bench"] * len(bench_t),
        }
    )
    st = make_store(db_path, frame, np.vstack([train_v, bench_v]), split_column="part", text="text")
    return st, items, len(train_t)


def _rows(st):
    got = st.fetchall(
        "SELECT row_id, is_issue, score, details FROM issues WHERE auditor = 'contamination' "
        "ORDER BY row_id"
    )
    return {r[0]: (r[1], r[2], json.loads(r[3])) for r in got}


def _info(st):
    return json.loads(st.scalar("SELECT info FROM issue_summary WHERE auditor = 'contamination'"))


class _Judge(BaseHTTPRequestHandler):
    """OpenAI chat completions with fixed answers: True when Text B is marked JUDGE-YES."""

    seen: ClassVar[list] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.seen.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "model": body["model"]}
        )
        prompt = body["messages"][-1]["content"]
        text_b = prompt.split("Text B:")[1]
        answer = "True" if "JUDGE-YES" in text_b else "False"
        out = {
            "id": "x",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                }
            ],
        }
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def judge_server():
    _Judge.seen = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_each_tier_found_with_evidence(db_path, judge_server, monkeypatch):
    monkeypatch.setenv("DC_TEST_JUDGE_KEY", "sk-test-secret-123")
    st, items, n_train = _store_with_bench_split(db_path)
    rep = run_audit(
        st,
        auditors=["contamination"],
        reference="bench",
        context_options={
            "judge_url": judge_server,
            "judge_model": "fixed-answers",
            "judge_key_env": "DC_TEST_JUDGE_KEY",
        },
    )
    assert rep.outcomes[0].status == "ok", rep.outcomes[0].reason
    rows = _rows(st)
    assert len(rows) == n_train  # the benchmark split itself is not examined
    bench_rid = n_train + items  # the bench split's row_ids follow train's
    for i in range(5):
        flag, score, det = rows[i]
        assert flag and det["tier"] == 1 and 1 in det["tiers"]
        assert det["ngram_overlap"] == 1.0 and score == 0.0
        assert det["benchmark_index"][0] == items[i]
        assert det["benchmark_row_ids"][0] == bench_rid[i]
    for i in range(5, 10):
        flag, score, det = rows[i]
        assert flag and det["tier"] == 2 and det["tiers"] == [2]
        assert abs(det["similarity"] - 0.95) < 1e-3 and det["ngram_overlap"] == 0.0
        assert det["benchmark_index"] == [items[i]] and 0 < score < 0.5
    for i in range(10, 15):
        flag, score, det = rows[i]
        assert flag and det["tier"] == 3 and det["judge"] is True, (i, det)
        assert det["benchmark_index"] == [items[i]] and score < 0.5
    for i in range(15, 20):
        flag, score, det = rows[i]
        assert not flag and det["judge"] is False and score > 0.5
    clean = [rows[r] for r in range(20, n_train)]
    assert sum(f for f, _, _ in clean) == 0
    assert all(0 <= s <= 1 for _, s, _ in rows.values())
    info = _info(st)
    assert info["flagged_by_tier"]["1"] == 5 and info["flagged_by_tier"]["2"] == 5
    assert info["flagged_by_tier"]["3"] == 5
    assert info["tier1"]["n"] == 13 and info["tier2"]["calibrated"]
    lo, hi = info["tier2"]["judge_band"]
    assert lo < 0.72 < hi
    t3 = info["tier3"]
    assert t3["calls"] >= 10 and t3["yes"] == 5 and t3["failed"] == 0
    # the key went to the server in the header, and nowhere into the store
    assert {s["auth"] for s in _Judge.seen} == {"Bearer sk-test-secret-123"}
    assert {s["path"] for s in _Judge.seen} == {"/v1/chat/completions"}
    for table in ("issues", "issue_summary", "runs"):
        assert (
            st.scalar(f"SELECT count(*) FROM {table} WHERE {table}::VARCHAR LIKE '%sk-test%'") == 0
        )


def test_unreachable_judge_keeps_other_tiers(db_path):
    st, _, _ = _store_with_bench_split(db_path)
    run_audit(
        st,
        auditors=["contamination"],
        reference="bench",
        context_options={"judge_url": "http://127.0.0.1:9", "judge_model": "m"},
    )
    info = _info(st)
    assert info["flagged_by_tier"]["1"] == 5 and info["flagged_by_tier"]["2"] == 5
    assert info["tier3"]["failed"] == info["tier3"]["calls"] > 0 and info["tier3"]["errors"]


def test_benchmark_file_with_vectors(db_path, tmp_path):
    """--benchmark FILE: its text column is found by name, vectors come from its list column,
    and every audited split is examined."""
    train_t, bench_t, train_v, bench_v, items = _planted(seed=1)
    st = make_store(
        db_path,
        pl.DataFrame({"text": train_t, "label": [0, 1] * (len(train_t) // 2)}),
        train_v,
        text="text",
    )
    bench = tmp_path / "bench.parquet"
    pl.DataFrame(
        {
            "id": np.arange(len(bench_t)),
            "text": bench_t,
            "answer": ["x"] * len(bench_t),
            "vector": bench_v.tolist(),
        }
    ).write_parquet(bench)
    rep = run_audit(st, auditors=["contamination"], context_options={"benchmark": str(bench)})
    assert rep.outcomes[0].status == "ok", rep.outcomes[0].reason
    rows = _rows(st)
    assert len(rows) == len(train_t)
    flagged = sorted(r for r, v in rows.items() if v[0])
    assert flagged == list(range(10))
    assert rows[0][2]["benchmark_row_ids"] is None
    assert rows[0][2]["benchmark_index"][0] == items[0]
    assert _info(st)["tier3"] == {"skipped": "no --judge-url"}


def test_needs_a_benchmark(db_path):
    st, _, _ = _store_with_bench_split(db_path)
    rep = run_audit(st, auditors=["contamination"])
    assert rep.outcomes[0].status == "skipped" and "benchmark" in rep.outcomes[0].reason


def test_ngram_index_streams_and_scores():
    rng = np.random.default_rng(2)
    bench = _texts(rng, 50, 20)
    idx = NgramIndex(bench)
    assert idx.n == 13 and (idx.item_ngrams == 8).all()
    half = " ".join(bench[3].split()[:16])  # 4 of the item's 8 13-grams
    rows = [half, "nothing here", bench[7] + " " + bench[8], ""]
    ov, it, sh = idx.match(rows)
    assert ov[0] == 0.5 and it[0] == 3 and sh[0] == 4
    assert ov[1] == 0 and it[1] == -1
    assert ov[2] == 1.0 and it[2] in (7, 8)
    assert ov[3] == 0
    # chunked matching gives the same answer as one pass
    ov1, it1, _ = idx.match(rows[:2])
    ov2, it2, _ = idx.match(rows[2:])
    assert np.array_equal(np.r_[ov1, ov2], ov) and np.array_equal(np.r_[it1, it2], it)
    # n-grams never cross a text boundary
    tok, doc = token_hashes(["a b c", "d e f"])
    g, gd = ngram_hashes(tok, doc, 3)
    assert len(g) == 2 and list(gd) == [0, 1]
    s = evidence_score(np.array([0.0, 0.2, 1.0, 0.6]), 0.2)
    assert np.allclose(s, [1.0, 0.5, 0.0, 0.25])


def test_images_perceptual_hash_tier(tmp_path, db_path):
    """A benchmark image resized and re-encoded as JPEG in train is found by pHash."""
    from PIL import Image

    from datacure.store import Store
    from datacure.store.ingest import ingest_frame

    rng = np.random.default_rng(0)
    paths, split = [], []
    bench_imgs = []
    for i in range(12):  # smooth random images: low-frequency structure, like photos
        small = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((64, 64), Image.Resampling.BICUBIC)
        bench_imgs.append(im)
        p = tmp_path / f"b{i}.png"
        im.save(p)
        paths.append(str(p))
        split.append("bench")
    for i in range(20):
        if i < 3:
            im = bench_imgs[i].resize((48, 48), Image.Resampling.BILINEAR)
        else:
            small = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
            im = Image.fromarray(small).resize((64, 64), Image.Resampling.BICUBIC)
        p = tmp_path / f"t{i}.jpg"
        im.save(p, quality=85)
        paths.append(str(p))
        split.append("train")
    st = Store(db_path)
    names = [p.rsplit("/", 1)[1] for p in paths]
    ingest_frame(
        st,
        pl.DataFrame({"file": names, "part": split}),
        split_column="part",
        image="file",
        image_root=tmp_path,
    )
    run_audit(st, auditors=["contamination"], reference="bench")
    rows = _rows(st)
    train_ids = sorted(rows)
    flagged = [r for r in train_ids if rows[r][0]]
    assert flagged == train_ids[:3], [rows[r][2]["phash_distance"] for r in train_ids]
    for k, r in enumerate(flagged):
        det = rows[r][2]
        assert det["tier"] == 1 and det["phash_distance"] <= 4 and det["benchmark_index"] == [k]
    _, ph, _, ok = image_hashes(paths[:2] + [str(tmp_path / "missing.png")])
    assert ok.tolist() == [True, True, False]
    dist, idx = nearest_hamming(ph[:2], ph[:2])
    assert dist.tolist() == [0, 0] and idx.tolist() == [0, 1]


def test_approximate_tier2_matches_exact(db_path, monkeypatch):
    """Past EXACT_PAIRS the nearest-item search goes through store.knn's adaptive index; the
    flags are the same as with exact search."""
    import datacure.auditor.contamination as C

    st, _, _ = _store_with_bench_split(db_path)
    run_audit(st, auditors=["contamination"], reference="bench")
    exact = {r: v[0] for r, v in _rows(st).items()}
    monkeypatch.setattr(C, "EXACT_PAIRS", 0)
    run_audit(st, auditors=["contamination"], reference="bench")
    got = st.fetchall(
        "SELECT row_id, is_issue FROM issues WHERE auditor = 'contamination' AND run_id = 2"
    )
    assert dict(got) == exact
    search = json.loads(st.scalar("SELECT info FROM issue_summary WHERE run_id = 2"))["tier2"][
        "search"
    ]
    assert search["index"].startswith(("ivf", "flat")) and search["recall_at_1"] >= 0.95


def test_benchmark_file_embedded_like_the_store(db_path, tmp_path):
    """A benchmark file without vectors is embedded by the encoder that made the store's
    embedding (here datacure's hashing embedder): an item with two words changed, which shares
    no 13-gram with it, is still found at tier 2."""
    from datacure.store.embed import embed

    rng = np.random.default_rng(4)
    bench_t = _texts(rng, 60, 30)
    train_t = _texts(rng, 200, 40)
    for i in range(5):
        train_t[i] = bench_t[i]
    for i in range(5, 10):
        words = bench_t[i].split()
        words[10], words[20] = "changed", "words"
        train_t[i] = " ".join(words)
    st = make_store(
        db_path, pl.DataFrame({"text": train_t, "label": [0, 1] * 100}), None, text="text"
    )
    embed(st, model="hash")
    path = tmp_path / "bench.jsonl"
    pl.DataFrame({"text": bench_t}).write_ndjson(path)
    rep = run_audit(st, auditors=["contamination"], context_options={"benchmark": str(path)})
    assert rep.outcomes[0].status == "ok", rep.outcomes[0].reason
    rows = _rows(st)
    assert sorted(r for r, v in rows.items() if v[0]) == list(range(10))
    assert all(rows[i][2]["tier"] == 1 for i in range(5))
    for i in range(5, 10):
        det = rows[i][2]
        assert det["tiers"] == [2] and det["ngram_overlap"] == 0.0
        assert det["benchmark_index"] == [i]
    assert any("embedded like" in n for n in _info(st)["notes"])
