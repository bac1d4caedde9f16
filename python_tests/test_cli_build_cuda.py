"""The build's CUDA decision (CMakeLists.txt): with the default LIFT_EXT_CUDA=auto, kernels no
GPU here could run are not compiled unless TORCH_CUDA_ARCH_LIST names targets."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


@pytest.mark.skipif(not (ROOT / "CMakeLists.txt").exists() or shutil.which("cmake") is None,
                    reason="needs the source checkout and cmake")
@pytest.mark.skipif(torch.version.cuda is None or NVCC is None or torch.cuda.is_available(),
                    reason="the case of a CUDA torch and nvcc on a machine without a GPU")
def test_auto_skips_cuda_without_a_gpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LIFT_EXT_CUDA", "TORCH_CUDA_ARCH_LIST")}
    env["CUDACXX"] = NVCC
    res = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"),
                          f"-DPython_EXECUTABLE={sys.executable}"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "building CPU kernels only: torch sees no GPU and TORCH_CUDA_ARCH_LIST is not set" in res.stdout
    assert "CUDA kernels ON" not in res.stdout
