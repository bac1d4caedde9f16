"""Where a chain starts: `ChainStart` (the initial task vectors and the prior's centre mu0),
checked, and the N x D start it gives."""
import dataclasses
from typing import Optional

import torch

from lift_ext import validate
from lift_ext.types import DeviceLike


@dataclasses.dataclass(frozen=True)
class ChainStart:
    """Where a chain starts. thetas: [D] (every task) or [N, D] (one row per task); default: the
    prior mean. prior_mean: mu0 [D], the centre of the prior over phi (phi ~ N(mu0, sigma^2 I));
    default: SGLDGibbs 0, LiFT the adapter's initialisation."""

    thetas: Optional[torch.Tensor] = None
    prior_mean: Optional[torch.Tensor] = None


def default_device(device: DeviceLike, start: ChainStart) -> torch.device:
    """`device` if given, else the device of start.prior_mean, else of start.thetas, else the CPU."""
    if device is not None:
        return torch.device(device)
    for value in (start.prior_mean, start.thetas):
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def initial_rows(theta_init, mu0, num_tasks: int, dim: int, device: torch.device) -> torch.Tensor:
    """The initial task vectors [N, D] float32: theta_init's rows, or one vector (theta_init
    [D], else mu0, else 0) broadcast as a view (no N x D copy)."""
    if theta_init is not None and theta_init.dim() == 2:
        return theta_init.to(device, torch.float32).contiguous()
    row = theta_init if theta_init is not None else mu0 if mu0 is not None else torch.zeros(dim)
    return row.to(device, torch.float32).expand(num_tasks, dim)


def check_start(start: ChainStart, num_tasks: int, dim: int, device: torch.device):
    """(mu0 [D] on `device` or None, theta_init as given or None), checked."""
    mu0 = None if start.prior_mean is None else validate.vector("start.prior_mean", start.prior_mean, dim, device)
    theta_init = start.thetas
    if theta_init is not None:
        if not isinstance(theta_init, torch.Tensor) or theta_init.shape not in ((dim,), (num_tasks, dim)):
            raise ValueError(f"start.thetas must be a Tensor of shape [{dim}] or [{num_tasks}, {dim}]")
        if not bool(torch.isfinite(theta_init.detach().to(torch.float32)).all()):
            raise ValueError("start.thetas must be finite in float32 (its value overflows or is NaN / Inf)")
    return mu0, theta_init
