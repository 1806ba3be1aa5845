"""Benchmark: do rule-based counterfactual edits flip the sentiment? Against the human edits.

Data: ../shared/data/imdb_counterfactual (Kaushik et al.'s counterfactually augmented IMDb):
each review is paired with a human-edited copy whose sentiment is flipped with minimal edits.
The judge is the verifier datacure uses for generated text (generators/verify.py: logistic
regression, C=10, on the default text embedder, MiniLM) trained on `--train-rows` rows of
train_paired.tsv. For every dev review (both members of each pair), it makes the minimal edit
that flips the label with the built-in `sentiment` word list (`mode=flip`), and, with `--llm-url`,
with an OpenAI-compatible endpoint. Reported, against the human edit of the same review (the
anchor, judged by the same classifier in the same process):

- coverage: share of reviews the backend produced an edit for (rules need a listed word);
- flipped: share of all reviews whose edit the judge assigns the target label;
- flipped among edits; verified: kept by the verifier (target label with a margin of 0.1);
- edit size: share of word tokens changed.

    .venv/bin/python bench/counterfactual_text.py [--train-rows 1500] [--llm-url URL --llm-model M]
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "imdb_counterfactual"


def read(name: str) -> pl.DataFrame:
    return pl.read_csv(DATA / name, separator="\t", quote_char='"', infer_schema_length=0)


def changed_share(a: str, b: str) -> float:
    """Share of word tokens of `a` that an edit to `b` replaced or deleted."""
    wa, wb = a.split(), b.split()
    sm = difflib.SequenceMatcher(a=wa, b=wb, autojunk=False)
    same = sum(m.size for m in sm.get_matching_blocks())
    return 1.0 - same / max(len(wa), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-rows", type=int, default=1500)
    ap.add_argument("--llm-url")
    ap.add_argument("--llm-model")
    ap.add_argument("--llm-key-env", default="OPENAI_API_KEY")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (DATA / "dev_paired.tsv").exists():
        sys.exit(f"data not found: {DATA} (the ../shared checkout is absent)")
    from datacure.generators.text import TextGenerator, counterfactuals
    from datacure.generators.verify import Verifier
    from datacure.store.embed import load_embedder

    t_all = time.perf_counter()
    train = read("train_paired.tsv")
    train = train.sample(min(args.train_rows, len(train)), seed=args.seed)
    dev = read("dev_paired.tsv").with_row_index("i")
    # rows come in pairs (same batch_id, opposite labels): the partner is the human edit
    partner = np.arange(len(dev)) ^ 1
    assert (dev["batch_id"].to_numpy() == dev["batch_id"].to_numpy()[partner]).all()
    texts = dev["Text"].to_list()
    labels = dev["Sentiment"].to_numpy()
    target = labels[partner]
    assert (target != labels).all()
    enc = load_embedder(None, "text")
    t0 = time.perf_counter()
    xtr = enc.encode(train["Text"].to_list())
    xdev = enc.encode(texts)
    t_emb = time.perf_counter() - t0
    judge = Verifier(xtr, train["Sentiment"].to_numpy(), margin=0.1, seed=args.seed)
    acc = float((judge.label_model.predict(xdev) == labels).mean())
    print(
        f"judge: logistic regression on {enc.__class__.__name__} embeddings of "
        f"{len(train)} train_paired rows; accuracy on the {len(dev)} dev reviews {acc:.3f} "
        f"(embedding {len(train) + len(dev)} texts took {t_emb:.0f} s; load average "
        f"{os.getloadavg()[0]:.1f})"
    )

    def judge_edits(edited: list[str | None]) -> dict:
        have = np.array([e is not None for e in edited])
        res = {
            "coverage": float(have.mean()),
            "flipped": 0.0,
            "flipped_among_edits": 0.0,
            "verified": 0.0,
            "edit_size": float("nan"),
            "n": int(have.sum()),
        }
        if not have.any():
            return res
        idx = np.flatnonzero(have)
        v = judge.check(enc.encode([edited[i] for i in idx]), target[idx])
        flipped = v.predicted == target[idx].astype(str)
        res["flipped"] = float(flipped.sum() / len(edited))
        res["flipped_among_edits"] = float(flipped.mean())
        res["verified"] = float(v.keep.sum() / len(edited))
        res["edit_size"] = float(np.mean([changed_share(texts[i], edited[i]) for i in idx]))
        return res

    rows = {}
    rows["human edits (anchor)"] = judge_edits([texts[j] for j in partner])
    t0 = time.perf_counter()
    rule = counterfactuals(texts, labels, target, mode="flip", generator=TextGenerator("rules"))
    t_rule = time.perf_counter() - t0
    rows["rule-based (sentiment list)"] = judge_edits([c.text for c in rule])
    if args.llm_url:
        gen = TextGenerator(
            "openai", llm_url=args.llm_url, llm_model=args.llm_model, llm_key_env=args.llm_key_env
        )
        t0 = time.perf_counter()
        llm = counterfactuals(texts, labels, target, mode="flip", generator=gen)
        rows[f"LLM ({args.llm_model})"] = judge_edits([c.text for c in llm])
        print(f"LLM edits took {time.perf_counter() - t0:.0f} s")
    print(f"\nminimal edits that should flip the label, {len(dev)} dev reviews:")
    print(
        f"  {'edits':<28} {'coverage':>8} {'flipped':>8} {'of edits':>9} {'verified':>9} "
        f"{'words changed':>14}"
    )
    for name, r in rows.items():
        print(
            f"  {name:<28} {r['coverage']:8.3f} {r['flipped']:8.3f} "
            f"{r['flipped_among_edits']:9.3f} {r['verified']:9.3f} {r['edit_size']:14.3f}"
        )
    h, rb = rows["human edits (anchor)"], rows["rule-based (sentiment list)"]
    print(
        f"\n  rule-based flips {rb['flipped'] / max(h['flipped'], 1e-9):.2f}x as many reviews as "
        f"the human edits ({rb['flipped']:.3f} vs {h['flipped']:.3f}); rules ran at "
        f"{len(dev) / t_rule:.0f} reviews/s"
    )
    print("  examples (rule-based, judged):")
    for i in range(3):
        c = rule[i]
        print(f"   [{labels[i]} -> {target[i]}] {c.prompt[:150]}")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
