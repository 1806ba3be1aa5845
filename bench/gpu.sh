#!/usr/bin/env bash
# GPU against CPU: FAISS search (exact and IVF), text embedding on CUDA, and the built-in diffusion
# model's training speed, written to bench/results/gpu.json (see bench/gpu.py).
#
#   bench/gpu.sh                      # defaults: 1M x 384 vectors, 10k queries, 5k texts, 200 steps
#   bench/gpu.sh --rows 10000000      # any bench/gpu.py option
#
# Needs a CUDA machine with the GPU builds: `make setup && make gpu` (faiss-gpu-cu12) and a CUDA
# build of torch. Without a GPU it says so and exits 3 (nothing measured); the CPU side alone can
# be checked with `.venv/bin/python bench/gpu.py --cpu-only --rows 20000`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
status=0
"$PY" - <<'PYEOF' || status=$?
import sys
try:
    import torch
    cuda = torch.cuda.is_available()
except ImportError:
    cuda = False
import faiss
gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
print(f"bench/gpu.sh: torch CUDA available: {cuda}; FAISS GPUs: {gpus}", file=sys.stderr)
sys.exit(0 if (cuda or gpus) else 3)
PYEOF
if [ "$status" -ne 0 ]; then
  echo "bench/gpu.sh: no GPU here (torch sees no CUDA device and FAISS no GPU): nothing measured." >&2
  echo "  Run it on a CUDA machine after 'make setup && make gpu' with a CUDA build of torch;" >&2
  echo "  to check the CPU paths only: $PY bench/gpu.py --cpu-only --rows 20000" >&2
  exit 3
fi
exec "$PY" bench/gpu.py "$@"
