"""`contamination`: planted benchmark items are found at each tier, with their evidence.

The judge tier talks to a real HTTP server on 127.0.0.1 speaking the OpenAI chat API, started
by the test, with fixed answers."""

from __future__ import annotations

import json
import threading
import zlib
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
    """`info` of the latest contamination run."""
    return json.loads(
        st.scalar(
            "SELECT info FROM issue_summary WHERE auditor = 'contamination' "
            "ORDER BY run_id DESC LIMIT 1"
        )
    )


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
    t3 = info["tier3"]
    lo, hi = t3["band"]
    assert lo < 0.72 < hi
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
    mt = idx.match(rows)
    ov, it, sh = mt.overlap, mt.best, mt.shared
    assert ov[0] == 0.5 and it[0] == 3 and sh[0] == 4
    assert ov[1] == 0 and it[1] == -1
    assert ov[2] == 1.0 and it[2] == 7  # ties go to the lower item; both are candidates
    assert set(mt.pair_item[mt.pair_row == 2]) == {7, 8}
    assert ov[3] == 0
    # chunked matching gives the same answer as one pass
    m1, m2 = idx.match(rows[:2]), idx.match(rows[2:])
    assert np.array_equal(np.r_[m1.overlap, m2.overlap], ov)
    assert np.array_equal(np.r_[m1.best, m2.best], it)
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
    import datacure.auditor.contamination.similarity as C

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


# --- issue 19: look-alike items, long items, attribution, size, languages, judge, cache -------
def _lookalike(seed=0, n_bench=60, n_train=600, sibling_cos=0.985, reph_cos=0.9, dim=128):
    """A templated benchmark: every item's vector is within `sibling_cos` of a shared template
    vector (items look alike: the benchmark's own nearest-other-item statistic sits at its
    cap); train rows 0-9 rephrase items 0-9 (their words reordered, vectors at cosine
    `reph_cos`), the rest are unrelated."""
    rng = np.random.default_rng(seed)
    template = _unit(rng.normal(size=dim))
    bench_v = np.stack([_at_similarity(rng, template, sibling_cos) for _ in range(n_bench)])
    train_v = _unit(rng.normal(size=(n_train, dim))).astype(np.float32)
    bench_t = [f"how many q{i} are left " + " ".join(_texts(rng, 1, 8)) for i in range(n_bench)]
    train_t = _texts(rng, n_train, 30)
    for i in range(10):
        train_v[i] = _at_similarity(rng, bench_v[i], reph_cos)
        train_t[i] = "rephrased: " + " ".join(reversed(bench_t[i].split()))
    return train_t, bench_t, train_v, bench_v


def _split_store(db_path, train_t, bench_t, train_v, bench_v, model="seeded"):
    from datacure.store import Store
    from datacure.store.ingest import ingest_frame

    st = Store(db_path)
    frame = pl.DataFrame(
        {"text": train_t + bench_t, "part": ["train"] * len(train_t) + ["bench"] * len(bench_t)}
    )
    ingest_frame(st, frame, split_column="part", text="text", label=None)
    rid = st.execute("SELECT row_id FROM samples ORDER BY row_id").fetchnumpy()["row_id"]
    with st.transaction():
        st.register_embedding("test", train_v.shape[1], model, "text", "test", False)
        st.append_embeddings("test", rid, np.vstack([train_v, bench_v]).astype(np.float32))
    return st


def test_calibration_survives_lookalike_items(db_path):
    """Items that look alike put the benchmark's own statistic at its cap; the threshold then
    comes from the rows' best similarities, and the rephrasings are found."""
    st = _split_store(db_path, *_lookalike())
    run_audit(st, auditors=["contamination"], reference="bench")
    info = _info(st)
    t2 = info["tier2"]
    assert t2["benchmark"]["clipped"] == 0.97  # collapsed, as in issue 19
    assert t2["method"] == "rows" and t2["threshold"] < 0.9
    rows = _rows(st)
    flagged = sorted(r for r, v in rows.items() if v[0])
    assert flagged == list(range(10))
    assert all(rows[i][2]["benchmark_index"][0] == i for i in range(10))
    assert not info["warnings"]


def test_threshold_at_cap_warns_and_judge_sees_the_band(db_path, judge_server):
    """Too few rows for the tail statistic and look-alike items: the threshold sits at its cap,
    which is a warning; the judge band is ranked from the threshold down, so the judge still
    gets the rephrasings (and says yes to those marked so)."""
    train_t, bench_t, train_v, bench_v = _lookalike(n_train=40)
    for i in range(5):
        train_t[i] = "JUDGE-YES " + train_t[i]
    st = _split_store(db_path, train_t, bench_t, train_v, bench_v)
    opts = {"judge_url": judge_server, "judge_model": "fixed-answers"}
    run_audit(st, auditors=["contamination"], reference="bench", context_options=opts)
    info = _info(st)
    assert info["tier2"]["threshold"] == 0.97 and info["tier2"]["method"] == "benchmark"
    assert any("cap" in w and "similarity_threshold" in w for w in info["warnings"])
    rows = _rows(st)
    assert [r for r, v in rows.items() if v[0]] == list(range(5))
    assert all(rows[i][2]["tier"] == 3 for i in range(5))
    assert all(rows[i][2]["judge"] is False for i in range(5, 10))
    assert info["tier3"]["calls"] >= 10 and info["tier3"]["yes"] == 5


PASSAGE = " ".join(f"p{i}" for i in range(60))


def _passage_items(rng, k=4):
    return [f"read this {PASSAGE} question {j} " + " ".join(_texts(rng, 1, 12)) for j in range(k)]


def test_tier1_attribution_and_shared_passages(db_path):
    """Items sharing a passage: a verbatim copy names its own item at overlap 1.0; a row with
    the passage and a question of its own names the passage's items as a set."""
    rng = np.random.default_rng(5)
    bench_t = _passage_items(rng) + _texts(rng, 40, 25)
    train_t = _texts(rng, 300, 30)
    for j in range(4):
        train_t[j] = "copied: " + bench_t[j]
    train_t[4] = f"read this {PASSAGE} what is the mood of the passage"
    bench_v = _unit(rng.normal(size=(len(bench_t), D))).astype(np.float32)
    train_v = _unit(rng.normal(size=(len(train_t), D))).astype(np.float32)
    st = _split_store(db_path, train_t, bench_t, train_v, bench_v)
    run_audit(st, auditors=["contamination"], reference="bench")
    rows = _rows(st)
    for j in range(4):
        det = rows[j][2]
        assert det["tier"] == 1 and det["ngram_overlap"] == 1.0
        assert det["benchmark_index"][0] == j
    det = rows[4][2]
    assert det["tier"] == 1 and set(det["benchmark_index"][:4]) == {0, 1, 2, 3}
    assert sum(v[0] for r, v in rows.items() if r >= 5) == 0


def test_tier1_stable_as_the_benchmark_grows_and_short_items():
    """Boilerplate is decided by max(min items, share x items): a row's verdict does not change
    when unrelated items are added; an instruction in every item is ignored; short items are
    found whole, tiny ones only as the whole row."""
    rng = np.random.default_rng(6)
    instr = "answer the following question with a single number and show no working at all"
    core = [f"{instr} {t}" for t in _texts(rng, 40, 20)]
    # five items share a 20-word stem: kept (a passage-sized share, not boilerplate)
    stem = " ".join(_texts(rng, 1, 20))
    core += [f"{stem} {t}" for t in _texts(rng, 5, 5)]
    short = ["what is the capital of peru", "name the largest ocean"]
    tiny = ["yes maybe"]
    rows = [instr + " " + " ".join(_texts(rng, 1, 20)), f"{stem} and more", *short,
            "so, what is the capital of peru again?", "yes maybe", "yes maybe not"]  # fmt: skip
    verdicts = []
    for extra in (0, 500, 3000):
        idx = NgramIndex(core + short + tiny + _texts(rng, extra, 25), n=13)
        mt = idx.match(rows)
        verdicts.append((mt.overlap >= 0.2).tolist())
        assert idx.boilerplate_limit == max(20, int(0.01 * idx.num_items))
    assert verdicts[0] == verdicts[1] == verdicts[2]
    assert verdicts[0] == [False, True, True, True, True, True, False]


def _tok_encoder(window: int, dim: int = 64):
    """A stand-in sentence encoder: whitespace word pieces, reads at most `window` tokens, a
    hashed bag of words. Same interface as store.embed's (`encode`, `.model.max_seq_length`,
    `.model.tokenizer.backend_tokenizer`)."""
    from types import SimpleNamespace

    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tk = Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tk.pre_tokenizer = Whitespace()

    class Enc:
        calls = 0
        model = SimpleNamespace(
            max_seq_length=window, tokenizer=SimpleNamespace(backend_tokenizer=tk)
        )

        def encode(self, items, batch_size=128):
            Enc.calls += len(items)
            out = np.zeros((len(items), dim), np.float32)
            for i, t in enumerate(items):  # a test stub: tiny inputs
                for w in str(t).split()[: window - 2]:
                    out[i, zlib.crc32(w.encode()) % dim] += 1.0
            return _unit(out + 1e-6)

    return Enc()


def test_long_items_are_chunked_and_cached(db_path, monkeypatch):
    """Two items share a passage longer than the encoder's window: their vectors are the same
    (the question is cut off). Chunked, a row holding only one item's question is found and
    named; the chunks are embedded once and read from the store by the next audit."""
    import datacure.auditor.contamination.benchmark as B

    enc = _tok_encoder(window=48)
    monkeypatch.setattr(B, "encoder", lambda ctx, notes: enc)
    rng = np.random.default_rng(7)
    passage = " ".join(f"w{i}" for i in range(1000, 1080))
    qa = " ".join(f"qa{i}" for i in range(40))
    qb = " ".join(f"qb{i}" for i in range(40))
    bench_t = [f"{passage} {qa}", f"{passage} {qb}", *_texts(rng, 30, 20)]
    train_t = [" ".join(reversed(qb.split())), *_texts(rng, 250, 20)]  # no 13-gram shared
    st = _split_store(db_path, train_t, bench_t, enc.encode(train_t), enc.encode(bench_t), "stub")
    run_audit(st, auditors=["contamination"], reference="bench")
    info = _info(st)
    li = info["tier2"]["long_items"]
    assert li["chunked"] and li["truncated_items"] == 2 and li["chunks"] >= 2
    assert li["cache"] == "embedded and stored"
    det = _rows(st)[0][2]
    assert det["tier"] == 2 and det["benchmark_index"][0] == 1, det
    calls = enc.calls
    run_audit(st, auditors=["contamination"], reference="bench")
    assert _info(st)["tier2"]["long_items"]["cache"] == "read from the store"
    assert enc.calls == calls  # nothing embedded again
    # without chunking the question is out of reach
    run_audit(
        st, auditors=["contamination"], reference="bench",
        config={"contamination": {"chunk_long_items": False}},
    )  # fmt: skip
    assert not _rows_latest(st)[0][0]


def _rows_latest(st):
    got = st.fetchall(
        "SELECT row_id, is_issue, details FROM issues WHERE auditor = 'contamination' AND "
        "run_id = (SELECT max(run_id) FROM runs) ORDER BY row_id"
    )
    return {r[0]: (r[1], json.loads(r[2])) for r in got}


FRENCH = [
    ("Tom has 5 apples and buys 3 more apples at the market. How many apples does he have now?",
     "Tom a 5 pommes et achète 3 pommes de plus au marché. Combien de pommes a-t-il maintenant ?"),
    ("A train travels 60 miles per hour for 4 hours. How far does the train go in total?",
     "Un train roule à 60 miles par heure pendant 4 heures. Quelle distance parcourt-il en tout ?"),
    ("There are 30 students in the class and 12 of them are boys. How many girls are there?",
     "Il y a 30 élèves dans la classe, dont 12 garçons. Combien y a-t-il de filles ?"),
    ("Anna reads 20 pages every day. How many pages does she read in two weeks?",
     "Anna lit 20 pages chaque jour. Combien de pages lit-elle en deux semaines ?"),
]  # fmt: skip


@pytest.mark.parametrize("model", ["all-MiniLM-L6-v2", "stub-multilingual-encoder"])
def test_translations_and_the_language_warning(db_path, model):
    """French rows against an English benchmark. A stub multilingual embedding maps each
    translation next to its item: with a multilingual model's name they are found like
    rephrasings and nothing is said; with an English-only model the audit says that
    translations cannot be found and names the remedy."""
    rng = np.random.default_rng(8)
    bench_t = [en for en, _ in FRENCH] + _texts(rng, 60, 20)
    bench_v = _unit(rng.normal(size=(len(bench_t), D))).astype(np.float32)
    train_t = [fr for _, fr in FRENCH] + _texts(rng, 300, 20)
    train_v = _unit(rng.normal(size=(len(train_t), D))).astype(np.float32)
    for i in range(len(FRENCH)):
        train_v[i] = _at_similarity(rng, bench_v[i], 0.93)
    st = _split_store(db_path, train_t, bench_t, train_v, bench_v, model=model)
    run_audit(st, auditors=["contamination"], reference="bench")
    info = _info(st)
    assert info["language"]["rows"]["shares"]["fr"] > 0
    rows = _rows(st)
    assert sorted(r for r, v in rows.items() if v[0]) == list(range(len(FRENCH)))
    assert all(rows[i][2]["benchmark_index"][0] == i for i in range(len(FRENCH)))
    warned = [w for w in info["warnings"] if "non-English" in w]
    if "multilingual" in model:
        assert info["language"]["multilingual_embedder"] and not warned
    else:
        assert warned and "--model" in warned[0] and "fr" in warned[0]


def test_benchmark_file_is_embedded_once(db_path, tmp_path, monkeypatch):
    """A benchmark file is embedded by the first audit and read from the store's cache by the
    next; a changed file is embedded again."""
    import datacure.auditor.contamination.benchmark as B

    enc = _tok_encoder(window=512, dim=D)
    monkeypatch.setattr(B, "encoder", lambda ctx, notes: enc)
    rng = np.random.default_rng(9)
    bench_t = _texts(rng, 40, 20)
    train_t = [bench_t[0], *_texts(rng, 250, 20)]
    st = make_store(
        db_path, pl.DataFrame({"text": train_t, "label": [0] * len(train_t)}),
        enc.encode(train_t), text="text",
    )  # fmt: skip
    path = tmp_path / "bench.jsonl"
    pl.DataFrame({"text": bench_t}).write_ndjson(path)
    opts = {"benchmark": str(path)}
    run_audit(st, auditors=["contamination"], context_options=opts)
    assert _info(st)["cache"]["items"] == "embedded and stored"
    calls = enc.calls
    run_audit(st, auditors=["contamination"], context_options=opts)
    info = _info(st)
    assert info["cache"]["items"] == "read from the store" and enc.calls == calls
    assert _rows_latest(st)[0][0]  # the copy is still found
    assert st.scalar("SELECT count(*) FROM benchmark_cache") == 2  # the items, the chunks
    pl.DataFrame({"text": bench_t[:-1]}).write_ndjson(path)
    run_audit(st, auditors=["contamination"], context_options=opts)
    assert _info(st)["cache"]["items"] == "embedded and stored" and enc.calls > calls
