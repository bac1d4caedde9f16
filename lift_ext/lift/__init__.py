"""LiFT: SGLD-Gibbs posterior sampling of a shared adapter prior, an online Gaussian mixture
over its samples, and meta-test adaptation under that mixture prior (DESIGN.md sections 3-5).

    SGLDGibbs   the sampler on flat vectors with a user-supplied gradient (no nn.Module needed)
"""
from lift_ext.lift.sampler import SGLDGibbs

__all__ = ["SGLDGibbs"]
