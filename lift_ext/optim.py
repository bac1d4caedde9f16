"""`lift_ext.optim.SGLD`: the fused SGLD step as a `torch.optim.Optimizer`."""
from typing import Any, Dict, Iterable, Optional

import torch

from lift_ext import ops, validate
from lift_ext.sgld import draw_seed_offset, resolve_seed_offset


def _check_group(group: Dict[str, Any]) -> None:
    """Refuse a parameter group's bad hyper-parameter with a ValueError naming it."""
    for name in ("lr", "temperature", "prior_precision"):
        validate.number(name, group[name], inclusive=True)
    validate.number("alpha", group["alpha"], inclusive=True, high=1.0)
    validate.number("eps", group["eps"])
    validate.boolean("preconditioned", group["preconditioned"])


class SGLD(torch.optim.Optimizer):
    """Stochastic-gradient Langevin dynamics, one fused kernel launch per parameter group.

        theta <- theta - lr * G * (grad + prior_precision * theta) + sqrt(2 * lr * T * G) * xi

    i.e. `lift_ext.sgld_step` with prior mean 0 (a Gaussian prior N(0, 1/prior_precision)
    on every parameter); `preconditioned=True` keeps an RMSprop average of grad^2 per
    parameter (pSGLD), started at 0, which the step reads as "no gradient yet": each element
    starts at its first nonzero gradient's square (see `lift_ext.sgld_step`), so no first step
    is 10x. lr is half the paper's eta; LR schedulers change it as usual.

    Noise: each group-step uses (seed, offset) and then offset += 1. `seed=None` draws the
    seed from torch's default generator at construction. `state_dict()` carries the seed and
    offset, so an optimizer restored with `load_state_dict` continues the same noise stream.
    Parameters must be float32 and contiguous; gradients may be float32, bfloat16 or float16.
    """

    def __init__(self, params: Iterable, lr: float, temperature: float = 1.0,
                 prior_precision: float = 0.0, preconditioned: bool = False, alpha: float = 0.99,
                 eps: float = 1e-8, seed: Optional[int] = None):
        defaults = dict(lr=lr, temperature=temperature, prior_precision=prior_precision,
                        preconditioned=preconditioned, alpha=alpha, eps=eps)
        _check_group(defaults)
        super().__init__(params, defaults)
        if seed is None:
            seed = draw_seed_offset(None)[0]
        self.seed, self.offset = resolve_seed_offset(seed, 0, None)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            square_avgs = []
            if group["preconditioned"]:
                for p in params:
                    state = self.state[p]
                    if "square_avg" not in state:
                        state["square_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    square_avgs.append(state["square_avg"])
            ops.sgld_step_list_(params, grads, [], [], square_avgs, lr=float(group["lr"]),
                                temperature=float(group["temperature"]),
                                prior_precision=float(group["prior_precision"]),
                                alpha=float(group["alpha"]), eps=float(group["eps"]),
                                seed=self.seed, offset=self.offset)
            self.offset += 1
        return loss

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["rng"] = {"seed": self.seed, "offset": self.offset}
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        rng = state_dict.pop("rng", None)
        if not isinstance(rng, dict) or not {"seed", "offset"} <= set(rng):
            raise ValueError("state_dict has no 'rng' entry with 'seed' and 'offset': it was not "
                             "saved by lift_ext.optim.SGLD")
        super().load_state_dict(state_dict)
        self.seed, self.offset = resolve_seed_offset(int(rng["seed"]), int(rng["offset"]), None)
