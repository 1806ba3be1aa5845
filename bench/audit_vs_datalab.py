"""datacure's core audit against cleanlab Datalab in the configurations a fair expert would
choose, each in its own process, side by side in one run.

    .venv/bin/python bench/audit_vs_datalab.py                 # quick: 100k low-rank (`make bench`)
    .venv/bin/python bench/audit_vs_datalab.py --full          # + 100k blobs, 1M low-rank
    .venv/bin/python bench/audit_vs_datalab.py --n 20000       # a quicker look

Data (seeded, 384-d float32, 10 classes, 10% of the labels flipped to another class, 50 rows
replaced by near copies of 50 others, 20 by far-away points):

- `lowrank`: structured like real embeddings (a 24-d latent with 50 centres projected to 384-d
  plus noise; a class is 5 centres, so classes are multimodal);
- `blobs`: isotropic `make_blobs(centers=10, cluster_std=2.5)`, the worst case for any kNN index.

Issue types: label, outlier, near_duplicate, non_iid, class_imbalance, null. Steps, each in a
process of its own (wall, CPU and peak RSS are its own):

1. datacure ingest: the rows and vectors written into a store (what `datacure ingest` and
   `datacure embed` leave);
2. datacure audit (`run_audit`): kNN graph, 5-fold pred_probs, the six auditors. Its graph
   time (recorded in `knn_graphs`) is reported apart from the rest;
3. Datalab `find_issues(features=X, pred_probs=P)`: how most users call it; Datalab builds its
   kNN graph inside (sklearn brute force, cosine), so graph and auditors are not separable;
4. Datalab `find_issues(features=X, knn_graph=G, pred_probs=P)` with G = datacure's graph (CSR,
   cosine distances): the same neighbours as datacure; graph time = datacure's;
5. Datalab with G = an exact graph from FAISS brute force (`faiss.knn`, inner product on
   normalised vectors), built in that process and timed apart;
6. as 4, with Datalab's label check given datacure's flagging rule (`filter_by:
   predicted_neq_given`), so the label comparison is between methods, not rules.

Every Datalab configuration gets datacure's out-of-sample pred_probs (the same inputs). A
Datalab issue type that fails is printed and counted as failed: it never becomes "no flags".
Reported: times and the ratio to datacure's audit, agreement (Jaccard) with datacure per issue
type, and precision / recall / F1 against the planted label flips, near copies and far points.
`class_imbalance` flags no rows in datacure (a finding); its agreement compares the rows of the
classes datacure names (`info.flagged_classes`) with Datalab's flagged rows.

`--full` also runs 100k blobs and 1M low-rank (`--n 1000000` runs 1M alone). At 1M rows a
configuration that builds its own graph (features=, FAISS exact: brute force, quadratic in the
rows) is stopped after datacure's own audit time (`--limit-x`) and reported as failed with
the time it was given, so its ratio is a lower bound, never a result.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import OUT as BENCH_OUT
from common import table, write_results

OUT = BENCH_OUT / "audit_vs_datalab"
TYPES = ["label", "outlier", "near_duplicate", "non_iid", "class_imbalance", "null"]
K = 10
CONFIGS = {
    "features": "Datalab, features= (its own sklearn brute-force graph)",
    "knn_datacure": "Datalab, knn_graph= datacure's graph",
    "knn_faiss_exact": "Datalab, knn_graph= FAISS exact graph",
    "knn_datacure_same_rule": "Datalab, datacure's graph + predicted_neq_given",
}
GRAPH_ONLY = ("knn_datacure", "knn_datacure_same_rule")  # the configurations run at 1M


# --- data ----------------------------------------------------------------------------------------
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


def make_lowrank_data(n: int, seed: int = 0, chunk: int = 200_000) -> dict:
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
    # far points: 20x the typical row norm, in random directions
    scale = 20 * float(np.linalg.norm(x[:1000], axis=1).mean()) / np.sqrt(x.shape[1])
    return {"x": x, "labels": noisy, **plant_copies_and_far_points(x, noisy, flip, rng, scale)}


# --- workers (each in its own process) -----------------------------------------------------------
def worker_ingest(data_path: Path, out_path: Path, config: str) -> dict:
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
    return {"seconds": time.perf_counter() - t0}


def worker_datacure(data_path: Path, out_path: Path, config: str) -> dict:
    """`datacure audit` on the store the ingest worker wrote."""
    from datacure.auditor.runner import run_audit
    from datacure.store import Store

    n = len(np.load(data_path / "labels.npy"))
    store = Store(out_path / "bench.duckdb")
    t1 = time.perf_counter()
    rep = run_audit(store, auditors=TYPES)
    t_audit = time.perf_counter() - t1
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rid = store.execute("SELECT row_id FROM samples ORDER BY row_id").fetchnumpy()["row_id"]
    flags = {}
    for name in TYPES:
        df = store.polars(
            "SELECT row_id, is_issue FROM issues WHERE run_id = ? AND auditor = ? ORDER BY row_id",
            [rep.run_id, name],
        )
        flag = np.zeros(n, dtype=bool)
        flag[np.searchsorted(rid, df.filter(df["is_issue"])["row_id"].to_numpy())] = True
        flags[name] = flag
    # class_imbalance is a finding in datacure (no row flags); Datalab flags the rows of the
    # rarest class under its threshold. Compare the same thing: the rows of the classes datacure
    # names in `info.flagged_classes`.
    info = json.loads(
        store.scalar(
            "SELECT info FROM issue_summary WHERE run_id = ? AND auditor = 'class_imbalance'",
            [rep.run_id],
        )
        or "{}"
    )
    named = [str(c) for c in info.get("flagged_classes", [])]
    labels = store.polars("SELECT label::VARCHAR AS label FROM samples ORDER BY row_id")["label"]
    flags["class_imbalance"] = labels.is_in(named).to_numpy() if named else np.zeros(n, bool)
    np.savez(out_path / "flags.npz", **flags)
    pp = store.arrow("SELECT pred_probs FROM predictions ORDER BY row_id").column("pred_probs")
    probs = pp.combine_chunks().flatten().to_numpy().reshape(n, -1)
    np.save(out_path / "pred_probs.npy", probs.astype(np.float32))
    key, kind, recall, graph_s = store.fetchone(
        "SELECT key, index_kind, recall, seconds FROM knn_graphs"
    )
    from datacure.store import schema as S

    tbl = store.arrow(
        f"SELECT neighbors, distances FROM {S.quote(S.knn_table(key))} ORDER BY row_id"
    )
    kc = len(tbl.column("neighbors")[0])
    nb = tbl.column("neighbors").combine_chunks().flatten().to_numpy().reshape(-1, kc)
    ds = tbl.column("distances").combine_chunks().flatten().to_numpy().reshape(-1, kc)
    np.savez(out_path / "graph.npz", indices=np.searchsorted(rid, nb), distances=ds)
    info = json.loads(
        store.scalar(
            "SELECT info FROM issue_summary WHERE run_id = ? AND auditor = 'non_iid'", [rep.run_id]
        )
    )
    store.close()
    # the 5-fold pred_probs alone, timed again on the same vectors: every Datalab configuration
    # is given them, while datacure's audit time includes computing them
    from datacure.auditor.predict import cross_val_pred_probs

    x = np.load(data_path / "x.npy")
    y = np.load(data_path / "labels.npy")
    t0 = time.perf_counter()
    cross_val_pred_probs(x, y, int(y.max()) + 1, folds=5, seed=0)
    pred_probs_s = time.perf_counter() - t0
    return {
        "seconds": t_audit,
        "pred_probs_seconds": pred_probs_s,
        "graph_seconds": graph_s,
        # measured before this worker's own reads of the results
        "audit_peak_rss_gb": ru.ru_maxrss / 1024**2,
        "audit_cpu_s": ru.ru_utime + ru.ru_stime,
        "per_auditor_s": {o.name: round(o.seconds, 2) for o in rep.outcomes},
        "failed": {o.name: o.reason for o in rep.outcomes if o.status != "ok"},
        "graph": f"{kind}, recall {recall:.3f}",
        "non_iid_p": info.get("p_value"),
    }


def to_csr(indices: np.ndarray, distances: np.ndarray):
    """A kNN graph as Datalab takes it: CSR [n, n], each row's k neighbours by distance."""
    from scipy.sparse import csr_matrix

    n, k = indices.shape
    order = np.argsort(distances, axis=1, kind="stable")
    idx = np.take_along_axis(indices, order, axis=1)
    dist = np.take_along_axis(distances, order, axis=1).astype(np.float64)
    return csr_matrix((dist.ravel(), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))


def faiss_exact_graph(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine kNN graph by FAISS brute force (self excluded)."""
    from datacure.store.knn_exact import load_faiss

    faiss = load_faiss()

    from datacure.store.knn import num_threads

    faiss.omp_set_num_threads(num_threads())
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sims, idx = faiss.knn(xn, xn, K + 1, metric=faiss.METRIC_INNER_PRODUCT)
    own = idx == np.arange(len(x))[:, None]
    own[~own.any(axis=1), -1] = True
    first = own.argmax(axis=1)
    keep = np.ones(idx.shape, dtype=bool)
    keep[np.arange(len(x)), first] = False
    idx = idx[keep].reshape(len(x), K).astype(np.int64)
    dist = np.clip(1.0 - sims[keep].reshape(len(x), K), 0.0, 2.0)
    return idx, dist


def worker_datalab(data_path: Path, out_path: Path, config: str) -> dict:
    import warnings

    from cleanlab import Datalab

    warnings.filterwarnings("ignore")
    x = np.load(data_path / "x.npy")
    labels = np.load(data_path / "labels.npy")
    dc_out = out_path.parent / "datacure"
    probs = np.load(dc_out / "pred_probs.npy").astype(np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    kwargs = {"features": x, "pred_probs": probs}
    issue_types = {t: {} for t in TYPES}
    graph_s = None
    if config in GRAPH_ONLY:
        g = np.load(dc_out / "graph.npz")
        kwargs["knn_graph"] = to_csr(g["indices"], g["distances"])
    elif config == "knn_faiss_exact":
        t0 = time.perf_counter()
        kwargs["knn_graph"] = to_csr(*faiss_exact_graph(x))
        graph_s = time.perf_counter() - t0
    if config == "knn_datacure_same_rule":
        issue_types["label"] = {
            "clean_learning_kwargs": {
                "find_label_issues_kwargs": {"filter_by": "predicted_neq_given"}
            }
        }
    printed = io.StringIO()
    t0 = time.perf_counter()
    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    with contextlib.redirect_stdout(printed):
        lab.find_issues(**kwargs, issue_types=issue_types)
    wall = time.perf_counter() - t0
    errors = dict(re.findall(r"Error in (\w+): (.*)", printed.getvalue()))
    flags, failed = {}, {}
    for name in TYPES:
        try:
            flags[name] = lab.get_issues(name)[f"is_{name}_issue"].to_numpy().astype(bool)
        except (ValueError, KeyError) as exc:  # an issue type that failed inside Datalab
            failed[name] = errors.get(name, f"{type(exc).__name__}: {exc}")[:300]
    np.savez(out_path / "flags.npz", **flags)
    try:
        p = lab.get_info("non_iid").get("p-value")
    except (ValueError, KeyError):
        p = None
    return {"seconds": wall, "graph_seconds": graph_s, "failed": failed, "non_iid_p": p}


WORKERS = {"ingest": worker_ingest, "datacure": worker_datacure, "datalab": worker_datalab}


def run_worker(
    kind: str, data_path: Path, out_path: Path, config: str = "", limit: float | None = None
) -> dict:
    """Run one step in a process of its own; past `limit` seconds it is stopped and recorded as
    failed (timed out), never as a result."""
    out_path.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--worker", kind, "--data", str(data_path)]
    cmd += ["--out", str(out_path), "--config", config]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=limit)
    except subprocess.TimeoutExpired:
        why = f"stopped after {limit:.0f} s (time limit), not finished"
        print(f"  {kind} {config} FAILED: {why}", flush=True)
        return {"process_failed": why, "timed_out_s": limit}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]
        print(f"  {kind} {config} FAILED (exit {proc.returncode}): {why}", flush=True)
        return {"process_failed": why}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = wall
    return res


# --- comparison ----------------------------------------------------------------------------------
def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def prf(flag: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    tp = float((flag & truth).sum())
    p = tp / max(int(flag.sum()), 1)
    r = tp / max(int(truth.sum()), 1)
    return p, r, 2 * p * r / max(p + r, 1e-12)


def compare(n: int, kind: str, configs: list[str], limit_x: float | None = None) -> dict:
    """Run datacure and each Datalab configuration on one data set. With `limit_x`, a Datalab
    configuration that builds its own graph (features=, FAISS exact) is stopped after `limit_x`
    times datacure's audit time (at least 300 s) and counted as failed: at 1M rows a brute-force
    graph is quadratic in the rows and would not finish in the session."""
    data_path = OUT / f"{kind}_{n}"
    if not (data_path / "x.npy").exists():
        data_path.mkdir(parents=True, exist_ok=True)
        d = make_blobs_data(n) if kind == "blobs" else make_lowrank_data(n)
        for k, v in d.items():
            np.save(data_path / f"{k}.npy", v)
        del d
    truth = {
        "label": np.load(data_path / "truth_label.npy"),
        "near_duplicate": np.load(data_path / "truth_near.npy"),
        "outlier": np.load(data_path / "truth_far.npy"),
    }
    print(f"== {kind} {n:,} x 384, 10 classes, 10% flipped, 50 near-copy pairs, 20 far points")
    run = OUT / f"run_{kind}_{n}"
    res = {"data": kind, "rows": n, "results": {}}
    ing = run_worker("ingest", data_path, run / "datacure")
    dc = run_worker("datacure", data_path, run / "datacure")
    for f in (run / "datacure").glob("bench.duckdb*"):
        f.unlink()  # a large store: the flags, graph and pred_probs are kept
    if "process_failed" in dc or "process_failed" in ing:
        res["results"]["datacure"] = {**dc, **ing}
        return res
    dc["ingest_seconds"] = ing["seconds"]
    dc["peak_rss_gb"] = dc["audit_peak_rss_gb"]
    dc["flags"] = dict(np.load(run / "datacure" / "flags.npz"))
    res["results"]["datacure"] = dc
    print(
        f"  datacure audit {dc['seconds']:.1f} s (graph {dc['graph']} {dc['graph_seconds']:.1f} "
        f"s), CPU {dc['audit_cpu_s']:.0f} s, peak RSS {dc['peak_rss_gb']:.2f} GB",
        flush=True,
    )
    for cfg in configs:
        limit = None
        if limit_x and cfg not in GRAPH_ONLY:
            limit = max(300.0, limit_x * dc["seconds"])
        r = run_worker("datalab", data_path, run / cfg, cfg, limit)
        if "process_failed" not in r:
            if cfg in GRAPH_ONLY:
                r["graph_seconds"] = dc["graph_seconds"]
            fl = np.load(run / cfg / "flags.npz")
            r["flags"] = {t: fl[t] for t in TYPES if t in fl.files}
            failed = f"; FAILED: {', '.join(r['failed'])}" if r["failed"] else ""
            print(
                f"  {CONFIGS[cfg]}: find_issues {r['seconds']:.1f} s"
                + (f" + graph {r['graph_seconds']:.1f} s" if r["graph_seconds"] else "")
                + f", CPU {r['cpu_s']:.0f} s, peak RSS {r['peak_rss_gb']:.2f} GB{failed}",
                flush=True,
            )
            for t, why in r["failed"].items():
                print(f"    {t} failed inside Datalab: {why}")
        res["results"][cfg] = r
    # scores against the planted truths, agreement with datacure
    for r in res["results"].values():
        if "flags" not in r:
            continue
        r["vs_truth"] = {t: prf(r["flags"][t], truth[t]) for t in truth if t in r["flags"]}
        r["jaccard_vs_datacure"] = {
            t: jaccard(r["flags"][t], dc["flags"][t]) for t in TYPES if t in r["flags"]
        }
        r["flagged"] = {t: int(r["flags"][t].sum()) for t in r["flags"]}
    for r in res["results"].values():
        r.pop("flags", None)
    return res


def tables_for(res: dict) -> list[dict]:
    kind, n = res["data"], res["rows"]
    dc = res["results"]["datacure"]
    name = {"datacure": "datacure audit", **CONFIGS}
    rows_t, rows_q, rows_j = [], [], []
    for cfg, r in res["results"].items():
        if "process_failed" in r:
            rows_t.append([name[cfg], "FAILED: " + r["process_failed"]] + ["-"] * 8)
            rows_q.append([name[cfg]] + ["failed"] * 7)
            rows_j.append([name[cfg]] + ["failed"] * len(TYPES))
            continue
        graph_s = r.get("graph_seconds")
        if cfg == "datacure":
            graph = dc["graph"]
            aud = r["seconds"] - graph_s
            total = r["seconds"]
        elif cfg == "features":
            graph, aud, total = "sklearn brute (inside)", None, r["seconds"]
        else:
            graph = "datacure's" if cfg in GRAPH_ONLY else "FAISS exact"
            aud, total = r["seconds"], r["seconds"] + (graph_s or 0.0)
        failed = ", ".join(r.get("failed") or {}) or "none"
        rows_t.append(
            [
                name[cfg],
                graph,
                None if graph_s is None or cfg == "features" else round(graph_s, 1),
                None if aud is None else round(aud, 1),
                round(r["pred_probs_seconds"], 1) if "pred_probs_seconds" in r else "given",
                round(total, 1),
                round(total / dc["seconds"], 2),
                round(r["audit_cpu_s"] if cfg == "datacure" else r["cpu_s"], 1),
                round(r.get("peak_rss_gb", float("nan")), 2),
                failed,
            ]
        )
        vt = r.get("vs_truth", {})

        def f1(t, vt=vt, r=r):
            if t in (r.get("failed") or {}):
                return "failed"
            return round(vt[t][2], 3) if t in vt else "-"

        lab = vt.get("label")
        rows_q.append(
            [
                name[cfg],
                round(lab[0], 3) if lab else "failed",
                round(lab[1], 3) if lab else "failed",
                f1("label"),
                f1("near_duplicate"),
                "failed"
                if "outlier" in (r.get("failed") or {})
                else f"{int(round(vt['outlier'][1] * 20))} of 20",
                (r.get("flagged") or {}).get("outlier", "-"),
                None if r.get("non_iid_p") is None else round(r["non_iid_p"], 3),
            ]
        )
        if cfg != "datacure":
            jv = r.get("jaccard_vs_datacure", {})
            rows_j.append(
                [name[cfg]]
                + ["failed" if t in (r.get("failed") or {}) else round(jv[t], 3) for t in TYPES]
            )
    what = f"{kind} {n:,} x 384"
    return [
        table(
            f"Full audit, {what}: time (s) and memory, datacure vs Datalab configurations",
            [
                "tool",
                "kNN graph",
                "graph s",
                "auditors s",
                "pred_probs s",
                "total s",
                "x datacure",
                "CPU s",
                "peak RSS GB",
                "failed issue types",
            ],
            rows_t,
            note="x datacure = total / datacure's total wall time (above 1: datacure is "
            "faster). pred_probs s: datacure's 5-fold pred_probs timed again alone after its audit "
            "(its auditors s include computing them); every Datalab configuration is given them. "
            "CPU s: the process's CPU seconds (steadier than wall time on a shared "
            "machine; a Datalab process's include loading the data and building a graph). Datalab "
            "given a graph: total = its find_issues + the graph's time (datacure's own, or "
            "FAISS brute force timed in that process). With features= the graph is built inside "
            "find_issues and not timed apart.",
        ),
        table(
            f"Full audit, {what}: flags against the planted defects",
            [
                "tool",
                "label P",
                "label R",
                "label F1",
                "near_duplicate F1",
                "far points found",
                "outlier flags",
                "non_iid p-value",
            ],
            rows_q,
        ),
        table(
            f"Full audit, {what}: agreement with datacure's flags (Jaccard)",
            ["Datalab configuration", *TYPES],
            rows_j,
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dataset", choices=["blobs", "lowrank"], default="lowrank")
    ap.add_argument("--full", action="store_true", help="also 100k blobs and 1M low-rank")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="Datalab configurations to run")
    ap.add_argument("--name", default=None, help="results file stem")
    ap.add_argument(
        "--limit-x",
        type=float,
        default=None,
        help="stop a Datalab configuration that builds its own graph after this many times "
        "datacure's audit time (at least 300 s) and count it as failed (default: 1 at 1M rows "
        "and above, no limit below)",
    )
    ap.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--config", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        res = WORKERS[args.worker](Path(args.data), Path(args.out), args.config)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        res["peak_rss_gb"] = ru.ru_maxrss / 1024**2
        # CPU seconds of the whole process: on a shared machine wall time includes waiting
        res["cpu_s"] = ru.ru_utime + ru.ru_stime
        print(json.dumps(res, default=float))
        return
    started = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        ap.error(f"unknown configuration(s) {sorted(unknown)}; choose from {list(CONFIGS)}")
    plan = [(args.dataset, args.n, configs)]
    if args.full:
        other = "blobs" if args.dataset == "lowrank" else "lowrank"
        plan += [
            (other, args.n, configs),
            ("lowrank", 1_000_000, configs),
        ]
    load0 = os.getloadavg()[0]

    def limit_x(n: int) -> float | None:
        return args.limit_x if args.limit_x is not None else (1.0 if n >= 1_000_000 else None)

    runs = [compare(n, kind, cfgs, limit_x(n)) for kind, n, cfgs in plan]
    load1 = os.getloadavg()[0]
    tables = [t for r in runs for t in tables_for(r)]
    ratios = {}
    for r in runs:
        dc = r["results"].get("datacure", {})
        for cfg, x in r["results"].items():
            if cfg == "datacure" or "seconds" not in dc:
                continue
            key = f"{r['data']}_{r['rows']}_{cfg}"
            if x.get("timed_out_s"):  # stopped: its ratio is only a lower bound
                ratios[key] = f">{x['timed_out_s'] / dc['seconds']:.2f}"
            elif "process_failed" not in x:
                total = x["seconds"] + (x.get("graph_seconds") or 0.0)
                ratios[key] = round(total / dc["seconds"], 2)
    for t in tables:
        print(f"\n{t['title']}")
        print("  " + " | ".join(t["columns"]))
        for row in t["rows"]:
            print("  " + " | ".join(str(c) for c in row))
    name = args.name or ("audit_vs_datalab_full" if args.full else "audit_vs_datalab")
    write_results(
        name,
        {"tables": tables, "datalab_total_over_datacure": ratios, "runs": runs},
        inputs={
            "plan": [
                {"data": k, "rows": n, "configs": c, "limit_x": limit_x(n)} for k, n, c in plan
            ],
            "issue_types": TYPES,
            "k": K,
            "dim": 384,
            "seed": 0,
        },
        notes=[
            "One run; each step in its own process, one after the other, on 2 shared cores: load "
            f"average {load0:.1f} at the start, {load1:.1f} at the end (compare ratios).",
            "Every Datalab configuration is given datacure's out-of-sample pred_probs; datacure's "
            "time includes computing them.",
            "Datalab's label check uses its default rule (prune_by_noise_rate) except in the "
            "configuration named 'predicted_neq_given', which uses datacure's rule.",
        ],
        started=started,
        title="Full audit: datacure vs cleanlab Datalab (features=, same graph, exact graph)",
    )


if __name__ == "__main__":
    main()
