"""Run the benchmarks: `make bench` (quick) and `make bench-full` (everything), then render
bench/RESULTS.md.

    .venv/bin/python bench/run.py quick             # `make bench`: 100k rows, one seed
    .venv/bin/python bench/run.py full              # `make bench-full`: 1M rows, seeds, sweeps
    .venv/bin/python bench/run.py quick --only knn.py,ingest.py

Each job is one script with its arguments, run in order in a process of its own. The quick
jobs write `bench/results/<name>_quick.json` (`common.QUICK_ENV`), so a quick run never
overwrites the figures of a full run, which the README quotes; the full jobs are the commands
that made the committed full-run files, plus the 1M runs. A script that is not there is
skipped with a message; a failing one is reported at the end and the others still run. The
run's own record (each job's wall time and exit status, the load average before and after)
goes to `bench/results/bench_run_<mode>.json`, so "how long does `make bench` take" is a figure
with a file behind it too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from common import BENCH, QUICK_ENV, ROOT, table, write_results

# quick: 100k rows, one seed, each comparison with an anchor; the scale, memory and seed-sweep
# benchmarks (embed, non_iid, scale_rss, slice_scale, spurious_mnli, report_scale) run in full
# only, to keep `make bench` under 20 minutes on 2 shared cores
QUICK = [
    "knn.py --data lowrank --methods datacure,faiss-ivf,faiss-ivf-pca-refine,faiss-hnsw",
    "audit_vs_datalab.py --configs knn_datacure,knn_faiss_exact,knn_datacure_same_rule",
    "ingest.py --rows 200000",
    "spurious_digits.py",
    "counterfactual_text.py",
    "label_quality.py --quick",
    "false_alarms.py",
    "contamination.py --quick",
    "repair_wga.py --quick",
]
# full: the commands that made the committed results files (their `argv`), and the 1M runs
# (hours on 2 cores); `*_before.json` files are snapshots of earlier code, not re-run
FULL = [
    "knn.py",
    "knn_exact.py --queries 10000",
    "openblas_kernel.py",
    "text_hashing.py",
    "knn_join.py --data text lowrank blobs real --rows 300000 --probes 2 4 8 16",
    "knn_partitions.py --tree",
    "knn_join.py --data text --rows 300000 1000000 --probes 4 8 --anchor"
    " --name knn_join_incremental",
    "knn_join.py --data blobs --rows 300000 --probes 8 --anchor --name knn_join_incremental_blobs",
    "knn_partitions.py --data text lowrank --rows 3000000 --scale 1 2 --name knn_partitions_3m",
    "assign_blocks.py",
    "knn.py --sizes 1000000 --data lowrank --methods datacure,faiss-ivf-pca-refine"
    " --name knn_1m_lowrank",
    "knn.py --sizes 1000000 --data lowrank --methods datacure,faiss-ivf,faiss-hnsw"
    " --time-limit 1500 --name knn_1m_ivf_hnsw",
    "knn.py --sizes 1000000 --data blobs --blobs-max 1000000 --exact-max 1000000"
    " --time-limit 200 --name knn_1m_blobs",
    "audit_vs_datalab.py",
    "audit_vs_datalab.py --dataset blobs --limit-x 2 --name audit_vs_datalab_blobs",
    "audit_vs_datalab.py --n 1000000 --name audit_vs_datalab_1m",
    "non_iid.py",
    "non_iid_order.py",
    "ingest.py",
    "embed.py --quick",
    "embed.py",
    "scale_rss.py --quick",
    "scale_rss.py",
    "slice_scale.py",
    "spurious_digits.py",
    "spurious_mnli.py",
    "report_scale.py",
    "scale.py --rows 1000000 --variant vectors",
    "gpu.py --cpu-only --rows 20000 --queries 1000 --texts 64 --steps 3 --name gpu_cpu_check",
    "counterfactual_text.py",
    "label_quality.py --full",
    "false_alarms.py",
    "repair_wga.py",
    "repair_wga.py --correlation 0.7 --name repair_wga_partial",
    "contamination.py --seeds 0,1,2 --skip-agnews",
    "contamination.py --drift 100000",
    "contamination.py --scale 1000000",
    "contamination.py --agnews",
    "serve.py --rows 1000000 --reps 40",
]
JOBS = {"quick": QUICK, "full": FULL}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=list(JOBS))
    ap.add_argument("--only", default="", help="comma-separated scripts to run (default: all)")
    args = ap.parse_args()
    only = {s for s in args.only.split(",") if s}
    jobs = [j for j in JOBS[args.mode] if not only or j.split()[0] in only]
    env = dict(os.environ)
    env.pop(QUICK_ENV, None)
    if args.mode == "quick":
        env[QUICK_ENV] = "1"
    started = time.perf_counter()
    load0 = os.getloadavg()[0]
    rows, failed = [], []
    for job in jobs:
        script, *rest = job.split()
        if not (BENCH / script).is_file():
            print(f"== bench/{script} is not here yet: skipped", flush=True)
            rows.append([job, None, "skipped (no script)", round(os.getloadavg()[0], 1)])
            continue
        print(f"== bench/{job}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(BENCH / script), *rest], cwd=ROOT, env=env)
        secs = time.perf_counter() - t0
        print(f"== bench/{script} took {secs:.0f} s (exit {rc})", flush=True)
        rows.append([job, round(secs, 1), "ok" if rc == 0 else f"FAILED (exit {rc})"])
        rows[-1].append(round(os.getloadavg()[0], 1))
        if rc:
            failed.append(script)
    total = time.perf_counter() - started
    load1 = os.getloadavg()[0]
    print(f"== {len(jobs)} jobs in {total:.0f} s; load average {load0:.1f} -> {load1:.1f}")
    if not only:  # a partial run is no record of the whole
        os.environ.pop(QUICK_ENV, None)  # the record keeps its own name
        write_results(
            f"bench_run_{args.mode}",
            {
                "tables": [
                    table(
                        f"`bench/run.py {args.mode}`: each job's wall time",
                        ["job (bench/...)", "wall s", "status", "load average after"],
                        rows + [["total", round(total, 1), f"{len(failed)} failed", None]],
                    )
                ],
                "total_seconds": round(total, 1),
                "total_minutes": round(total / 60, 1),
                "failed": failed,
            },
            inputs={"mode": args.mode, "jobs": jobs, "cpus": os.cpu_count()},
            notes=[
                f"Load average {load0:.1f} at the start and {load1:.1f} at the end (1 min; the "
                "machine is shared with other engineers' jobs, so wall times stretch with it)."
            ],
            started=started,
            title=f"How long `make bench{'' if args.mode == 'quick' else '-full'}` takes",
        )
    subprocess.call([sys.executable, str(BENCH / "report.py")], cwd=ROOT)
    if failed:
        print("FAILED: " + " ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
