"""The Ray engine's local join (`engine/partition.local_join`) on data whose clusters outnumber
the partitions: the recall the probes reach, after the join in the engine's groups, and after
one join over the whole graph (what a join across groups would reach), in one process.

    .venv/bin/python bench/knn_join.py                    # 300,000 and 1,000,000 rows

Data: bench/scale.py's text rows (its `template_texts`, seeded): n/100 templates of ten words
from a 20,000-word vocabulary, each row its template with two words replaced, embedded with the
token-hashing encoder (`hash:64`), so a row's nearest neighbours are rows of its template. The
graph is built as the Ray engine builds it, with the same functions: about 2 sqrt(n)
partitions trained on 32 sample rows each, the partitions grouped by `group_partitions` into
one group per 100,000 rows (the engine's default `group_rows`), every row probing its 48
nearest partitions (the engine's cap), candidates scored exactly. The scan runs here over all
rows at once (a task scans the partitions its rows probe, so the rows it finds are the same);
the join runs once per group on that group's rows (as each search task does) and once over all
rows. Recall@10 against exact search on 1,000 sample rows (ties with the 10th counted), one
thread.
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

GROUP_ROWS = 100_000  # the Ray engine's default rows per group
K = 10


def texts(n: int, seed: int = 0) -> list[str]:
    """n rows of bench/scale.py's text variant (its `template_texts`), n/100 templates."""
    templates = np.random.default_rng(seed).integers(0, VOCAB, size=(max(1_000, n // 100), 10))
    rng = np.random.default_rng([seed, 1])
    return template_texts(templates, rng.integers(0, len(templates), n), rng).to_pylist()


def one(n: int, seed: int = 0) -> dict:
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
    groups = max(1, -(-n // GROUP_ROWS))
    group_of = P.group_partitions(cent, np.bincount(part, minlength=parts), groups, seed)[part]
    probes = P.probes(x, cent, P.MAX_PROBES)
    seconds["partitions"] = time.perf_counter() - t0
    queries = np.sort(rng.choice(n, P.RECALL_QUERIES, replace=False))
    ex_sims, ex_ids = P.exact_topk(x[queries], x, K + 1)
    ex_ids, ex_sims = P.drop_self(ex_ids, ex_sims, queries, K)
    rows = np.arange(n)
    t0 = time.perf_counter()
    pos, sim = P.scan(x, x, part, rows, rows, probes, K)
    seconds["scan"] = time.perf_counter() - t0
    out = {"rows": n, "partitions": parts, "groups": int(group_of.max()) + 1}
    out["recall_probes"] = P.recall(pos[queries], sim[queries], ex_sims)
    t0 = time.perf_counter()
    gpos, gsim, changed = pos.copy(), sim.copy(), []
    for g in range(out["groups"]):
        own = np.flatnonzero(group_of == g)
        gpos[own], gsim[own], info = P.local_join(x, own, pos[own], sim[own])
        changed.append(info["changed"])
    seconds["join_groups"] = time.perf_counter() - t0
    out["recall_join_groups"] = P.recall(gpos[queries], gsim[queries], ex_sims)
    out["join_groups_rounds"] = max(len(c) for c in changed)
    t0 = time.perf_counter()
    apos, asim, info = P.local_join(x, rows, pos, sim)
    seconds["join_all"] = time.perf_counter() - t0
    out["recall_join_all"] = P.recall(apos[queries], asim[queries], ex_sims)
    out["join_all_changed"] = info["changed"]
    out["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, nargs="*", default=[300_000, 1_000_000])
    args = ap.parse_args()
    started = time.perf_counter()
    load = [os.getloadavg()[0]]
    runs, rows = [], []
    from datacure.store.knn_exact import load_faiss, single_blas_thread

    load_faiss().omp_set_num_threads(1)  # as the engine's tasks run (one CPU each)
    with single_blas_thread():
        for n in args.rows:
            r = one(n)
            load.append(os.getloadavg()[0])
            runs.append(r)
            s = r["seconds"]
            rows.append(
                [
                    f"{n:,}",
                    r["partitions"],
                    r["groups"],
                    round(r["recall_probes"], 4),
                    round(r["recall_join_groups"], 4),
                    round(r["recall_join_all"], 4),
                    s["scan"],
                    s["join_groups"],
                    s["join_all"],
                ]
            )
            print(rows[-1], flush=True)
    write_results(
        "knn_join",
        {
            "tables": [
                table(
                    "recall@10 of the partitioned graph on templated text (hash:64), 48 probes",
                    [
                        "rows",
                        "partitions",
                        "groups",
                        "probes only",
                        "joined in groups (the engine)",
                        "joined whole",
                        "scan s",
                        "join in groups s",
                        "join whole s",
                    ],
                    rows,
                    note="one thread; the scan covers all rows at once (the engine splits it "
                    "into the groups' tasks); recall on 1,000 sample rows against exact search",
                )
            ],
            "runs": runs,
        },
        inputs={"rows": args.rows, "k": K, "group_rows": GROUP_ROWS, "seed": 0},
        notes=[f"load average {load[0]:.1f} at the start and {load[-1]:.1f} at the end"],
        started=started,
        title="the kNN graph's local join: in the engine's groups and over the whole graph",
    )


if __name__ == "__main__":
    main()
