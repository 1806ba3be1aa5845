"""The Ray engine's join of the kNN graph (`engine/partition.local_join`, run across tasks by
engine/ray/join_tasks.py): for each number of probes, the recall the probes reach and the recall
after each join round over the whole graph, with the time of the scan and of the rounds, in one
process; and the probes the engine picks (`partition.join_width` on the coverage curve of the
sample's exact neighbours), on several kinds of data, so that the seed rule (`JOIN_SEED`, the
coverage the probes must reach before the join takes over) is not fitted to one; then the far
rows the sample says the join left (`choose_redo`) searched again with the most probes.

    .venv/bin/python bench/knn_join.py                    # text, 300,000 and 1,000,000 rows
    .venv/bin/python bench/knn_join.py --data text lowrank blobs real --rows 300000

Data (`--data`):
- `text`: bench/scale.py's text rows (its `template_texts`, seeded): n/100 templates of ten
  words from a 20,000-word vocabulary, each row its template with two words replaced, embedded
  with the token-hashing encoder (`hash:64`), so a row's nearest neighbours are rows of its
  template: more tight clusters than partitions, where the engine joins.
- `lowrank`, `blobs`: bench/knn.py's 384-d vectors (a 24-d latent with 50 centres; 10 isotropic
  blobs, where neighbours are nearly equidistant).
- `real`: real text, all-MiniLM-L6-v2 vectors of every text in ../shared/data (AG News train
  and test, MNLI premises and hypotheses, GSM8K questions, IMDb reviews and their edited
  counterparts; 50,902 rows, whatever `--rows` says).

The graph is built as the Ray engine builds it, with the same functions: the top 64 principal
directions when the vectors are wider (`train_basis`), about 2 sqrt(n) partitions trained on
32 sample rows each, every row probing its w nearest partitions, the candidates per neighbour
that the sample's nearest rows in the projection call for (`choose_candidates`; none: the scan
scores in the full dimension) re-ranked exactly, then the join's rounds (at most
`JOIN_ROUNDS`, stopped as the engine stops them). The engine joins only where no affordable
width covers the target (`coverage_reached` false); the rounds are run here at every width,
that case or not, to see what the seed rule would give. The scan runs here over all rows at
once (a task scans the partitions its rows probe, so the rows it finds are the same) and so
does the join (the engine's rounds across tasks give the same lists: tests/test_join.py).
Recall@10 against exact search on 1,000 sample rows (ties with the 10th counted), one thread.
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
from scale import VOCAB, template_texts

K = 10


def texts(n: int, seed: int = 0) -> list[str]:
    """n rows of bench/scale.py's text variant (its `template_texts`), n/100 templates."""
    templates = np.random.default_rng(seed).integers(0, VOCAB, size=(max(1_000, n // 100), 10))
    rng = np.random.default_rng([seed, 1])
    return template_texts(templates, rng.integers(0, len(templates), n), rng).to_pylist()


DATA = {
    "text": "templated text (hash:64)",
    "lowrank": "low-rank 384-d vectors",
    "blobs": "isotropic blobs, 384-d",
    "real": "real text (all-MiniLM-L6-v2)",
}


def real_texts() -> list[str]:
    """Every text of ../shared/data's sets (see the module docstring)."""
    import polars as pl
    from common import SHARED_DATA

    out = []
    for name in ("train_10k.csv", "test.csv"):
        out += pl.read_csv(SHARED_DATA / "noisy_ag_news" / name)["text"].to_list()
    mnli = pl.read_csv(
        SHARED_DATA / "mnli_negation" / "mnli_dev_matched_bert100.tsv",
        separator="\t",
        quote_char=None,
    )
    out += mnli["premise"].to_list() + mnli["hypothesis"].to_list()
    for name in ("train.jsonl", "test.jsonl"):
        out += pl.read_ndjson(SHARED_DATA / "gsm8k_contamination" / name)["question"].to_list()
    for name in ("train_paired.tsv", "dev_paired.tsv", "test_paired.tsv"):
        path = SHARED_DATA / "imdb_counterfactual" / name
        out += pl.read_csv(path, separator="\t", quote_char=None)["Text"].to_list()
    return [str(t) for t in out if t]


def vectors(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """The normalised rows of one kind of data (`DATA`)."""
    from datacure.engine import partition as P

    if kind == "text":
        from datacure.store.embedders import HashingEmbedder

        return P.normalize(HashingEmbedder(64).encode(texts(n, seed)))
    if kind == "real":
        from common import minilm_vectors

        return P.normalize(minilm_vectors(real_texts(), "shared_all"))
    import knn

    return P.normalize((knn.lowrank if kind == "lowrank" else knn.blobs)(n, seed=seed))


def partitions_at(n: int, scale: float) -> int:
    """`scale` x 2 sqrt(n) partitions (1: about the engine's `num_partitions`)."""
    return max(1, round(2 * math.sqrt(n) * scale))


def one(
    kind: str, n: int, widths: list[int], seed: int = 0, scale=None, anchor: bool = False
) -> dict:
    from datacure.engine import partition as P

    t0 = time.perf_counter()
    x = vectors(kind, n, seed)
    n = len(x)
    seconds = {"embed": time.perf_counter() - t0}
    rng = np.random.default_rng(seed)
    parts = P.num_partitions(n) if scale is None else partitions_at(n, scale)
    t0 = time.perf_counter()
    sample = x[rng.choice(n, min(n, 32 * parts), replace=False)]
    basis = P.train_basis(sample)
    z = P.project(x, basis)
    cent = P.train_centroids(P.project(sample, basis), parts, seed)
    part = P.assign(z, cent)
    probes = P.probes(z, cent, P.MAX_PROBES)
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
    out = {"data": kind, "rows": n, "partitions": parts, "picked": picked, "curve": curve}
    out["projected"] = basis is not None
    out["widths"] = []
    rows = np.arange(n)
    if basis is not None:  # the engine's candidates from the projection (0: full dimension)
        _, z_ids = P.exact_topk(z[queries], z, P.candidate_list_size(K))
        z_parts = np.where(z_ids >= 0, part[np.maximum(z_ids, 0)], -1)
    for w in sorted(set(widths) | {picked}):
        cand, cinfo, zs = P.CANDIDATES, {}, z
        if basis is not None:
            qp = probes[queries, :w]
            cand, cinfo = P.choose_candidates(z_ids, z_parts, qp, queries, ex_ids, nb_part, tied, K)
            zs = z if cand else x
        t0 = time.perf_counter()
        probed = np.ascontiguousarray(probes[:, :w])
        pos, sim = P.scan(x, zs, part, rows, rows, probed, K, candidates=cand or P.CANDIDATES)
        r = {"probes": w, "scan_s": round(time.perf_counter() - t0, 2), "candidates": cand}
        r.update(cinfo)
        r["recall_probes"] = P.recall(pos[queries], sim[queries], ex_sims[:, :K])
        if anchor:  # every candidate scored each round: the incremental join's anchor
            t0 = time.perf_counter()
            full = P.local_join(x, rows, pos, sim, incremental=False)
            r["join_all_s"] = round(time.perf_counter() - t0, 2)
            r["scored_all"] = full[2]["scored"]
        r["recall_by_round"] = []
        t0 = time.perf_counter()
        seconds_recall = [0.0]

        def each_round(p, s, r=r, seconds_recall=seconds_recall):
            t = time.perf_counter()
            r["recall_by_round"].append(P.recall(p[queries], s[queries], ex_sims[:, :K]))
            seconds_recall[0] += time.perf_counter() - t

        pos, sim, info = P.local_join(x, rows, pos, sim, each_round=each_round)
        r["changed"], r["scored"] = info["changed"], info["scored"]
        r["join_s"] = round(time.perf_counter() - t0 - seconds_recall[0], 2)
        if anchor:
            r["same_lists"] = bool(np.array_equal(pos, full[0]) and np.array_equal(sim, full[1]))
        r.update(redo(x, part, probes, pos, sim, queries, ex_sims, nb_part, tied, w))
        out["widths"].append(r)
        print(kind, n, r, flush=True)
    out["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return out


def redo(x, part, probes, pos, sim, queries, ex_sims, nb_part, tied, w: int) -> dict:
    """The engine's step after the join (engine/ray/graph.py `_redo_cut`, `_refine`): the rows
    whose mean neighbour distance is past the cut `choose_redo` sets on the sample, searched
    again with the most probes (MAX_PROBES) in the full dimension and merged with their joined
    rows."""
    from datacure.engine import partition as P
    from datacure.engine.plans import outlier_mean
    from datacure.engine.ray.search_tasks import _merge_rows
    from datacure.store.knn_exact import recall_per_query

    wide = P.MAX_PROBES
    dist = np.where(pos >= 0, np.clip(1.0 - sim, 0.0, 2.0), np.inf).astype(np.float32)
    score = outlier_mean(pos, dist)
    rq = recall_per_query(pos[queries], sim[queries], ex_sims[:, :K])
    cov = P.per_query_coverage(probes[queries], nb_part, tied, K, wide)
    cut, info = P.choose_redo(score[queries], rq, cov) if wide > w else (None, {})
    out = {"redo_probes": wide, "redo_share": info.get("redo_share", 0.0), "redo_rows": 0}
    out["redo_predicted"] = info.get("redo_predicted")
    out["recall_redo"], out["redo_s"] = float(rq.mean()), 0.0
    if cut is None:
        return out
    rows = np.flatnonzero(score >= cut)
    t0 = time.perf_counter()
    rp, rs = P.scan(
        x, x, part, np.arange(len(x)), rows, np.ascontiguousarray(probes[rows, :wide]), K
    )
    none = np.zeros(rp.shape, np.int32)  # splits and labels: not used here
    new = (rp, np.where(rp >= 0, 1.0 - rs, np.inf).astype(np.float32), none, none)
    ids, d, _, _ = _merge_rows((pos[rows], dist[rows], none, none), new, K)
    pos, sim = pos.copy(), sim.copy()
    pos[rows], sim[rows] = ids, np.where(ids >= 0, 1.0 - d, -np.inf)
    out.update(redo_rows=len(rows), redo_s=round(time.perf_counter() - t0, 2))
    out["recall_redo"] = P.recall(pos[queries], sim[queries], ex_sims[:, :K])
    return out


def _redo_cell(w: dict) -> str:
    if not w["redo_rows"]:
        return "none"
    share = w["redo_rows"] / w["rows"]
    return (
        f"{w['recall_redo']:.4f} ({share:.1%} of rows, {w['redo_probes']} probes, {w['redo_s']} s)"
    )


def _candidates_cell(run: dict, w: dict) -> str:
    """The candidates per neighbour the scan kept from the projection (the engine's choice)."""
    if not run["projected"]:
        return "no projection"
    return "full dimension" if w["candidates"] == 0 else str(w["candidates"])


ANCHOR_COLUMNS = [
    "join s, every candidate scored",
    "candidates scored per round, incremental / every",
    "same lists",
]


def _anchor_cells(w: dict) -> list:
    """The anchor's cells: its join time, the candidates each round scored both ways, and
    whether the lists came out the same."""
    per_round = " / ".join(
        f"{a / 1e6:.2f}M of {b / 1e6:.2f}M" for a, b in zip(w["scored"], w["scored_all"])
    )
    return [w["join_all_s"], per_round, w["same_lists"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, nargs="*", default=[300_000, 1_000_000])
    ap.add_argument("--probes", type=int, nargs="*", default=[2, 4, 8, 16, 48])
    ap.add_argument("--data", nargs="*", default=["text"], choices=sorted(DATA))
    ap.add_argument("--scale", type=float, help="partitions: this x 2 sqrt(n) (default: engine's)")
    ap.add_argument(
        "--anchor", action="store_true", help="also join scoring every candidate, timed"
    )
    ap.add_argument("--name", default="knn_join", help="results file stem")
    args = ap.parse_args()
    started = time.perf_counter()
    load = [os.getloadavg()[0]]
    runs, rows = [], []
    from datacure.store.knn_exact import load_faiss, single_blas_thread

    load_faiss().omp_set_num_threads(1)  # as the engine's tasks run (one CPU each)
    with single_blas_thread():
        for kind, n in [(kind, n) for kind in args.data for n in args.rows]:
            if kind == "real" and any(r["data"] == "real" for r in runs):
                continue  # its rows are the shared data's, whatever --rows says
            r = one(kind, n, args.probes, scale=args.scale, anchor=args.anchor)
            load.append(os.getloadavg()[0])
            runs.append(r)
            joins = "joins" if not r["curve"]["coverage_reached"] else "no join"
            for w in r["widths"]:
                rows.append(
                    [
                        f"{DATA[kind]} ({joins})",
                        f"{r['rows']:,}",
                        w["probes"] if w["probes"] != r["picked"] else f"{w['probes']} (picked)",
                        _candidates_cell(r, w),
                        round(w["recall_probes"], 4),
                        " / ".join(f"{v:.4f}" for v in w["recall_by_round"]),
                        _redo_cell({**w, "rows": r["rows"]}),
                        w["scan_s"],
                        w["join_s"],
                        *(_anchor_cells(w) if args.anchor else []),
                    ]
                )
    write_results(
        args.name,
        {
            "tables": [
                table(
                    "recall@10 of the partitioned graph, joined, by the probes that seed it",
                    [
                        "data (the engine's choice)",
                        "rows",
                        "probes",
                        "candidates",
                        "probes only",
                        "after each join round",
                        "far rows searched again",
                        "scan s",
                        "join s",
                        *(ANCHOR_COLUMNS if args.anchor else []),
                    ],
                    rows,
                    note="one thread, all rows at once; the engine joins where no affordable "
                    "width covers the target, from the width `join_width` picks on the sample's "
                    "coverage curve; elsewhere the picked width is the one it searches with; "
                    "far rows searched again: after the join, the rows past the mean-distance "
                    "cut `choose_redo` sets on the sample, with the most probes (48; the engine "
                    "does this after a join only); recall on 1,000 sample rows against exact "
                    "search",
                )
            ],
            "runs": runs,
        },
        inputs={
            "data": args.data,
            "rows": args.rows,
            "probes": args.probes,
            "k": K,
            "seed": 0,
            "partitions_x_2sqrt_n": args.scale,
            "anchor": args.anchor,
        },
        notes=[f"load average {load[0]:.1f} at the start and {load[-1]:.1f} at the end"],
        started=started,
        title="the kNN graph's join over the whole graph, by the probes that seed it",
    )


if __name__ == "__main__":
    main()
