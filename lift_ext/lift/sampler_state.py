"""Checkpoint files of `SGLDGibbs`: the whole chain state, so a loaded sampler continues the
exact same chain.

Version 2 (written): hparams (the constructor's arguments), thetas [N, D], components
{phis [K, D], sums [K, D], assignments [N] int64, weights [K] float64} (K = 1 for
prior="paper"), prior_mean [D] or None, gmm (the OnlineGMM's state; None for prior="mixture"),
square_avg [D] or None, step, order {epoch, position}.
(Version 1 predates the checksummed file layout of lift_ext.checkpoint, so no version-1 file
verifies: it is refused like any foreign file.)
"""
import contextlib
import warnings
from typing import Iterator, Tuple

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
    or inconsistent file (thetas not finite, a task sum S_k that is not the sum of its tasks'
    thetas, a negative step, an order position out of range, a shape that does not fit)."""
    state = load_checked(path, fmt=FORMAT, version=VERSION, map_location="cpu",
                         required=_COMMON + ("components",))
    with refusing_inconsistency(path):
        n, d = check_sizes(path, state)
        check_tensor(path, "thetas", state["thetas"], (n, d))
        order = state["order"]
        if not (isinstance(order, dict) and all(_is_count(order.get(k)) for k in ("epoch", "position"))
                and order["position"] <= n):
            raise CheckpointError(f"checkpoint {path!r} is inconsistent: the order must be counts "
                                  f"(order position in [0, {n}])")
        _check_sums(path, state["thetas"], state["components"])
        sampler = restore(cls, state, path, grad_fn=grad_fn, device=device)
        sampler._thetas.copy_(state["thetas"])
        sampler._order = TaskOrder(sampler.seed, sampler.num_tasks, order["epoch"], order["position"])
    return sampler


@contextlib.contextmanager
def refusing_inconsistency(path: str) -> Iterator[None]:
    """Turn any error raised while checking or restoring the values of the file at `path` into
    a CheckpointError naming it (a crafted file must never surface as a raw KeyError)."""
    try:
        yield
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path!r} is inconsistent: {type(exc).__name__}: {exc}") from None


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_sizes(path: str, state: dict) -> Tuple[int, int]:
    """(num_tasks N, dim D) of the file's hparams, refused unless every buffer the sampler will
    allocate from them (N x D thetas, K x D components, the OnlineGMM's K x D) matches a tensor
    the file holds: a small crafted file cannot ask for more memory than it contains."""
    hp = state["hparams"]
    if not isinstance(hp, dict) or not all(_is_count(hp.get(k)) and hp[k] >= 1
                                           for k in ("num_tasks", "dim", "n_components")):
        raise CheckpointError(f"checkpoint {path!r} is inconsistent: hparams must be a dict with counts "
                              "num_tasks, dim and n_components >= 1")
    n, d, k = hp["num_tasks"], hp["dim"], hp["n_components"]
    comps = state["components"]
    held = 1 if hp.get("prior") != "mixture" else k
    if not isinstance(comps, dict) or not isinstance(comps.get("phis"), torch.Tensor) \
            or tuple(comps["phis"].shape) != (held, d) \
            or not isinstance(comps.get("assignments"), torch.Tensor) or tuple(comps["assignments"].shape) != (n,):
        raise CheckpointError(f"checkpoint {path!r} is inconsistent: the components must hold phis "
                              f"[{held}, {d}] and assignments [{n}] (hparams' n_components, dim, num_tasks)")
    gmm = state["gmm"]
    if hp.get("prior") != "mixture" and not (isinstance(gmm, dict) and isinstance(gmm.get("means"), torch.Tensor)
                                             and tuple(gmm["means"].shape) == (k, d)):
        raise CheckpointError(f"checkpoint {path!r} is inconsistent: the OnlineGMM state must hold "
                              f"means [{k}, {d}] (hparams' n_components, dim)")
    return n, d


def _check_sums(path: str, thetas: torch.Tensor, comps: dict) -> None:
    """S_k = sum of the thetas of the tasks with z_i = k (float64), within a tolerance for the
    float32 rounding of a running sum: 1e-2 of sum_i |theta_i| per element, plus 1e-6."""
    z, sums = comps["assignments"], comps["sums"]
    if not (isinstance(z, torch.Tensor) and z.dtype == torch.int64 and isinstance(sums, torch.Tensor)
            and sums.shape == comps["phis"].shape and sums.dtype == torch.float32):
        raise CheckpointError(f"checkpoint {path!r} is inconsistent: assignments must be int64 and sums "
                              "float32 of the shape of phis")
    k = sums.shape[0]
    if bool((z < 0).any()) or bool((z >= k).any()):
        raise CheckpointError(f"checkpoint {path!r} is inconsistent: assignments must lie in [0, {k})")
    theta64 = thetas.double()
    want = torch.zeros(sums.shape, dtype=torch.float64).index_add_(0, z, theta64)
    scale = torch.zeros(sums.shape, dtype=torch.float64).index_add_(0, z, theta64.abs())
    if not bool(((sums.double() - want).abs() <= 1e-2 * scale + 1e-6).all()):
        raise CheckpointError(f"checkpoint {path!r} is inconsistent: a task sum S_k is not the sum of "
                              "its tasks' thetas")


def check_tensor(path: str, key: str, value, shape) -> None:
    """CheckpointError unless `value` (entry `key` of the file at `path`) is a finite float32
    tensor of `shape`."""
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape) or value.dtype != torch.float32:
        raise CheckpointError(f"checkpoint {path!r}: {key} must be a float32 tensor of shape {list(shape)}")
    if not bool(torch.isfinite(value).all()):
        raise CheckpointError(f"checkpoint {path!r}: {key} must be finite (it holds NaN or Inf)")


def restore(cls, state: dict, path: str, **arguments):
    """A `cls` built from the file's hparams and `arguments` (grad_fn, device, ...), with the
    state shared by every task restored: components, OnlineGMM, square_avg and step (the
    thetas and the order are the caller's). CheckpointError when they do not fit; the sizes
    are checked against the file's tensors (check_sizes) before anything is allocated."""
    check_sizes(path, state)
    hp = dict(state["hparams"])
    d = hp.get("dim")
    if state["prior_mean"] is not None:
        check_tensor(path, "prior_mean", state["prior_mean"], (d,))
    if hp.get("preconditioned"):
        if state.get("square_avg") is None:
            raise CheckpointError(f"checkpoint {path!r} is incomplete: a preconditioned sampler "
                                  "needs its square_avg")
        check_tensor(path, "square_avg", state["square_avg"], (d,))
        if bool((state["square_avg"] < 0).any()):
            raise CheckpointError(f"checkpoint {path!r}: square_avg must be >= 0")
    step = state["step"]
    if not _is_count(step):
        raise CheckpointError(f"checkpoint {path!r} is inconsistent: step must be a count, got {step!r}")
    with refusing_inconsistency(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            sampler = cls(prior_mean=state["prior_mean"], **arguments, **hp)
        sampler._components.load_state_dict(state["components"])
        if sampler.gmm is not None:
            sampler.gmm.load_state_dict(state["gmm"])
    if sampler._square_avg is not None:
        sampler._square_avg.copy_(state["square_avg"])
    sampler.step_count = step
    return sampler
