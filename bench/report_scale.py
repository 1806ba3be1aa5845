"""Report size and time against store size: the report is a bounded summary, not the data.

    .venv/bin/python bench/report_scale.py [--sizes 10000,100000] [--dim 384]

For each size, a seeded store as an audit leaves it (text samples, a 384-d embedding, four
auditors' issues with details, drift and spurious info, slices, edits; built by
tests/test_report.py's `seed_audited_store`), then `write_report` (HTML and JSON). Anchor, in
the same process: dumping what a report that carried the data would hold (samples joined with
their issues) to CSV, the size and time a non-summarising report starts from.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datacure.auditor.report import write_report
from tests.test_report import seed_audited_store


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--dim", type=int, default=384)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"report scale: sizes {sizes}, embedding dim {args.dim}")
    first = None
    for n in sizes:
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            t0 = time.perf_counter()
            t = seed_audited_store(d / "s.duckdb", n=n, dim=args.dim, seed=1)
            st = t["store"]
            build = time.perf_counter() - t0
            issues = st.scalar("SELECT count(*) FROM issues")
            # anchor: the data a non-summarising report would carry
            t0 = time.perf_counter()
            st.execute(
                f"COPY (SELECT s.row_id, s.split, s.label, s.text, i.auditor, i.score, i.is_issue, "
                f"i.details FROM samples s JOIN issues i USING (row_id)) TO '{d / 'dump.csv'}' "
                "(HEADER)"
            )
            dump_s = time.perf_counter() - t0
            dump_b = (d / "dump.csv").stat().st_size
            t0 = time.perf_counter()
            html = write_report(st, d / "report.html", json_path=d / "report.json")
            rep_s = time.perf_counter() - t0
            html_b, json_b = html.stat().st_size, (d / "report.json").stat().st_size
            st.close()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"n={n:>9,}: store built in {build:.1f} s ({issues:,} issue rows); "
            f"report {rep_s:.2f} s, HTML {_mb(html_b)}, JSON {_mb(json_b)}; "
            f"anchor data dump {dump_s:.2f} s, {_mb(dump_b)}; "
            f"HTML/dump size {html_b / dump_b:.4f}; peak RSS so far {rss:.0f} MB"
        )
        if first is None:
            first = (n, html_b, rep_s)
        else:
            print(
                f"  vs n={first[0]:,}: rows x{n / first[0]:.0f}, "
                f"HTML size x{html_b / first[1]:.2f}, "
                f"report time x{rep_s / first[2]:.2f}"
            )


if __name__ == "__main__":
    main()
