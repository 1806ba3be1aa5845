"""The assign tasks' nearest centroids (`engine/partition.probes`: each row's 48 nearest of about
2 sqrt(n) centroids in the 64-d projection) against faiss.knn, which it replaced, on one thread:
alone, and as two processes at once, as the Ray engine's two tasks run on a 2-core machine that
shares one last-level cache.

    .venv/bin/python bench/assign_blocks.py              # 100,000 rows, 2,000 to 6,325 centroids

faiss.knn multiplies blocks of 4,096 rows by 1,024 centroids (16 MB of similarities) before its
heap reads them; `probes` multiplies a block of rows by every centroid, `SCAN_BLOCK`
similarities (4 MB), into a FAISS heap. The rows and centroids are Gaussian, normalised (the
arithmetic does not depend on the data); each figure is the best of `--repeats` calls in a
process held to one thread, in microseconds per row; `same` says both returned the same
similarities (to 1e-5) for every row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_results

PROBES = 48


def data(rows: int, parts: int, seed: int = 0):
    from datacure.engine import partition as P

    rng = np.random.default_rng(seed)
    z = P.normalize(rng.normal(size=(rows, 64)).astype(np.float32))
    c = P.normalize(rng.normal(size=(parts, 64)).astype(np.float32))
    return z, c


def child(how: str, rows: int, parts: int, repeats: int) -> dict:
    from datacure.engine import partition as P
    from datacure.store.knn_exact import load_faiss

    faiss = load_faiss()
    z, c = data(rows, parts)

    def old():
        _, idx = faiss.knn(z, c, PROBES, metric=faiss.METRIC_INNER_PRODUCT)
        return idx

    run = old if how == "faiss.knn" else (lambda: P.probes(z, c, PROBES))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        idx = run()
        times.append(time.perf_counter() - t0)
    sims = np.einsum("nd,nkd->nk", z, c[idx])
    return {"us_per_row": min(times) / rows * 1e6, "sims": np.round(sims, 5).tolist()[:2000]}


def measure(how: str, rows: int, parts: int, repeats: int, together: int) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--child", how, str(parts)]
    cmd += ["--rows", str(rows), "--repeats", str(repeats)]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(together)
    ]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"{how} child failed")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--partitions", type=int, nargs="*")
    ap.add_argument("--child", nargs=2, metavar=("HOW", "PARTITIONS"))
    args = ap.parse_args()
    if args.child:
        res = child(args.child[0], args.rows, int(args.child[1]), args.repeats)
        print(json.dumps(res))
        return
    started = time.perf_counter()
    parts_list = args.partitions or [round(2 * math.sqrt(n)) for n in (1e6, 3e6, 1e7)]
    rows, runs, load = [], [], [os.getloadavg()[0]]
    for parts in parts_list:
        for together in (1, 2):
            got = {h: measure(h, args.rows, parts, args.repeats, together) for h in HOWS}
            load.append(os.getloadavg()[0])
            old = max(r["us_per_row"] for r in got["faiss.knn"])
            new = max(r["us_per_row"] for r in got["probes"])
            same = all(
                np.allclose(a["sims"], b["sims"], atol=1e-5)
                for a, b in zip(got["faiss.knn"], got["probes"])
            )
            rows.append([parts, together, round(old, 2), round(new, 2), round(old / new, 2), same])
            runs.append({"partitions": parts, "processes": together, "faiss_knn_us": old})
            runs[-1].update({"probes_us": new, "same": same})
            print(rows[-1], flush=True)
    write_results(
        "assign_blocks",
        {
            "tables": [
                table(
                    f"each row's {PROBES} nearest centroids, 64-d, one thread per process "
                    f"(us per row, best of {args.repeats}; with two processes, the slower)",
                    [
                        "centroids",
                        "processes at once",
                        "faiss.knn us",
                        "probes us",
                        "faiss.knn / probes",
                        "same similarities",
                    ],
                    rows,
                )
            ],
            "runs": runs,
        },
        inputs={"rows": args.rows, "dim": 64, "probes": PROBES, "repeats": args.repeats},
        notes=[f"load average (1 min) before and after each pair: {[round(v, 2) for v in load]}"],
        started=started,
        title="assign: nearest centroids in cache-sized blocks against faiss.knn",
    )


HOWS = ("faiss.knn", "probes")

if __name__ == "__main__":
    main()
