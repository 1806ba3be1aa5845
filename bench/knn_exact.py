"""Exact kNN: datacure's exact search path against FAISS's brute force, in one process.

    .venv/bin/python bench/knn_exact.py                       # 100k low-rank and blobs
    .venv/bin/python bench/knn_exact.py --queries 25000       # a quarter of the rows as queries

The search is the one an audit's exact graph needs: the k+1 = 11 nearest rows by inner product
of unit vectors, every query against all `n` rows (the data of bench/knn.py, read from its
cache in bench/out/knn/, written by it when missing). Methods, one after the other in this
process, in alternating order per data set, all pinned to the same thread count (FAISS's
OpenMP, BLAS through threadpoolctl and torch's intra-op pool):

- `datacure`: `datacure.store.knn._exact` (whatever the exact path is in the installed code);
- `torch-blocked`: datacure's exact path before it moved to FAISS, copied here (`torch_blocked`):
  blocked torch matrix products (2,048 queries x 32,768 rows) with a top-k per block, merged;
- `faiss.knn`: `faiss.knn(queries, base, k, METRIC_INNER_PRODUCT)`;
- `IndexFlatIP`: `faiss.IndexFlatIP` with the base added, then `search`.

Reported: wall and CPU seconds per method, the ratio of each to `datacure`'s wall time, and
whether the neighbour sets agree with faiss.knn's (share of identical rows; float ties can
order equal similarities differently).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from common import table, write_results

K = 11  # a self-graph's k=10 plus the row itself
METHODS = ("datacure", "torch-blocked", "faiss.knn", "IndexFlatIP")


def load(kind: str, n: int) -> np.ndarray:
    import knn as bench_knn

    bench_knn.prepare(kind, n)
    x = np.load(bench_knn.paths(kind, n)["x"])
    return bench_knn.normalized(x)


def torch_blocked(base: np.ndarray, queries: np.ndarray, k: int, bq: int = 2048, bb: int = 32768):
    """datacure's exact CPU path until it moved to FAISS (store/knn.py `_exact_blocked`)."""
    import torch

    m, n = len(queries), len(base)
    k = min(k, n)
    b = torch.from_numpy(np.ascontiguousarray(base, dtype=np.float32))
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    sims = np.empty((m, k), np.float32)
    idx = np.empty((m, k), np.int64)
    with torch.inference_mode():
        for s in range(0, m, bq):
            qs = q[s : s + bq]
            best_v = best_i = None
            for t in range(0, n, bb):
                v, i = torch.topk(qs @ b[t : t + bb].T, min(k, bb, n - t), dim=1)
                i += t
                if best_v is None:
                    best_v, best_i = v, i
                else:
                    v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
                    best_v, j = torch.topk(v, min(k, v.shape[1]), dim=1)
                    best_i = torch.gather(i, 1, j)
            sims[s : s + bq] = best_v.numpy()
            idx[s : s + bq] = best_i.numpy()
    return sims, idx


def run(method: str, base: np.ndarray, queries: np.ndarray):
    from datacure.store.knn_exact import load_faiss

    faiss = load_faiss()

    from datacure.store import knn as dk

    if method == "datacure":
        return dk._exact(base, queries, K, use_gpu=False)
    if method == "torch-blocked":
        return torch_blocked(base, queries, K)
    if method == "faiss.knn":
        return faiss.knn(queries, base, K, metric=faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    return index.search(queries, K)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=None, help="query rows (default: all n)")
    ap.add_argument("--data", default="lowrank,blobs")
    ap.add_argument("--threads", type=int, default=None, help="default: num_threads()")
    args = ap.parse_args()
    started = time.perf_counter()
    from datacure.store.knn_exact import load_faiss

    faiss = load_faiss()
    import torch
    from threadpoolctl import threadpool_limits

    from datacure.store.knn import num_threads

    threads = args.threads or num_threads()
    os.environ["DATACURE_THREADS"] = str(threads)  # datacure's own `_threads` would agree
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    m = args.queries or args.n
    load0 = os.getloadavg()[0]
    print(
        f"exact k={K} search, {m:,d} queries x {args.n:,d} rows, 384-d; {threads} threads "
        f"(cores {os.cpu_count()}, load average {load0:.1f})"
    )
    rows, ratios, raw = [], {}, []
    with threadpool_limits(threads):
        for j, kind in enumerate(k for k in args.data.split(",") if k):
            x = load(kind, args.n)
            q = x[:m]
            order = METHODS if j % 2 == 0 else METHODS[:1] + METHODS[1:][::-1]
            res, ref = {}, None
            for method in order:
                load_before = os.getloadavg()[0]
                t0, c0 = time.perf_counter(), time.process_time()
                sims, idx = run(method, x, q)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                idx = np.asarray(idx, dtype=np.int64)
                res[method] = (wall, cpu, idx, load_before)
                print(
                    f"{kind:8s} {method:14s} wall {wall:7.1f} s  cpu {cpu:7.1f} s  "
                    f"load {load_before:.1f}",
                    flush=True,
                )
            ref = np.sort(res["faiss.knn"][2], axis=1)
            ours = res["datacure"][0]
            for method in METHODS:
                wall, cpu, idx, lb = res[method]
                same = float((np.sort(idx, axis=1) == ref).all(axis=1).mean())
                rows.append(
                    [
                        kind,
                        args.n,
                        m,
                        method,
                        round(wall, 1),
                        round(cpu, 1),
                        round(wall / ours, 3),
                        round(same, 5),
                        round(lb, 1),
                    ]
                )
                if method != "datacure":
                    ratios[f"{kind}_{method}"] = round(wall / ours, 3)
                raw.append({"data": kind, "method": method, "wall": wall, "cpu": cpu})
    load1 = os.getloadavg()[0]
    print(f"load average {load0:.1f} at the start, {load1:.1f} at the end")
    write_results(
        "knn_exact",
        {
            "tables": [
                table(
                    "Exact kNN search (k=11 by inner product, 384-d): datacure's exact path vs "
                    "torch blocks and FAISS brute force, one process",
                    [
                        "data",
                        "rows",
                        "queries",
                        "method",
                        "wall s",
                        "cpu s",
                        "x datacure",
                        "same neighbours as faiss.knn",
                        "load before",
                    ],
                    rows,
                    note=(
                        "x datacure = method's wall time / datacure's (above 1: datacure is "
                        f"faster); all methods pinned to {threads} threads; same neighbours = "
                        "share of query rows whose 11 neighbour ids equal faiss.knn's."
                    ),
                )
            ],
            "anchor_time_over_datacure": ratios,
            "runs": raw,
        },
        inputs={
            "rows": args.n,
            "queries": m,
            "data": args.data.split(","),
            "k": K,
            "threads": threads,
        },
        notes=[
            f"One run, methods one after the other in one process, {threads} threads each; "
            f"load average {load0:.1f} at the start and {load1:.1f} at the end (the machine is "
            "shared: compare ratios, not seconds)."
        ],
        started=started,
        title="Exact kNN: datacure's exact path vs FAISS brute force (faiss.knn, IndexFlatIP)",
    )


if __name__ == "__main__":
    main()
