"""Benchmark: the `slice` auditor on 100k rows x 384 dimensions (goal: <= 60 s).

Data: low-rank vectors like real embeddings (a 24-d latent with 5 sub-centres per class for 10
classes, projected to 384-d plus noise). The "model" errs on 10% of rows at random, and on 55%
of the rows of 3 planted sub-groups (one sub-centre in each of 3 classes). pred_probs are given
as a column, so the time is the auditor's own: loading vectors, PCA, error-aware k-means per
class, held-out tests, descriptions, writing slices. Anchor, measured in the same process on the
same vectors: 5-fold logistic-regression pred_probs (auditor/predict.py), the step every
pred_probs-based audit pays once.

    .venv/bin/python bench/slice_scale.py [--rows 100000] [--dim 384]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


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

        t0 = time.perf_counter()
        cross_val_pred_probs(x, y, 10, folds=5, seed=0)
        anchor = time.perf_counter() - t0
        print(f"anchor: 5-fold logistic-regression pred_probs on the same vectors {anchor:.1f} s")
        print(f"ratio slice / anchor: {secs / anchor:.2f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
