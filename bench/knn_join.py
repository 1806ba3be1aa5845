"""The Ray engine's join of the kNN graph (`engine/partition.local_join`, run across tasks by
engine/ray/join_tasks.py) on data whose clusters outnumber the partitions: for each number of
probes, the recall the probes reach and the recall after each join round over the whole graph,
with the time of the scan and of the rounds, in one process; and the probes the engine picks
(`partition.join_width` on the coverage curve of the sample's exact neighbours).

    .venv/bin/python bench/knn_join.py                    # 300,000 and 1,000,000 rows

Data: bench/scale.py's text rows (its `template_texts`, seeded): n/100 templates of ten words
from a 20,000-word vocabulary, each row its template with two words replaced, embedded with the
token-hashing encoder (`hash:64`), so a row's nearest neighbours are rows of its template. The
graph is built as the Ray engine builds it, with the same functions: about 2 sqrt(n)
partitions trained on 32 sample rows each, every row probing its w nearest partitions,
candidates scored exactly, then the join's rounds (at most `JOIN_ROUNDS`, stopped as the engine
stops them). The scan runs here over all rows at once (a task scans the partitions its rows
probe, so the rows it finds are the same) and so does the join (the engine's rounds across
tasks give the same lists: tests/test_join.py). Recall@10 against exact search on 1,000 sample
rows (ties with the 10th counted), one thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_results
from scale import VOCAB, template_texts

K = 10


def texts(n: int, seed: int = 0) -> list[str]:
    """n rows of bench/scale.py's text variant (its `template_texts`), n/100 templates."""
    templates = np.random.default_rng(seed).integers(0, VOCAB, size=(max(1_000, n // 100), 10))
    rng = np.random.default_rng([seed, 1])
    return template_texts(templates, rng.integers(0, len(templates), n), rng).to_pylist()


def one(n: int, widths: list[int], seed: int = 0) -> dict:
    from datacure.engine import partition as P
    from datacure.store.embedders import HashingEmbedder

    t0 = time.perf_counter()
    x = P.normalize(HashingEmbedder(64).encode(texts(n, seed)))
    seconds = {"embed": time.perf_counter() - t0}
    rng = np.random.default_rng(seed)
    parts = P.num_partitions(n)
    t0 = time.perf_counter()
    cent = P.train_centroids(x[rng.choice(n, min(n, 32 * parts), replace=False)], parts, seed)
    part = P.assign(x, cent)
    probes = P.probes(x, cent, P.MAX_PROBES)
    seconds["partitions"] = time.perf_counter() - t0
    queries = np.sort(rng.choice(n, P.RECALL_QUERIES, replace=False))
    ex_sims, ex_ids = P.exact_topk(x[queries], x, 2 * K + 1)
    ex_ids, ex_sims = P.drop_self(ex_ids, ex_sims, queries, 2 * K)
    # the engine's width: the coverage curve of the sample's exact neighbours
    tied = P.tied_neighbours(ex_sims, ex_ids, K)
    nb_part = np.where(ex_ids >= 0, part[np.maximum(ex_ids, 0)], -1)
    sizes = np.bincount(part, minlength=parts)
    width, curve = P.choose_width(probes[queries], nb_part, sizes, K, tied)
    picked = (
        width if curve["coverage_reached"] else P.join_width(curve["coverage_by_probes"], width)
    )
    out = {"rows": n, "partitions": parts, "picked": picked, "curve": curve, "widths": []}
    rows = np.arange(n)
    for w in sorted(set(widths) | {picked}):
        t0 = time.perf_counter()
        pos, sim = P.scan(x, x, part, rows, rows, np.ascontiguousarray(probes[:, :w]), K)
        r = {"probes": w, "scan_s": round(time.perf_counter() - t0, 2)}
        r["recall_probes"] = P.recall(pos[queries], sim[queries], ex_sims[:, :K])
        r["recall_by_round"], r["changed"] = [], []
        t0 = time.perf_counter()
        for _ in range(P.JOIN_ROUNDS):
            pos, sim, info = P.local_join(x, rows, pos, sim, rounds=1)
            r["recall_by_round"].append(P.recall(pos[queries], sim[queries], ex_sims[:, :K]))
            r["changed"].append(info["changed"][0])
            if info["changed"][0] <= P.JOIN_STOP:
                break
        r["join_s"] = round(time.perf_counter() - t0, 2)
        out["widths"].append(r)
        print(n, r, flush=True)
    out["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, nargs="*", default=[300_000, 1_000_000])
    ap.add_argument("--probes", type=int, nargs="*", default=[2, 4, 8, 16, 48])
    args = ap.parse_args()
    started = time.perf_counter()
    load = [os.getloadavg()[0]]
    runs, rows = [], []
    from datacure.store.knn_exact import load_faiss, single_blas_thread

    load_faiss().omp_set_num_threads(1)  # as the engine's tasks run (one CPU each)
    with single_blas_thread():
        for n in args.rows:
            r = one(n, args.probes)
            load.append(os.getloadavg()[0])
            runs.append(r)
            for w in r["widths"]:
                rows.append(
                    [
                        f"{n:,}",
                        w["probes"] if w["probes"] != r["picked"] else f"{w['probes']} (picked)",
                        round(w["recall_probes"], 4),
                        " / ".join(f"{v:.4f}" for v in w["recall_by_round"]),
                        w["scan_s"],
                        w["join_s"],
                    ]
                )
    write_results(
        "knn_join",
        {
            "tables": [
                table(
                    "recall@10 of the partitioned graph on templated text (hash:64), joined",
                    ["rows", "probes", "probes only", "after each join round", "scan s", "join s"],
                    rows,
                    note="one thread, all rows at once; the engine's pick is join_width on the "
                    "sample's coverage curve; recall on 1,000 sample rows against exact search",
                )
            ],
            "runs": runs,
        },
        inputs={"rows": args.rows, "probes": args.probes, "k": K, "seed": 0},
        notes=[f"load average {load[0]:.1f} at the start and {load[-1]:.1f} at the end"],
        started=started,
        title="the kNN graph's join over the whole graph, by the probes that seed it",
    )


if __name__ == "__main__":
    main()
