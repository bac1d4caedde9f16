"""`lift_ext.optim.SGLD`: the fused SGLD step as a `torch.optim.Optimizer`; beside it
`PosteriorSamples` (lift_ext.samples), which keeps the run's samples and averages over them."""
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch

from lift_ext import ops, validate
from lift_ext.preconditioner import HISTORY, fill_unseen_
from lift_ext.samples import PosteriorSamples
from lift_ext.sgld import (MAX_SEED, check_hyper_parameters, draw_seed_offset, per_example,
                           resolve_seed_offset)
from lift_ext.table import TensorTable
from lift_ext.warn import warn_user

# (params with a grad, their grads, their prior means, their square averages) of one group.
_Lists = Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]

_GROUP_KEYS = ("lr", "temperature", "prior_precision", "preconditioned", "alpha", "eps", "prior_mean",
               "num_data")
PRIOR_MEANS = ("zero", "init")


def _check_group(group: Dict[str, Any], prefix: str = "") -> None:
    """Refuse a parameter group's bad hyper-parameter with a ValueError naming it."""
    missing = [key for key in _GROUP_KEYS if key not in group]
    if missing:
        raise ValueError(f"{prefix}the parameter group has no {missing}: it was not made by lift_ext.optim.SGLD")
    check_hyper_parameters(group["lr"], group["temperature"], group["prior_precision"], group["alpha"],
                           group["eps"], prefix)
    validate.boolean(prefix + "preconditioned", group["preconditioned"])
    validate.one_of(prefix + "prior_mean", group["prior_mean"], PRIOR_MEANS)
    validate.integer(prefix + "num_data", group["num_data"], low=1)


def _warn_if_unbounded(group: Dict[str, Any]) -> None:
    """Warn where preconditioned noise meets no prior: a weight whose gradient is 0 then has
    nothing pulling it back and random-walks at the preconditioned scale."""
    if group["preconditioned"] and group["prior_precision"] == 0 and group["temperature"] > 0:
        warn_user("lift_ext.optim.SGLD(preconditioned=True) with temperature > 0 and no prior "
                  "(prior_precision=0): a weight whose gradient is 0 (LoRA A while B = 0) has no restoring "
                  "force and random-walks at the preconditioned noise scale; give a prior, e.g. "
                  "prior_mean='init' and prior_precision=1 / (the initialisation's std)^2")


# Group settings that a state saved before they existed lacks, with the defaults it ran under.
_LATER_SETTINGS = {"prior_mean": "zero", "num_data": 1}


def _check_saved_tensor(entry: Dict[str, Any], name: str, key: Any, param: torch.Tensor, valid, what: str) -> None:
    """Refuse a saved state tensor that is present but not `what` of its parameter's shape."""
    value = entry.get(name)
    if value is not None and not (isinstance(value, torch.Tensor) and value.shape == param.shape and valid(value)):
        raise ValueError(f"state_dict state[{key!r}][{name!r}] must be {what} of shape {tuple(param.shape)} "
                         "(its parameter's)")


class SGLD(torch.optim.Optimizer):
    """Stochastic-gradient Langevin dynamics, one fused kernel launch per parameter group.

        theta <- theta - lr * G * (grad + lam * (theta - c)) + sqrt(2 * lr * T' * G) * xi,
        lam = prior_precision / num_data,  T' = temperature / num_data

    i.e. `lift_ext.sgld_step` with a Gaussian prior N(c, 1 / prior_precision) on every
    parameter: c = 0 (`prior_mean="zero"`) or the parameter's value when the optimizer was
    built (`prior_mean="init"`, kept in the state as "prior_mean"). `num_data=N` says the loss
    is a MEAN over N examples (the PyTorch habit): the step then has the summed loss's
    dynamics (its posterior at temperature 1) at step size lr / N, and at temperature 0 without
    a prior it is SGD on the mean loss with step lr; with the summed negative log-likelihood
    leave num_data=1. lr is half the paper's eta; LR schedulers change it as usual.

    `preconditioned=True` keeps an RMSprop average of grad^2 per parameter (pSGLD), started at
    0: each element starts at its first nonzero gradient's square (see `lift_ext.sgld_step`),
    so no first step is 10x, and an element with no nonzero gradient yet (LoRA A while B = 0)
    is preconditioned as its group's typical element (lift_ext.preconditioner: its average is
    the mean of the group's), so it samples its prior at the group's scale instead of at
    1 / eps. Preconditioning with temperature > 0 and no prior warns: such an element has no
    restoring force.

    Noise: each group-step uses (seed, offset) and then offset += 1. `seed=None` draws the
    seed from torch's default generator at construction. `state_dict()` carries the seed and
    offset, so an optimizer restored with `load_state_dict` continues the same noise stream.
    Parameters must be float32 and contiguous (master weights); gradients may be float32,
    bfloat16 or float16 (a forward under torch.autocast). NaN / Inf gradients propagate as in
    torch.optim; torch.amp.GradScaler skips such steps (docs/design.md section 2).

    Each group is stepped through a `lift_ext.TensorTable`, kept from step to step while
    `is_current(group["params"])` holds (a C++ pass of a few ns per tensor), rebuilt when it
    does not: a new `.grad` (after `zero_grad(set_to_none=True)` and a backward pass, or
    assigned), parameter data replaced (`p.data = ...`, `model.to(...)`), a gradient appearing
    or vanishing, a different `preconditioned`, a loaded state. So with gradients zeroed in
    place (`zero_grad(set_to_none=False)`) a step costs a few microseconds of host time per
    group plus that pass, whatever the number of tensors; with `set_to_none=True` each step
    builds a new table (about the cost of a list call). `zero_grad(set_to_none=True)` drops
    the tables, so the old gradients are freed as torch's optimizers free them. Under
    torch.compile the step uses the list op (no tables).
    """

    def __init__(self, params: Iterable, lr: float, temperature: float = 1.0,
                 prior_precision: float = 0.0, preconditioned: bool = False, alpha: float = 0.99,
                 eps: float = 1e-8, seed: Optional[int] = None, *, prior_mean: str = "zero",
                 num_data: int = 1):
        defaults = dict(lr=lr, temperature=temperature, prior_precision=prior_precision,
                        preconditioned=preconditioned, alpha=alpha, eps=eps, prior_mean=prior_mean,
                        num_data=num_data)
        _check_group(defaults)
        if seed is not None:
            seed = resolve_seed_offset(seed, 0, None)[0]
        self._tables: Dict[int, TensorTable] = {}  # by group index
        # Group indices where an element may have no gradient history (lift_ext.preconditioner).
        self._unseen: set = set()
        super().__init__(params, defaults)
        self.seed = draw_seed_offset(None)[0] if seed is None else seed
        self.offset = 0

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """torch's add_param_group, the group's settings checked first; with prior_mean="init"
        each parameter's current value is kept as its prior mean."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            _check_group(group, f"param_groups[{len(self.param_groups) - 1}]: ")
        except ValueError:
            self.param_groups.pop()
            raise
        if group["prior_mean"] == "init":
            for p in group["params"]:
                self.state[p]["prior_mean"] = p.detach().clone(memory_format=torch.contiguous_format)
        _warn_if_unbounded(group)

    def _group_lists(self, group: Dict[str, Any]) -> Optional[Tuple[_Lists, List[Tuple[torch.Tensor, torch.Tensor]]]]:
        """The lists of one group's step and the (param, square average) pairs new to the state;
        None when no param has a grad. Changes nothing."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return None
        square_avgs: List[torch.Tensor] = []
        fresh: List[Tuple[torch.Tensor, torch.Tensor]] = []
        if group["preconditioned"]:
            for p in params:
                avg = self.state.get(p, {}).get("square_avg")
                if avg is None:  # zeros: "no gradient yet" (see lift_ext.sgld_step)
                    avg = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    fresh.append((p, avg))
                square_avgs.append(avg)
        means = []
        if group["prior_mean"] == "init":
            means = [self.state.get(p, {}).get("prior_mean") for p in params]
            if any(m is None for m in means):
                raise ValueError("prior_mean='init' needs the parameters' values when the group was added: "
                                 "set it in the constructor or in add_param_group, not on a group afterwards")
        return (params, [p.grad for p in params], means, square_avgs), fresh

    def _plan(self, index: int, group: Dict[str, Any], traced: bool):
        """How group `index` steps: (table or None, lists, fresh square averages), its
        hyper-parameters and tensors checked (a new table checks them as it is built); the
        cached table when it is still current. None when no param has a grad. Changes nothing."""
        _check_group(group, f"param_groups[{index}]: " if len(self.param_groups) > 1 else "")
        cached = None if traced else self._tables.get(index)
        if (cached is not None and cached.preconditioned == group["preconditioned"]
                and bool(cached.prior_means) == (group["prior_mean"] == "init")
                and cached.is_current(group["params"])):
            return cached, None, []
        found = self._group_lists(group)
        if found is None:
            return None
        (params, grads, means, square_avgs), fresh = found
        if traced:
            ops.check_sgld_lists(params, grads, means, [], square_avgs)
            return None, (params, grads, means, square_avgs), fresh
        return TensorTable(params, grads, prior_means=means or None, square_avgs=square_avgs or None), None, fresh

    def _precondition_unseen(self, index: int, group: Dict[str, Any], plan) -> Optional[Callable[[], None]]:
        """lift_ext.preconditioner's rule for group `index`'s step while an element of it may
        have no gradient history (a fresh square average, or a parameter with a history mask);
        per-tensor host work only then. Returns a function that undoes it (the square averages
        and masks as they were), for a step that fails after it; None when nothing was done."""
        table, lists, fresh = plan
        if fresh:
            self._unseen.add(index)
        if index not in self._unseen:
            return None
        params, square_avgs = (table.params, table.square_avgs) if table is not None else (lists[0], lists[3])
        states = [self.state[p] for p in params]
        saved = [(v.clone(), state.get(HISTORY)) for v, state in zip(square_avgs, states)]

        def undo() -> None:
            for v, state, (old_v, old_mask) in zip(square_avgs, states, saved):
                v.copy_(old_v)
                state.pop(HISTORY, None)
                if old_mask is not None:
                    state[HISTORY] = old_mask
            self._unseen.add(index)

        fill_unseen_(list(params), list(square_avgs), states, float(group["alpha"]))
        if not any(HISTORY in state for state in states):
            self._unseen.discard(index)
        return undo

    @torch.no_grad()
    def step(self, closure=None):
        """One SGLD step of every group. All groups are checked before any is stepped, so a
        refused step leaves parameters, state and the noise offset as they were."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.offset + len(self.param_groups) - 1 > MAX_SEED:
            raise ValueError(f"the noise offset {self.offset} cannot advance further (offsets end at "
                             f"2^63 - 1): set a new seed")
        traced = torch.compiler.is_compiling()
        plans = [(i, group, self._plan(i, group, traced)) for i, group in enumerate(self.param_groups)]
        for index, group, plan in plans:
            if plan is None:
                self._tables.pop(index, None)
                continue
            table, lists, fresh = plan
            prior_precision, temperature = per_example(float(group["prior_precision"]),
                                                       float(group["temperature"]), group["num_data"])
            hyper = dict(lr=float(group["lr"]), temperature=temperature, prior_precision=prior_precision,
                         alpha=float(group["alpha"]), eps=float(group["eps"]), seed=self.seed,
                         offset=self.offset)
            undo = self._precondition_unseen(index, group, plan) if group["preconditioned"] else None
            try:
                if table is not None:
                    ops.sgld_step_table_(table.handle, **hyper)
                else:
                    params, grads, means, square_avgs = lists
                    ops.sgld_step_list_(params, grads, means, [], square_avgs, **hyper)
            except BaseException:  # KeyboardInterrupt included: the group is as it was
                if undo is not None:
                    undo()
                raise
            if table is not None:
                self._tables[index] = table
            self.offset += 1
            for p, avg in fresh:
                self.state[p]["square_avg"] = avg
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's zero_grad; with set_to_none the groups' tables are dropped too (they hold
        the old gradients, which would otherwise stay allocated until the next step)."""
        super().zero_grad(set_to_none)
        if set_to_none:
            self._tables.clear()

    def __getstate__(self) -> Dict[str, Any]:
        state = super().__getstate__()
        state["rng"] = {"seed": self.seed, "offset": self.offset}
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        state = dict(state)
        rng = state.pop("rng", None)
        super().__setstate__(state)
        if rng is not None:
            self.seed, self.offset = rng["seed"], rng["offset"]
        self._tables = {}
        self._unseen = set(range(len(self.param_groups)))  # found out again at the next step

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["rng"] = {"seed": self.seed, "offset": self.offset}
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a state saved by `state_dict`. Everything is checked first (the noise stream's
        seed and offset, every group's hyper-parameters, every square average's shape and
        values): a refused state leaves the optimizer as it was."""
        state_dict = dict(state_dict)
        rng = state_dict.pop("rng", None)
        if not isinstance(rng, dict) or not {"seed", "offset"} <= set(rng):
            raise ValueError("state_dict has no 'rng' entry with 'seed' and 'offset': it was not "
                             "saved by lift_ext.optim.SGLD")
        seed, offset = resolve_seed_offset(rng["seed"], rng["offset"], None)
        state_dict["param_groups"] = [dict(_LATER_SETTINGS, **g) if isinstance(g, dict) else g
                                      for g in state_dict.get("param_groups", [])]
        self._check_saved(state_dict)
        super().load_state_dict(state_dict)
        for entry in self.state.values():  # torch casts every state tensor to its param's dtype
            if HISTORY in entry:
                entry[HISTORY] = entry[HISTORY].bool()
        self.seed, self.offset = seed, offset
        self._tables.clear()  # the square averages are new tensors
        self._unseen = set(range(len(self.param_groups)))  # found out again at the next step

    def _check_saved(self, state_dict: Dict[str, Any]) -> None:
        groups, saved = state_dict.get("param_groups"), state_dict.get("state")
        if not isinstance(groups, list) or not isinstance(saved, dict) or not all(
                isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
            raise ValueError("state_dict must hold 'state' (a dict) and 'param_groups' (a list of "
                             "dicts with 'params')")
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("state_dict's parameter groups do not match this optimizer's (number of "
                             "groups or of parameters in a group)")
        for i, (group, current) in enumerate(zip(groups, self.param_groups)):
            _check_group(group, f"state_dict param_groups[{i}]: ")
            for key, p in zip(group["params"], current["params"]):
                entry = saved.get(key)
                entry = entry if isinstance(entry, dict) else {}
                _check_saved_tensor(entry, "square_avg", key, p, lambda t: bool(torch.isfinite(t).all())
                                    and bool((t >= 0).all()), "a finite Tensor >= 0")
                _check_saved_tensor(entry, HISTORY, key, p, lambda t: bool(((t == 0) | (t == 1)).all()),
                                    "a bool Tensor")
                _check_saved_tensor(entry, "prior_mean", key, p, lambda t: bool(torch.isfinite(t).all()),
                                    "a finite Tensor")
                if group["prior_mean"] == "init" and entry.get("prior_mean") is None:
                    raise ValueError(f"state_dict param_groups[{i}] has prior_mean='init' but state[{key!r}] "
                                     "holds no 'prior_mean'")


__all__ = ["SGLD", "PosteriorSamples"]
