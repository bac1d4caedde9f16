"""k-means++ seeding over the rows of a [N, D] tensor, with distances from the fused E-step:
the one implementation behind `OnlineGMM`'s initialisation and the mixture prior's first
assignments (`lift_ext.lift.mixture`)."""
import math
from typing import List

import torch

from lift_ext import ops


def squared_distances(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """||x_b - c_j||^2 [B, J] float64 by the fused E-step: with m2 = 0, counts = 1 and reg = 1
    every variance is 1, so loglik = -log J - (||x_b - c_j||^2 + D log 2 pi) / 2."""
    j, dim = centers.shape
    ones = torch.ones(j, dtype=torch.float64, device=centers.device)
    loglik, _ = ops.gmm_estep(x, centers.contiguous(), torch.zeros_like(centers), ones, reg=1.0)
    return (-2.0 * (loglik + math.log(j)) - dim * math.log(2.0 * math.pi)).clamp_min(0.0)


def plus_plus_seeds(x: torch.Tensor, k: int, generator: torch.Generator) -> List[int]:
    """k row indices of x [N, D]: the first uniformly, each next one with probability
    proportional to its squared distance to the nearest chosen row (uniformly when every row
    coincides with a chosen one). Deterministic given `generator` (a CPU generator).
    ValueError when the squared distances overflow (rows too far apart for float32)."""
    n = x.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    nearest = squared_distances(x, x[chosen]).squeeze(1).cpu()
    if not bool(torch.isfinite(nearest).all()):
        raise ValueError("the rows lie so far apart that their squared distances overflow")
    for _ in range(1, k):
        if bool(nearest.sum() > 0):
            pick = int(torch.multinomial(nearest, 1, generator=generator))
        else:
            pick = int(torch.randint(n, (1,), generator=generator))
        chosen.append(pick)
        nearest = torch.minimum(nearest, squared_distances(x, x[pick:pick + 1]).squeeze(1).cpu())
    return chosen
