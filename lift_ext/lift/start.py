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


def initial_rows(start_thetas, mu0, num_tasks: int, dim: int, device: torch.device) -> torch.Tensor:
    """The initial task vectors [N, D] float32: start_thetas's rows, or one vector (start_thetas
    [D], else mu0, else 0) broadcast as a view (no N x D copy)."""
    if start_thetas is not None and start_thetas.dim() == 2:
        return start_thetas.to(device, torch.float32).contiguous()
    row = start_thetas if start_thetas is not None else mu0 if mu0 is not None else torch.zeros(dim)
    return row.to(device, torch.float32).expand(num_tasks, dim)


def check_start(start: ChainStart, num_tasks: int, dim: int, device: torch.device):
    """(mu0 [D] on `device` or None, start_thetas as given or None), checked."""
    mu0 = None if start.prior_mean is None else validate.vector("start.prior_mean", start.prior_mean, dim, device)
    start_thetas = start.thetas
    if start_thetas is not None:
        if not isinstance(start_thetas, torch.Tensor) or start_thetas.shape not in ((dim,), (num_tasks, dim)):
            raise ValueError(f"start.thetas must be a Tensor of shape [{dim}] or [{num_tasks}, {dim}]")
        if not bool(torch.isfinite(start_thetas.detach().to(torch.float32)).all()):
            raise ValueError("start.thetas must be finite in float32 (its value overflows or is NaN / Inf)")
    return mu0, start_thetas
