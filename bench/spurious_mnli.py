"""Benchmark: spurious cues and slices on MNLI dev-matched with 100 BERT runs per item.

Data: ../shared/data/mnli_negation/mnli_dev_matched_bert100.tsv (premise, hypothesis, gold
label, and how many of 100 BERT fine-tuning runs got each item right). Rows are ingested as
`premise + " " + hypothesis` with the gold label, a `negation` column (the hypothesis contains
no / not / never / nobody / nothing) and BERT's correctness as pred_probs: P(gold) = share of the
100 runs that were right, the rest on one other class, so argmax is right exactly when >= 50 of
100 runs were (the rule the task fixes). Text vectors: all-MiniLM-L6-v2, cached in bench/out/.

Checks: `spurious_token` ranks a negation word among the top 3 cues for contradiction; the
subgroup table (negation x label) with BERT accuracy, from `spurious_attribute`; whether `slice`
finds groups below their class's accuracy (with BERT's errors, and with the context's own
cross-validated logistic regression on MiniLM vectors). Anchors, measured in the same process:
the cue's raw rates (P(contradiction | negation) against without), and cleanlab Datalab's
`underperforming_group` check on the same vectors and pred_probs.

    .venv/bin/python bench/spurious_mnli.py

Also, to say when `spurious_token` treats labels as lexical: the share of labelled rows that
carry a cue of their own label (`info.rows_with_own_cue`) on MNLI, NoisyAG-News train (10,000),
IMDb (Kaushik et al.'s train_paired.tsv, 3,414 reviews) and the demo's news (its train split).
Writes bench/results/spurious_mnli.json.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from common import OUT, ROOT, SHARED_DATA, minilm_vectors, table, write_results

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = SHARED_DATA / "mnli_negation" / "mnli_dev_matched_bert100.tsv"
NEGATION = ("no", "not", "never", "nobody", "nothing")
PROMPTS = [
    "a sentence with a negation",
    "something never happened",
    "a statement about numbers and amounts",
    "a statement about time",
    "a statement about a place",
    "a statement about people",
    "a statement about money",
    "a question",
    "a quotation from speech",
    "a government report",
]


def load() -> pl.DataFrame:
    df = pl.read_csv(DATA, separator="\t", quote_char=None)
    df = df.rename({df.columns[-1]: "n_correct"})
    pattern = r"\b(" + "|".join(NEGATION) + r")\b"
    return df.with_columns(
        (pl.col("premise") + " " + pl.col("hypothesis")).alias("text"),
        pl.col("hypothesis").str.to_lowercase().str.contains(pattern).alias("negation"),
    )


def bert_pred_probs(gold: np.ndarray, n_correct: np.ndarray, classes: list[str]) -> np.ndarray:
    """P(gold) = n/100 (0.505 at exactly 50, so argmax is right iff n >= 50), rest on the next
    class."""
    y = np.array([classes.index(g) for g in gold])
    pg = np.clip(n_correct / 100.0, 0.0, 1.0)
    pg = np.where(n_correct == 50, 0.505, pg)
    p = np.zeros((len(y), len(classes)))
    p[np.arange(len(y)), y] = pg
    p[np.arange(len(y)), (y + 1) % len(classes)] += 1.0 - pg
    return p


def own_cue_share(frame: pl.DataFrame) -> dict:
    """`spurious_token` alone on (text, label): the share of rows carrying a cue of their own
    label, and whether the auditor called the labels lexical."""
    from datacure.auditor.runner import run_audit
    from datacure.store import Store
    from datacure.store.ingest import ingest_frame

    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "c.duckdb") as st:
        ingest_frame(st, frame.select("text", "label"), label="label", text="text")
        run_audit(st, auditors=["spurious_token"])
        info = json.loads(st.scalar("SELECT info FROM issue_summary"))
    return {
        "rows": frame.height,
        "cues": info["num_cues"],
        "own_cue_share": info["rows_with_own_cue"] / frame.height,
        "lexical_labels": info["lexical_labels"],
        "top_cues": [c["cue"] for c in info["cues"][:5]],
    }


def main() -> None:
    if not DATA.exists():
        sys.exit(f"missing {DATA} (the ../shared checkout)")
    started = time.perf_counter()
    load0 = os.getloadavg()[0]
    from datacure.auditor.runner import run_audit
    from datacure.store import Store
    from datacure.store.ingest import ingest_frame

    df = load()
    classes = sorted(df["gold_label"].unique().to_list())
    probs = bert_pred_probs(df["gold_label"].to_numpy(), df["n_correct"].to_numpy(), classes)
    vec = minilm_vectors(df["text"].to_list(), "mnli")
    OUT.mkdir(parents=True, exist_ok=True)
    db = OUT / "mnli.duckdb"
    for f in (db, Path(str(db) + ".wal")):
        f.unlink(missing_ok=True)
    st = Store(db)
    frame = df.select(
        "text",
        pl.col("gold_label").alias("label"),
        "negation",
        pl.Series("bert_pp", probs.tolist()),
    )
    ingest_frame(st, frame, label="label", text="text")
    rid = st.execute("SELECT row_id FROM samples ORDER BY row_id").fetchnumpy()["row_id"]
    with st.transaction():
        st.register_embedding("minilm", vec.shape[1], "all-MiniLM-L6-v2", "text", "text", False)
        st.append_embeddings("minilm", rid, vec)

    # --- anchor: the cue's raw rates -------------------------------------------------------
    neg = df["negation"].to_numpy()
    contra = (df["gold_label"] == "contradiction").to_numpy()
    print(f"rows {len(df)}, negation in hypothesis {neg.mean():.1%}")
    print(
        f"anchor: P(contradiction | negation) {contra[neg].mean():.3f} vs without "
        f"{contra[~neg].mean():.3f}"
    )

    # --- our auditors with BERT's correctness ------------------------------------------------
    t0 = time.perf_counter()
    rep = run_audit(
        st,
        auditors=["spurious_token", "spurious_attribute", "slice"],
        pred_probs="bert_pp",
        context_options={"slice_prompts": PROMPTS},
    )
    secs = {o.name: o.seconds for o in rep.outcomes}
    print(f"audit (3 auditors) {time.perf_counter() - t0:.1f} s: {json.dumps(secs)}")
    info = {
        a: json.loads(st.scalar("SELECT info FROM issue_summary WHERE auditor = ?", [a]))
        for a in ("spurious_token", "spurious_attribute", "slice")
    }

    tok = info["spurious_token"]
    contra_cues = [c for c in tok["cues"] if c["label"] == "contradiction"]
    print(
        f"\nspurious_token: {tok['num_cues']} cues (z > {tok['z_threshold']:.2f}); "
        "top 5 for contradiction:"
    )
    for c in contra_cues[:5]:
        print(
            f"  {c['cue']:<10} z {c['z']:6.1f}  in {c['count']:5d} rows, "
            f"P(contradiction | cue) {c['p_label_given_cue']:.2f} (prior {c['prior']:.2f})"
        )
    rank = next((i + 1 for i, c in enumerate(contra_cues) if c["cue"] in NEGATION), None)
    print(
        f"  first negation word at rank {rank}: {'PASS' if rank and rank <= 3 else 'FAIL'} (<= 3)"
    )
    for lab in classes:
        print(f"  top cues for {lab}: {', '.join(tok['cues_by_label'].get(lab, [])[:6])}")
    print(f"  rows flagged (carry a cue of their label): {tok['rows_with_own_cue']}")

    att = info["spurious_attribute"]
    print("\nspurious_attribute: attributes (Cramer's V, CV accuracy vs majority baseline):")
    for a in att["attributes"]:
        print(
            f"  {a['attribute']:<12} V {a['cramers_v']:.3f}  acc {a['cv_accuracy']:.3f} vs "
            f"{a['majority_baseline']:.3f}  MI {a['mutual_information']:.4f}  "
            f"{'strong' if a['strong'] else 'associated' if a['associated'] else '-'}"
        )
    g = att["groups"].get("negation")
    print("\nsubgroup table, negation x label (accuracy = >= 50 of 100 BERT runs right):")
    print(
        f"  {'label':<14}{'negation':<10}{'count':>6}{'share':>8}{'in label':>10}{'accuracy':>10}"
    )
    for r in sorted(g["table"], key=lambda r: (r["label"], r["value"])):
        print(
            f"  {r['label']:<14}{r['value']:<10}{r['count']:>6}{r['share']:>8.1%}"
            f"{r['label_share']:>10.1%}{r['accuracy']:>10.3f}"
            + ("  under-represented" if r["under_represented"] else "")
        )
    print(
        f"  worst group: {g['worst_group']['label']} / negation={g['worst_group']['value']} "
        f"accuracy {g['worst_group_accuracy']:.3f}; overall accuracy "
        f"{(probs.argmax(1) == np.array([classes.index(c) for c in df['gold_label']])).mean():.3f}"
    )

    def show_slices(sl_info, label):
        below = [s for s in sl_info["slices"] if s["error_rate"] > s["class_error_rate"]]
        print(
            f"\nslice ({label}): {sl_info['num_slices']} slices, {len(below)} below their class's "
            f"accuracy; class error rates "
            + ", ".join(f"{k} {v:.3f}" for k, v in sl_info["class_error_rates"].items())
        )
        members = dict(
            st.fetchall(
                "SELECT slice_id, members FROM slices "
                "WHERE run_id = (SELECT max(run_id) FROM slices)"
            )
        )
        for s in sl_info["slices"][:8]:
            m = np.asarray(members[s["slice_id"]])
            print(
                f"  {s['slice_id']:<16} n {s['size']:4d}  accuracy {1 - s['error_rate']:.3f} vs "
                f"class {1 - s['class_error_rate']:.3f}  "
                f"(held-out {1 - s['held_out_error_rate']:.3f}"
                f", p_adj {s['p_adjusted']:.1e})  negation {neg[m].mean():.0%}"
            )
            print(f"      {s['description'][:300]}")
        return len(below)

    n_below = show_slices(info["slice"], "BERT errors")

    # The groups BERT fails on are faint in MiniLM space: how stable is the verdict across seeds?
    from datacure.auditor.slice import find_slices, reduce_embeddings

    y_codes = np.array([classes.index(c) for c in df["gold_label"]])
    per_seed = []
    for seed in range(5):
        found, _ = find_slices(reduce_embeddings(vec, 32, seed), y_codes, probs, seed=seed)
        per_seed.append(
            ", ".join(
                f"{classes[f['label']]} n {f['size']} acc {1 - f['error_rate']:.3f} vs "
                f"{1 - f['class_error_rate']:.3f} (p_adj {f['p_adjusted']:.3f}, negation "
                f"{neg[f['members']].mean():.0%})"
                for f in found
            )
            or "none"
        )
    print("  seeds 0-4 (default parameters): " + " | ".join(per_seed))
    n_below_any = sum(s != "none" for s in per_seed)

    # --- slice with the context's own cross-validated logistic regression on MiniLM ----------
    t0 = time.perf_counter()
    run_audit(st, auditors=["slice"])
    lr_info = json.loads(
        st.scalar(
            "SELECT info FROM issue_summary WHERE auditor = 'slice' ORDER BY run_id DESC LIMIT 1"
        )
    )
    print(
        "\n(slice with CV logistic regression pred_probs, incl. fitting them: "
        f"{time.perf_counter() - t0:.1f} s)"
    )
    show_slices(lr_info, "MiniLM + logistic regression errors")

    # --- anchor: cleanlab Datalab underperforming_group on the same inputs ------------------
    anchor = {"status": "failed"}
    try:
        import pandas as pd
        from cleanlab import Datalab

        y = np.array([classes.index(c) for c in df["gold_label"]])
        t0 = time.perf_counter()
        lab = Datalab(data=pd.DataFrame({"label": y}), label_name="label", verbosity=0)
        lab.find_issues(features=vec, pred_probs=probs, issue_types={"underperforming_group": {}})
        res = lab.get_issues("underperforming_group")
        summ = lab.get_issue_summary("underperforming_group")
        print(
            f"\nanchor: cleanlab underperforming_group on the same vectors and BERT pred_probs: "
            f"{int(res['is_underperforming_group_issue'].sum())} rows flagged, score "
            f"{float(summ['score'].iloc[0]):.3f}, {time.perf_counter() - t0:.1f} s"
        )
        anchor = {
            "status": "ok",
            "rows_flagged": int(res["is_underperforming_group_issue"].sum()),
            "score": float(summ["score"].iloc[0]),
            "seconds": time.perf_counter() - t0,
        }
    except Exception as exc:  # noqa: BLE001 - an anchor that fails is reported, not fatal
        print(f"\nanchor: cleanlab underperforming_group failed: {type(exc).__name__}: {exc}")
        anchor["error"] = f"{type(exc).__name__}: {exc}"[:300]
    print(
        f"\nslice finds groups below their class's accuracy (BERT errors): seed 0 {n_below}; "
        f"seeds 0-4 with a slice: {n_below_any} of 5"
    )

    # --- when are labels lexical? own-label cue shares on four text sets ----------------------
    shares = {
        "MNLI dev-matched": {
            "rows": len(df),
            "cues": tok["num_cues"],
            "own_cue_share": tok["rows_with_own_cue"] / len(df),
            "lexical_labels": tok["lexical_labels"],
            "top_cues": [c["cue"] for c in tok["cues"][:5]],
        }
    }
    ag = SHARED_DATA / "noisy_ag_news" / "train_10k.csv"
    imdb = SHARED_DATA / "imdb_counterfactual" / "train_paired.tsv"
    if ag.exists():
        shares["NoisyAG-News train"] = own_cue_share(pl.read_csv(ag).select("text", "label"))
    if imdb.exists():
        im = pl.read_csv(imdb, separator="\t", quote_char='"', infer_schema_length=0)
        shares["IMDb train_paired"] = own_cue_share(
            im.select(pl.col("Text").alias("text"), pl.col("Sentiment").alias("label"))
        )
    demo = ROOT / "demo" / "data" / "news.csv"
    shares["demo news (train)"] = own_cue_share(
        pl.read_csv(demo).filter(pl.col("split") == "train").select("text", "label")
    )
    for name, r in shares.items():
        print(
            f"  {name:<22} own-label cue share {r['own_cue_share']:.3f}, {r['cues']} cues, "
            f"lexical {r['lexical_labels']}: {', '.join(r['top_cues'])}"
        )

    nli_rank = rank
    groups = sorted(g["table"], key=lambda r: (r["label"], r["value"]))
    write_results(
        "spurious_mnli",
        {
            "tables": [
                table(
                    "spurious_token on MNLI dev-matched: top cues for contradiction",
                    ["cue", "z", "rows", "P(contradiction | cue)", "prior"],
                    [
                        [
                            c["cue"],
                            round(c["z"], 1),
                            c["count"],
                            round(c["p_label_given_cue"], 3),
                            round(c["prior"], 3),
                        ]
                        for c in contra_cues[:5]
                    ],
                    note=f"first negation word at rank {nli_rank}; anchor, the cue's raw rates: "
                    f"P(contradiction | negation) {contra[neg].mean():.3f} vs without "
                    f"{contra[~neg].mean():.3f}.",
                ),
                table(
                    "BERT accuracy (>= 50 of 100 runs right) by negation x label",
                    ["label", "negation", "rows", "share of label", "accuracy"],
                    [
                        [
                            r["label"],
                            r["value"],
                            r["count"],
                            round(r["label_share"], 3),
                            round(r["accuracy"], 3),
                        ]
                        for r in groups
                    ],
                    note=f"worst group: {g['worst_group']['label']} / negation="
                    f"{g['worst_group']['value']}, accuracy {g['worst_group_accuracy']:.3f}.",
                ),
                table(
                    "slice on MiniLM vectors with BERT's errors: groups below their class's "
                    "accuracy, by seed",
                    ["seed", "slices found"],
                    [[i, s] for i, s in enumerate(per_seed)],
                    note="cleanlab Datalab underperforming_group on the same vectors and "
                    + (
                        f"pred_probs: {anchor['rows_flagged']} rows flagged"
                        if anchor["status"] == "ok"
                        else f"pred_probs: FAILED ({anchor.get('error', '')})"
                    ),
                ),
                table(
                    "Share of labelled rows carrying a cue of their own label (spurious_token)",
                    ["data", "rows", "cues", "own-label cue share", "lexical labels", "top cues"],
                    [
                        [
                            name,
                            r["rows"],
                            r["cues"],
                            round(r["own_cue_share"], 3),
                            r["lexical_labels"],
                            ", ".join(r["top_cues"]),
                        ]
                        for name, r in shares.items()
                    ],
                    note="above max_cue_coverage (0.5) the labels are lexical: cues are listed, "
                    "no row is flagged.",
                ),
            ],
            "seconds": secs,
            "negation_rank": nli_rank,
            "slice_seed0_below": n_below,
            "slice_seeds_with_a_slice": n_below_any,
            "datalab_underperforming_group": anchor,
        },
        inputs={
            "data": str(DATA.relative_to(SHARED_DATA)),
            "rows": len(df),
            "seeds": [0, 1, 2, 3, 4],
        },
        notes=[
            f"One run, one process; load average {load0:.1f} at the start and "
            f"{os.getloadavg()[0]:.1f} at the end (2 shared cores)."
        ],
        started=started,
        title="Spurious cues and slices on MNLI (100 BERT runs per item)",
    )


if __name__ == "__main__":
    main()
