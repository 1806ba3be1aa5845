"""Is non_iid's flag on the 1M rows of bench/audit_vs_datalab.py a property of datacure's
kNN graph or of the rows' order? The rows (`make_lowrank_data`, first of `--data-seeds`) tested
three ways with datacure's `knn_order_test` (25 permutations): (a) the graph of the rows in
their generated order; (b) the same graph with the rows relabelled by a random permutation (the
null the test draws from); (c) the graph rebuilt on the rows shuffled (`--shuffles` seeds) and
tested in the shuffled order. If (a) is small and (b), (c) are not, the graph builder is
order-neutral and the generated order itself carries the signal; (a) on the other data seeds
says whether that is chance.

    .venv/bin/python bench/non_iid_order.py [--n 1000000] [--shuffles 2]

Writes bench/results/non_iid_order.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from audit_vs_datalab import make_lowrank_data
from common import table, write_results

from datacure.auditor.non_iid import knn_order_test
from datacure.store.knn import build_knn


def test(nbr: np.ndarray) -> dict:
    n = len(nbr)
    valid = nbr >= 0
    d = np.abs(np.arange(n)[:, None] - nbr)[valid]
    stat, p, _, _ = knn_order_test(nbr, valid, 25, 0)
    return {"mean_index_distance_over_n": float(d.mean() / n), "ks": stat, "p": p}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--shuffles", type=int, default=2)
    ap.add_argument(
        "--data-seeds", default="0,1,2", help="generated-order case per data seed (the rest: first)"
    )
    args = ap.parse_args()
    started = time.time()
    n = args.n
    seeds = [int(v) for v in args.data_seeds.split(",")]
    cases = []
    for ds in seeds[1:]:
        x = make_lowrank_data(n, seed=ds)["x"]
        g = build_knn(x, 10, seed=0)
        cases.append(
            {
                "case": f"generated order, data seed {ds}",
                "graph": g.index_kind,
                "recall": g.recall,
                **test(g.indices),
            }
        )
        print(cases[-1], flush=True)
        del g, x
    x = make_lowrank_data(n, seed=seeds[0])["x"]
    g = build_knn(x, 10, seed=0)
    cases.append(
        {
            "case": f"generated order, data seed {seeds[0]}",
            "graph": g.index_kind,
            "recall": g.recall,
            **test(g.indices),
        }
    )
    perm = np.random.default_rng(5).permutation(n)
    inv = np.argsort(perm)
    relabelled = np.where(g.indices[perm] >= 0, inv[g.indices[perm]], -1)
    cases.append(
        {
            "case": "same graph, rows relabelled at random",
            "graph": g.index_kind,
            "recall": g.recall,
            **test(relabelled),
        }
    )
    del g, relabelled
    for s in range(1, args.shuffles + 1):
        perm = np.random.default_rng(s).permutation(n)
        g = build_knn(x[perm], 10, seed=0)
        cases.append(
            {
                "case": f"rows shuffled (seed {s}), graph rebuilt",
                "graph": g.index_kind,
                "recall": g.recall,
                **test(g.indices),
            }
        )
        print(cases[-1], flush=True)
    rows = [
        [
            c["case"],
            f"{c['recall']:.3f}",
            f"{c['mean_index_distance_over_n']:.6f}",
            f"{c['ks']:.6f}",
            f"{c['p']:.3f}",
        ]
        for c in cases
    ]
    write_results(
        "non_iid_order",
        {
            "tables": [
                table(
                    "non_iid on the audit_vs_datalab rows: graph or order?",
                    [
                        "case",
                        "graph recall",
                        "mean |i-j| / n (i.i.d.: 1/3)",
                        "KS",
                        "p (25 permutations)",
                    ],
                    rows,
                )
            ],
            "cases": cases,
        },
        inputs={
            "n": n,
            "data": "audit_vs_datalab.make_lowrank_data",
            "data_seeds": seeds,
            "k": 10,
            "permutations": 25,
            "shuffles": args.shuffles,
        },
        notes=["One run; the machine is shared (load in machine)."],
        started=started,
    )


if __name__ == "__main__":
    main()
