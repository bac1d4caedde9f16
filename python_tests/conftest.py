"""Shared fixtures: the devices present (CUDA tests skip cleanly without a GPU)."""
import pytest
import torch

import lift_ext

CUDA_OK = torch.cuda.is_available() and lift_ext.cuda_kernels_built()

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_OK, reason="needs a GPU and the CUDA kernels"))]

requires_cuda = pytest.mark.skipif(not CUDA_OK, reason="needs a GPU and the CUDA kernels")


def chain_state(sampler):
    """The tensors that make up an SGLDGibbs chain's state, for exact comparisons."""
    out = [sampler.thetas, sampler.phis, sampler.task_sums, sampler.assignments, sampler.weights]
    if sampler.square_avg is not None:
        out.append(sampler.square_avg)
    if sampler.gmm is not None:
        out += [sampler.gmm.means, sampler.gmm.counts]
    return out
