"""datacure's core audit against cleanlab Datalab on the same features and pred_probs.

    .venv/bin/python bench/audit_vs_datalab.py            # 100k x 384, both tools (~6 min)
    .venv/bin/python bench/audit_vs_datalab.py --n 20000  # a quicker look
    .venv/bin/python bench/audit_vs_datalab.py --dataset lowrank  # 100k structured like embeddings
    .venv/bin/python bench/audit_vs_datalab.py --million  # also 1M x 384, datacure alone

Data: seeded `make_blobs(n, 384, centers=10, cluster_std=2.5)` (isotropic, the worst case for
approximate kNN), 10% of the labels flipped to another class, 50 rows replaced by near copies of
others and 20 by far-away points. Each step runs in its own subprocess, so wall time, CPU time
and peak RSS (ru_maxrss) are its own: datacure's ingest writes the rows and vectors into a store
(what `datacure ingest` + `datacure embed` leave), then, in another process, datacure audits
(`run_audit`: kNN graph, 5-fold pred_probs, label, outlier, near_duplicate, non_iid,
class_imbalance, null); Datalab gets the features and datacure's pred_probs and runs
`find_issues` on the same issue types. The label flags of the two are compared (Jaccard), and
both against the planted truth.

`--million`: 1M x 384 with low-rank structure (a 24-d latent with 50 centres projected to 384-d
plus noise, like real embeddings), 10 classes, 10% flipped: datacure alone; targets 5 minutes
and 8 GB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "audit_vs_datalab"
TYPES = ["label", "outlier", "near_duplicate", "non_iid", "class_imbalance", "null"]
sys.path.insert(0, str(ROOT))


# --- data -----------------------------------------------------------------------------------------
def make_blobs_data(n: int, seed: int = 0) -> dict:
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n, 384, centers=10, cluster_std=2.5, random_state=seed)
    x = x.astype(np.float32)
    rng = np.random.default_rng(seed)
    noisy = y.copy()
    flip = rng.choice(n, n // 10, replace=False)
    noisy[flip] = (y[flip] + rng.integers(1, 10, len(flip))) % 10
    return {"x": x, "labels": noisy, **plant_copies_and_far_points(x, noisy, flip, rng, 60.0)}


def plant_copies_and_far_points(x, noisy, flip, rng, far_scale: float) -> dict:
    """In place: 50 rows replaced by near copies of 50 others, 20 by far-away points (none of
    them flipped). Returns the truths."""
    n = len(x)
    rest = np.setdiff1d(np.arange(n), flip)
    planted = rng.choice(rest, 120, replace=False)
    src, near, far = planted[:50], planted[50:100], planted[100:120]
    x[near] = x[src] + rng.normal(scale=0.01, size=(50, x.shape[1])).astype(np.float32)
    noisy[near] = noisy[src]
    x[far] = rng.normal(scale=far_scale, size=(20, x.shape[1])).astype(np.float32)
    return {
        "truth_label": np.isin(np.arange(n), flip),
        "truth_near": np.isin(np.arange(n), np.concatenate([src, near])),
        "truth_far": np.isin(np.arange(n), far),
    }


def make_lowrank_data(n: int, seed: int = 0, chunk: int = 200_000, plant: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(50, 24))
    proj = rng.normal(size=(24, 384)) / np.sqrt(24)
    comp = rng.integers(0, 50, n)
    y = comp % 10
    x = np.empty((n, 384), dtype=np.float32)
    for lo in range(0, n, chunk):
        c = comp[lo : lo + chunk]
        z = centres[c] + rng.normal(size=(len(c), 24))
        x[lo : lo + chunk] = z @ proj + rng.normal(scale=0.3, size=(len(c), 384))
    noisy = y.copy()
    flip = rng.choice(n, n // 10, replace=False)
    noisy[flip] = (y[flip] + rng.integers(1, 10, len(flip))) % 10
    if plant:  # far points: 20x the typical row norm, in random directions
        scale = 20 * float(np.linalg.norm(x[:1000], axis=1).mean()) / np.sqrt(x.shape[1])
        return {"x": x, "labels": noisy, **plant_copies_and_far_points(x, noisy, flip, rng, scale)}
    return {"x": x, "labels": noisy, "truth_label": np.isin(np.arange(n), flip)}


# --- workers (each in its own process) ------------------------------------------------------------
def worker_ingest(data_path: Path, out_path: Path) -> dict:
    """What `datacure ingest` and `datacure embed` leave: samples and the vectors in a store."""
    import polars as pl

    from datacure.store import Store
    from datacure.store.ingest import ingest_frame

    x = np.load(data_path / "x.npy", mmap_mode="r")
    labels = np.load(data_path / "labels.npy")
    db = out_path / "bench.duckdb"
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    store = Store(db)
    ingest_frame(store, pl.DataFrame({"label": labels}), split="train", label="label")
    rid = store.execute("SELECT row_id FROM samples ORDER BY row_id").fetchnumpy()["row_id"]
    with store.transaction():
        store.register_embedding("bench", x.shape[1], "seeded", None, "bench", False)
        for lo in range(0, len(x), 100_000):
            store.append_embeddings(
                "bench", rid[lo : lo + 100_000], np.asarray(x[lo : lo + 100_000])
            )
    store.close()
    return {"ingest_s": time.perf_counter() - t0}


def worker_datacure(data_path: Path, out_path: Path) -> dict:
    """`datacure audit` on the store the ingest worker wrote, in a process of its own."""
    from datacure.auditor.runner import run_audit
    from datacure.store import Store

    labels = np.load(data_path / "labels.npy")
    store = Store(out_path / "bench.duckdb")
    t1 = time.perf_counter()
    rep = run_audit(store, auditors=TYPES)
    t_audit = time.perf_counter() - t1
    ru = resource.getrusage(resource.RUSAGE_SELF)
    flags = {}
    for name in TYPES:
        df = store.polars(
            "SELECT row_id, is_issue, score FROM issues WHERE run_id = ? AND auditor = ? "
            "ORDER BY row_id",
            [rep.run_id, name],
        )
        flag = np.zeros(len(labels), dtype=bool)
        flag[df.filter(df["is_issue"])["row_id"].to_numpy()] = True
        flags[name] = flag
        if name == "label":
            np.save(out_path / "label_score.npy", df["score"].to_numpy())
    np.savez(out_path / "flags.npz", **flags)
    pp = store.arrow("SELECT pred_probs FROM predictions ORDER BY row_id").column("pred_probs")
    probs = pp.combine_chunks().flatten().to_numpy().reshape(len(labels), -1)
    np.save(out_path / "pred_probs.npy", probs.astype(np.float32))
    knn = store.fetchone("SELECT index_kind, recall, seconds FROM knn_graphs")
    p_value = json.loads(
        store.scalar(
            "SELECT info FROM issue_summary WHERE run_id = ? AND auditor = 'non_iid'", [rep.run_id]
        )
    )["p_value"]
    store.close()
    return {
        "audit_s": t_audit,
        # measured before the bench's own reads of the results below
        "audit_peak_rss_gb": ru.ru_maxrss / 1024**2,
        "audit_cpu_s": ru.ru_utime + ru.ru_stime,
        "per_auditor_s": {o.name: round(o.seconds, 2) for o in rep.outcomes},
        "skipped": {o.name: o.reason for o in rep.outcomes if o.status != "ok"},
        "knn": {"index_kind": knn[0], "recall": knn[1], "seconds": knn[2]},
        "non_iid_p": p_value,
    }


def worker_datalab(data_path: Path, out_path: Path) -> dict:
    import warnings

    from cleanlab import Datalab

    warnings.filterwarnings("ignore")
    x = np.load(data_path / "x.npy")
    labels = np.load(data_path / "labels.npy")
    probs = np.load(out_path.parent / "datacure" / "pred_probs.npy").astype(np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    t0 = time.perf_counter()
    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    lab.find_issues(features=x, pred_probs=probs, issue_types={t: {} for t in TYPES})
    wall = time.perf_counter() - t0
    flags = {}
    for name in TYPES:
        try:
            flags[name] = lab.get_issues(name)[f"is_{name}_issue"].to_numpy().astype(bool)
        except ValueError:  # an issue type that failed inside Datalab
            flags[name] = np.zeros(len(labels), dtype=bool)
    np.save(out_path / "label_score.npy", lab.get_issues("label")["label_score"].to_numpy())
    np.savez(out_path / "flags.npz", **flags)
    p = lab.get_info("non_iid").get("p-value")
    return {"audit_s": wall, "non_iid_p": p}


def run_worker(kind: str, data_path: Path, out_path: Path, knn: dict | None = None) -> dict:
    out_path.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--data",
        str(data_path),
        "--out",
        str(out_path),
    ]
    if knn:
        cmd += ["--knn", json.dumps(knn)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"{kind} worker failed (exit {proc.returncode})")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = wall
    return res


# --- reporting ------------------------------------------------------------------------------------
def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def prf(flag: np.ndarray, truth: np.ndarray) -> str:
    tp = (flag & truth).sum()
    p = tp / max(flag.sum(), 1)
    r = tp / max(truth.sum(), 1)
    f = 2 * p * r / max(p + r, 1e-12)
    return f"P {p:.3f} R {r:.3f} F1 {f:.3f}"


def compare(n: int, skip_datalab: bool, kind: str = "blobs") -> None:
    data_path = OUT / f"{kind}_{n}"
    if not (data_path / "x.npy").exists():
        data_path.mkdir(parents=True, exist_ok=True)
        d = make_blobs_data(n) if kind == "blobs" else make_lowrank_data(n, plant=True)
        for k, v in d.items():
            np.save(data_path / f"{k}.npy", v)
    truth = {k: np.load(data_path / f"{k}.npy") for k in ("truth_label", "truth_near", "truth_far")}
    what = "blobs" if kind == "blobs" else "low-rank (24-d latent, 50 centres)"
    print(
        f"== {n:,} x 384 {what}, 10 classes, 10% flipped labels, 50 near-copy pairs, 20 far points"
    )
    run = OUT / f"run_{kind}_{n}"
    ing = run_worker("ingest", data_path, run / "datacure")
    dc = run_worker("datacure", data_path, run / "datacure")
    dc["ingest_s"] = ing["ingest_s"]
    dc["peak_rss_gb"] = dc["audit_peak_rss_gb"]
    print(
        f"datacure: audit {dc['audit_s']:.1f} s, CPU {dc['audit_cpu_s']:.0f} s, peak RSS "
        f"{dc['peak_rss_gb']:.2f} GB (ingest + vector write, another process: "
        f"{ing['ingest_s']:.1f} s, {ing['peak_rss_gb']:.2f} GB); kNN {dc['knn']['index_kind']} "
        f"recall {dc['knn']['recall']:.3f} in {dc['knn']['seconds']:.1f} s"
    )
    print(f"  per auditor (s): {dc['per_auditor_s']}")
    fd = np.load(run / "datacure" / "flags.npz")
    if skip_datalab:
        print("  label vs truth:", prf(fd["label"], truth["truth_label"]))
        return
    dl = run_worker("datalab", data_path, run / "datalab")
    print(
        f"Datalab:  find_issues {dl['audit_s']:.1f} s, process CPU {dl['cpu_s']:.0f} s, "
        f"peak RSS {dl['peak_rss_gb']:.2f} GB"
    )
    fl = np.load(run / "datalab" / "flags.npz")
    speed = dl["audit_s"] / dc["audit_s"]
    print(
        f"ratio: datacure audit is {speed:.1f}x faster than Datalab "
        f"({dl['audit_s'] / (dc['audit_s'] + dc['ingest_s']):.1f}x counting ingest), "
        f"peak RSS {dc['peak_rss_gb'] / dl['peak_rss_gb']:.2f}x Datalab's"
    )
    print(f"{'issue type':16s} {'datacure':>9s} {'Datalab':>9s} {'Jaccard':>8s}")
    for t in TYPES:
        print(f"{t:16s} {fd[t].sum():9d} {fl[t].sum():9d} {jaccard(fd[t], fl[t]):8.3f}")
    print(f"non_iid p-value: datacure {dc['non_iid_p']:.3f}, Datalab {dl['non_iid_p']:.3f}")
    print(
        "label vs planted flips: datacure",
        prf(fd["label"], truth["truth_label"]),
        "| Datalab",
        prf(fl["label"], truth["truth_label"]),
    )
    print(
        "near_duplicate vs planted: datacure",
        prf(fd["near_duplicate"], truth["truth_near"]),
        "| Datalab",
        prf(fl["near_duplicate"], truth["truth_near"]),
    )
    print(
        "outlier vs planted far points: datacure",
        prf(fd["outlier"], truth["truth_far"]),
        "| Datalab",
        prf(fl["outlier"], truth["truth_far"]),
    )
    ok = jaccard(fd["label"], fl["label"]) >= 0.9
    print(
        f"label-issue Jaccard >= 0.9: {'yes' if ok else 'NO'}; >= 10x faster: "
        f"{'yes' if speed >= 10 else 'NO'}; lower peak RSS: "
        f"{'yes' if dc['peak_rss_gb'] < dl['peak_rss_gb'] else 'NO'}"
    )


def million() -> None:
    n = 1_000_000
    data_path = OUT / "lowrank_1m"
    if not (data_path / "x.npy").exists():
        data_path.mkdir(parents=True, exist_ok=True)
        d = make_lowrank_data(n)
        for k, v in d.items():
            np.save(data_path / f"{k}.npy", v)
        del d
    truth = np.load(data_path / "truth_label.npy")
    print(
        "== 1,000,000 x 384 low-rank (24-d latent, 50 centres), 10 classes, 10% flipped; datacure"
    )
    ing = run_worker("ingest", data_path, OUT / "run_1m" / "datacure")
    dc = run_worker("datacure", data_path, OUT / "run_1m" / "datacure")
    dc["peak_rss_gb"] = dc["audit_peak_rss_gb"]
    print(
        f"datacure: audit {dc['audit_s']:.1f} s, CPU {dc['audit_cpu_s']:.0f} s, peak RSS "
        f"{dc['peak_rss_gb']:.2f} GB (ingest + vector write, another process: "
        f"{ing['ingest_s']:.1f} s, {ing['peak_rss_gb']:.2f} GB); kNN {dc['knn']['index_kind']} "
        f"recall {dc['knn']['recall']:.3f} in {dc['knn']['seconds']:.1f} s"
    )
    print(f"  per auditor (s): {dc['per_auditor_s']}")
    fd = np.load(OUT / "run_1m" / "datacure" / "flags.npz")
    print("  label vs planted flips:", prf(fd["label"], truth))
    print(
        f"  targets: audit <= 300 s: {'yes' if dc['audit_s'] <= 300 else 'NO'}; "
        f"peak RSS <= 8 GB: {'yes' if dc['peak_rss_gb'] <= 8 else 'NO'}"
    )
    for f in (OUT / "run_1m" / "datacure").glob("bench.duckdb*"):
        f.unlink()  # a 3 GB store: keep the flags, not the file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--skip-datalab", action="store_true")
    ap.add_argument(
        "--dataset",
        dest="kind",
        choices=["blobs", "lowrank"],
        default="blobs",
        help="blobs: isotropic, the worst case; lowrank: structured like real embeddings",
    )
    ap.add_argument("--million", action="store_true", help="also run 1M x 384 (datacure alone)")
    ap.add_argument("--only-million", action="store_true")
    ap.add_argument("--worker", choices=["ingest", "datacure", "datalab"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker = {"ingest": worker_ingest, "datacure": worker_datacure, "datalab": worker_datalab}
        res = worker[args.worker](Path(args.data), Path(args.out))
        ru = resource.getrusage(resource.RUSAGE_SELF)
        res["peak_rss_gb"] = ru.ru_maxrss / 1024**2
        # CPU seconds of the whole process: on a shared machine wall time includes waiting
        res["cpu_s"] = ru.ru_utime + ru.ru_stime
        print(json.dumps(res, default=float))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.only_million:
        compare(args.n, args.skip_datalab, args.kind)
    if args.million or args.only_million:
        million()


if __name__ == "__main__":
    main()
