"""Shared bits of the pytest-benchmark suite: the devices present and a synchronising timer."""
import pytest
import torch

import lift_ext

CUDA_OK = torch.cuda.is_available() and lift_ext.cuda_kernels_built()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_OK, reason="needs a GPU and the CUDA kernels"))]


def timed(benchmark, fn, device):
    """Benchmark fn() with a device synchronise inside the timed call."""
    def call():
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    call()
    return benchmark.pedantic(call, rounds=20, warmup_rounds=2, iterations=1)
