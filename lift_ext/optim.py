"""`lift_ext.optim.SGLD`: the fused SGLD step as a `torch.optim.Optimizer`."""
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from lift_ext import ops, validate
from lift_ext.sgld import MAX_SEED, check_hyper_parameters, draw_seed_offset, resolve_seed_offset
from lift_ext.table import TensorTable

# (params with a grad, their grads, their square averages) of one group: the lists of a step.
_Lists = Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]

_GROUP_KEYS = ("lr", "temperature", "prior_precision", "preconditioned", "alpha", "eps")


def _check_group(group: Dict[str, Any], prefix: str = "") -> None:
    """Refuse a parameter group's bad hyper-parameter with a ValueError naming it."""
    missing = [key for key in _GROUP_KEYS if key not in group]
    if missing:
        raise ValueError(f"{prefix}the parameter group has no {missing}: it was not made by lift_ext.optim.SGLD")
    check_hyper_parameters(group["lr"], group["temperature"], group["prior_precision"], group["alpha"],
                           group["eps"], prefix)
    validate.boolean(prefix + "preconditioned", group["preconditioned"])


class SGLD(torch.optim.Optimizer):
    """Stochastic-gradient Langevin dynamics, one fused kernel launch per parameter group.

        theta <- theta - lr * G * (grad + prior_precision * theta) + sqrt(2 * lr * T * G) * xi

    i.e. `lift_ext.sgld_step` with prior mean 0 (a Gaussian prior N(0, 1/prior_precision)
    on every parameter); `preconditioned=True` keeps an RMSprop average of grad^2 per
    parameter (pSGLD), started at 0, which the step reads as "no gradient yet": each element
    starts at its first nonzero gradient's square (see `lift_ext.sgld_step`), so no first step
    is 10x, and the damping eps' = max(eps, lr * prior_precision) bounds a weight whose gradient
    is still 0 (LoRA A while B = 0) by the prior's scale. lr is half the paper's eta; LR schedulers change it as usual.

    Noise: each group-step uses (seed, offset) and then offset += 1. `seed=None` draws the
    seed from torch's default generator at construction. `state_dict()` carries the seed and
    offset, so an optimizer restored with `load_state_dict` continues the same noise stream.
    Parameters must be float32 and contiguous; gradients may be float32, bfloat16 or float16.
    NaN / Inf gradients propagate as in torch.optim; torch.amp.GradScaler skips such steps (docs/design.md section 2).

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
                 eps: float = 1e-8, seed: Optional[int] = None):
        defaults = dict(lr=lr, temperature=temperature, prior_precision=prior_precision,
                        preconditioned=preconditioned, alpha=alpha, eps=eps)
        _check_group(defaults)
        if seed is not None:
            seed = resolve_seed_offset(seed, 0, None)[0]
        super().__init__(params, defaults)
        self.seed = draw_seed_offset(None)[0] if seed is None else seed
        self.offset = 0
        self._tables: Dict[int, TensorTable] = {}  # by group index

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
        return (params, [p.grad for p in params], square_avgs), fresh

    def _plan(self, index: int, group: Dict[str, Any], traced: bool):
        """How group `index` steps: (table or None, lists, fresh square averages), its
        hyper-parameters and tensors checked (a new table checks them as it is built); the
        cached table when it is still current. None when no param has a grad. Changes nothing."""
        _check_group(group, f"param_groups[{index}]: " if len(self.param_groups) > 1 else "")
        cached = None if traced else self._tables.get(index)
        if (cached is not None and cached.preconditioned == group["preconditioned"]
                and cached.is_current(group["params"])):
            return cached, None, []
        found = self._group_lists(group)
        if found is None:
            return None
        (params, grads, square_avgs), fresh = found
        if traced:
            ops.check_sgld_lists(params, grads, [], [], square_avgs)
            return None, (params, grads, square_avgs), fresh
        return TensorTable(params, grads, square_avgs=square_avgs or None), None, fresh

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
            hyper = dict(lr=float(group["lr"]), temperature=float(group["temperature"]),
                         prior_precision=float(group["prior_precision"]), alpha=float(group["alpha"]),
                         eps=float(group["eps"]), seed=self.seed, offset=self.offset)
            if table is not None:
                ops.sgld_step_table_(table.handle, **hyper)
                self._tables[index] = table
            else:
                params, grads, square_avgs = lists
                ops.sgld_step_list_(params, grads, [], [], square_avgs, **hyper)
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
        self._check_saved(state_dict)
        super().load_state_dict(state_dict)
        self.seed, self.offset = seed, offset
        self._tables.clear()  # the square averages are new tensors

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
                avg = entry.get("square_avg") if isinstance(entry, dict) else None
                if avg is not None and not (isinstance(avg, torch.Tensor) and avg.shape == p.shape
                                            and bool(torch.isfinite(avg).all()) and bool((avg >= 0).all())):
                    raise ValueError(f"state_dict state[{key!r}]['square_avg'] must be a finite Tensor >= 0 "
                                     f"of shape {tuple(p.shape)} (its parameter's)")
