"""The label text view's hashed word 1-2 gram counts (`auditor/predict.hashed_counts`, polars)
against scikit-learn's `HashingVectorizer` with the same buckets, on one thread.

    .venv/bin/python bench/text_hashing.py               # 100,000 texts of each kind

Texts: ten words drawn from a 20,000-word vocabulary (the shape of bench/scale.py's rows), and
real reviews (the shared IMDb counterfactual set's 4,880, repeated to `--texts`) when `../shared` is
present. Both tools hash the same texts into 2^22 buckets, lower-cased words of two or more
characters and adjacent pairs, counts only (HashingVectorizer with alternate_sign off, no norm);
the figure is the best of `--repeats` calls, each in a process held to one thread (polars'
pool is sized when it loads, so the environment sets it: POLARS_MAX_THREADS=1, as the Ray
engine's workers run). The ratio is sklearn's time over datacure's. The two agree on the number
of (text, bucket) entries up to hash collisions (the `entries` columns).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, table, write_results


def texts_of(kind: str, n: int) -> list[str]:
    if kind == "templated":
        rng = np.random.default_rng(0)
        vocab = np.array([f"w{i:05d}" for i in range(20_000)])
        words = vocab[rng.integers(0, len(vocab), (n, 10))]
        return [" ".join(w) for w in words]
    from label_quality import _imdb

    base = _imdb(0)[0] + _imdb(1)[0]
    return [base[i % len(base)] for i in range(n)]


def child(tool: str, kind: str, n: int, repeats: int) -> dict:
    texts = texts_of(kind, n)
    if tool == "datacure":
        from datacure.auditor.predict import hashed_counts

        def run():
            return hashed_counts(texts)
    else:
        from sklearn.feature_extraction.text import HashingVectorizer

        from datacure.auditor.predict import TEXT_BUCKETS

        vec = HashingVectorizer(
            n_features=TEXT_BUCKETS, ngram_range=(1, 2), alternate_sign=False, norm=None
        )

        def run():
            m = vec.transform(texts)
            m.sum_duplicates()
            return m

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        m = run()
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "all_seconds": times, "entries": int(m.nnz)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("TOOL", "KIND"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.texts, args.repeats)))
        return
    started = time.perf_counter()
    kinds = ["templated"] + (["imdb"] if (SHARED_DATA / "imdb_counterfactual").exists() else [])
    env = dict(os.environ, POLARS_MAX_THREADS="1", OMP_NUM_THREADS="1")
    load = [os.getloadavg()[0]]
    runs, rows = {}, []
    for kind in kinds:
        got = {}
        for tool in ("datacure", "sklearn"):
            cmd = [sys.executable, __file__, "--child", tool, kind]
            cmd += ["--texts", str(args.texts), "--repeats", str(args.repeats)]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            got[tool] = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"{kind:<10} {tool:<9} {got[tool]['seconds']:7.2f} s", flush=True)
            load.append(os.getloadavg()[0])
        runs[kind] = got
        d, s = got["datacure"], got["sklearn"]
        rows.append(
            [
                kind,
                args.texts,
                round(d["seconds"], 2),
                round(s["seconds"], 2),
                round(s["seconds"] / d["seconds"], 2),
                d["entries"],
                s["entries"],
            ]
        )
    write_results(
        "text_hashing",
        {
            "tables": [
                table(
                    "hashed word 1-2 gram counts, 2^22 buckets, one thread (seconds, best of "
                    f"{args.repeats})",
                    [
                        "texts",
                        "rows",
                        "datacure s",
                        "sklearn HashingVectorizer s",
                        "ratio",
                        "datacure entries",
                        "sklearn entries",
                    ],
                    rows,
                    note="ratio: sklearn's time over datacure's; entries: (text, bucket) pairs, "
                    "equal up to hash collisions",
                )
            ],
            "runs": runs,
        },
        inputs={"texts": args.texts, "repeats": args.repeats, "kinds": kinds},
        notes=[f"load average {load[0]:.1f} at the start and {load[-1]:.1f} at the end"],
        started=started,
        title="the text view's hashing: polars against sklearn's HashingVectorizer",
    )


if __name__ == "__main__":
    main()
