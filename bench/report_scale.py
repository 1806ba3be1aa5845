"""Report size and time against store size: the report is a bounded summary, not the data.

    .venv/bin/python bench/report_scale.py [--sizes 10000,100000] [--dim 384]

For each size, a seeded store as a user's run leaves it, built through the Python API (nothing
faked): text rows of 6 words, 4 labels, a `source` column tied to the label for 90% of rows (a
spurious attribute), train/test splits, low-rank 384-d vectors given as a column (`vector=`),
2% of the train labels flipped; then a real audit (label, outlier, near_duplicate,
class_imbalance, null, split_drift, spurious_attribute) and a repair plan. Measured: `report`
(HTML and JSON). Anchor, on the same store: dumping what a report that carried the data would
hold (samples joined with their issues) to CSV with DuckDB, the size and time a
non-summarising report starts from. Writes bench/results/report_scale.json.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from common import table, write_results

AUDITORS = [
    "label",
    "outlier",
    "near_duplicate",
    "class_imbalance",
    "null",
    "split_drift",
    "spurious_attribute",
]
WORDS = np.array(
    "market stocks team match season player science space health vote court film music "
    "company shares profit rain storm city school energy oil price bank game win loss".split()
)


def make_frame(n: int, dim: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    classes = np.array(["world", "sports", "business", "science"])
    y = rng.integers(0, len(classes), n)
    words = WORDS[rng.integers(0, len(WORDS), (n, 6))]
    text = (
        pl.DataFrame({f"w{i}": words[:, i] for i in range(6)})
        .select(pl.concat_str(pl.all(), separator=" "))
        .to_series()
    )
    latent = rng.normal(scale=2.0, size=(len(classes), 8))[y] + rng.normal(size=(n, 8))
    vec = latent @ rng.normal(size=(8, dim)) + rng.normal(scale=0.1, size=(n, dim))
    split = np.where(rng.random(n) < 0.8, "train", "test")
    label = y.copy()
    flip = (rng.random(n) < 0.02) & (split == "train")
    label[flip] = (label[flip] + 1) % len(classes)
    return pl.DataFrame(
        {
            "text": text,
            "label": classes[label],
            "source": np.where(rng.random(n) < 0.9, np.array(["a", "b", "c", "d"])[y], "z"),
            "split": split,
            "vec": vec.astype(np.float32),
        }
    )


def _mb(n: int) -> float:
    return round(n / 1e6, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--dim", type=int, default=384)
    args = ap.parse_args()
    started = time.perf_counter()
    load0 = os.getloadavg()[0]
    import datacure as dc
    from datacure.report import write_report
    from datacure.store import Store

    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"report scale: sizes {sizes}, embedding dim {args.dim}")
    rows, per_size = [], {}
    for n in sizes:
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            t0 = time.perf_counter()
            ds = dc.open(d / "s.duckdb")
            ds.ingest(make_frame(n, args.dim), split_column="split", label="label", vector="vec")
            ds.audit(auditors=AUDITORS)
            ds.repair()
            build = time.perf_counter() - t0
            with Store(d / "s.duckdb") as st:
                issues = st.scalar("SELECT count(*) FROM issues")
                t0 = time.perf_counter()
                st.execute(
                    "COPY (SELECT s.row_id, s.split, s.label, s.text, i.auditor, i.score, "
                    "i.is_issue, i.details FROM samples s JOIN issues i USING (row_id)) "
                    f"TO '{d / 'dump.csv'}' (HEADER)"
                )
                dump_s = time.perf_counter() - t0
                dump_b = (d / "dump.csv").stat().st_size
                t0 = time.perf_counter()
                html = write_report(st, d / "report.html", json_path=d / "report.json")
                rep_s = time.perf_counter() - t0
            html_b, json_b = html.stat().st_size, (d / "report.json").stat().st_size
        print(
            f"n={n:>9,}: store built and audited in {build:.1f} s ({issues:,} issue rows); "
            f"report {rep_s:.2f} s, HTML {html_b / 1e6:.2f} MB, JSON {json_b / 1e6:.2f} MB; "
            f"anchor data dump {dump_s:.2f} s, {dump_b / 1e6:.2f} MB",
            flush=True,
        )
        per_size[n] = {
            "build_and_audit_s": build,
            "issue_rows": issues,
            "report_s": rep_s,
            "html_bytes": html_b,
            "json_bytes": json_b,
            "dump_s": dump_s,
            "dump_bytes": dump_b,
        }
        rows.append(
            [
                n,
                issues,
                round(rep_s, 2),
                _mb(html_b),
                _mb(json_b),
                round(dump_s, 2),
                _mb(dump_b),
                round(html_b / dump_b, 4),
            ]
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    write_results(
        "report_scale",
        {
            "tables": [
                table(
                    "datacure report (HTML + JSON) against a dump of the data it summarises",
                    [
                        "rows",
                        "issue rows",
                        "report s",
                        "HTML MB",
                        "JSON MB",
                        "dump s (anchor)",
                        "dump MB (anchor)",
                        "HTML / dump size",
                    ],
                    rows,
                )
            ],
            "per_size": per_size,
            "peak_rss_gb": round(peak, 2),
        },
        inputs={"sizes": sizes, "dim": args.dim, "auditors": AUDITORS, "seed": 0},
        notes=[
            f"One run, one process; load average {load0:.1f} at the start and "
            f"{os.getloadavg()[0]:.1f} at the end (2 shared cores)."
        ],
        started=started,
        title="Report: size and time against store size",
    )


if __name__ == "__main__":
    main()
