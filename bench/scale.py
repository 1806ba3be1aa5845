"""The Ray engine at 1M, 3M and 10M rows on this machine: ingest -> embed -> audit, wall time and
peak memory per process, the local engine beside it where it fits, per-partition costs, and the
projection to 1B rows.

    nice .venv/bin/python bench/scale.py --rows 1000000 --variant vectors --local
    nice .venv/bin/python bench/scale.py --rows 10000000 --variant vectors
    .venv/bin/python bench/scale.py --rows 1000000 --variant text
    .venv/bin/python bench/scale.py --project            # the 1B table from the runs so far
    .venv/bin/python bench/scale.py --same-answers 100000 # local vs ray flags and recall

Data (seeded, written shard by shard: this process never holds more than one shard):
`--variant vectors`: rows of text, label (10 classes, 10% flipped), split (train 90% / test
10%) and a 384-d float32 vector with the structure of real embeddings (a 24-d latent with 50
centres projected to 384-d plus noise), in Parquet shards of 100,000 rows; the vectors are
given (`ingest --vector vec`), so "embed" is their ingest. `--variant text`: rows without
vectors whose text is one of rows/100 ten-word templates with two words replaced (so a row's
nearest neighbours are its template's rows), labelled by template (10% flipped), embedded with
the token-hashing encoder (`embed --model hash:64`).

Every step is the real `datacure` command in its own process (`--engine ray` starts a local Ray
cluster of `--cpus` CPUs and stops it); a sampler reads the resident memory of that process and
all its descendants (raylet, workers) every half second: `peak_rss_gb` holds the largest single
process (driver, Ray system process, worker) and the largest sum over all of them at one time.
Timing figures are wall times on a shared 2-core machine: the load average is recorded beside
each step, and the local engine's run is the anchor where it fits in memory.

Results accumulate in bench/results/scale.json (one entry per rows x variant x engine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, RESULTS, machine, table, write_results  # noqa: E402

DATACURE = ROOT / ".venv" / "bin" / "datacure"
SHARD_ROWS = 100_000
DIM = 384
AUDITORS = "label,outlier,exact_duplicate,near_duplicate,leakage,null,class_imbalance"
NAME = "scale"


# --- data ----------------------------------------------------------------------------------------
VOCAB = 20_000  # the text variant's words: w00000 ... w19999


def template_texts(templates: np.ndarray, tmpl: np.ndarray, rng: np.random.Generator):
    """The text variant's rows (a pyarrow string array): each row its template's ten words
    (`templates[tmpl]`, word ids) with two replaced at random, so a row's nearest neighbours
    are rows of its template (bench/knn_join.py draws the same kind of rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    vocab = np.array([f"w{i:05d}" for i in range(VOCAB)])
    n = len(tmpl)
    words = templates[tmpl].copy()
    words[np.arange(n), rng.integers(0, 10, n)] = rng.integers(0, VOCAB, n)
    words[np.arange(n), rng.integers(0, 10, n)] = rng.integers(0, VOCAB, n)
    return pc.binary_join_element_wise(*[pa.array(vocab[words[:, j]]) for j in range(10)], " ")


def write_data(folder: Path, rows: int, variant: str, seed: int = 0) -> None:
    """Seeded shards of SHARD_ROWS rows (each shard from its own generator: any shard can be
    rewritten alone)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    base = np.random.default_rng(seed)
    centres = base.normal(scale=3.0, size=(50, 24))
    proj = (base.normal(size=(24, DIM)) / np.sqrt(24)).astype(np.float32)
    # text: about 100 rows per template (two of its ten words replaced), so a row's nearest
    # neighbours are rows of its template, as near-paraphrases are in real corpora
    templates = base.integers(0, VOCAB, size=(max(1_000, rows // 100), 10))
    for i, lo in enumerate(range(0, rows, SHARD_ROWS)):
        path = folder / f"part-{i:05d}.parquet"
        if path.exists():
            continue
        n = min(SHARD_ROWS, rows - lo)
        rng = np.random.default_rng([seed, i])
        comp = rng.integers(0, 50, n)
        tmpl = rng.integers(0, len(templates), n)
        y = comp % 10 if variant == "vectors" else tmpl % 10
        flip = rng.random(n) < 0.1
        y = np.where(flip, (y + rng.integers(1, 10, n)) % 10, y)
        cols = {
            "text": template_texts(templates, tmpl, rng),
            "label": pa.array(y.astype(np.int64)),
            "split": pa.array(np.where(rng.random(n) < 0.9, "train", "test")),
        }
        if variant == "vectors":
            z = centres[comp] + rng.normal(size=(n, 24))
            x = (z @ proj).astype(np.float32) + rng.normal(scale=0.3, size=(n, DIM)).astype(
                np.float32
            )
            cols["vec"] = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM)
        tmp = path.with_suffix(".tmp")
        pq.write_table(pa.table(cols), tmp, row_group_size=SHARD_ROWS)
        tmp.replace(path)


# --- running a step and sampling its memory -------------------------------------------------------
class Sampler(threading.Thread):
    """Peak resident memory of a process and its descendants, sampled every `every` seconds."""

    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_proc: dict[int, tuple[str, int]] = {}
        self.peak_total = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            total = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    name = " ".join(p.cmdline()[:3])[-80:] or p.name()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                if rss > self.peak_proc.get(p.pid, ("", 0))[1]:
                    self.peak_proc[p.pid] = (name, rss)
            self.peak_total = max(self.peak_total, total)
            self.stop.wait(self.every)

    def summary(self, driver_pid: int) -> dict:
        gb = 2**30
        driver = self.peak_proc.get(driver_pid, ("", 0))[1]
        workers = [
            r
            for pid, (name, r) in self.peak_proc.items()
            if "ray::" in name or "default_worker" in name
        ]
        system = [
            r for pid, (name, r) in self.peak_proc.items() if pid != driver_pid and r not in workers
        ]
        return {
            "driver": round(driver / gb, 3),
            "max_worker": round(max(workers, default=0) / gb, 3),
            "max_ray_system": round(max(system, default=0) / gb, 3),
            "largest_process": round(
                max((r for _, r in self.peak_proc.values()), default=0) / gb, 3
            ),
            "sum_at_peak": round(self.peak_total / gb, 3),
        }


def step(name: str, args: list[str], env: dict) -> dict:
    print(f"  {name}: datacure {' '.join(map(str, args))}", flush=True)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(DATACURE), *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = Sampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:  # no step here passes --fail-on: any other exit is a failure
        print(out[-3000:], err[-5000:], sep="\n")
        raise SystemExit(f"{name} failed with exit code {proc.returncode}")
    res = {
        "seconds": round(seconds, 1),
        "peak_rss_gb": sampler.summary(proc.pid),
        "load_average_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "output": out.strip().splitlines()[-12:],
    }
    print(
        f"    {seconds:.1f} s, peak RSS {res['peak_rss_gb']}, load {res['load_average_1m']}",
        flush=True,
    )
    return res


def run_one(
    rows: int, variant: str, engine: str, cpus: int, keep: bool, drop_source: bool = False
) -> dict:
    folder = OUT / "scale" / f"{variant}-{rows}"
    src = folder / "src"
    t0 = time.perf_counter()
    write_data(src, rows, variant)
    print(f"data: {rows} rows ({variant}) in {src} ({time.perf_counter() - t0:.0f} s)")
    db = folder / f"{engine}.duckdb"
    for p in (db, Path(f"{db}.wal")):
        p.unlink(missing_ok=True)
    shutil.rmtree(f"{db}.shards", ignore_errors=True)
    env = dict(os.environ, DATACURE_RAY_NUM_CPUS=str(cpus), HF_HUB_OFFLINE="1")
    eng = ["--engine", "ray"] if engine == "ray" else []
    res: dict = {"rows": rows, "variant": variant, "engine": engine, "cpus": cpus}
    # the machine of this run: the file's `machine` is the last run's, and the rows are
    # re-run one at a time over sessions (this shared machine has been an Intel Xeon and an
    # AMD EPYC), so seconds compare only between runs on the same CPU
    res["run_on"] = {
        "cpu": machine().get("cpu"),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    ingest = [
        "ingest",
        src,
        "--db",
        db,
        "--text",
        "text",
        "--label",
        "label",
        "--split-column",
        "split",
        "--format",
        "parquet",
        *eng,
    ]
    if variant == "vectors":
        ingest += ["--vector", "vec"]
    res["ingest"] = step("ingest", ingest, env)
    if drop_source:  # the disk holds the source, the vector shards and the search's scratch
        shutil.rmtree(src)
    if variant == "text":
        res["embed"] = step("embed", ["embed", "--db", db, "--model", "hash:64", *eng], env)
    audit = ["-v", "audit", "--db", db, "--auditors", AUDITORS, *eng]
    if variant == "vectors":
        audit += ["--embedding", "user_vec"]
    res["audit"] = step("audit", audit, env)
    res["total_seconds"] = round(
        sum(res[s]["seconds"] for s in ("ingest", "embed", "audit") if s in res), 1
    )
    from datacure.store import Store

    with Store(db, read_only=True) as st:
        cfg = json.loads(st.scalar("SELECT config FROM runs ORDER BY run_id DESC LIMIT 1"))
        res["audit"]["stages"] = cfg.get("stages")
        res["audit"]["knn"] = cfg.get("knn")
        res["audit"]["driver_seconds"] = cfg.get("driver_seconds")
        res["knn_graph"] = dict(
            zip(
                ("index_kind", "recall", "seconds"),
                st.fetchone(
                    "SELECT index_kind, recall, seconds FROM knn_graphs ORDER BY created_at "
                    "DESC LIMIT 1"
                )
                or (None, None, None),
            )
        )
        res["flagged"] = dict(
            st.fetchall(
                "SELECT auditor, num_issues FROM issue_summary WHERE run_id = (SELECT max(run_id) "
                "FROM runs)"
            )
        )
        info = st.scalar(
            "SELECT info FROM issue_summary WHERE auditor = 'label' AND run_id = (SELECT "
            "max(run_id) FROM runs)"
        )
        # the views label stacked (the Ray engine's runs before its text view: model, knn)
        res["label_views"] = list(json.loads(info).get("view_weights") or {}) if info else None
        res["store_gb"] = round(db.stat().st_size / 2**30, 2)
        shards_dir = Path(f"{db}.shards")
        res["shards_gb"] = (
            round(sum(f.stat().st_size for f in shards_dir.rglob("*") if f.is_file()) / 2**30, 2)
            if shards_dir.exists()
            else 0.0
        )
    if not keep:
        for p in (db, Path(f"{db}.wal")):
            p.unlink(missing_ok=True)
        shutil.rmtree(f"{db}.shards", ignore_errors=True)
    return res


# --- results --------------------------------------------------------------------------------------
def load() -> dict:
    path = RESULTS / f"{NAME}.json"
    return json.loads(path.read_text())["figures"] if path.exists() else {"runs": []}


def save(figures: dict, started: float, notes: list[str]) -> None:
    figures["tables"] = tables(figures)
    write_results(
        NAME,
        figures,
        inputs={
            "shard_rows": SHARD_ROWS,
            "dim": DIM,
            "auditors": AUDITORS,
        },
        notes=notes,
        started=started,
    )


def _round(v, places: int):
    return None if v is None else round(float(v), places)


def tables(figures: dict) -> list[dict]:
    rows = []
    for r in sorted(figures.get("runs", []), key=lambda r: (r["variant"], r["rows"], r["engine"])):
        rows.append(
            [
                f"{r['rows']:,}",
                r["variant"],
                r["engine"],
                r["ingest"]["seconds"],
                r.get("embed", {}).get("seconds", "-"),
                r["audit"]["seconds"],
                r["total_seconds"],
                r["ingest"]["peak_rss_gb"]["largest_process"],
                r["audit"]["peak_rss_gb"]["largest_process"],
                r["audit"]["peak_rss_gb"]["sum_at_peak"],
                _round((r.get("knn_graph") or {}).get("recall"), 4),
                "+".join(r.get("label_views") or ["model", "knn"]),
                max(r["audit"]["load_average_1m"]),
            ]
        )
    out = [
        table(
            "ingest -> embed -> audit (seconds; peak RSS GB: largest process, sum of all at peak)",
            [
                "rows",
                "data",
                "engine",
                "ingest s",
                "embed s",
                "audit s",
                "total s",
                "ingest largest GB",
                "audit largest GB",
                "audit sum GB",
                "kNN recall@10",
                "label views",
                "load (audit)",
            ],
            rows,
            note="load (audit): the higher 1-minute load average of the machine at the audit's "
            "start and end (2 cores shared with other work: compare runs at similar load); label "
            "views: what the label auditor stacked (runs without `text` predate the Ray engine's "
            "text view, or were run without it); each run's CPU and date are in its `run_on` "
            "(runs made before 2026-12-06 have none)",
        )
    ]
    if figures.get("projection"):
        p = figures["projection"]
        out.append(table(p["title"], p["columns"], p["rows"], note=p.get("note")))
    return out


# --- the projection -------------------------------------------------------------------------------
def project(figures: dict, nodes: int, cores: int, gpus: int) -> dict:
    """1B rows on `nodes` nodes of `cores` CPU cores (and `gpus` GPUs, unused: not measured),
    from the largest Ray run: each stage's task CPU-seconds per row scale with the rows and
    divide over every core; the driver's own work (exports, the commit) does not divide."""
    runs = [
        r for r in figures.get("runs", []) if r["engine"] == "ray" and r["variant"] == "vectors"
    ]
    if not runs:
        raise SystemExit("no Ray run with vectors to project from")
    r = max(runs, key=lambda r: r["rows"])
    n = r["rows"]
    target = 1_000_000_000
    total_cores = nodes * cores
    rows_out = []
    worker_total = 0.0
    grow = float(np.sqrt(target / n))
    # a row is assigned among about 2 sqrt(n) centroids and scans `probes` partitions of
    # sqrt(n) / 2 rows: per row, those phases cost sqrt(n) more at a fixed number of probes
    growing = {"assign", "project", "scan", "leak_scan"}
    for s in r["audit"]["stages"] or []:
        phases = s.get("task_seconds") or {"all": s["seconds"] * r["cpus"]}
        cpu = sum(phases.values())
        scaled = sum(v * (grow if p in growing else 1.0) for p, v in phases.items())
        hours = scaled / n * target / total_cores / 3600
        worker_total += hours
        rows_out.append(
            [
                s["stage"],
                s["tasks"],
                round(cpu / n * 1e6, 2),
                round(scaled / cpu, 1),
                round(hours, 3),
            ]
        )
    audit_s = r["audit"]["seconds"]
    stage_wall = sum(s["seconds"] for s in r["audit"]["stages"] or [])
    driver_per_m = max(audit_s - stage_wall, 0.0) / n * 1e6
    driver_hours = driver_per_m * (target / 1e6) / 3600
    ingest_per_m = r["ingest"]["seconds"] * r["cpus"] / n * 1e6
    ingest_hours = ingest_per_m * (target / 1e6) / total_cores / 3600
    rows_out.append(
        [
            "ingest (shards read, vectors written)",
            "-",
            round(ingest_per_m, 2),
            1.0,
            round(ingest_hours, 3),
        ]
    )
    rows_out.append(
        [
            "driver (exports, reductions, commit: one process)",
            "-",
            round(driver_per_m, 2),
            1.0,
            round(driver_hours, 2),
        ]
    )
    rows_out.append(["total on the workers", "-", "-", "-", round(worker_total + ingest_hours, 2)])
    return {
        "title": f"Projection to 1B rows x 384 on {nodes} nodes x {cores} cores ({gpus} GPUs per "
        f"node not used: GPU speed not measured here), from the {n:,}-row run",
        "columns": [
            "stage",
            f"tasks at {n:,}",
            "CPU s per 1M rows (measured)",
            "growth per row to 1B (phase-weighted)",
            "projected hours at 1B",
        ],
        "rows": rows_out,
        "note": "Worker stages divide over all cores; the assignment and scan phases cost "
        "sqrt(n) more per row (partitions in proportion to sqrt(n), probes held at the "
        "measured number; the probes needed for the same recall grow slowly with n); the "
        "driver's single-process work does not divide and is listed apart. NeMo Curator's "
        "fuzzy dedup (MinHash + LSH, a different and cheaper check than a kNN graph over "
        "embeddings) is published at about 8 TB in about 0.5 h on 4 nodes of 8 H100; not "
        "measured here.",
        "assumptions": {
            "nodes": nodes,
            "cores_per_node": cores,
            "gpus_per_node": gpus,
            "from_rows": n,
            "target_rows": target,
        },
    }


def same_answers(rows: int, cpus: int) -> dict:
    """Local against Ray on the same `rows` (vectors variant): Jaccard of flags per auditor and
    the graph's recall."""
    from datacure.store import Store

    out = {}
    dbs = {}
    for engine in ("local", "ray"):
        res = run_one(rows, "vectors", engine, cpus, keep=True)
        out[engine] = res
        dbs[engine] = OUT / "scale" / f"vectors-{rows}" / f"{engine}.duckdb"
    jac, flagged = {}, {}
    with Store(dbs["local"], read_only=True) as a, Store(dbs["ray"], read_only=True) as b:
        for name in AUDITORS.split(","):
            q = (
                "SELECT row_id FROM issues WHERE auditor = ? AND is_issue AND run_id = "
                "(SELECT max(run_id) FROM runs)"
            )
            fa = {x[0] for x in a.fetchall(q, [name])}
            fb = {x[0] for x in b.fetchall(q, [name])}
            jac[name] = 1.0 if not fa and not fb else len(fa & fb) / len(fa | fb)
            flagged[name] = {"local": len(fa), "ray": len(fb), "both": len(fa & fb)}
    for engine in dbs:
        shutil.rmtree(f"{dbs[engine]}.shards", ignore_errors=True)
        dbs[engine].unlink(missing_ok=True)
    return {
        "rows": rows,
        "jaccard": jac,
        "flagged": flagged,
        "recall": out["ray"]["knn_graph"]["recall"],
        "local_recall": out["local"]["knn_graph"]["recall"],
        "audit_seconds": {e: out[e]["audit"]["seconds"] for e in out},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="*", default=[])
    ap.add_argument("--variant", choices=("vectors", "text"), default="vectors")
    ap.add_argument("--local", action="store_true", help="also run the local engine")
    ap.add_argument("--local-only", action="store_true")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the stores after the run")
    ap.add_argument("--drop-source", action="store_true", help="delete the data after ingest")
    ap.add_argument("--project", action="store_true", help="write the 1B projection table")
    ap.add_argument("--nodes", type=int, default=32)
    ap.add_argument("--cores", type=int, default=96)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--same-answers", type=int, default=0, metavar="ROWS")
    args = ap.parse_args()
    started = time.perf_counter()
    figures = load()
    notes = [
        "shared 2-core machine: the load average before and after each step is in its entry",
        "peak RSS: sampled every 0.5 s over the datacure process and all its descendants",
    ]
    for rows in args.rows:
        engines = ["local"] if args.local_only else ["ray"] + (["local"] if args.local else [])
        for engine in engines:
            res = run_one(rows, args.variant, engine, args.cpus, args.keep, args.drop_source)
            figures["runs"] = [
                r
                for r in figures["runs"]
                if (r["rows"], r["variant"], r["engine"]) != (rows, args.variant, engine)
            ] + [res]
            save(figures, started, notes)
    if args.same_answers:
        figures["same_answers"] = same_answers(args.same_answers, args.cpus)
        print(figures["same_answers"])
        save(figures, started, notes)
    if args.project:
        figures["projection"] = project(figures, args.nodes, args.cores, args.gpus)
        for row in figures["projection"]["rows"]:
            print(row)
        save(figures, started, notes)


if __name__ == "__main__":
    main()
