"""FAISS's exact search with the OpenBLAS kernel its wheel picks by itself against the one
`store/knn_exact.load_faiss` names for this CPU.

    .venv/bin/python bench/openblas_kernel.py            # 10,000 queries x 100,000 rows x 384

faiss-cpu's wheels bundle their own OpenBLAS; a build older than the CPU does not recognise it
and falls back to its generic kernel. Each configuration runs in its own process (the kernel is
chosen once, when the library loads): `faiss.knn` of unit vectors (inner product, k=10), the
best of `--repeats` calls, on `--threads` threads; threadpoolctl reports which kernel OpenBLAS
loaded. The anchor is the wheel's own choice (plain `import faiss`), the ratio is its time over
datacure's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_results

CONFIGS = {
    "faiss as installed (plain import)": "plain",
    "datacure (store/knn_exact.load_faiss)": "datacure",
}


def child(how: str, queries: int, rows: int, dim: int, threads: int, repeats: int) -> dict:
    """One configuration, in this process: load FAISS, search, report the kernel and the time."""
    import numpy as np

    if how == "plain":
        import faiss
    else:
        from datacure.store.knn_exact import load_faiss

        faiss = load_faiss()
    from threadpoolctl import threadpool_info, threadpool_limits

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((rows, dim), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = xb[rng.choice(rows, queries, replace=False)]
    faiss.omp_set_num_threads(threads)
    times = []
    with threadpool_limits(threads, user_api="blas"):
        for _ in range(repeats):
            t0 = time.perf_counter()
            faiss.knn(xq, xb, 10, metric=faiss.METRIC_INNER_PRODUCT)
            times.append(time.perf_counter() - t0)
    blas = [
        {k: p.get(k) for k in ("internal_api", "version", "architecture", "filepath")}
        for p in threadpool_info()
        if p.get("internal_api") == "openblas" and "faiss" in (p.get("filepath") or "")
    ]
    return {"seconds": min(times), "all_seconds": times, "openblas": blas}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", choices=sorted(set(CONFIGS.values())))
    args = ap.parse_args()
    shape = (args.queries, args.rows, args.dim, args.threads, args.repeats)
    if args.child:
        print(json.dumps(child(args.child, *shape)))
        return
    started = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    load = [os.getloadavg()[0]]
    out = {}
    for name, how in CONFIGS.items():
        cmd = [sys.executable, __file__, "--child", how]
        cmd += ["--queries", str(args.queries), "--rows", str(args.rows), "--dim", str(args.dim)]
        cmd += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        r["kernel"] = ", ".join(b["architecture"] or "?" for b in r["openblas"]) or "?"
        out[name] = r
        print(f"{name:<40} {r['seconds']:8.2f} s  OpenBLAS kernel {r['kernel']}", flush=True)
        load.append(os.getloadavg()[0])
    ours = out["datacure (store/knn_exact.load_faiss)"]["seconds"]
    rows = [
        [name, r["kernel"], round(r["seconds"], 2), round(r["seconds"] / ours, 2)]
        for name, r in out.items()
    ]
    write_results(
        "openblas_kernel",
        {
            "tables": [
                table(
                    f"faiss.knn, {args.queries:,} queries x {args.rows:,} rows x {args.dim}, "
                    f"k=10, {args.threads} threads: the OpenBLAS kernel FAISS loads",
                    ["configuration", "OpenBLAS kernel", "seconds (best)", "ratio to datacure"],
                    rows,
                    note="each configuration in its own process; the kernel is what "
                    "threadpoolctl reports for FAISS's bundled OpenBLAS",
                )
            ],
            "runs": out,
            "slowdown_without_fix": out["faiss as installed (plain import)"]["seconds"] / ours,
        },
        inputs={k: v for k, v in vars(args).items() if k != "child"},
        notes=[f"load average {load[0]:.1f} at the start and {load[-1]:.1f} at the end"],
        started=started,
        title="FAISS exact search: the OpenBLAS kernel its wheel picks vs load_faiss's",
    )


if __name__ == "__main__":
    main()
