"""The `label` auditor against cleanlab Datalab: a sweep over real data sets, noise kinds and rates.

    .venv/bin/python bench/label_quality.py            # the full sweep (also --full)
    .venv/bin/python bench/label_quality.py --quick    # seed 0, 5% and 20% only
    .venv/bin/python bench/label_quality.py --seeds 0  # every rate, one seed

Data (read in place from ../shared/data and scikit-learn; the truth never enters the store or
any model, it only scores the flags at the end):

- NoisyAG-News train (10,000 news items): `label` is the majority vote of human annotators, `gt`
  the original AG News label; truth `label != gt` (real human noise, 19.75% of rows).
- AG News test (7,600 items, `gt`), IMDb reviews (the 2,440 originals of the counterfactual
  pairs, sentiment), MNLI dev-matched (9,815 premise [SEP] hypothesis pairs, 3 classes),
  scikit-learn's digits (1,797 8x8 images, pixels / 16 as the feature) and, held out from every
  design decision, the 2,440 human-edited IMDb counterfactuals, each with
  - random flips: 2%, 5%, 10% and 20% of labels moved to another class uniformly at random;
  - boundary flips (AG News test, IMDb, digits, IMDb edited): the same rates moved where a
    separate model fitted on the TRUE labels of the other rows is confused (`boundary_flip`):
    semi-synthetic human-like noise, since NoisyAG-News is the only real human-noise set;
  - the clean labels (rate 0): every flag is a false alarm, only the flagged share is scored;
  seeds 0, 1, 2; truth: the flipped rows.

Features: MiniLM (all-MiniLM-L6-v2, bench/common.py `minilm_vectors`, cached in bench/out) for
text, the pixels for digits. In one run, on the same features, for every (set, kind, rate,
seed):

- datacure `label` with its defaults (its own pred_probs; stacked views;
  `noise_model: class_conditional`; expected-F1 cut), and with `noise_model: mixed`
  (`random_noise_prior` 0.6), `auto` and `annotator`;
- Datalab `find_issues(features=, pred_probs=)` with its default label rule
  (`prune_by_noise_rate`) and with `predicted_neq_given`, each given datacure's pred_probs (the
  `predictions` table) and a plain 5-fold logistic regression's (sklearn
  `LogisticRegression(max_iter=1000)` on the features, how users call it): four configurations.
  The anchor is the best of the four per set, kind and rate (by median F1, and separately by
  median AUPRC). A Datalab failure is printed and counted, never turned into "no flags".

Reported per method: flagged share, precision, recall, F1 of the flags, AUROC and AUPRC of the
score (medians and ranges over seeds), whether datacure's default reaches the anchor, and which
error model `auto` chose.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from pathlib import Path

# One BLAS/OpenMP thread per process: on this shared 2-core machine, multi-threaded BLAS under
# load made the anchor's logistic regression ~30x slower (oversubscription), not faster.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, RESULTS, SHARED_DATA, median_range, minilm_vectors, table, write_results  # noqa: E402

RATES = (0.02, 0.05, 0.1, 0.2)
SEEDS = (0, 1, 2)
QUICK_RATES = (0.05, 0.2)
# where each design choice was made (see the notes written with the results)
TUNING = ("noisy_ag_news", "ag_news_test", "digits", "imdb", "mnli")
HELD_OUT = ("imdb_revised",)
DATALAB = (
    ("Datalab default, datacure pred_probs", "prune_by_noise_rate", "datacure"),
    ("Datalab default, logreg pred_probs", "prune_by_noise_rate", "logreg"),
    ("Datalab predicted_neq_given, datacure pred_probs", "predicted_neq_given", "datacure"),
    ("Datalab predicted_neq_given, logreg pred_probs", "predicted_neq_given", "logreg"),
)
OURS = "datacure label (default: noise_model class_conditional)"
MIXED = "datacure label, noise_model: mixed"
AUTO = "datacure label, noise_model: auto"
ANNOTATOR = "datacure label, noise_model: annotator"
OURS_ALL = (OURS, MIXED, AUTO, ANNOTATOR)
KINDS = ("random", "boundary")
BOUNDARY_SETS = ("ag_news_test", "imdb", "digits", "imdb_revised")  # boundary flips run here


# --- data ----------------------------------------------------------------------------------------
def _imdb(half: int) -> tuple[list[str], np.ndarray]:
    """IMDb counterfactual pairs: half 0 the first review of each pair, 1 its edited twin."""
    texts, y = [], []
    for part in ("train", "dev", "test"):
        f = pl.read_csv(
            SHARED_DATA / "imdb_counterfactual" / f"{part}_paired.tsv",
            separator="\t",
            quote_char='"',
        )[half::2]
        texts += [re.sub(r"<br\s*/?>", " ", t) for t in f["Text"].to_list()]
        y += [int(s == "Positive") for s in f["Sentiment"].to_list()]
    return texts, np.array(y)


def load_set(name: str) -> dict:
    """{texts or None, x (features), clean (labels before flips) or given + gt (real noise)}."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return {"texts": None, "x": (d.data / 16.0).astype(np.float32), "clean": d.target}
    if name == "noisy_ag_news":
        f = pl.read_csv(SHARED_DATA / "noisy_ag_news" / "train_10k.csv")
        texts = f["text"].to_list()
        return {
            "texts": texts,
            "x": minilm_vectors(texts, "noisy_ag"),
            "given": f["label"].to_numpy(),
            "gt": f["gt"].to_numpy(),
        }
    if name == "ag_news_test":
        f = pl.read_csv(SHARED_DATA / "noisy_ag_news" / "test.csv")
        texts, clean = f["text"].to_list(), f["gt"].to_numpy()
        tag = "ag_test"
    elif name == "mnli":
        f = pl.read_csv(
            SHARED_DATA / "mnli_negation" / "mnli_dev_matched_bert100.tsv",
            separator="\t",
            quote_char=None,
        )
        texts = [f"{p} [SEP] {h}" for p, h in zip(f["premise"], f["hypothesis"])]
        codes = {"contradiction": 0, "entailment": 1, "neutral": 2}
        clean = np.array([codes[g] for g in f["gold_label"]])
        tag = "mnli"
    elif name in ("imdb", "imdb_revised"):
        texts, clean = _imdb(0 if name == "imdb" else 1)
        tag = name
    else:
        raise SystemExit(f"unknown data set {name!r}")
    return {"texts": texts, "x": minilm_vectors(texts, tag), "clean": clean}


def flip(clean: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """`rate` of the labels moved to another class uniformly at random (seeded)."""
    k = int(clean.max()) + 1
    rng = np.random.default_rng([seed, round(rate * 1000)])
    idx = rng.choice(len(clean), int(round(rate * len(clean))), replace=False)
    out = clean.copy()
    out[idx] = (clean[idx] + rng.integers(1, k, len(idx))) % k
    return out


def confusion_model(data: dict, seed: int = 0) -> np.ndarray:
    """Out-of-fold P(class | row) of a model fitted on the TRUE labels of the other rows, a
    different model from every compared method's (datacure's LDA, kNN vote and naive Bayes;
    the anchors' logistic regression on the same features): a TF-IDF (word 1-2 grams) logistic
    regression for text, an RBF support vector machine (Platt-scaled) on the pixels for
    digits. Cached per set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import SVC

    if "_confusion" in data:
        return data["_confusion"]
    y = data["clean"]
    if data["texts"] is not None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        x = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit_transform(
            data["texts"]
        )
    else:
        x = data["x"]
    probs = np.zeros((len(y), int(y.max()) + 1))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y):
        if data["texts"] is not None:
            model = LogisticRegression(max_iter=2000)
        else:
            model = SVC(probability=True, random_state=seed)
        probs[te] = model.fit(x[tr], y[tr]).predict_proba(x[te])
    data["_confusion"] = probs
    return probs


def boundary_flip(clean: np.ndarray, confusion: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """`rate` of the labels moved where a separate model is confused, like human noise: rows
    drawn without replacement with probability proportional to that model's probability of
    another class (1 - P(true class)), each moved to another class in proportion to its
    probability there (seeded)."""
    rng = np.random.default_rng([seed, round(rate * 1000), 7])
    rows = np.arange(len(clean))
    other = confusion.copy()
    other[rows, clean] = 0.0
    w = other.sum(axis=1) + 1e-12
    idx = rng.choice(len(clean), int(round(rate * len(clean))), replace=False, p=w / w.sum())
    cum = np.cumsum(other[idx] / w[idx, None], axis=1)
    new = (rng.random(len(idx))[:, None] > cum).sum(axis=1)
    new = np.minimum(new, confusion.shape[1] - 1)
    new = np.where(new == clean[idx], other[idx].argmax(axis=1), new)  # rounding at the top
    out = clean.copy()
    out[idx] = new
    return out


# --- methods -------------------------------------------------------------------------------------
def metrics(flag: np.ndarray, score: np.ndarray, truth: np.ndarray) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    tp = float((flag & truth).sum())
    p = tp / max(int(flag.sum()), 1)
    r = tp / max(int(truth.sum()), 1)
    return {
        "flagged": float(flag.mean()),
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / max(p + r, 1e-12),
        "auroc": float(roc_auc_score(truth, -score)),
        "auprc": float(average_precision_score(truth, -score)),
    }


def logreg_pred_probs(x: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    probs = np.zeros((len(y), int(y.max()) + 1))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y):
        probs[te] = LogisticRegression(max_iter=1000).fit(x[tr], y[tr]).predict_proba(x[te])
    return probs


def datalab_label(labels, x, probs, filter_by: str, all_types: bool = False) -> tuple:
    """(is_label_issue, label_score, seconds) of Datalab's label check. With `all_types`, every
    default issue type runs (`find_issues(features=, pred_probs=)` as most users call it)."""
    from cleanlab import Datalab

    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    kwargs = {"filter_by": filter_by}
    types = {"label": {"clean_learning_kwargs": {"find_label_issues_kwargs": kwargs}}}
    if all_types:
        types = None if filter_by == "prune_by_noise_rate" else types
    t0 = time.perf_counter()
    lab.find_issues(features=x, pred_probs=probs, issue_types=types)
    secs = time.perf_counter() - t0
    iss = lab.get_issues("label")
    return iss["is_label_issue"].to_numpy(), iss["label_score"].to_numpy(), secs


def datacure_label(store, config: dict | None = None) -> tuple:
    from datacure.auditor.runner import run_audit

    t0 = time.perf_counter()
    rep = run_audit(store, auditors=["label"], config=config)
    secs = time.perf_counter() - t0
    df = store.polars(
        "SELECT is_issue, score FROM issues WHERE run_id = ? AND auditor = 'label' ORDER BY row_id",
        [rep.run_id],
    )
    info = store.scalar(
        "SELECT info FROM issue_summary WHERE run_id = ? AND auditor = 'label'", [rep.run_id]
    )
    import json

    return df["is_issue"].to_numpy(), df["score"].to_numpy(), secs, json.loads(info)


def make_store(path: Path, labels: np.ndarray, x: np.ndarray, texts: list[str] | None):
    """A fresh store: the (noisy) labels, the texts when there are any, and `x` as embedding."""
    from datacure.store import Store
    from datacure.store.ingest import ingest_frame

    for p in (path, Path(str(path) + ".wal")):
        p.unlink(missing_ok=True)
    store = Store(path)
    frame = {"label": labels}
    if texts is not None:
        frame["text"] = texts
    ingest_frame(
        store, pl.DataFrame(frame), split="train", label="label", text="text" if texts else None
    )
    rid = store.execute("SELECT row_id FROM samples ORDER BY row_id").fetchnumpy()["row_id"]
    with store.transaction():
        store.register_embedding(
            "features", x.shape[1], "minilm" if texts else "pixels", None, "bench", False
        )
        store.append_embeddings("features", rid, np.asarray(x, dtype=np.float32))
    return store


def score_flags(flag: np.ndarray, score: np.ndarray, truth: np.ndarray) -> dict:
    """metrics, or only the flagged share on a clean set (no wrong label to find)."""
    return metrics(flag, score, truth) if truth.any() else {"flagged": float(flag.mean())}


def run_case(
    name: str, data: dict, rate, seed: int, check_datalab: bool, kind: str = "random"
) -> dict:
    """Every method on one (set, kind, rate, seed): {method: metrics or {"failed": msg}}, plus
    info. kind "random": uniform flips; "boundary": flips where a separate model is confused;
    rate 0: the clean labels (only the flagged share is scored)."""
    if rate == "real":
        labels, truth = data["given"], data["given"] != data["gt"]
    elif kind == "boundary":
        labels = boundary_flip(data["clean"], confusion_model(data), rate, seed)
        truth = labels != data["clean"]
    else:
        labels = flip(data["clean"], rate, seed)
        truth = labels != data["clean"]
    x = data["x"]
    db = OUT / "label_quality.duckdb"
    store = make_store(db, labels, x, data["texts"])
    out: dict = {"methods": {}, "seconds": {}}
    try:
        flag, score, secs, info = datacure_label(store)
        out["methods"][OURS] = score_flags(flag, score, truth)
        out["seconds"][OURS] = secs
        out["info"] = {
            k: info.get(k)
            for k in (
                "estimated_noise_rate",
                "expected_errors",
                "model_accuracy",
                "knn_accuracy",
                "text_accuracy",
                "combined_accuracy",
                "view_weights",
                "text_smoothing",
                "uniform_flip_rate",
                "uniform_flip_gain",
                "uniform_flip_share",
                "error_prob_model",
            )
        }
        for method, model in ((MIXED, "mixed"), (AUTO, "auto"), (ANNOTATOR, "annotator")):
            flag, score, secs, info = datacure_label(store, {"label": {"noise_model": model}})
            out["methods"][method] = score_flags(flag, score, truth)
            if model == "auto":  # what auto read the noise as (the default does not ask)
                out["info"]["error_prob_model"] = info.get("error_prob_model")
        pp = store.arrow("SELECT pred_probs FROM predictions ORDER BY row_id").column("pred_probs")
        ours_pp = pp.combine_chunks().flatten().to_numpy().reshape(len(labels), -1)
    finally:
        store.close()
    ours_pp = ours_pp.astype(np.float64)
    ours_pp /= ours_pp.sum(axis=1, keepdims=True)
    t0 = time.perf_counter()
    lr_pp = logreg_pred_probs(x, labels, seed)
    out["seconds"]["logreg pred_probs"] = time.perf_counter() - t0
    probs = {"datacure": ours_pp, "logreg": lr_pp}
    for method, rule, source in DATALAB:
        try:
            flag, score, secs = datalab_label(labels, x, probs[source], rule)
        except Exception as exc:  # noqa: BLE001 - an anchor failure is counted, never "no flags"
            print(f"  FAILED {method} on {name} {rate} seed {seed}: {exc!r}")
            out["methods"][method] = {"failed": repr(exc)[:300]}
            continue
        out["methods"][method] = score_flags(flag, score, truth)
        out["seconds"][method] = secs
        if check_datalab and rule == "prune_by_noise_rate" and source == "datacure":
            # label-only find_issues gives the same label flags as all default issue types
            full, full_score, _ = datalab_label(labels, x, probs[source], rule, all_types=True)
            out["datalab_label_only_equals_all_types"] = bool(
                np.array_equal(full, flag) and np.allclose(full_score, score)
            )
    return out


# --- summary -------------------------------------------------------------------------------------
def _values(cs: list, method: str, key: str) -> list[float]:
    return [
        c["methods"][method][key]
        for c in cs
        if method in c["methods"] and key in c["methods"][method]
    ]


def _med(cs: list, method: str, key: str) -> float | None:
    v = _values(cs, method, key)
    return float(np.median(v)) if v else None


def summarise(cases: list[dict]) -> tuple[list[dict], list[list], list[str], list[list]]:
    """Per (set, noise kind, rate): medians over seeds of every method, the anchor (best Datalab
    config by median F1 and by median AUPRC) and datacure's margin over it; and the flagged
    share of every method on the clean sets."""
    groups: dict = {}
    for c in cases:
        groups.setdefault((c["set"], c["kind"], c["rate"]), []).append(c)
    rows, detail, losses, clean = [], [], [], []
    for (name, kind, rate), cs in groups.items():
        failed = {
            m: sum("failed" in c["methods"].get(m, {"failed": 1}) for c in cs) for m, *_ in DATALAB
        }
        if rate == 0:
            clean.append(
                [name, len(cs)]
                + [median_range(_values(cs, m, "flagged")) for m in OURS_ALL]
                + [median_range(_values(cs, m, "flagged")) for m, *_ in DATALAB]
            )
            continue
        anchor = {}
        for key in ("f1", "auprc"):
            med = {m: _med(cs, m, key) for m, *_ in DATALAB if _values(cs, m, key)}
            best = max(med, key=med.get) if med else None
            anchor[key] = (best, med.get(best))
        ours = {key: _med(cs, OURS, key) for key in ("f1", "auprc")}
        rate_s = "real" if rate == "real" else f"{rate:.0%}"
        win = {k: anchor[k][1] is not None and ours[k] >= anchor[k][1] for k in ours}
        for k in ("f1", "auprc"):
            if not win[k]:
                losses.append(
                    f"{name} {kind} {rate_s}: {k.upper()} {ours[k]:.3f} vs {anchor[k][1]:.3f} "
                    f"({anchor[k][0]}), short by {anchor[k][1] - ours[k]:.3f}"
                )
        models = [c.get("info", {}).get("error_prob_model") for c in cs]
        rows.append(
            {
                "set": name,
                "kind": kind,
                "rate": rate_s,
                "seeds": len(cs),
                "ours": ours,
                "ours_flagged": _med(cs, OURS, "flagged"),
                "error_prob_model": {m: models.count(m) for m in set(models)},
                "anchor": {k: {"config": a[0], "median": a[1]} for k, a in anchor.items()},
                "datalab_failures": failed,
                "reached": win,
            }
        )
        for method in list(OURS_ALL) + [m for m, *_ in DATALAB]:
            detail.append(
                [name, kind, rate_s, method]
                + [median_range(_values(cs, method, k)) for k in METRIC_KEYS]
                + [failed.get(method, 0)]
            )
    return rows, detail, losses, clean


METRIC_KEYS = ("flagged", "precision", "recall", "f1", "auroc", "auprc")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="seed 0, rates 5%% and 20%% only")
    ap.add_argument("--full", action="store_true", help="every rate and seed (the default)")
    ap.add_argument("--sets", default=",".join(TUNING + HELD_OUT), help="comma-separated sets")
    ap.add_argument("--kinds", default=",".join(KINDS), help="noise kinds: random,boundary")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (overrides the mode's)")
    ap.add_argument("--name", default=None, help="results file stem")
    ap.add_argument(
        "--readme", action="store_true", help="print the README tables from the results JSON"
    )
    args = ap.parse_args()
    if args.readme:
        print(readme_tables(RESULTS / f"{args.name or 'label_quality'}.json"))
        return
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    rates, seeds = (QUICK_RATES, (0,)) if args.quick else (RATES, SEEDS)
    if args.seeds:
        seeds = tuple(int(x) for x in args.seeds.split(","))
    name = args.name or ("label_quality_quick" if args.quick else "label_quality")
    kinds = args.kinds.split(",")
    OUT.mkdir(parents=True, exist_ok=True)
    cases = []
    check = True
    for set_name in args.sets.split(","):
        data = load_set(set_name)
        if "gt" in data:
            todo = [("real", "real", 0)]
        else:
            todo = [("clean", 0, 0)]  # the clean labels: the flagged share is a false alarm
            for kind in kinds:
                if kind == "random" or set_name in BOUNDARY_SETS:
                    todo += [(kind, r, s) for r in rates for s in seeds]
        for kind, rate, seed in todo:
            t0 = time.perf_counter()
            res = run_case(set_name, data, rate, seed, check, kind)
            check = check and "datalab_label_only_equals_all_types" not in res
            res.update({"set": set_name, "kind": kind, "rate": rate, "seed": seed})
            cases.append(res)
            m = res["methods"]
            if rate == 0:
                print(
                    f"{set_name:14s} clean: datacure flags {m[OURS]['flagged']:.3f} | Datalab "
                    + " ".join(
                        f"{v.get('flagged', float('nan')):.3f}"
                        for k, v in m.items()
                        if k.startswith("Datalab")
                    )
                    + f" ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
                continue
            best = max(
                (v["f1"] for k, v in m.items() if k.startswith("Datalab") and "failed" not in v),
                default=float("nan"),
            )
            print(
                f"{set_name:14s} {kind:8s} {rate!s:5s} seed {seed}: "
                f"datacure F1 {m[OURS]['f1']:.3f} "
                f"AUPRC {m[OURS]['auprc']:.3f} ({res['info'].get('error_prob_model')}) | best "
                f"Datalab F1 {best:.3f} | auto F1 {m[AUTO]['f1']:.3f} "
                f"annotator F1 {m[ANNOTATOR]['f1']:.3f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        save(cases, args, name, kinds, rates, seeds, started, final=False)
    save(cases, args, name, kinds, rates, seeds, started, final=True)


def save(cases, args, name, kinds, rates, seeds, started, final: bool) -> None:
    """Summarise and write the results JSON; called after every set (a partial file says which
    sets are done) and at the end."""
    rows, detail, losses, clean = summarise(cases)
    head = ["set", "noise", "rate", "datacure F1", "anchor F1 (config)", "datacure AUPRC"]
    head += ["anchor AUPRC (config)", "reached", "error model (seeds)"]
    short = {c: c.replace("Datalab ", "").replace(" pred_probs", "") for c, *_ in DATALAB}
    main_rows = [
        [
            r["set"],
            r["kind"],
            r["rate"],
            f"{r['ours']['f1']:.3f}",
            f"{r['anchor']['f1']['median']:.3f} ({short.get(r['anchor']['f1']['config'])})",
            f"{r['ours']['auprc']:.3f}",
            f"{r['anchor']['auprc']['median']:.3f} ({short.get(r['anchor']['auprc']['config'])})",
            "F1 "
            + ("yes" if r["reached"]["f1"] else "NO")
            + ", AUPRC "
            + ("yes" if r["reached"]["auprc"] else "NO"),
            ", ".join(f"{k} {v}" for k, v in sorted(r["error_prob_model"].items(), key=str)),
        ]
        for r in rows
    ]
    tables = [
        table(
            "label quality: datacure `label` (defaults) vs the best Datalab configuration",
            head,
            main_rows,
            note="medians over seeds; anchor = the best of four Datalab configurations by "
            "median, chosen per set, noise kind and rate and per metric; error model = what "
            "noise_model: auto chose, per seed",
        ),
        table(
            "label quality, every method: median (min-max) over seeds",
            ["set", "noise", "rate", "method", *METRIC_KEYS, "failed runs"],
            detail,
        ),
        table(
            "flagged share on the clean labels (no wrong label planted): false alarms",
            ["set", "seeds", *[m.replace("datacure label", "datacure") for m in OURS_ALL]]
            + [short[m] for m, *_ in DATALAB],
            clean,
            note="every flag here is a false alarm as far as the set's own labels go",
        ),
    ]
    if final:
        for line in losses:
            print("NOT REACHED:", line)
        for r in clean:
            print("CLEAN:", r)
    done = sorted({c["set"] for c in cases}, key=[*args.sets.split(",")].index)
    partial = [] if final else [f"PARTIAL: written after the sets {done}; the run went on."]
    load = np.round(np.array(__import__("os").getloadavg()), 2).tolist()
    write_results(
        name,
        {"tables": tables, "summary": rows, "not_reached": losses, "clean": clean, "cases": cases},
        inputs={
            "sets": args.sets.split(","),
            "kinds": kinds,
            "boundary_sets": list(BOUNDARY_SETS),
            "rates": list(rates),
            "seeds": list(seeds),
            "features": "MiniLM all-MiniLM-L6-v2 (text), pixels / 16 (digits)",
            "tuning_sets": list(TUNING),
            "held_out_sets": list(HELD_OUT),
            "sets_done": done,
        },
        notes=partial
        + NOTES
        + [
            f"Machine shared with other engineers' jobs; load average at the end {load}. "
            "Seconds per method are in cases[].seconds (not a benchmark of speed).",
        ],
        started=started,
    )


SET_NAMES = {
    "noisy_ag_news": "NoisyAG-News",
    "ag_news_test": "AG News test",
    "imdb": "IMDb",
    "imdb_revised": "IMDb edited (held out)",
    "mnli": "MNLI",
    "digits": "digits",
}
# the README's selected cells; every cell where datacure's default falls short is added
README_CELLS = (
    ("noisy_ag_news", "real", "real"),
    ("digits", "random", "2%"),
    ("digits", "boundary", "2%"),
    ("digits", "boundary", "5%"),
    ("imdb", "random", "5%"),
    ("imdb", "boundary", "5%"),
    ("imdb_revised", "random", "5%"),
    ("imdb_revised", "boundary", "5%"),
    ("ag_news_test", "random", "2%"),
    ("ag_news_test", "random", "20%"),
    ("ag_news_test", "boundary", "2%"),
    ("mnli", "random", "5%"),
)


def readme_tables(path: Path) -> str:
    """The README's label-quality tables (selected cells, the clean-label flagged shares),
    rendered from a results JSON: medians over seeds with (min-max) where there are several."""
    import json

    fig = json.loads(path.read_text())["figures"]
    cases = fig["cases"]
    short = {c: c.replace("Datalab ", "").replace(" pred_probs", "") for c, *_ in DATALAB}

    def cell(c):
        return (c["set"], c["kind"], "real" if c["rate"] == "real" else f"{c['rate']:.0%}")

    keep = set(README_CELLS) | {
        (r["set"], r["kind"], r["rate"]) for r in fig["summary"] if not all(r["reached"].values())
    }
    head = "| set | noise | rate | datacure default F1 | `mixed` F1 | `auto` F1 "
    head += "| best Datalab F1 (config) | datacure AUPRC | best Datalab AUPRC (config) |\n"
    head += "|---|---|---|---|---|---|---|---|---|"
    lines = [head]
    for r in fig["summary"]:
        key = (r["set"], r["kind"], r["rate"])
        if key not in keep:
            continue
        cs = [c for c in cases if cell(c) == key]
        a = r["anchor"]
        lines.append(
            f"| {SET_NAMES[r['set']]} | {'human' if r['kind'] == 'real' else r['kind']} "
            f"| {r['rate']} | {median_range(_values(cs, OURS, 'f1'))} "
            f"| {median_range(_values(cs, MIXED, 'f1'))} "
            f"| {median_range(_values(cs, AUTO, 'f1'))} "
            f"| {median_range(_values(cs, a['f1']['config'], 'f1'))} "
            f"({short[a['f1']['config']]}) | {median_range(_values(cs, OURS, 'auprc'))} "
            f"| {median_range(_values(cs, a['auprc']['config'], 'auprc'))} "
            f"({short[a['auprc']['config']]}) |"
        )
    lines += [
        "",
        "| clean labels | datacure default | `mixed` | `auto` | Datalab default "
        "(datacure / logreg pred_probs) | Datalab `predicted_neq_given` (datacure / logreg) |",
        "|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(c["set"] for c in cases if c["rate"] == 0):
        cs = [c for c in cases if c["set"] == name and c["rate"] == 0]

        def pct(method, cs=cs):
            v = _values(cs, method, "flagged")
            return f"{100 * np.median(v):.1f}%" if v else "-"

        d = [pct(m) for m, *_ in DATALAB]
        lines.append(
            f"| {SET_NAMES[name]} | {pct(OURS)} | {pct(MIXED)} | {pct(AUTO)} | {d[0]} / {d[1]} "
            f"| {d[2]} / {d[3]} |"
        )
    won = {k: sum(r["reached"][k] for r in fig["summary"]) for k in ("f1", "auprc")}
    lines.append(
        f"\nreached: F1 {won['f1']} and AUPRC {won['auprc']} of {len(fig['summary'])} cells"
    )
    return "\n".join(lines)


NOTES = [
    "Truth never enters a store or a model: it scores the flags only.",
    "Noise kinds: random = labels moved to another class uniformly at random; boundary = "
    "labels moved where a separate model (TF-IDF word 1-2 gram logistic regression for text, "
    "an RBF SVM on the pixels for digits, 5-fold, fitted on the TRUE labels of the other rows; "
    "none of the compared methods' models) "
    "gives another class probability: rows drawn in proportion to that probability, moved to "
    "a class in proportion to it (semi-synthetic human-like noise, since NoisyAG-News is the "
    "only set with real human noise here). rate 0 = the clean labels, scored by flagged share.",
    "Design choices and where they were made: the signed stack weights on MNLI; the TF-IDF "
    "naive Bayes view and the LDA shrinkage on IMDb; the expected-F1 cut and the "
    "forward-corrected error probabilities on AG News test, digits and NoisyAG-News; "
    "noise_model auto's threshold (FLIP_CHANNEL_SHARE, the uniform flip channel's share of "
    "the confident joint's noise rate) on seed-0 runs of NoisyAG-News and random and boundary "
    "flips of AG News test, IMDb and digits (digits boundary flips then from a logistic "
    "regression on the pixels, replaced by the RBF SVM because the logistic regression is the "
    "anchor's own model), where the shares fell in two groups with a wide gap; "
    "imdb_revised (the human-edited twins of the IMDb reviews) was held out of every "
    "decision, MNLI was not used for the threshold. noise_model mixed's "
    "random_noise_prior (0.6) was chosen on digits and AG News test (boundary and random "
    "flips) from the cached stacked probabilities of the previous sweep (seeds 0-2; weights "
    "0.5, 0.6 and 0.7 tried: 0.5 lost NoisyAG-News by less but flagged more on the clean "
    "sets, 0.7 gave back most of the digits boundary gain), and checked on IMDb, IMDb edited, "
    "MNLI and NoisyAG-News (their figures for every weight were printed beside, so they are "
    "not blind held-out sets for this one number).",
    "No parameter is chosen by looking at the truth of the set it is scored on: the stack "
    "weights, the naive Bayes smoothing, the shrinkage, the noise matrix, the uniform flip "
    "rate, the choice of error model and the cut are all fitted on the given labels of the "
    "audited set.",
    "Datalab runs with issue_types={'label': ...} for speed; "
    "datalab_label_only_equals_all_types in the first case records that the label flags "
    "and scores equal those of find_issues(features=, pred_probs=) with every default "
    "issue type.",
]


if __name__ == "__main__":
    main()
