"""GPU against CPU for the three paths that use one: FAISS search (exact and IVF), text embedding
(all-MiniLM-L6-v2), and the built-in diffusion model's training. Run it through `bench/gpu.sh`,
which checks that a GPU is there first.

    bench/gpu.sh                                  # on a CUDA machine: bench/results/gpu.json
    .venv/bin/python bench/gpu.py --cpu-only --rows 20000 --texts 64 --steps 3 --name gpu_cpu_check

Each measurement runs the CPU path and the GPU path on the same data in this process, so the
figures are ratios taken in one run:

- FAISS exact: `faiss.knn` (CPU) against `faiss.knn_gpu` (GPU) for `--queries` queries over
  `--rows` 384-d low-rank vectors (a 24-d latent with 50 centres, like real embeddings), k=10;
  the GPU's neighbours are checked against the CPU's (recall@10).
- FAISS IVF: `IndexIVFFlat` (inner product, about 4 sqrt(n) lists) trained on a sample, `nprobe`
  raised until recall@10 against the exact result reaches 0.95 on the CPU; the same index copied
  to the GPU (`index_cpu_to_gpu`) and searched with the same `nprobe`.
- Embedding: datacure's text encoder (`store.embed.load_embedder`) on `--texts` real sentences
  (NoisyAG-News test items from ../shared/data when present, else seeded sentences), CPU then
  CUDA; the mean cosine between the two sets of vectors is reported (the same model: ~1.0).
- Diffusion: `generators.image.ConditionalDiffusion` (16x16, 10 labels x 2 groups) for
  `--steps` steps at batch 128 on random images, CPU then CUDA: training steps per second.

`--cpu-only` runs only the CPU side (what a machine without a GPU can check: that every path
runs and the JSON is written).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from common import SHARED_DATA, write_results  # noqa: E402


def lowrank(n: int, d: int = 384, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(50, 24))
    proj = rng.normal(size=(24, d)) / np.sqrt(24)
    x = np.empty((n, d), np.float32)
    for lo in range(0, n, 100_000):
        m = min(100_000, n - lo)
        z = centres[rng.integers(0, 50, m)] + rng.normal(size=(m, 24))
        x[lo : lo + m] = z @ proj + rng.normal(scale=0.3, size=(m, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def recall(a: np.ndarray, b: np.ndarray) -> float:
    return float((a[:, :, None] == b[:, None, :]).any(axis=1).mean())


def faiss_figures(rows: int, queries: int, gpu: bool) -> dict:
    from datacure.store.knn_exact import load_faiss

    faiss = load_faiss()

    x = lowrank(rows)
    q = x[np.random.default_rng(1).choice(rows, queries, replace=False)]
    k = 10
    out: dict = {"rows": rows, "queries": queries, "dim": x.shape[1], "k": k}
    t = time.perf_counter()
    _, ex = faiss.knn(q, x, k, metric=faiss.METRIC_INNER_PRODUCT)
    out["exact_cpu_s"] = time.perf_counter() - t
    if gpu:
        res = faiss.StandardGpuResources()
        faiss.knn_gpu(res, q[:10], x, k, metric=faiss.METRIC_INNER_PRODUCT)  # warm up
        t = time.perf_counter()
        _, eg = faiss.knn_gpu(res, q, x, k, metric=faiss.METRIC_INNER_PRODUCT)
        out["exact_gpu_s"] = time.perf_counter() - t
        out["exact_gpu_recall_vs_cpu"] = recall(eg, ex)
        out["exact_speedup"] = out["exact_cpu_s"] / out["exact_gpu_s"]
    nlist = int(max(1, min(4 * np.sqrt(rows), rows // 39)))
    quant = faiss.IndexFlatIP(x.shape[1])
    ivf = faiss.IndexIVFFlat(quant, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    t = time.perf_counter()
    ivf.train(x[np.random.default_rng(2).choice(rows, min(rows, 64 * nlist), replace=False)])
    ivf.add(x)
    out["ivf_build_cpu_s"] = time.perf_counter() - t
    out["ivf_nlist"] = nlist
    for nprobe in (1, 2, 4, 8, 16, 32, 64, 128):
        ivf.nprobe = nprobe
        t = time.perf_counter()
        _, ei = ivf.search(q, k)
        el = time.perf_counter() - t
        r = recall(ei, ex)
        if r >= 0.95 or nprobe == 128:
            out.update(ivf_nprobe=nprobe, ivf_cpu_s=el, ivf_cpu_recall=r)
            break
    if gpu:
        res = faiss.StandardGpuResources()
        t = time.perf_counter()
        gi = faiss.index_cpu_to_gpu(res, 0, ivf)
        out["ivf_to_gpu_s"] = time.perf_counter() - t
        gi.nprobe = out["ivf_nprobe"]
        gi.search(q[:10], k)
        t = time.perf_counter()
        _, eg = gi.search(q, k)
        out["ivf_gpu_s"] = time.perf_counter() - t
        out["ivf_gpu_recall"] = recall(eg, ex)
        out["ivf_speedup"] = out["ivf_cpu_s"] / out["ivf_gpu_s"]
    return out


def texts(n: int) -> list[str]:
    path = SHARED_DATA / "noisy_ag_news" / "test.csv"
    if path.exists():
        import polars as pl

        got = pl.read_csv(path)["text"].head(n).to_list()
        if len(got) == n:
            return got
    rng = np.random.default_rng(0)
    words = np.array("the a market team wins loses new study shows rises falls game".split())
    return [" ".join(rng.choice(words, 24)) for _ in range(n)]


def embed_figures(n: int, gpu: bool) -> dict:
    from datacure.store.embed import load_embedder

    items = texts(n)
    out: dict = {"texts": n, "model": "all-MiniLM-L6-v2"}
    cpu = load_embedder(None, "text", "cpu")
    cpu.encode(items[:8])
    t = time.perf_counter()
    vc = cpu.encode(items, batch_size=256)
    out["cpu_s"] = time.perf_counter() - t
    out["cpu_texts_per_s"] = n / out["cpu_s"]
    if gpu:
        dev = load_embedder(None, "text", "cuda")
        dev.encode(items[:8])
        t = time.perf_counter()
        vg = dev.encode(items, batch_size=256)
        out["gpu_s"] = time.perf_counter() - t
        out["gpu_texts_per_s"] = n / out["gpu_s"]
        out["speedup"] = out["cpu_s"] / out["gpu_s"]
        out["mean_cosine_cpu_gpu"] = float((vc * vg).sum(axis=1).mean())
    return out


def diffusion_figures(steps: int, gpu: bool) -> dict:
    from datacure.generators.image import ConditionalDiffusion

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (512, 16, 16, 3), dtype=np.uint8)
    cells = rng.integers(0, 20, 512)
    out: dict = {"steps": steps, "batch_size": 128, "size": 16}
    for device in ("cpu", "cuda") if gpu else ("cpu",):
        model = ConditionalDiffusion([str(i) for i in range(10)], ["a", "b"], size=16)
        t = time.perf_counter()
        model.fit(images, cells, steps=steps, batch_size=128, device=device)
        el = time.perf_counter() - t
        out[f"{device}_s"] = el
        out[f"{device}_steps_per_s"] = steps / el
        out["parameters"] = model.num_parameters
    if gpu:
        out["speedup"] = out["cpu_s"] / out["cuda_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cpu-only", action="store_true", help="only the CPU paths (no GPU here)")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--texts", type=int, default=5_000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--name", default="gpu", help="results file stem")
    args = ap.parse_args()
    started = time.perf_counter()
    faiss_gpu = torch_gpu = False
    if not args.cpu_only:
        from datacure.store.knn_exact import load_faiss

        faiss = load_faiss()

        faiss_gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
        try:
            import torch

            torch_gpu = torch.cuda.is_available()
        except ImportError:
            torch_gpu = False
    notes = [
        "CPU and GPU paths measured in this process, one after the other, on the same data",
    ]
    if not args.cpu_only and not faiss_gpu:
        notes.append("FAISS sees no GPU (faiss-cpu installed? `make gpu` installs faiss-gpu-cu12)")
    if not args.cpu_only and not torch_gpu:
        notes.append("torch sees no CUDA device (the CPU wheel? install a CUDA build of torch)")
    if args.cpu_only:
        notes.append("--cpu-only: the GPU side was not run (a check of the CPU paths)")
    figures = {
        "faiss": faiss_figures(args.rows, min(args.queries, args.rows), faiss_gpu),
        "embedding": embed_figures(args.texts, torch_gpu),
        "diffusion": diffusion_figures(args.steps, torch_gpu),
        "gpu": {"faiss": faiss_gpu, "torch_cuda": torch_gpu},
    }
    if torch_gpu:
        import torch

        figures["gpu"]["device"] = torch.cuda.get_device_name(0)
    for part, vals in figures.items():
        print(part, {k: round(v, 4) if isinstance(v, float) else v for k, v in vals.items()})
    write_results(args.name, figures, inputs=vars(args), notes=notes, started=started)


if __name__ == "__main__":
    main()
