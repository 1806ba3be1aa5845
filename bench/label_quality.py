"""The `label` auditor against cleanlab Datalab on real human label noise.

    .venv/bin/python bench/label_quality.py

Data: NoisyAG-News, 10,000 train rows (../shared/data/noisy_ag_news/train_10k.csv): `label` is
the majority vote of human annotators, `gt` the original AG News label; truth is `label != gt`
(19.75% of rows). The truth column never enters the store or any model: it only scores the
flags at the end. Features: the default text embedder (all-MiniLM-L6-v2, 384-d, computed by
`store.embed` once and cached in bench/out/).

In one run, on the same features:
- datacure `label` (its own cross-validated pred_probs, combined with the kNN label vote);
- Datalab `find_issues(features=, pred_probs=)` given datacure's pred_probs (same inputs);
- Datalab given 5-fold logistic-regression pred_probs (the anchor setup: sklearn
  `LogisticRegression()` on the embeddings, as FACTS.md measured it);
- two ablations of datacure's label (model only; cleanlab's prune_by_noise_rate rule), to show
  where the gain comes from. No parameter is tuned on the truth.
Reported: flagged share, precision, recall, F1 of the flags, AUROC of the score.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "noisy_ag_news" / "train_10k.csv"
OUT = ROOT / "bench" / "out"
CACHE = OUT / "noisy_ag_news_train_10k_minilm.npy"
sys.path.insert(0, str(ROOT))


def add_vectors(store, n: int) -> np.ndarray:
    """MiniLM vectors of the store's rows: from the bench/out cache when it matches, else
    computed by `store.embed.embed` (the default text embedder; minutes on 2 cores) and cached."""
    if CACHE.exists():
        x = np.load(CACHE)
        if len(x) == n:
            rid = store.execute("SELECT row_id FROM samples ORDER BY row_id").fetchnumpy()["row_id"]
            with store.transaction():
                store.register_embedding(
                    "minilm", x.shape[1], "all-MiniLM-L6-v2", "text", "text", True
                )
                store.append_embeddings("minilm", rid, x)
            return x
    from datacure.store.embed import embed

    t0 = time.perf_counter()
    embed(store)
    _, x = store.load_embeddings()
    print(f"embedded {n} texts in {time.perf_counter() - t0:.0f} s")
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(CACHE, x)
    return x


def metrics(flag: np.ndarray, score: np.ndarray, truth: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score

    tp = float((flag & truth).sum())
    p = tp / max(flag.sum(), 1)
    r = tp / max(truth.sum(), 1)
    return {
        "flagged": float(flag.mean()),
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / max(p + r, 1e-12),
        "auroc": float(roc_auc_score(truth, -score)),
    }


def datalab_label(labels: np.ndarray, x: np.ndarray, probs: np.ndarray) -> tuple:
    from cleanlab import Datalab

    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    t0 = time.perf_counter()
    lab.find_issues(features=x, pred_probs=probs, issue_types={"label": {}})
    secs = time.perf_counter() - t0
    iss = lab.get_issues("label")
    return iss["is_label_issue"].to_numpy(), iss["label_score"].to_numpy(), secs


def logreg_pred_probs(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    probs = np.zeros((len(y), len(np.unique(y))))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        probs[te] = LogisticRegression(max_iter=1000).fit(x[tr], y[tr]).predict_proba(x[te])
    return probs


def main() -> None:
    warnings.filterwarnings("ignore")
    if not DATA.exists():
        raise SystemExit(f"real data not available: {DATA}")
    from datacure.auditor.runner import run_audit
    from datacure.store import Store
    from datacure.store.ingest import ingest_frame

    frame = pl.read_csv(DATA)
    truth = (frame["label"] != frame["gt"]).to_numpy()
    labels = frame["label"].to_numpy()
    print(f"NoisyAG-News train: {len(frame):,} rows, {truth.mean():.2%} with label != gt")

    db = OUT / "label_quality.duckdb"
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)
    store = Store(db)
    # the truth column stays outside the store
    ingest_frame(store, frame.drop("gt"), split="train", label="label", text="text")
    x = add_vectors(store, len(frame))

    def datacure(config: dict | None = None) -> tuple:
        t0 = time.perf_counter()
        rep = run_audit(store, auditors=["label"], config=config)
        secs = time.perf_counter() - t0
        df = store.polars(
            "SELECT is_issue, score FROM issues WHERE run_id = ? AND auditor = 'label' "
            "ORDER BY row_id",
            [rep.run_id],
        )
        return df["is_issue"].to_numpy(), df["score"].to_numpy(), secs

    rows = []
    flag, score, secs = datacure()  # computes and caches pred_probs and the kNN graph
    rows.append(("datacure label (default)", metrics(flag, score, truth), secs))
    pp = store.arrow("SELECT pred_probs FROM predictions ORDER BY row_id").column("pred_probs")
    probs = pp.combine_chunks().flatten().to_numpy().reshape(len(frame), -1).astype(np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    f, s, secs = datalab_label(labels, x, probs)
    rows.append(("Datalab, same features + pred_probs", metrics(f, s, truth), secs))
    t0 = time.perf_counter()
    lr = logreg_pred_probs(x, labels)
    lr_secs = time.perf_counter() - t0
    f, s, secs = datalab_label(labels, x, lr)
    rows.append(("Datalab, logistic-regression pred_probs", metrics(f, s, truth), secs))
    f, s, secs = datacure({"label": {"knn_weight": 0.0}})
    rows.append(("ablation: datacure, model only", metrics(f, s, truth), secs))
    f, s, secs = datacure({"label": {"filter_by": "prune_by_noise_rate"}})
    rows.append(("ablation: datacure, prune_by_noise_rate", metrics(f, s, truth), secs))
    store.close()

    print(f"(5-fold logistic regression for the anchor took {lr_secs:.1f} s)")
    print(
        f"{'method':42s} {'flagged':>8s} {'prec':>6s} {'recall':>6s} {'F1':>6s} "
        f"{'AUROC':>6s} {'secs':>6s}"
    )
    for name, m, secs in rows:
        print(
            f"{name:42s} {m['flagged']:8.3f} {m['precision']:6.3f} {m['recall']:6.3f} "
            f"{m['f1']:6.3f} {m['auroc']:6.3f} {secs:6.1f}"
        )
    ours = rows[0][1]["f1"]
    same, anchor = rows[1][1]["f1"], rows[2][1]["f1"]
    print(
        f"F1 gain: {ours - same:+.3f} over Datalab with the same pred_probs, "
        f"{ours - anchor:+.3f} over Datalab with logistic-regression pred_probs "
        f"(goal: >= +0.05); AUROC {rows[0][1]['auroc']:.3f} vs {rows[1][1]['auroc']:.3f} "
        f"and {rows[2][1]['auroc']:.3f}"
    )


if __name__ == "__main__":
    main()
