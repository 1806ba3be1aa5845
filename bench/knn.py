"""kNN graph: datacure's builder against FAISS indexes tuned to the same recall, each in its
own process, side by side in one run.

    .venv/bin/python bench/knn.py                          # quick: 100k rows (`make bench`)
    .venv/bin/python bench/knn.py --sizes 100000,1000000   # full (`make bench-full`)

The graph is the one an audit needs: the k=10 nearest other rows of every row, by cosine
similarity, on seeded 384-d float32 vectors:

- `lowrank`: structured like real embeddings, a 24-d latent with 50 centres projected to 384-d
  plus noise (FACTS.md: approximate indexes pay off only on data of low intrinsic dimension);
- `blobs`: isotropic blobs (10 centres, std 2.5), the worst case, where every point's neighbours
  are nearly equidistant. Run at sizes up to `--blobs-max` (100k): exact search is the honest
  answer there, and at 1M it takes about a hundred times as long.

Methods, each in a child process of its own (its own peak RSS and CPU seconds), all under the
same thread count (`datacure.store.knn.num_threads()`), on the same file of vectors:

- `datacure`: `build_knn(x, 10)`, everything included (normalising, choosing the index, its own
  recall check on a sample, the search);
- `faiss-ivf`: `IndexIVFFlat` (nlist = 4 sqrt(n), the FAISS guideline's low end; k-means
  trained on 64 points per list, 10 iterations), `nprobe` tuned;
- `faiss-ivf-pca-refine`: `IndexPreTransform(PCAMatrix(384 -> 64), IndexIVFFlat)` inside
  `IndexRefineFlat` (k_factor 2: re-ranked by exact distances in the full space), the same
  pipeline as datacure's IVF built from FAISS parts, `nprobe` tuned;
- `faiss-hnsw`: `IndexHNSWFlat(M=32, efConstruction=40)`, `efSearch` tuned;
- `faiss-flat`: `faiss.knn` brute force (exact), at sizes up to `--exact-max` (100k); on
  `blobs` this is the anchor for datacure's fallback to exact search.

"Tuned to the same recall": the recall@10 datacure's graph reaches on an evaluation sample of
1,000 rows is the target; each FAISS index takes the smallest `nprobe` / `efSearch` whose
recall on a separate tuning sample of 1,000 rows reaches it (when datacure fell back to exact
search, the target is datacure's own bar, 0.95). Exact neighbours of both samples come from
brute force. Reported per method: build (train + add), tuning (the sweep, not counted in the
anchor's time: an expert tunes once, offline; datacure's time includes its own tuning), search,
total, recall@10 on the evaluation sample, peak RSS, CPU seconds, and the ratio to datacure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
from common import OUT, median_range, table, write_results

K = 10
SAMPLE = 1000
WORK = OUT / "knn"
METHODS = ("datacure", "faiss-ivf", "faiss-ivf-pca-refine", "faiss-hnsw", "faiss-flat")
NPROBES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 18, 20, 24, 28, 32, 40, 48, 64, 80, 96)
NPROBES += (128, 160, 192, 256, 320, 384, 512, 640, 768, 1024)
EFSEARCH = (12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 768)
EFSEARCH += (1024, 1536, 2048)
DATACURE_TARGET = 0.95  # datacure's recall bar (store/knn.py TARGET_RECALL)


# --- data (seeded; written once per kind and size) -----------------------------------------------
def lowrank(n: int, d: int = 384, latent: int = 24, centers: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, latent)).astype(np.float32)
    proj = (rng.normal(size=(latent, d)) / np.sqrt(latent)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, 100_000):  # in slices: flat memory
        m = min(100_000, n - i)
        z = c[rng.integers(0, centers, m)] + rng.normal(scale=0.5, size=(m, latent))
        out[i : i + m] = z.astype(np.float32) @ proj
        out[i : i + m] += rng.normal(scale=0.1, size=(m, d)).astype(np.float32)
    return out


def blobs(n: int, d: int = 384, centers: int = 10, std: float = 2.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    c = rng.uniform(-10, 10, size=(centers, d)).astype(np.float32)  # make_blobs' centre box
    out = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        out[i : i + m] = c[rng.integers(0, centers, m)]
        out[i : i + m] += rng.normal(scale=std, size=(m, d)).astype(np.float32)
    return out


def normalized(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    for i in range(0, len(x), 100_000):  # in place, in slices
        blk = x[i : i + 100_000]
        blk /= np.maximum(np.linalg.norm(blk, axis=1, keepdims=True), 1e-12)
    return x


def drop_self(idx: np.ndarray, qpos: np.ndarray) -> np.ndarray:
    """k+1 results per query -> k, without the query's own position (wherever it landed; the
    last column when it was not returned)."""
    own = idx == qpos[:, None]
    own[~own.any(axis=1), -1] = True
    first = own.argmax(axis=1)
    keep = np.ones(idx.shape, dtype=bool)
    keep[np.arange(len(idx)), first] = False
    return idx[keep].reshape(len(idx), -1)[:, :K]


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float((approx[:, :, None] == exact[:, None, :]).any(axis=1).mean())


def paths(kind: str, n: int) -> dict:
    base = WORK / f"{kind}_{n}"
    return {"x": base.with_suffix(".npy"), "ref": WORK / f"{kind}_{n}_exact.npz"}


def prepare(kind: str, n: int) -> None:
    """Vectors, the two query samples and their exact neighbours (brute force, FAISS)."""
    p = paths(kind, n)
    if p["x"].exists() and p["ref"].exists():
        return
    import faiss

    WORK.mkdir(parents=True, exist_ok=True)
    x = (lowrank if kind == "lowrank" else blobs)(n)
    np.save(p["x"], x)
    xn = normalized(x)
    rng = np.random.default_rng(123)
    both = rng.choice(n, size=2 * SAMPLE, replace=False)
    tune, evaluate = np.sort(both[:SAMPLE]), np.sort(both[SAMPLE:])
    out = {"tune": tune, "eval": evaluate}
    for name, q in (("tune", tune), ("eval", evaluate)):
        _, i = faiss.knn(xn[q], xn, K + 1, metric=faiss.METRIC_INNER_PRODUCT)
        out[f"{name}_exact"] = drop_self(i.astype(np.int64), q)
    np.savez(p["ref"], **out)


# --- one method in this (child) process ----------------------------------------------------------
def _sweep(search_sample, values, target):
    """The first value whose tuning-sample recall reaches `target`, and the curve."""
    curve = {}
    for v in values:
        curve[v] = search_sample(v)
        if curve[v] >= target:
            return v, curve
    return None, curve


def child(method: str, kind: str, n: int, target: float, threads: int) -> dict:
    import faiss
    from threadpoolctl import threadpool_limits

    p = paths(kind, n)
    ref = np.load(p["ref"])
    faiss.omp_set_num_threads(threads)
    res = {"method": method, "threads": threads}
    with threadpool_limits(threads):
        x = np.load(p["x"])
        t_all = time.perf_counter()
        cpu0 = time.process_time()
        if method == "datacure":
            from datacure.store.knn import build_knn

            g = build_knn(x, K)
            idx = g.indices
            res.update(
                param=g.index_kind,
                builder_recall_estimate=g.recall,
                seconds_tune=None,
                steps={k: v for k, v in g.info.items() if k.startswith("seconds")},
            )
            if "recall_by_nprobe" in g.info:
                res["curve"] = g.info["recall_by_nprobe"]
            if "fallback" in g.info:
                res["fallback"] = g.info["fallback"]
            res["seconds_build"] = res["seconds_search"] = None
        else:
            xn = normalized(x)  # L2 on unit vectors ranks exactly as cosine
            del x
            tq = ref["tune"]
            tune_exact = ref["tune_exact"]
            if method == "faiss-flat":
                t0 = time.perf_counter()
                _, i = faiss.knn(xn, xn, K + 1, metric=faiss.METRIC_INNER_PRODUCT)
                idx = drop_self(i.astype(np.int64), np.arange(n))
                res.update(param="exact", seconds_build=0.0, seconds_tune=None)
                res["seconds_search"] = time.perf_counter() - t0
            else:
                t0 = time.perf_counter()
                nlist = int(4 * np.sqrt(n))
                if method == "faiss-hnsw":
                    index = faiss.IndexHNSWFlat(xn.shape[1], 32)
                    index.hnsw.efConstruction = 40
                    index.add(xn)
                    values = EFSEARCH

                    def setp(v, index=index):
                        index.hnsw.efSearch = max(v, K + 1)

                else:
                    rng = np.random.default_rng(0)
                    train = xn[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))]
                    if method == "faiss-ivf":
                        quant = faiss.IndexFlatL2(xn.shape[1])
                        index = faiss.IndexIVFFlat(quant, xn.shape[1], nlist)
                        index.cp.niter = 10
                        ivf = index
                    else:
                        pca = faiss.PCAMatrix(xn.shape[1], 64)
                        quant = faiss.IndexFlatL2(64)
                        ivf = faiss.IndexIVFFlat(quant, 64, nlist)
                        ivf.cp.niter = 10
                        pre = faiss.IndexPreTransform(pca, ivf)
                        index = faiss.IndexRefineFlat(pre)
                        index.k_factor = 2
                        res["k_factor"] = 2
                    index.train(train)
                    index.add(xn)
                    values = tuple(v for v in NPROBES if v <= nlist)
                    res["nlist"] = nlist

                    def setp(v, ivf=ivf):
                        ivf.nprobe = v

                res["seconds_build"] = time.perf_counter() - t0
                t0 = time.perf_counter()

                def search_sample(v):
                    setp(v)
                    _, i = index.search(xn[tq], K + 1)
                    return recall(drop_self(i.astype(np.int64), tq), tune_exact)

                chosen, curve = _sweep(search_sample, values, target)
                res["seconds_tune"] = time.perf_counter() - t0
                res["curve"] = {str(k): round(v, 4) for k, v in curve.items()}
                res["reached_target"] = chosen is not None
                if chosen is None:  # report its best try, and say it fell short
                    chosen = max(curve, key=curve.get)
                setp(chosen)
                res["param"] = ("efSearch=" if method == "faiss-hnsw" else "nprobe=") + str(chosen)
                t0 = time.perf_counter()
                _, i = index.search(xn, K + 1)
                idx = drop_self(i.astype(np.int64), np.arange(n))
                res["seconds_search"] = time.perf_counter() - t0
        res["seconds"] = time.perf_counter() - t_all
        if res.get("seconds_tune") is not None:
            res["seconds"] -= res["seconds_tune"]  # tuning reported apart (see the docstring)
        res["cpu_seconds"] = time.process_time() - cpu0
    res["recall"] = recall(idx[ref["eval"]], ref["eval_exact"])
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return res


def run_child(method: str, kind: str, n: int, target: float, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", method, kind, str(n), str(target), str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"  {method} FAILED (exit {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
        return {"method": method, "failed": f"exit {proc.returncode}: {proc.stderr[-300:]}"}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_seconds"] = time.perf_counter() - t0
    return res


def show(kind: str, n: int, r: dict, ours: dict | None) -> None:
    if "failed" in r:
        print(f"{kind:8s} {n:>9,d}  {r['method']:22s} FAILED")
        return
    ratio = f"{r['seconds'] / ours['seconds']:6.2f}x" if ours else "      "

    def s(v):
        return f"{v:7.1f}" if v is not None else "      -"

    print(
        f"{kind:8s} {n:>9,d}  {r['method']:22s} {s(r.get('seconds_build'))} "
        f"{s(r.get('seconds_tune'))} {s(r.get('seconds_search'))} {r['seconds']:8.1f} {ratio} "
        f"{r['recall']:8.4f} {r['peak_rss_gb']:6.2f}  {r['param']}"
        + ("  (target not reached)" if r.get("reached_target") is False else ""),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000", help="comma-separated row counts")
    ap.add_argument("--data", default="lowrank,blobs")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument(
        "--blobs-methods",
        default=None,
        help="methods on blobs (default: --methods); `make bench` skips the slow IVF sweeps there",
    )
    ap.add_argument("--blobs-max", type=int, default=100_000, help="largest blobs size run")
    ap.add_argument("--exact-max", type=int, default=100_000, help="largest faiss-flat size run")
    ap.add_argument("--name", default=None, help="results file stem (default knn or knn_full)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        m, kind, n, target, threads = args.child
        print(json.dumps(child(m, kind, int(n), float(target), int(threads)), default=float))
        return
    started = time.perf_counter()
    from datacure.store.knn import num_threads

    sizes = [int(s) for s in args.sizes.split(",") if s]
    kinds = [k for k in args.data.split(",") if k]
    methods = [m for m in args.methods.split(",") if m]
    blobs_methods = [m for m in (args.blobs_methods or args.methods).split(",") if m]
    threads = num_threads()
    load0 = os.getloadavg()[0]
    print(
        f"kNN graph, k={K}, 384-d float32; threads {threads} (cores {os.cpu_count()}, load "
        f"average {load0:.1f}); times in s, ratio = method's total / datacure's"
    )
    print(
        f"{'data':8s} {'rows':>9s}  {'method':22s} {'build':>7s} {'tune':>7s} {'search':>7s} "
        f"{'total':>8s} {'ratio':>7s} {'recall':>8s} {'RSS GB':>6s}  setting"
    )
    runs = []
    for n in sizes:
        for kind in kinds:
            if kind == "blobs" and n > args.blobs_max:
                continue
            prepare(kind, n)
            ours = run_child("datacure", kind, n, 0.0, threads) if "datacure" in methods else None
            if ours and "failed" not in ours:
                show(kind, n, ours, None)
                approx = not ours["param"].startswith("flat")
                target = round(ours["recall"], 4) if approx else DATACURE_TARGET
            else:
                ours, target = None, DATACURE_TARGET
            row = {"data": kind, "rows": n, "target": target, "datacure": ours, "anchors": []}
            for m in blobs_methods if kind == "blobs" else methods:
                if m == "datacure" or (m == "faiss-flat" and n > args.exact_max):
                    continue
                r = run_child(m, kind, n, target, threads)
                show(kind, n, r, ours)
                row["anchors"].append(r)
            runs.append(row)
    load1 = os.getloadavg()[0]
    print(f"load average {load0:.1f} at the start, {load1:.1f} at the end")

    rows = []
    for run in runs:
        for r in [run["datacure"], *run["anchors"]]:
            if r is None:
                continue
            ours = run["datacure"]
            if "failed" in r:
                rows.append([run["data"], run["rows"], r["method"], "FAILED"] + ["-"] * 8)
                continue
            reached = r.get("reached_target")
            rows.append(
                [
                    run["data"],
                    run["rows"],
                    r["method"],
                    r["param"],
                    r.get("seconds_build"),
                    r.get("seconds_tune"),
                    r.get("seconds_search"),
                    round(r["seconds"], 1),
                    round(r["seconds"] / ours["seconds"], 2) if ours else None,
                    round(r["recall"], 4),
                    "-" if reached is None else reached,
                    round(r["peak_rss_gb"], 2),
                ]
            )
    for r in rows:
        for j in (4, 5, 6):
            r[j] = round(r[j], 1) if isinstance(r[j], float) else r[j]
    cols = [
        "data",
        "rows",
        "method",
        "setting",
        "build s",
        "tune s",
        "search s",
        "total s",
        "x datacure",
        "recall@10",
        "reached target",
        "peak RSS GB",
    ]
    ratios = {}
    for run in runs:
        if run["datacure"] is None:
            continue
        for a in run["anchors"]:
            if "failed" not in a:
                key = f"{run['data']}_{run['rows']}_{a['method']}"
                ratios[key] = round(a["seconds"] / run["datacure"]["seconds"], 3)
    name = args.name or ("knn" if max(sizes) <= 200_000 else "knn_full")
    write_results(
        name,
        {
            "tables": [
                table(
                    "kNN graph (k=10, 384-d): datacure vs FAISS at the same recall",
                    cols,
                    rows,
                    note=(
                        "total = build + search (tuning apart for FAISS, included for datacure); "
                        "x datacure = method's total / datacure's total (above 1: datacure is "
                        "faster); recall@10 on an evaluation sample of 1,000 rows against exact "
                        "search; target = datacure's recall on that sample (0.95 where datacure "
                        "searched exactly)."
                    ),
                )
            ],
            "anchor_time_over_datacure": ratios,
            "targets": {f"{r['data']}_{r['rows']}": r["target"] for r in runs},
            "runs": runs,
            "median_anchor_ratio": median_range(list(ratios.values()), 2) if ratios else None,
        },
        inputs={
            "sizes": sizes,
            "data": kinds,
            "k": K,
            "dim": 384,
            "threads": threads,
            "sample_rows": SAMPLE,
            "methods": methods,
            "blobs_methods": blobs_methods,
        },
        notes=[
            f"One run; each method in its own process, one after the other, {threads} threads; "
            f"load average {load0:.1f} at the start and {load1:.1f} at the end (other jobs share "
            "the machine: compare ratios, not seconds).",
            "blobs is the worst case, where no index reaches the recall bar cheaply and datacure "
            "searches exactly; faiss-flat runs only up to --exact-max rows.",
        ],
        started=started,
        title="kNN graph: datacure vs FAISS IVF, IVF+PCA+refine, HNSW and brute force",
    )


if __name__ == "__main__":
    main()
