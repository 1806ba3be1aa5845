"""Benchmark: the `slice` auditor on 100k rows x 384 dimensions (goal: <= 60 s).

Data: low-rank vectors like real embeddings (a 24-d latent with 5 sub-centres per class for 10
classes, projected to 384-d plus noise). The "model" errs on 10% of rows at random, and on 55%
of the rows of 3 planted sub-groups (one sub-centre in each of 3 classes). pred_probs are given
as a column, so the time is the auditor's own: loading vectors, PCA, error-aware k-means per
class, held-out tests, descriptions, writing slices. Anchors, measured in the same process on
the same vectors, the step every pred_probs-based audit pays once: datacure's own 5-fold
pred_probs (auditor/predict.py: a linear softmax fitted in closed form as shrunk LDA, then
temperature-calibrated) and sklearn's 5-fold `LogisticRegression` (lbfgs, default settings),
with the log-loss of each against the true classes.

    .venv/bin/python bench/slice_scale.py [--rows 100000] [--dim 384]

Writes bench/results/slice_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from common import table, write_results


def make_data(n: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    classes, subs, latent = 10, 5, 24
    y = rng.integers(0, classes, n)
    sub = rng.integers(0, subs, n)
    centres = rng.normal(scale=1.0, size=(classes, latent))
    offsets = rng.normal(scale=0.6, size=(classes, subs, latent))
    z = centres[y] + offsets[y, sub] + rng.normal(scale=0.35, size=(n, latent))
    proj = rng.normal(size=(latent, dim)) / np.sqrt(latent)
    x = (z @ proj + rng.normal(scale=0.15, size=(n, dim))).astype(np.float32)
    planted = np.zeros(n, dtype=bool)
    for c in (1, 4, 7):
        planted |= (y == c) & (sub == 0)
    wrong = np.where(planted, rng.random(n) < 0.55, rng.random(n) < 0.10)
    p = np.full((n, classes), 0.02)
    p[np.arange(n), y] = 0.82
    p[wrong] = 0.02
    p[wrong, (y[wrong] + 1) % classes] = 0.82
    return x, y, p, planted


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    args = ap.parse_args()
    started = time.perf_counter()
    load0 = os.getloadavg()[0]
    from datacure.auditor.predict import cross_val_pred_probs
    from datacure.auditor.runner import run_audit
    from datacure.store import Store
    from datacure.store.ingest import ingest_frame

    x, y, p, planted = make_data(args.rows, args.dim)
    with tempfile.TemporaryDirectory() as tmp:
        st = Store(Path(tmp) / "s.duckdb")
        t0 = time.perf_counter()
        ingest_frame(st, pl.DataFrame({"label": y, "pp": p.astype(np.float32)}), label="label")
        rid = st.execute("SELECT row_id FROM samples ORDER BY row_id").fetchnumpy()["row_id"]
        with st.transaction():
            st.register_embedding("synthetic", args.dim, "seeded", None, "seeded", False)
            st.append_embeddings("synthetic", rid, x)
        print(f"store written in {time.perf_counter() - t0:.1f} s ({args.rows} x {args.dim})")

        rep = run_audit(st, auditors=["slice"], pred_probs="pp")
        secs = rep.outcomes[0].seconds
        info = json.loads(st.scalar("SELECT info FROM issue_summary"))
        members = st.fetchall("SELECT slice_id, members, error_rate FROM slices")
        got = np.zeros(args.rows, dtype=bool)
        for _, m, _ in members:
            got[np.asarray(m)] = True
        recall = (got & planted).sum() / planted.sum()
        precision = (got & planted).sum() / max(got.sum(), 1)
        print(
            f"slice auditor: {secs:.1f} s (goal <= 60 s: {'PASS' if secs <= 60 else 'FAIL'}), "
            f"{info['num_slices']} slices, {info['clusters_tested']} clusters tested"
        )
        print(
            f"planted sub-groups (3 x ~{planted.sum() // 3} rows at 55% errors vs 10%): "
            f"recall {recall:.3f}, precision {precision:.3f}"
        )
        for sid, m, rate in members[:6]:
            print(
                f"  {sid:<6} n {len(m):5d} error rate {rate:.3f}  "
                f"planted share {planted[np.asarray(m)].mean():.2f}"
            )

        slices = [
            [sid, len(m), round(rate, 3), round(float(planted[np.asarray(m)].mean()), 2)]
            for sid, m, rate in members[:10]
        ]
        n_slices, tested = info["num_slices"], info["clusters_tested"]
        st.close()
    del p

    def logloss(pp):
        return float(-np.log(np.clip(pp[np.arange(len(y)), y], 1e-12, 1)).mean())

    t0 = time.perf_counter()
    pp_dc = cross_val_pred_probs(x, y, 10, folds=5, seed=0)
    t_dc = time.perf_counter() - t0
    print(f"anchor: datacure's 5-fold pred_probs (shrunk LDA + temperature) {t_dc:.1f} s")
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    t0 = time.perf_counter()
    pp_lr = cross_val_predict(
        LogisticRegression(),
        x,
        y,
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
        method="predict_proba",
    )
    t_lr = time.perf_counter() - t0
    print(f"anchor: sklearn 5-fold LogisticRegression pred_probs {t_lr:.1f} s")
    print(f"ratio slice / datacure pred_probs: {secs / t_dc:.2f}; LR / datacure {t_lr / t_dc:.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak RSS {peak:.2f} GB")
    write_results(
        "slice_scale",
        {
            "tables": [
                table(
                    f"slice auditor on {args.rows:,} x {args.dim} with 3 planted high-error groups",
                    ["step", "seconds", "x datacure pred_probs", "recall", "precision"],
                    [
                        [
                            "slice auditor (pred_probs given)",
                            round(secs, 1),
                            round(secs / t_dc, 2),
                            round(float(recall), 3),
                            round(float(precision), 3),
                        ],
                        ["datacure 5-fold pred_probs (shrunk LDA)", round(t_dc, 1), 1.0, "-", "-"],
                        [
                            "sklearn 5-fold LogisticRegression",
                            round(t_lr, 1),
                            round(t_lr / t_dc, 2),
                            "-",
                            "-",
                        ],
                    ],
                    note="recall / precision: of the planted sub-groups' rows among the rows of "
                    f"the slices found ({n_slices} slices, {tested} clusters tested).",
                ),
                table(
                    "5-fold pred_probs on the same vectors: log-loss against the true classes",
                    ["model", "seconds", "log-loss", "accuracy"],
                    [
                        [
                            "datacure (shrunk LDA + temperature)",
                            round(t_dc, 1),
                            round(logloss(pp_dc), 4),
                            round(float((pp_dc.argmax(1) == y).mean()), 4),
                        ],
                        [
                            "sklearn LogisticRegression",
                            round(t_lr, 1),
                            round(logloss(pp_lr), 4),
                            round(float((pp_lr.argmax(1) == y).mean()), 4),
                        ],
                    ],
                ),
                table("Slices found", ["slice", "rows", "error rate", "planted share"], slices),
            ],
            "slice_seconds": secs,
            "pred_probs_seconds": {"datacure": t_dc, "sklearn_logistic_regression": t_lr},
            "peak_rss_gb": round(peak, 2),
        },
        inputs={"rows": args.rows, "dim": args.dim, "classes": 10, "seed": 0, "folds": 5},
        notes=[
            f"One run, one process; load average {load0:.1f} at the start and "
            f"{os.getloadavg()[0]:.1f} at the end (2 shared cores)."
        ],
        started=started,
        title="slice at 100k rows, and 5-fold pred_probs: datacure vs sklearn",
    )


if __name__ == "__main__":
    main()
