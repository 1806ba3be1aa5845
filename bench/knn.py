"""kNN graph benchmark: datacure's builder against sklearn brute force, recall@k against exact.

    .venv/bin/python bench/knn.py --sizes 100000            # what `make bench` runs
    .venv/bin/python bench/knn.py --sizes 100000,1000000

Data (seeded, float32, 384-d):

- `lowrank`: like real embeddings, a 24-d latent with 50 centres projected to 384-d plus noise
  (FACTS.md: approximate indexes only pay off on data with low intrinsic dimension);
- `blobs`: isotropic blobs (make_blobs-style, 10 centres, std 2.5): the worst case, where every
  point's neighbours are nearly equidistant; the builder should notice and fall back to exact.

At each size up to 200k: sklearn `NearestNeighbors(metric="cosine", algorithm="brute")` (what
cleanlab Datalab uses), under the same thread limit as datacure, is the anchor and the exact
reference for recall (brute-force cost does not depend on the data, so it runs once, on
`lowrank`). Larger sizes: recall against exact search for a random sample of 1,000 queries.
Wall and CPU seconds are printed (the machine may be shared: CPU seconds are steadier).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datacure.store.knn import (
    _drop_self,
    _exact,
    build_knn,
    normalize,
    num_threads,
    recall_at_k,
)


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


class Timer:
    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w
        self.cpu = time.process_time() - self.c


def sklearn_brute(x: np.ndarray, k: int, threads: int):
    from sklearn.neighbors import NearestNeighbors
    from threadpoolctl import threadpool_limits

    with threadpool_limits(threads, user_api="blas"), Timer() as t:
        nn = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(x)
        _, idx = nn.kneighbors(x)
    # drop self (first column unless a duplicate came first)
    idx, _ = _drop_self(idx.astype(np.int64), np.zeros(idx.shape, np.float32), k)
    return idx, t


def sample_recall(x: np.ndarray, graph_idx: np.ndarray, k: int, seed: int = 7) -> float:
    xn = normalize(x)
    q = np.sort(np.random.default_rng(seed).choice(len(x), size=min(1000, len(x)), replace=False))
    s, i = _exact(xn, xn[q], k + 1, use_gpu=False)
    i, _ = _drop_self(i, s, k, qpos=q)
    return recall_at_k(graph_idx[q], i)


def row(data, n, method, t, recall, kind=""):
    print(
        f"{data:8s} {n:>9,d}  {method:22s} {t.wall:8.1f} {t.cpu:8.1f}  {recall:9.4f}  {kind}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated row counts")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--no-sklearn", action="store_true", help="skip the sklearn anchor")
    ap.add_argument("--no-blobs", action="store_true", help="skip the isotropic worst case")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    k = args.k
    threads = num_threads()
    print(
        f"kNN graph, k={k}, 384-d float32; threads={threads} (cores {os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.1f})"
    )
    print(
        f"{'data':8s} {'rows':>9s}  {'method':22s} {'wall s':>8s} {'cpu s':>8s}  {'recall@k':>9s}"
    )
    for n in sizes:
        x = lowrank(n)
        with Timer() as t:
            g = build_knn(x, k)
        anchor = None
        if n <= 200_000 and not args.no_sklearn:
            ref, anchor = sklearn_brute(x, k, threads)
            rec = recall_at_k(g.indices, ref)
            row("lowrank", n, "sklearn brute (exact)", anchor, 1.0)
        else:
            rec = sample_recall(x, g.indices, k)
        row("lowrank", n, "datacure build_knn", t, rec, g.index_kind)
        ours = t
        info = {
            k_: v
            for k_, v in g.info.items()
            if k_.startswith("seconds") or k_ == "recall_by_nprobe"
        }
        print(f"           steps: {info}; builder's own recall estimate {g.recall:.4f}")
        if anchor is not None:
            print(
                f"           speed-up vs sklearn: {anchor.wall / ours.wall:.1f}x wall, "
                f"{anchor.cpu / ours.cpu:.1f}x cpu (goal >= 5x with recall >= 0.95)"
            )
        del x, g
        if not args.no_blobs and n <= 200_000:
            xb = blobs(n)
            with Timer() as tb:
                gb = build_knn(xb, k)
            recb = 1.0 if gb.index_kind.startswith("flat") else sample_recall(xb, gb.indices, k)
            row("blobs", n, "datacure build_knn", tb, recb, gb.index_kind)
            if "fallback" in gb.info:
                curve = gb.info.get("recall_by_nprobe")
                print(f"           IVF on the sample: {curve}; {gb.info['fallback']}")
            if anchor is not None:
                print(
                    f"           worst case vs sklearn (same brute-force cost on any data): "
                    f"{anchor.wall / tb.wall:.1f}x wall, {anchor.cpu / tb.cpu:.1f}x cpu"
                )
            del xb, gb
        if n >= 1_000_000:
            print(f"           1M goal: <= 180 s on 2 cores; took {ours.wall:.0f} s wall")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"peak RSS {peak:.2f} GB; load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
