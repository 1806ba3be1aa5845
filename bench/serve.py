"""How fast `datacure serve` answers on a 1M-row store: p50/p95 of the first page of flags and of
a row page, measured with a local HTTP client (one keep-alive connection, like a browser tab).

    nice -n 10 .venv/bin/python bench/serve.py                # 1M rows (store deleted after)
    .venv/bin/python bench/serve.py --rows 100000 --reps 20   # a quicker look

The store is built the way a user would, each step a real `datacure` command in its own process:
seeded Parquet rows (text, label of 10 classes, group, a 64-d low-rank vector like a real
embedding; see bench/scale_rss.py), `ingest --vector vec`, `audit --embedding user_vec` (label,
outlier, exact and near duplicates, class imbalance, null: the issues table holds one row per
row and auditor, 6M rows at 1M), `repair`. Then `datacure serve --port 0` runs in its own
process and the client asks, alternating, for:

- the first page of flags (50 rows, worst first): `GET /api/issues?limit=50`, the same for one
  auditor, and the HTML page `/issues?auditor=label`;
- a filtered page: split + label + a text search (`q`), which scans the text column;
- a row page: `GET /api/rows/{id}` and `/rows/{id}` for different flagged rows (its verdicts,
  partners, 10 neighbours from the kNN graph, reviews, edits);
- a review (`POST /api/reviews`, a write: the app opens the store read-write for it).

Twice: with the default, a connection per request (`DATACURE_SERVE_LINGER=0`: the app holds
the file only while it answers), and with a read-only connection kept 2 s after the last read
(`DATACURE_SERVE_LINGER=2`: requests in a burst share DuckDB's warm buffers).

Anchor, in the same run and the same process as the client: the same first-page query in plain
DuckDB (connect read-only, the page's SELECT, close), which is the floor of any answer that
opens the store per request as the app does. Ratios are printed against it. The machine is
shared: the load average is recorded with the figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, table, write_results
from scale_rss import write_data

ROOT = Path(__file__).resolve().parents[1]
DATACURE = ROOT / ".venv" / "bin" / "datacure"
AUDITORS = "label,outlier,exact_duplicate,near_duplicate,class_imbalance,null"


def run(cmd: list, env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(c) for c in cmd], env=env, check=True)
    return time.perf_counter() - t0


def pct(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1000
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 1),
        "p95_ms": round(float(np.percentile(a, 95)), 1),
        "max_ms": round(float(a.max()), 1),
        "n": len(xs),
    }


class Http:
    """One keep-alive HTTP/1.1 connection (a browser tab's)."""

    def __init__(self, url: str):
        u = urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)

    def timed(self, method: str, path: str, body: dict | None = None) -> tuple[float, int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        t0 = time.perf_counter()
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        payload = resp.read()
        return time.perf_counter() - t0, resp.status, payload


def anchor_query(db: Path) -> float:
    """The first page's SELECT in plain DuckDB: connect read-only, query, close."""
    import duckdb

    t0 = time.perf_counter()
    con = duckdb.connect(str(db), read_only=True)
    con.execute(
        "SELECT i.row_id, i.auditor, i.score, i.details, s.split, s.label, left(s.text, 241) "
        "FROM (SELECT row_id, auditor, score, details FROM issues "
        "WHERE run_id = (SELECT max(run_id) FROM runs) AND is_issue "
        "ORDER BY score, auditor, row_id LIMIT 50) i JOIN samples s USING (row_id)"
    ).fetchall()
    con.close()
    return time.perf_counter() - t0


def measure(db: Path, env: dict, linger: float, reps: int, flagged: list, word: str):
    """Start `datacure serve` with DATACURE_SERVE_LINGER=linger and time every case."""
    env = {**env, "DATACURE_SERVE_LINGER": str(linger)}
    proc = subprocess.Popen(
        [str(DATACURE), "serve", "--db", str(db), "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://\S+)", line)
        if not m:
            raise SystemExit(f"serve did not start: {line!r} {proc.stderr.read()[-2000:]}")
        url = m.group(1)
        http_ = Http(url)
        first = "/api/issues?limit=50"
        cases = {
            "first page of flags (API, all auditors)": lambda i: ("GET", first, None),
            "first page of flags (API, label)": lambda i: (
                "GET",
                "/api/issues?auditor=label&limit=50",
                None,
            ),
            "first page of flags (HTML page, label)": lambda i: (
                "GET",
                "/issues?auditor=label",
                None,
            ),
            "filtered page (split, label, text search)": lambda i: (
                "GET",
                f"/api/issues?split=train&label={i % 10}&q={word}&limit=50",
                None,
            ),
            "row page (API)": lambda i: ("GET", f"/api/rows/{flagged[i][0]}", None),
            "row page (HTML)": lambda i: ("GET", f"/rows/{flagged[-1 - i][0]}", None),
            "review decision (POST, a write)": lambda i: (
                "POST",
                "/api/reviews",
                {"row_id": flagged[i][0], "auditor": flagged[i][1], "decision": "reject"},
            ),
        }
        # warm-up: the first answers pay for imports and the OS page cache
        for name, make in cases.items():
            for i in range(2):
                _, status, body = http_.timed(*make(i))
                assert status == 200, (name, status, body[:500])
        times: dict[str, list[float]] = {k: [] for k in cases}
        anchor: list[float] = []
        for i in range(reps):
            anchor.append(anchor_query(db))
            for name, make in cases.items():
                dt, status, body = http_.timed(*make(i + 2))
                assert status == 200, (name, status, body[:500])
                times[name].append(dt)
        rss = None
        try:
            status_txt = Path(f"/proc/{proc.pid}/status").read_text()
            rss = int(re.search(r"VmHWM:\s+(\d+)", status_txt).group(1)) / 2**20
        except (OSError, AttributeError):
            pass
    finally:
        proc.send_signal(2)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return times, anchor, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--keep", action="store_true", help="keep the store (default: delete it)")
    ap.add_argument("--reuse", action="store_true", help="reuse a store built by --keep")
    args = ap.parse_args()
    started = time.perf_counter()
    work = OUT / f"serve_{args.rows}"
    db = work / "store.duckdb"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DATACURE_LOCK_TIMEOUT": "60"}
    build = {}
    if not (args.reuse and db.exists()):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        data = work / "data.parquet"
        write_data(data, args.rows, args.dim)
        build["ingest_s"] = run(
            [DATACURE, "-q", "ingest", data, "--db", db, "--vector", "vec"], env
        )
        data.unlink()
        build["audit_s"] = run(
            [
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
            env,
        )
        build["repair_s"] = run([DATACURE, "-q", "repair", "--db", db], env)
    build["store_gb"] = round(db.stat().st_size / 1e9, 2)
    print(f"store: {db} ({build['store_gb']} GB); build {build}", flush=True)

    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        n_issues = con.execute("SELECT count(*) FROM issues").fetchall()[0][0]
        flagged = con.execute(
            "SELECT row_id, auditor FROM issues WHERE is_issue AND run_id = "
            "(SELECT max(run_id) FROM runs) ORDER BY hash(row_id) LIMIT ?",
            [args.reps * 2 + 10],
        ).fetchall()
        per_aud = dict(
            con.execute(
                "SELECT auditor, count(*) FILTER (WHERE is_issue) FROM issues GROUP BY 1"
            ).fetchall()
        )
        word = con.execute("SELECT split_part(text, ' ', 1) FROM samples LIMIT 1").fetchall()[0][0]
    print(f"{n_issues} issue rows; flagged per auditor {per_aud}", flush=True)

    runs = {}
    for linger in (0.0, 2.0):
        runs[linger] = measure(db, env, linger, args.reps, flagged, word)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    anchor = [x for _, an, _ in runs.values() for x in an]
    a = pct(anchor)
    figures, rows = {}, []
    for linger, (times, _, rss) in runs.items():
        mode = "per request" if not linger else f"linger {linger:g} s"
        for k, v in times.items():
            f = figures[f"{k} [{mode}]"] = pct(v)
            rows.append([k, mode, f["p50_ms"], f["p95_ms"], round(f["p50_ms"] / a["p50_ms"], 2)])
        figures[f"server_peak_rss_gb [{mode}]"] = round(rss, 2) if rss else None
    rows.append(
        [
            "anchor: the first page's SELECT in plain DuckDB (connect, query, close)",
            "-",
            a["p50_ms"],
            a["p95_ms"],
            1.0,
        ]
    )
    load = os.getloadavg()[0]
    figures["anchor_plain_duckdb_first_page"] = a
    figures["tables"] = [
        table(
            f"datacure serve on {args.rows:,} rows ({n_issues:,} issue rows), {args.reps} "
            "requests each, one keep-alive connection",
            ["request", "connections", "p50 ms", "p95 ms", "p50 / anchor p50"],
            rows,
        )
    ]
    write_results(
        f"serve_{args.rows // 1000}k",
        figures,
        inputs={
            "rows": args.rows,
            "dim": args.dim,
            "auditors": AUDITORS,
            "reps": args.reps,
            "flagged_per_auditor": per_aud,
            "build": build,
        },
        notes=[
            f"2-core machine shared with other engineers; 1-minute load average {load:.1f} at "
            "the end of the run",
            "connections 'per request': DATACURE_SERVE_LINGER=0, the app opens and closes the "
            "store for every request; 'linger 2 s': the default, one read-only connection kept "
            "2 s after the last read (requests in a burst share DuckDB's warm buffers)",
            "each round of requests ends with a review (a write, which closes the lingering "
            "connection), so the first request of every round starts cold in both modes",
            "the store is deleted after the run unless --keep",
        ],
        started=started,
    )
    for r in rows:
        print(f"{r[0]:<72} {r[1]:<12} p50 {r[2]:>8} ms  p95 {r[3]:>8} ms  x{r[4]}")
    for linger, (_, _, rss) in runs.items():
        print(f"server peak RSS (linger {linger:g} s): {rss:.2f} GB" if rss else "")


if __name__ == "__main__":
    main()
