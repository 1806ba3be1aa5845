"""Benchmark: do rule-based counterfactual edits flip the sentiment? Against the human edits,
judged by the verifier and by an evaluator that is not the verifier.

Data: ../shared/data/imdb_counterfactual (Kaushik et al.'s counterfactually augmented IMDb):
each review is paired with a human-edited copy whose sentiment is flipped with minimal edits.
For every dev review (both members of each pair, 490), datacure makes the minimal edit that
flips the label with the built-in `sentiment` word list (`mode=flip`), and, with `--llm-url`,
with an OpenAI-compatible endpoint. The human edit of the same review is the reference.

Two judges, both in this process:

- the verifier datacure itself uses to accept generated text (generators/verify.py: logistic
  regression, C=10, on MiniLM embeddings) trained on `--train-rows` rows of train_paired.tsv.
  Judging edits with the model that accepts them favours the generator by construction;
- an independent evaluator: TF-IDF (word 1-2 grams) + logistic regression trained on the other
  train_paired rows (those the verifier did not see) and test_paired.tsv: other data, other
  features.

Reported per backend and judge: coverage (share of reviews the backend produced an edit for;
rules need a listed word), flipped (share of all reviews whose edit the judge assigns the
target label), flipped among edits, verified (kept by the verifier: target label with a margin
of 0.1), edit size (share of word tokens changed), and the ratio to the human edits.

    .venv/bin/python bench/counterfactual_text.py [--train-rows 1500] [--llm-url URL --llm-model M]

Writes bench/results/counterfactual_text.json.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import time

import numpy as np
import polars as pl
from common import SHARED_DATA, minilm_vectors, table, write_results

DATA = SHARED_DATA / "imdb_counterfactual"


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
    started = time.perf_counter()
    load0 = os.getloadavg()[0]
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from datacure.generators.text import TextGenerator, counterfactuals
    from datacure.generators.verify import Verifier

    full = read("train_paired.tsv").with_row_index("i")
    train = full.sample(min(args.train_rows, len(full)), seed=args.seed)
    rest = pl.concat(
        [full.filter(~pl.col("i").is_in(train["i"].to_list())).drop("i"), read("test_paired.tsv")]
    )
    dev = read("dev_paired.tsv").with_row_index("i")
    # rows come in pairs (same batch_id, opposite labels): the partner is the human edit
    partner = np.arange(len(dev)) ^ 1
    assert (dev["batch_id"].to_numpy() == dev["batch_id"].to_numpy()[partner]).all()
    texts = dev["Text"].to_list()
    labels = dev["Sentiment"].to_numpy()
    target = labels[partner]
    assert (target != labels).all()

    t0 = time.perf_counter()
    xtr = minilm_vectors(train["Text"].to_list(), "imdb_train_sample")
    xdev = minilm_vectors(texts, "imdb_dev")
    t_emb = time.perf_counter() - t0
    verifier = Verifier(xtr, train["Sentiment"].to_numpy(), margin=0.1, seed=args.seed)
    acc_v = float((verifier.label_model.predict(xdev) == labels).mean())
    tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    xr = tfidf.fit_transform(rest["Text"].to_list())
    indep = LogisticRegression(max_iter=2000, C=10.0).fit(xr, rest["Sentiment"].to_numpy())
    acc_i = float((indep.predict(tfidf.transform(texts)) == labels).mean())
    print(
        f"verifier (judge 1): logistic regression on MiniLM embeddings of {len(train)} "
        f"train_paired rows, dev accuracy {acc_v:.3f}\n"
        f"independent (judge 2): TF-IDF + logistic regression on {len(rest)} other rows "
        f"(train_paired not in judge 1's sample, and test_paired), dev accuracy {acc_i:.3f}\n"
        f"(embedding took {t_emb:.0f} s; load average {os.getloadavg()[0]:.1f})"
    )

    def judge_edits(edited: list[str | None], tag: str) -> dict:
        have = np.array([e is not None for e in edited])
        res = {"coverage": float(have.mean()), "n": int(have.sum())}
        empty = {"flipped": 0.0, "flipped_among_edits": 0.0}
        if not have.any():
            return {**res, "verifier": dict(empty, verified=0.0), "independent": empty}
        idx = np.flatnonzero(have)
        new = [edited[i] for i in idx]
        v = verifier.check(minilm_vectors(new, f"imdb_dev_{tag}"), target[idx])
        flip_v = v.predicted == target[idx].astype(str)
        flip_i = indep.predict(tfidf.transform(new)) == target[idx]
        res["verifier"] = {
            "flipped": float(flip_v.sum() / len(edited)),
            "flipped_among_edits": float(flip_v.mean()),
            "verified": float(v.keep.sum() / len(edited)),
        }
        res["independent"] = {
            "flipped": float(flip_i.sum() / len(edited)),
            "flipped_among_edits": float(flip_i.mean()),
        }
        res["edit_size"] = float(np.mean([changed_share(texts[i], edited[i]) for i in idx]))
        return res

    rows = {}
    rows["human edits (reference)"] = judge_edits([texts[j] for j in partner], "human")
    t0 = time.perf_counter()
    rule = counterfactuals(texts, labels, target, mode="flip", generator=TextGenerator("rules"))
    t_rule = time.perf_counter() - t0
    rows["rule-based (sentiment list)"] = judge_edits([c.text for c in rule], "rules")
    if args.llm_url:
        gen = TextGenerator(
            "openai", llm_url=args.llm_url, llm_model=args.llm_model, llm_key_env=args.llm_key_env
        )
        t0 = time.perf_counter()
        llm = counterfactuals(texts, labels, target, mode="flip", generator=gen)
        rows[f"LLM ({args.llm_model})"] = judge_edits([c.text for c in llm], "llm")
        print(f"LLM edits took {time.perf_counter() - t0:.0f} s")

    human = rows["human edits (reference)"]
    out_rows = []
    print(f"\nminimal edits that should flip the label, {len(dev)} dev reviews:")
    for name, r in rows.items():
        for judge in ("verifier", "independent"):
            j = r[judge]
            ratio = j["flipped"] / max(human[judge]["flipped"], 1e-9)
            out_rows.append(
                [
                    name,
                    "verifier (MiniLM + LR)" if judge == "verifier" else "TF-IDF + LR",
                    round(r["coverage"], 3),
                    round(j["flipped"], 3),
                    round(j["flipped_among_edits"], 3),
                    round(j["verified"], 3) if "verified" in j else "-",
                    round(r.get("edit_size", float("nan")), 3),
                    round(ratio, 2),
                ]
            )
            print("  " + " | ".join(str(c) for c in out_rows[-1]))
    print(f"rules ran at {len(dev) / t_rule:.0f} reviews/s")
    write_results(
        "counterfactual_text",
        {
            "tables": [
                table(
                    f"Counterfactual edits of {len(dev)} IMDb dev reviews, judged twice",
                    [
                        "edits",
                        "judge",
                        "coverage",
                        "flipped",
                        "flipped among edits",
                        "verified",
                        "words changed",
                        "x human flipped",
                    ],
                    out_rows,
                    note=f"judge dev accuracy on the unedited reviews: verifier {acc_v:.3f}, "
                    f"TF-IDF + LR {acc_i:.3f} (the ceiling of 'flipped' for a perfect edit). "
                    "x human flipped = flipped / the human edits' flipped under the same judge.",
                )
            ],
            "judge_accuracy": {"verifier": acc_v, "independent": acc_i},
            "rules_reviews_per_second": len(dev) / t_rule,
            "results": rows,
        },
        inputs={
            "data": "imdb_counterfactual dev_paired.tsv",
            "dev_reviews": len(dev),
            "verifier_train_rows": len(train),
            "independent_train_rows": len(rest),
            "seed": args.seed,
            "llm": args.llm_model or None,
        },
        notes=[
            f"One run, one process; load average {load0:.1f} at the start and "
            f"{os.getloadavg()[0]:.1f} at the end (2 shared cores).",
            "The verifier is the model datacure uses to accept generated text; the TF-IDF + LR "
            "judge shares neither its features nor its training rows.",
        ]
        + ([] if args.llm_url else ["No LLM endpoint was available: LLM edits not measured."]),
        started=started,
        title="Counterfactual text: rule edits vs human edits, two judges",
    )


if __name__ == "__main__":
    main()
