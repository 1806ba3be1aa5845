"""Peak memory of `ingest`, `embed` and `audit` on 1M rows, and of ingesting a 100k-file image
folder: the bounds the README documents.

    nice -n 10 .venv/bin/python bench/scale_rss.py      # 1M rows + 100k images (bench-full)
    .venv/bin/python bench/scale_rss.py --quick         # 100k rows + 10k images (`make bench`)

Each step is the real `datacure` command in its own child process; its peak RSS is that child's
own (`os.wait4` rusage, ru_maxrss), so steps do not inherit each other's high-water marks.

Data (seeded): `rows` rows of (text of 8-14 words from a 2,000-word vocabulary, label of 10
classes, group, a `dim`-d float32 vector with low-rank structure: a 16-d latent with 50 centres
projected to `dim` plus noise, like real embeddings), written in 100k-row Parquet row groups.

Steps:
- ingest: `datacure ingest data.parquet --vector vec` (the vectors become `embeddings_user_vec`).
- embed: `datacure embed --model hash:64`: the streamed, chunk-committed embed path over every
  text with the token-hashing encoder (a neural encoder would run ~200 rows/s on 2 cores, days
  at 1M; its memory per chunk is what matters here, and chunks are the same size).
- audit: `datacure audit --embedding user_vec --auditors AUDITORS` on the user vectors (kNN
  graph, pred_probs, then the auditors).
- images: `datacure ingest FOLDER` of `images` 8x8 PNG files in root/<class>/ (every file opened
  and verified, paths resolved and confined).

Anchors, measured the same way in this run: a bare `python -c "import duckdb, polars, pyarrow"`
(the floor of any step) and plain DuckDB `CREATE TABLE AS SELECT * FROM read_parquet(...)` of the
same file (the floor for getting the rows into a DuckDB file at all). Ratios are printed against
the second. Writes bench/results/scale_rss.json (--quick) or scale_rss_full.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from common import OUT, ROOT, table, write_results

DATACURE = ROOT / ".venv" / "bin" / "datacure"
PYTHON = ROOT / ".venv" / "bin" / "python"
AUDITORS = "label,outlier,exact_duplicate,near_duplicate,class_imbalance,null"


def write_data(path: Path, rows: int, dim: int, seed: int = 0, chunk: int = 100_000) -> None:
    """Seeded rows in Parquet row groups of `chunk` (this process never holds all of them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i:04d}" for i in range(2000)])
    centres = rng.normal(size=(50, 16)).astype(np.float32) * 3
    proj = rng.normal(size=(16, dim)).astype(np.float32) / 4
    writer = None
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        c = rng.integers(0, 50, n)
        label = c % 10
        lat = centres[c] + rng.normal(size=(n, 16)).astype(np.float32)
        vec = lat @ proj + rng.normal(scale=0.1, size=(n, dim)).astype(np.float32)
        lens = rng.integers(8, 15, n)
        words = vocab[rng.integers(0, len(vocab), (n, 14))]
        text = [" ".join(w[:k]) for w, k in zip(words, lens)]  # generating data, not table work
        tbl = pa.table(
            {
                "text": pa.array(text),
                "label": pa.array(label.astype(np.int64)),
                "group": pa.array(np.array(["a", "b", "c"])[c % 3]),
                "vec": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), dim),
            }
        )
        if writer is None:
            writer = pq.ParquetWriter(path, tbl.schema, compression="zstd")
        writer.write_table(tbl)
    writer.close()


def write_images(root: Path, n: int, classes: int = 10, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    pix = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    for i in range(n):  # one file per image: the point of this step
        Image.fromarray(pix[i]).save(root / f"class{i % classes}" / f"{i:06d}.png")


def measure_rss(cmd: list, env: dict, log: Path) -> dict:
    """Run `cmd` as a child (stdout and stderr to `log`); its exit code, wall time and own peak
    RSS in GB (from wait4: subprocess.Popen would reap the child before we could ask)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        pid = os.posix_spawn(
            str(cmd[0]),
            [str(c) for c in cmd],
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, f.fileno(), 1),
                (os.POSIX_SPAWN_DUP2, f.fileno(), 2),
            ],
        )
        _, status, ru = os.wait4(pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        print(
            f"  {cmd[2] if len(cmd) > 2 else cmd[0]} failed (exit {rc}):\n"
            + log.read_text()[-2000:],
            flush=True,
        )
    return {"rc": rc, "s": time.perf_counter() - t0, "rss_gb": ru.ru_maxrss / 1024**2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=None, help="1,000,000; 100,000 with --quick")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--images", type=int, default=None, help="100,000; 10,000 with --quick")
    ap.add_argument("--quick", action="store_true", help="what `make bench` runs")
    ap.add_argument("--workdir", type=Path, default=OUT / "scale_rss")
    ap.add_argument("--keep", action="store_true", help="Keep the data and stores afterwards.")
    args = ap.parse_args()
    started = time.perf_counter()
    load0 = os.getloadavg()[0]
    if args.rows is None:
        args.rows = 100_000 if args.quick else 1_000_000
    if args.images is None:
        args.images = 10_000 if args.quick else 100_000
    wd = args.workdir
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    results: dict[str, dict] = {}
    try:
        data = wd / "data.parquet"
        t0 = time.perf_counter()
        write_data(data, args.rows, args.dim)
        print(
            f"data: {args.rows} rows, {args.dim}-d vectors, {data.stat().st_size / 1e6:.0f} MB "
            f"Parquet ({time.perf_counter() - t0:.0f} s to write)",
            flush=True,
        )
        payload_gb = args.rows * args.dim * 4 / 1024**3

        results["floor"] = measure_rss(
            [PYTHON, "-c", "import duckdb, polars, pyarrow"], env, wd / "floor.log"
        )
        anchor_db = wd / "anchor.duckdb"
        results["duckdb_ctas"] = measure_rss(
            [
                PYTHON,
                "-c",
                (
                    "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
                    'c.execute("CREATE TABLE t AS SELECT * FROM read_parquet(\'" '
                    '+ sys.argv[2] + "\')")'
                ),
                anchor_db,
                data,
            ],
            env,
            wd / "ctas.log",
        )
        anchor_db.unlink(missing_ok=True)
        db = wd / "store.duckdb"
        steps = {
            "ingest": [DATACURE, "-q", "ingest", data, "--db", db, "--vector", "vec"],
            "embed": [DATACURE, "-q", "embed", "--db", db, "--model", "hash:64"],
            "audit": [
                DATACURE,
                "-q",
                "audit",
                "--db",
                db,
                "--embedding",
                "user_vec",
                "--auditors",
                AUDITORS,
            ],
        }
        for name, cmd in steps.items():
            r = measure_rss(cmd, env, wd / f"{name}.log")
            results[name] = r
            print(
                f"{name}: exit {r['rc']}, {r['s']:.0f} s, peak RSS {r['rss_gb']:.2f} GB", flush=True
            )
            if r["rc"] != 0:
                break
        if args.images:
            img_root = wd / "images"
            t0 = time.perf_counter()
            write_images(img_root, args.images)
            print(
                f"images: {args.images} 8x8 PNG files ({time.perf_counter() - t0:.0f} s to write)",
                flush=True,
            )
            r = measure_rss(
                [DATACURE, "-q", "ingest", img_root, "--db", wd / "img.duckdb"],
                env,
                wd / "images.log",
            )
            results["images"] = r
            print(
                f"image folder ingest: exit {r['rc']}, {r['s']:.0f} s, peak RSS "
                f"{r['rss_gb']:.2f} GB",
                flush=True,
            )
    finally:
        if not args.keep:
            for p in wd.iterdir():
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                elif p.suffix not in (".json", ".log"):
                    p.unlink(missing_ok=True)

    floor, ctas = results["floor"]["rss_gb"], results["duckdb_ctas"]["rss_gb"]
    print(
        f"\nanchors: python + duckdb/polars/pyarrow imported {floor:.2f} GB; plain DuckDB "
        f"CREATE TABLE AS read_parquet {ctas:.2f} GB ({results['duckdb_ctas']['s']:.0f} s); "
        f"vector payload {payload_gb:.2f} GB"
    )
    print(f"{'step':<22}{'exit':>5}{'seconds':>9}{'peak RSS GB':>13}{'x DuckDB CTAS':>15}")
    for name in ("ingest", "embed", "audit", "images"):
        if name in results:
            r = results[name]
            label = (
                f"{name} ({args.images} files)"
                if name == "images"
                else f"{name} ({args.rows} rows)"
            )
            print(
                f"{label:<22}{r['rc']:>5}{r['s']:>9.0f}{r['rss_gb']:>13.2f}"
                f"{r['rss_gb'] / ctas:>15.2f}"
            )
    rows = [
        [
            "python + duckdb, polars, pyarrow imported (floor)",
            results["floor"]["rc"],
            None,
            round(floor, 2),
            round(floor / ctas, 2),
        ],
        [
            f"DuckDB CREATE TABLE AS read_parquet ({args.rows} rows, anchor)",
            results["duckdb_ctas"]["rc"],
            round(results["duckdb_ctas"]["s"], 1),
            round(ctas, 2),
            1.0,
        ],
    ]
    for name in ("ingest", "embed", "audit", "images"):
        if name in results:
            r = results[name]
            what = f"{args.images} image files" if name == "images" else f"{args.rows} rows"
            rows.append(
                [
                    f"datacure {name} ({what})",
                    r["rc"],
                    round(r["s"], 1),
                    round(r["rss_gb"], 2),
                    round(r["rss_gb"] / ctas, 2),
                ]
            )
    write_results(
        "scale_rss" if args.quick else "scale_rss_full",
        {
            "tables": [
                table(
                    "Peak RSS of each step, each its own datacure process",
                    ["step", "exit", "seconds", "peak RSS GB", "x DuckDB CTAS RSS"],
                    rows,
                    note=f"vector payload {payload_gb:.2f} GB ({args.rows} x {args.dim} float32); "
                    f"embed uses the hash:64 encoder; audit runs {AUDITORS}.",
                )
            ],
            "results": results,
            "vector_payload_gb": round(payload_gb, 3),
        },
        inputs={"rows": args.rows, "dim": args.dim, "images": args.images, "auditors": AUDITORS},
        notes=[
            f"One run; load average {load0:.1f} at the start and {os.getloadavg()[0]:.1f} at the "
            "end (2 shared cores). Peak RSS is each child's own (wait4 rusage)."
        ],
        started=started,
        title="Peak memory of ingest, embed and audit",
    )
    sys.exit(0 if all(r.get("rc", 0) == 0 for r in results.values()) else 1)


if __name__ == "__main__":
    main()
