"""`bench/gpu.sh`: on a machine without a GPU it measures nothing, says why and exits 3; its CPU
side (`bench/gpu.py --cpu-only`) runs every path and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _has_gpu() -> bool:
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:
        pass
    import faiss

    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


@pytest.mark.skipif(_has_gpu(), reason="a GPU is here: gpu.sh would measure it")
def test_gpu_script_without_a_gpu_exits_3_saying_why():
    res = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PY=sys.executable),
        timeout=300,
    )
    assert res.returncode == 3, res.stderr
    assert "no GPU here" in res.stderr and "--cpu-only" in res.stderr


@pytest.mark.slow
def test_gpu_script_cpu_side_writes_its_figures(tmp_path):
    name = "gpu_cpu_test"
    out = ROOT / "bench" / "results" / f"{name}.json"
    try:
        res = subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "gpu.py"),
                "--cpu-only",
                "--rows",
                "3000",
                "--queries",
                "200",
                "--texts",
                "16",
                "--steps",
                "2",
                "--name",
                name,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        figures = json.loads(out.read_text())["figures"]
        assert figures["gpu"] == {"faiss": False, "torch_cuda": False}
        assert figures["faiss"]["ivf_cpu_recall"] >= 0.9
        assert figures["embedding"]["cpu_texts_per_s"] > 0
        assert figures["diffusion"]["cpu_steps_per_s"] > 0
    finally:
        out.unlink(missing_ok=True)
