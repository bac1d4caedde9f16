"""Checkpoint files of `SGLDGibbs`: the whole chain state, so a loaded sampler continues the
exact same chain.

Version 2 (written): hparams (the constructor's arguments), thetas [N, D], components
{phis [K, D], sums [K, D], assignments [N] int64, weights [K] float64} (K = 1 for
prior="paper"), prior_mean [D] or None, gmm (the OnlineGMM's state; None for prior="mixture"),
square_avg [D] or None, step, order {epoch, position}.
(Version 1 predates the checksummed file layout of lift_ext.checkpoint, so no version-1 file
verifies: it is refused like any foreign file.)
"""
import warnings

import torch

from lift_ext.checkpoint import CheckpointError, load_checked, save_atomic
from lift_ext.lift.task_order import TaskOrder
from lift_ext.types import DeviceLike, GradFn

FORMAT = "lift_ext.SGLDGibbs"
VERSION = 2
_COMMON = ("hparams", "thetas", "prior_mean", "gmm", "step", "order")


def save(sampler, path: str) -> None:
    """Write `sampler`'s state to `path` atomically (lift_ext.checkpoint.save_atomic)."""
    order = sampler._order
    save_atomic({
        "format": FORMAT, "version": VERSION, "hparams": sampler.hparams(),
        "thetas": sampler.thetas, "components": sampler._components.state_dict(),
        "prior_mean": sampler.prior_mean,
        "gmm": None if sampler.gmm is None else sampler.gmm.state_dict(),
        "square_avg": sampler.square_avg, "step": sampler.step_count,
        "order": {"epoch": order.epoch, "position": order.position},
    }, path)


def load(cls, path: str, grad_fn: GradFn, device: DeviceLike = None):
    """`cls` (SGLDGibbs) rebuilt from `path`; CheckpointError for a missing, truncated, foreign
    or inconsistent file."""
    state = load_checked(path, fmt=FORMAT, version=VERSION, map_location="cpu",
                         required=_COMMON + ("components",))
    hp = dict(state["hparams"])
    n, d = hp.get("num_tasks"), hp.get("dim")
    expected = {"thetas": (n, d)}
    if state["prior_mean"] is not None:
        expected["prior_mean"] = (d,)
    if hp.get("preconditioned"):
        expected["square_avg"] = (d,)
        if state.get("square_avg") is None:
            raise CheckpointError(f"checkpoint {path!r} is incomplete: a preconditioned sampler "
                                  "needs its square_avg")
    for key, shape in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape or value.dtype != torch.float32:
            raise CheckpointError(f"checkpoint {path!r}: {key} must be a float32 tensor of shape "
                                  f"{list(shape)}")
    order, step = state["order"], state["step"]
    if not (isinstance(order, dict) and all(isinstance(order.get(k), int) for k in ("epoch", "position"))
            and isinstance(step, int) and step >= 0 and order["epoch"] >= 0 and 0 <= order["position"] <= n):
        raise CheckpointError(f"checkpoint {path!r} is inconsistent: step and order must be counts "
                              f"(order position in [0, {n}])")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            sampler = cls(grad_fn=grad_fn, prior_mean=state["prior_mean"], device=device, **hp)
        sampler._components.load_state_dict(state["components"])
        if sampler.gmm is not None:
            sampler.gmm.load_state_dict(state["gmm"])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path!r} is inconsistent: {exc}") from exc
    sampler._thetas.copy_(state["thetas"])
    if sampler._square_avg is not None:
        sampler._square_avg.copy_(state["square_avg"])
    sampler.step_count = step
    sampler._order = TaskOrder(sampler.seed, sampler.num_tasks, order["epoch"], order["position"])
    return sampler
