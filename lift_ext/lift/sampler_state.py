"""The state of an `SGLDGibbs` chain, checked, and its checkpoint file.

A state (`SGLDGibbs.state_dict()`): config {num_tasks, dim, seed, langevin, hierarchy (the
configs' dicts), and num_shards for a sharded chain}, thetas [rows, D] (the rows the process
holds: all N in one process), components {phis [K, D], sums [K, D], assignments [N] int64,
weights [K] float64} (K = 1 for PaperHierarchy), prior_mean [D] or None, gmm (the OnlineGMM's
state; None for MixtureHierarchy), square_avg [D] or None, step, order (the visiting order's
position: {epoch, position}, or per shard {epochs, positions}).

File, version 3: {"format", "version"} and the state, written by lift_ext.checkpoint (SHA-256
header, atomic). Versions 1 and 2 spelled the settings as constructor keywords and are refused
like any foreign file.
"""
import contextlib
import warnings
from typing import Callable, Dict, Iterator, Tuple

import torch

from lift_ext.checkpoint import CheckpointError, load_checked, save_atomic
from lift_ext.lift.config import config_from_dict
from lift_ext.types import DeviceLike, GradFn

FORMAT = "lift_ext.SGLDGibbs"
VERSION = 3
KEYS = ("config", "thetas", "components", "prior_mean", "gmm", "square_avg", "step", "order")


class ChainState:
    """The state methods of `SGLDGibbs` (and so of ShardedSGLDGibbs, which overrides config,
    from_config, save and load): config, state_dict, load_state_dict, from_config, save, load."""

    def config(self) -> Dict[str, object]:
        """The settings that fix the chain, JSON-ready: num_tasks, dim, seed and the configs' dicts."""
        return {"num_tasks": self.num_tasks, "dim": self.dim, "seed": self.seed,
                "langevin": self.langevin.to_dict(), "hierarchy": self.hierarchy.to_dict()}

    @staticmethod
    def settings_of(config: Dict[str, object]) -> Dict[str, object]:
        """The constructor's keyword arguments (langevin, hierarchy, seed) of a `config()`."""
        return {"langevin": config_from_dict(config["langevin"]), "hierarchy": config_from_dict(config["hierarchy"]),
                "seed": config["seed"]}

    def state_dict(self) -> Dict[str, object]:
        """A snapshot of the whole chain (tensors are copies): config, thetas (the rows this
        process holds), components (phis, sums, assignments, weights), prior_mean, gmm (the
        OnlineGMM's state, None for MixtureHierarchy), square_avg, step, order."""
        return {"config": self.config(), "thetas": self._thetas.detach().clone(),
                "components": self._components.state_dict(),
                "prior_mean": None if self._prior_mean is None else self._prior_mean.clone(),
                "gmm": None if self.gmm is None else self.gmm.state_dict(),
                "square_avg": None if self._square_avg is None else self._square_avg.clone(),
                "step": self.step_count, "order": self._order.state_dict()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Continue the chain of `state` (a `state_dict()` of a sampler with the same config):
        the next step is the one that chain would have taken. Everything is checked first
        (check_state); a ValueError naming what does not fit leaves this sampler
        unchanged."""
        check_state(state, self.config(), tuple(self._thetas.shape))
        try:
            order = self._new_order(state["order"])
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"order must be the state_dict() of the chain's visiting order ({exc})") from None
        backup, backup_order = self.state_dict(), self._order
        try:
            self._apply_state(state, order)
        except BaseException:
            self._apply_state(backup, backup_order)
            raise

    def _apply_state(self, state: Dict[str, object], order) -> None:
        self._components.load_state_dict(state["components"])
        if self.gmm is not None:
            self.gmm.load_state_dict(state["gmm"])
        self._thetas.copy_(state["thetas"])
        mu0 = state["prior_mean"]
        self._prior_mean = None if mu0 is None else mu0.to(self.device, torch.float32).clone()
        if self._square_avg is not None:
            self._square_avg.copy_(state["square_avg"])
        self.step_count = state["step"]
        self._order = order

    @classmethod
    def from_config(cls, config: Dict[str, object], grad_fn: GradFn, device: DeviceLike = None) -> "ChainState":
        """A new chain with the settings of `config` (from `config()`), at its start."""
        return cls(config["num_tasks"], config["dim"], grad_fn, device=device, **cls.settings_of(config))

    def save(self, path: str) -> None:
        """Write `state_dict()` to one checksummed file, atomically (temp file + rename)."""
        write(self.state_dict(), path)

    @classmethod
    def load(cls, path: str, grad_fn: GradFn, device: DeviceLike = None) -> "ChainState":
        """A sampler continuing the exact chain saved by `save` (built by `from_config`, then
        `load_state_dict`). A truncated, foreign or inconsistent file raises
        lift_ext.checkpoint.CheckpointError."""
        state = read(path)
        with refusing_inconsistency(path):
            sampler = quietly(cls.from_config, state["config"], grad_fn, device)
            sampler.load_state_dict(state)
        return sampler


def write(state: dict, path: str) -> None:
    """Write a sampler's `state` to `path` atomically (lift_ext.checkpoint.save_atomic)."""
    save_atomic({"format": FORMAT, "version": VERSION, **state}, path)


def read(path: str) -> dict:
    """The state in the file at `path`, its sizes checked against the tensors it holds before
    any sampler is built from it (`check_sizes`); CheckpointError for a missing, truncated or
    foreign file."""
    state = load_checked(path, fmt=FORMAT, version=VERSION, map_location="cpu", required=KEYS)
    with refusing_inconsistency(path):
        check_sizes(state)
    return state


def quietly(build: Callable, *args, **kwargs):
    """`build(*args, **kwargs)` with its RuntimeWarnings silenced: a chain rebuilt to load a
    state does not warn about the start it is about to leave."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return build(*args, **kwargs)


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


def is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_sizes(state: dict) -> Tuple[int, int]:
    """(num_tasks N, dim D) of the state's config, refused (ValueError) unless every buffer a
    sampler allocates from the config (N x D thetas, K x D components, the OnlineGMM's K x D)
    matches a tensor the state holds: a small crafted file cannot ask for more memory than it
    contains."""
    config = state.get("config") if isinstance(state, dict) else None
    if not isinstance(config, dict) or not all(is_count(config.get(k)) and config[k] >= 1
                                               for k in ("num_tasks", "dim")):
        raise ValueError("the state's config must be a dict with counts num_tasks and dim >= 1")
    hierarchy = config.get("hierarchy")
    if not isinstance(hierarchy, dict) or hierarchy.get("type") not in ("PaperHierarchy", "MixtureHierarchy"):
        raise ValueError("the state's config must hold a PaperHierarchy or MixtureHierarchy as hierarchy")
    n, d = config["num_tasks"], config["dim"]
    mixture = hierarchy["type"] == "MixtureHierarchy"
    k = hierarchy.get("components" if mixture else "gmm_components")
    if not is_count(k) or k < 1:
        raise ValueError("the state's hierarchy must have a count of components >= 1")
    comps = state["components"]
    held = k if mixture else 1
    if not isinstance(comps, dict) or not isinstance(comps.get("phis"), torch.Tensor) \
            or tuple(comps["phis"].shape) != (held, d) \
            or not isinstance(comps.get("assignments"), torch.Tensor) or tuple(comps["assignments"].shape) != (n,):
        raise ValueError(f"the components must hold phis [{held}, {d}] and assignments [{n}] (the config's "
                         "components, dim, num_tasks)")
    gmm = state["gmm"]
    if not mixture and not (isinstance(gmm, dict) and isinstance(gmm.get("means"), torch.Tensor)
                            and tuple(gmm["means"].shape) == (k, d)):
        raise ValueError(f"the OnlineGMM state must hold means [{k}, {d}] (the config's gmm_components, dim)")
    return n, d


def check_state(state: dict, config: dict, rows: Tuple[int, int]) -> None:
    """ValueError (naming the part) unless `state` is a complete, consistent state of a chain
    with `config` whose process holds `rows` = (rows, D) thetas: the config equal, every tensor
    of the right shape, dtype and finite, S_k the sum of its tasks' thetas (where the process
    holds every row), step and order counts."""
    if not isinstance(state, dict) or set(KEYS) - set(state):
        missing = sorted(set(KEYS) - set(state)) if isinstance(state, dict) else list(KEYS)
        raise ValueError(f"the state lacks {missing} (it must come from state_dict())")
    if state["config"] != config:
        differ = sorted(key for key in set(config) | set(state["config"] or {})
                        if (state["config"] or {}).get(key) != config.get(key))
        raise ValueError(f"the state is of another chain: its config differs in {differ}")
    check_sizes(state)
    d = config["dim"]
    check_tensor("thetas", state["thetas"], rows)
    if state["prior_mean"] is not None:
        check_tensor("prior_mean", state["prior_mean"], (d,))
    if config["langevin"].get("preconditioned"):
        if state["square_avg"] is None:
            raise ValueError("a preconditioned chain's state needs its square_avg")
        check_tensor("square_avg", state["square_avg"], (d,))
        if bool((state["square_avg"] < 0).any()):
            raise ValueError("square_avg must be >= 0")
    if not is_count(state["step"]):
        raise ValueError(f"step must be a count, got {state['step']!r}")
    check_components(state["components"])
    if rows[0] == config["num_tasks"]:
        check_sums(state["thetas"], state["components"])


def check_components(comps: dict) -> None:
    """The components' assignments int64 in [0, K) and sums float32 of the shape of phis."""
    z, sums = comps.get("assignments"), comps.get("sums")
    if not (isinstance(z, torch.Tensor) and z.dtype == torch.int64 and isinstance(sums, torch.Tensor)
            and sums.shape == comps["phis"].shape and sums.dtype == torch.float32):
        raise ValueError("assignments must be int64 and sums float32 of the shape of phis")
    k = sums.shape[0]
    if bool((z < 0).any()) or bool((z >= k).any()):
        raise ValueError(f"assignments must lie in [0, {k})")


def check_sums(thetas: torch.Tensor, comps: dict) -> None:
    """S_k = sum of the thetas of the tasks with z_i = k (float64), within a tolerance for the
    float32 rounding of a running sum: 1e-2 of sum_i |theta_i| per element, plus 1e-6."""
    z, sums = comps["assignments"], comps["sums"]
    theta64 = thetas.double().cpu()
    want = torch.zeros(sums.shape, dtype=torch.float64).index_add_(0, z.cpu(), theta64)
    scale = torch.zeros(sums.shape, dtype=torch.float64).index_add_(0, z.cpu(), theta64.abs())
    if not bool(((sums.double().cpu() - want).abs() <= 1e-2 * scale + 1e-6).all()):
        raise ValueError("a task sum S_k is not the sum of its tasks' thetas")


def check_tensor(key: str, value, shape) -> None:
    """ValueError unless `value` (entry `key` of a state) is a finite float32 tensor of `shape`."""
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape) or value.dtype != torch.float32:
        raise ValueError(f"{key} must be a float32 tensor of shape {list(shape)}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{key} must be finite (it holds NaN or Inf)")
