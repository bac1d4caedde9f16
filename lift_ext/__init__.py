"""lift_ext: fused SGLD and online Gaussian-mixture kernels for LiFT (Bayesian
parameter-efficient meta fine-tuning), as PyTorch custom ops with CPU and CUDA kernels.

    lift_ext.sgld_step(params, grads, lr=..., ...)   fused Langevin step (Tensor or list)
    lift_ext.TensorTable(params, grads, ...)          the lists of a step, checked once:
                                                      lift_ext.sgld_step(table, lr=...)
    lift_ext.philox_normal(numel, seed=, offset=)     the exact noise sgld_step adds
    lift_ext.optim.SGLD                               the step as a torch.optim.Optimizer
    lift_ext.optim.PosteriorSamples                   thinned samples of a run, averaged predictions
    lift_ext.gmm.OnlineGMM                            online-EM diagonal Gaussian mixture
    lift_ext.reference                                pure-PyTorch oracle of every kernel
    lift_ext.cpu_isa()                                "avx512" / "avx2" / "generic": the CPU
                                                      normals' instruction-set path here
"""
import torch  # noqa: F401  - torch's libraries must be loaded before the extension

from lift_ext import gmm, ops, optim, reference  # noqa: F401
from lift_ext._loader import cpu_isa, cuda_kernels_built
from lift_ext.sgld import philox_normal, sgld_step
from lift_ext.table import TensorTable

__version__ = "0.1.0"
__all__ = ["sgld_step", "TensorTable", "philox_normal", "cuda_kernels_built", "cpu_isa", "ops", "optim", "reference", "gmm"]
