"""How fine the kNN graph's partitions should be: for several partition counts (multiples of
the engine's about 2 sqrt(n), `partition.num_partitions`), the rows a query must scan to reach
a share of its exact neighbours (the coverage `choose_width` picks the probes by), and what
assigning a row to its partitions costs. Why: on templated text the Ray engine's search cannot
cover the target at affordable probes and seeds a join instead, and at 10M rows that scan is
most of the audit (README, "The text variant"); this measures whether
finer partitions would scan less, and what they would cost to train and assign.

    .venv/bin/python bench/knn_partitions.py                  # text and lowrank 1M, real text
    .venv/bin/python bench/knn_partitions.py --data text --rows 300000 --scale 0.25 1 4
    .venv/bin/python bench/knn_partitions.py --data text lowrank --rows 3000000 --scale 1 2 \
        --name knn_partitions_3m                              # the engine's 2x, at 3M rows

Data as bench/knn_join.py's (`text`: n/100 templates of 100 rows on average, hashed to 64-d;
`lowrank`; `blobs`; `real`: all-MiniLM-L6-v2 vectors of ../shared/data's texts). The engine's
steps: the top 64 principal directions when the vectors are wider, spherical k-means on 32
sample rows per centroid (at most 3M sample rows), every row assigned to its nearest
centroids with FAISS (`partition.probes`, one thread: the assign seconds per million rows), the
coverage curve of 500 sample queries' exact neighbours (ties with the 10th counted) up to 256
probes. `--tree`: the same partitions trained in two levels (sqrt(P) coarse cells, then each
cell's share of fine centroids) and assigned through the 16 nearest coarse cells: a tenth of a
flat assignment's products.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_results
from knn_join import DATA, K, partitions_at, vectors

TARGETS = (0.65, 0.85, 0.95)
MAX_PROBES = 256
COARSE_PROBES = 16


def _kmeans(z: np.ndarray, k: int, seed: int) -> np.ndarray:
    from datacure.engine import partition as P

    return P.train_centroids(z, k, seed)


def tree_partitions(z_sample: np.ndarray, parts: int, seed: int):
    """Two-level spherical k-means: sqrt(parts) coarse cells, then each cell's sample rows
    split into its share of `parts`. Returns (coarse centroids, fine centroids, each fine
    centroid's cell)."""
    from datacure.engine import partition as P

    coarse = _kmeans(z_sample, max(1, round(math.sqrt(parts))), seed)
    cell = P.assign(z_sample, coarse)
    fine, cell_of = [], []
    for j in range(len(coarse)):
        rows = z_sample[cell == j]
        if not len(rows):
            continue
        share = max(1, round(parts * len(rows) / len(z_sample)))
        fine.append(_kmeans(rows, share, seed + 1 + j))
        cell_of.append(np.full(len(fine[-1]), len(cell_of), np.int32))
    fine_c, cell_of_c = np.vstack(fine), np.concatenate(cell_of)
    coarse = P.normalize(
        np.vstack([fine_c[cell_of_c == j].mean(axis=0) for j in range(len(fine))])
    ).astype(np.float32)
    return coarse, fine_c, cell_of_c


def tree_probes(z: np.ndarray, coarse, fine, cell_of, w: int) -> np.ndarray:
    """Each row's w nearest fine centroids among those of its COARSE_PROBES nearest cells (the
    engine's scan: one product per cell for the rows that probe it, into a FAISS heap)."""
    from datacure.engine import partition as P
    from datacure.store.knn_exact import load_faiss

    cells = P.probes(z, coarse, COARSE_PROBES)
    heap = load_faiss().ResultHeap(len(z), min(w, len(fine)), keep_max=True)
    flat = cells.reshape(-1)
    pair_q = np.repeat(np.arange(len(z)), cells.shape[1])
    by_cell = np.argsort(flat, kind="stable")
    flat, pair_q = flat[by_cell], pair_q[by_cell]
    order = np.argsort(cell_of, kind="stable")
    starts = np.searchsorted(cell_of[order], np.arange(len(coarse) + 1))
    qstarts = np.searchsorted(flat, np.arange(len(coarse) + 1))
    for j in range(len(coarse)):
        mem = order[starts[j] : starts[j + 1]]
        rows = pair_q[qstarts[j] : qstarts[j + 1]]
        if len(mem) and len(rows):
            cb = np.ascontiguousarray(fine[mem].T)
            step = max(1, (1 << 22) // len(mem))
            for q0 in range(0, len(rows), step):
                rb = rows[q0 : q0 + step]
                heap.add_result_subset(rb, z[rb] @ cb, mem)
    heap.finalize()
    return heap.I.astype(np.int32)


def one(kind: str, n: int, scales: list[float], tree: bool, seed: int = 0) -> list[dict]:
    from datacure.engine import partition as P

    x = vectors(kind, n, seed)
    n = len(x)
    rng = np.random.default_rng(seed)
    basis = P.train_basis(x[rng.choice(n, min(n, 64_000), replace=False)])
    z = P.project(x, basis)
    queries = np.sort(rng.choice(n, 500, replace=False))
    ex_sims, ex_ids = P.exact_topk(x[queries], x, 2 * K + 1)
    ex_ids, ex_sims = P.drop_self(ex_ids, ex_sims, queries, 2 * K)
    tied = P.tied_neighbours(ex_sims, ex_ids, K)
    out = []
    for scale in scales:
        for how in ("flat", "tree") if tree else ("flat",):
            parts = partitions_at(n, scale)
            sample = z[rng.choice(n, min(n, 32 * parts, 3_000_000), replace=False)]
            t0 = time.perf_counter()
            if how == "flat":
                cent = P.train_centroids(sample, parts, seed)
            else:
                coarse, cent, cell_of = tree_partitions(sample, parts, seed)
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            rows = rng.choice(n, min(n, 200_000), replace=False)  # the assign's cost, timed
            if how == "flat":
                P.probes(z[rows], cent, P.MAX_PROBES)
            else:
                tree_probes(z[rows], coarse, cent, cell_of, P.MAX_PROBES)
            assign_s = (time.perf_counter() - t0) / len(rows) * 1e6
            w = min(MAX_PROBES, len(cent))
            if how == "flat":
                part = P.assign(z, cent)
                qprobes = P.probes(z[queries], cent, w)
            else:
                part = tree_probes(z, coarse, cent, cell_of, 1)[:, 0]
                qprobes = tree_probes(z[queries], coarse, cent, cell_of, w)
            nb_part = np.where(ex_ids >= 0, part[np.maximum(ex_ids, 0)], -1)
            sizes = np.bincount(part, minlength=len(cent))
            saved = P.MAX_COST_FRACTION
            P.MAX_COST_FRACTION = 1.0  # the whole curve, not the engine's affordable part
            try:
                _, curve = P.choose_width(qprobes, nb_part, sizes, K, tied, target=1.01)
            finally:
                P.MAX_COST_FRACTION = saved
            cov, scanned = curve["coverage_by_probes"], curve["scanned_by_probes"]
            reach = {}
            for t in TARGETS:
                ws = [p for p in sorted(cov) if cov[p] >= t]
                reach[str(t)] = (ws[0], round(scanned[ws[0]] * n)) if ws else None
            r = {
                "data": kind,
                "rows": n,
                "partitions": len(cent),
                "scale": scale,
                "how": how,
                "train_s": round(train_s, 2),
                "assign_us_per_row": round(assign_s, 2),
                "coverage_at_1": cov[1],
                "reach": reach,
            }
            print(r, flush=True)
            out.append(r)
    return out


def _reach_cell(reach) -> str:
    return "not within 256 probes" if reach is None else f"{reach[1]:,} ({reach[0]} probes)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", nargs="*", default=["text", "lowrank", "real"], choices=sorted(DATA))
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--scale", type=float, nargs="*", default=[0.25, 1.0, 4.0])
    ap.add_argument("--tree", action="store_true", help="also the two-level partitions")
    ap.add_argument("--name", default="knn_partitions", help="results file stem")
    args = ap.parse_args()
    started = time.perf_counter()
    load = [os.getloadavg()[0]]
    from datacure.engine import partition as P
    from datacure.store.knn_exact import load_faiss, single_blas_thread

    load_faiss().omp_set_num_threads(1)
    runs = []
    with single_blas_thread():
        for kind in args.data:
            runs += one(kind, args.rows, args.scale, args.tree)
            load.append(os.getloadavg()[0])
    rows = [
        [
            DATA[r["data"]],
            f"{r['rows']:,}",
            f"{r['partitions']:,} ({r['scale']:g}x{', two-level' if r['how'] == 'tree' else ''})",
            f"{r['rows'] / r['partitions']:.0f}",
            r["train_s"],
            r["assign_us_per_row"],
            *[_reach_cell(r["reach"][str(t)]) for t in TARGETS],
        ]
        for r in runs
    ]
    write_results(
        args.name,
        {
            "tables": [
                table(
                    "rows a query scans to reach a share of its exact neighbours, by partitions",
                    [
                        "data",
                        "rows",
                        "partitions (x 2 sqrt(n))",
                        "rows per partition",
                        "train s",
                        f"assign us/row ({P.MAX_PROBES} probes)",
                        *[f"rows scanned for coverage {t}" for t in TARGETS],
                    ],
                    rows,
                    note="one thread; coverage on 500 sample rows' exact top 10 (ties counted); "
                    f"assign: each row's {P.MAX_PROBES} nearest centroids "
                    "(`partition.probes`), timed on 200,000 rows; train: k-means on 32 sample "
                    "rows per centroid",
                )
            ],
            "runs": runs,
        },
        inputs={"data": args.data, "rows": args.rows, "scale": args.scale, "tree": args.tree},
        notes=[f"load average {load[0]:.1f} at the start and {load[-1]:.1f} at the end"],
        started=started,
        title="the kNN graph's partitions: rows scanned for a coverage, by how many there are",
    )


if __name__ == "__main__":
    main()
