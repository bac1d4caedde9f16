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
    n = state["hparams"].get("num_tasks")
    check_tensor(path, "thetas", state["thetas"], (n, state["hparams"].get("dim")))
    order = state["order"]
    if not (isinstance(order, dict) and all(isinstance(order.get(k), int) for k in ("epoch", "position"))
            and order["epoch"] >= 0 and 0 <= order["position"] <= n):
        raise CheckpointError(f"checkpoint {path!r} is inconsistent: the order must be counts "
                              f"(order position in [0, {n}])")
    sampler = restore(cls, state, path, grad_fn=grad_fn, device=device)
    sampler._thetas.copy_(state["thetas"])
    sampler._order = TaskOrder(sampler.seed, sampler.num_tasks, order["epoch"], order["position"])
    return sampler


def check_tensor(path: str, key: str, value, shape) -> None:
    """CheckpointError unless `value` (entry `key` of the file at `path`) is float32 of `shape`."""
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape) or value.dtype != torch.float32:
        raise CheckpointError(f"checkpoint {path!r}: {key} must be a float32 tensor of shape {list(shape)}")


def restore(cls, state: dict, path: str, **arguments):
    """A `cls` built from the file's hparams and `arguments` (grad_fn, device, ...), with the
    state shared by every task restored: components, OnlineGMM, square_avg and step (the
    thetas and the order are the caller's). CheckpointError when they do not fit."""
    hp = dict(state["hparams"])
    d = hp.get("dim")
    if state["prior_mean"] is not None:
        check_tensor(path, "prior_mean", state["prior_mean"], (d,))
    if hp.get("preconditioned"):
        if state.get("square_avg") is None:
            raise CheckpointError(f"checkpoint {path!r} is incomplete: a preconditioned sampler "
                                  "needs its square_avg")
        check_tensor(path, "square_avg", state["square_avg"], (d,))
    step = state["step"]
    if not (isinstance(step, int) and step >= 0):
        raise CheckpointError(f"checkpoint {path!r} is inconsistent: step must be a count, got {step!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            sampler = cls(prior_mean=state["prior_mean"], **arguments, **hp)
        sampler._components.load_state_dict(state["components"])
        if sampler.gmm is not None:
            sampler.gmm.load_state_dict(state["gmm"])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path!r} is inconsistent: {exc}") from exc
    if sampler._square_avg is not None:
        sampler._square_avg.copy_(state["square_avg"])
    sampler.step_count = step
    return sampler
