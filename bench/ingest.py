"""Benchmark: `datacure ingest` of a 1M-row Parquet file, without and with a 384-d vector column.

Rows are (id, label, ~100-character text); the second file adds `emb`, a float32[384] column
ingested with `--vector emb` (it becomes the embedding `embeddings_user_emb`). Each case runs in
a fresh child process, so its peak RSS (ru_maxrss) is its own. The anchor, run the same way on
the same file, is plain DuckDB `CREATE TABLE AS SELECT * FROM read_parquet(...)` into a new
file: the floor for getting the rows into a DuckDB store at all. datacure does more (role
inference, validation, content hashes for stable row ids, one transaction, the vector column
moved into its own table), so the ratio says what that costs.

    .venv/bin/python bench/ingest.py [--rows 1000000] [--dim 384] [--no-vectors]

Goal: >= 1M rows/s without vectors. Writes bench/results/ingest.json.
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

from common import ROOT, table, write_results


def make_files(rows: int, dim: int, workdir: Path, vectors: bool) -> dict[str, Path]:
    """Seeded Parquet files: (id, label, text ~100 chars) and the same plus a vector column."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(0)
    words = np.array(
        "the a cat dog market stock fell rose sharply today after news report said bird sang "
        "tree park ran quickly slowly under over team won lost match season player goal".split()
    )
    # 1000 distinct ~90-character sentences, each row gets one plus its id: ~100 characters
    pool = [" ".join(rng.choice(words, 18))[:90] for _ in range(1000)]
    base = pl.DataFrame(
        {
            "id": np.arange(rows, dtype=np.int64),
            "label": rng.integers(0, 4, rows).astype(np.int64),
            "_s": rng.integers(0, len(pool), rows),
        }
    )
    text = pl.Series(pool).gather(base["_s"])
    base = base.with_columns(text=pl.format("{} #{}", text, pl.col("id"))).drop("_s")
    out = {"plain": workdir / "plain.parquet"}
    base.write_parquet(out["plain"])
    if vectors:  # written in slices, so this process never holds all the vectors at once
        import pyarrow.parquet as pq

        out["vectors"] = workdir / "vectors.parquet"
        writer = None
        for lo in range(0, rows, 100_000):
            part = base.slice(lo, 100_000)
            vec = rng.standard_normal((len(part), dim), dtype=np.float32)
            tbl = part.with_columns(emb=pl.Series("emb", vec)).to_arrow()
            writer = writer or pq.ParquetWriter(out["vectors"], tbl.schema)
            writer.write_table(tbl)
        writer.close()
    return out


def reset_peak_rss() -> None:
    """Start the peak-RSS count afresh: a forked child inherits its parent's high-water mark."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: ru_maxrss below then includes the parent's peak at fork


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (VmHWM, else ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def child(case: str, path: str, db: str) -> dict:
    """One measured run in this (fresh) process."""
    reset_peak_rss()
    if case == "duckdb":
        import duckdb

        rss0, cpu0 = peak_rss_mb(), cpu_seconds()
        t0 = time.perf_counter()
        con = duckdb.connect(db)
        con.execute("CREATE TABLE samples AS SELECT * FROM read_parquet(?)", [path])
        con.close()
    else:
        from datacure.store import Store
        from datacure.store.ingest import ingest

        rss0, cpu0 = peak_rss_mb(), cpu_seconds()
        t0 = time.perf_counter()
        with Store(db) as st:
            rep = ingest(st, path, vector="emb" if case == "datacure_vec" else None)
        assert sum(rep.split_counts.values()) > 0
    secs = time.perf_counter() - t0
    return {
        "cpu_seconds": cpu_seconds() - cpu0,
        "seconds": secs,
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_imports_mb": rss0,
        "db_mb": os.path.getsize(db) / 2**20,
    }


def run_child(case: str, path: Path, workdir: Path) -> dict:
    db = workdir / f"{case}_{path.stem}.duckdb"
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", case, str(path), str(db)],
        capture_output=True,
        check=False,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode:
        raise SystemExit(f"{case} failed:\n{proc.stderr}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    db.unlink(missing_ok=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--no-vectors", action="store_true", help="skip the vector-column case")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    started = time.perf_counter()
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="dc_bench_ingest_") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        files = make_files(args.rows, args.dim, workdir, not args.no_vectors)
        load = os.getloadavg()[0]
        print(
            f"machine: {os.cpu_count()} cores, load average {load:.1f} (wall times stretch when "
            "other work shares the cores; CPU seconds do not)"
        )
        print(
            f"data: {args.rows:,} rows, made in {time.perf_counter() - t0:.1f} s; "
            + ", ".join(f"{k} {v.stat().st_size / 2**20:.0f} MB" for k, v in files.items())
        )
        for name, path in files.items():
            anchor = run_child("duckdb", path, workdir)
            ours = run_child("datacure_vec" if name == "vectors" else "datacure", path, workdir)
            label = (
                "(id, label, text)" if name == "plain" else f"(id, label, text, emb[{args.dim}])"
            )
            print(f"\n{name}: {args.rows:,} rows {label}")
            for who, r in (("duckdb CTAS (anchor)", anchor), ("datacure ingest", ours)):
                print(
                    f"  {who:22s} {r['seconds']:6.2f} s  "
                    f"{args.rows / r['seconds'] / 1e6:5.2f} M rows/s"
                    f"  peak RSS {r['peak_rss_mb']:6.0f} MB "
                    f"(after imports {r['rss_after_imports_mb']:.0f})"
                    f"  store {r['db_mb']:.0f} MB  CPU {r['cpu_seconds']:.1f} s"
                )
            print(f"  datacure / anchor time: {ours['seconds'] / anchor['seconds']:.2f}x")
            results[name] = {"duckdb_ctas": anchor, "datacure": ours}
            for who, r in (("DuckDB CREATE TABLE AS (anchor)", anchor), ("datacure ingest", ours)):
                rows.append(
                    [
                        label,
                        who,
                        round(r["seconds"], 2),
                        round(args.rows / r["seconds"] / 1e6, 2),
                        round(r["cpu_seconds"], 1),
                        round(r["peak_rss_mb"]),
                        round(r["db_mb"]),
                        round(r["seconds"] / anchor["seconds"], 2),
                    ]
                )
            if name == "plain":
                rate = args.rows / ours["seconds"]
                print(
                    "  goal >= 1.00 M rows/s without vectors: "
                    f"{'met' if rate >= 1e6 else 'NOT met'}"
                    f" ({rate / 1e6:.2f} M rows/s)"
                )
    write_results(
        "ingest",
        {
            "tables": [
                table(
                    f"Ingest of {args.rows:,} Parquet rows, datacure vs DuckDB CREATE TABLE AS",
                    [
                        "file",
                        "tool",
                        "seconds",
                        "M rows/s",
                        "CPU s",
                        "peak RSS MB",
                        "store MB",
                        "x anchor time",
                    ],
                    rows,
                    note="x anchor time = seconds / DuckDB's seconds on the same file (below 1: "
                    "datacure is faster).",
                )
            ],
            "results": results,
        },
        inputs={"rows": args.rows, "dim": args.dim, "vectors": not args.no_vectors, "seed": 0},
        notes=[
            f"One run per case, each in a fresh process; load average {load:.1f} at the start "
            f"and {os.getloadavg()[0]:.1f} at the end (2 shared cores: compare ratios).",
            "datacure does more than the anchor: role inference, validation, content hashes for "
            "stable row ids, one transaction, the vector column moved to its own table.",
        ],
        started=started,
        title="Ingest: datacure vs DuckDB CREATE TABLE AS",
    )


if __name__ == "__main__":
    main()
