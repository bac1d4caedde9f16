"""pSGLD's preconditioner for elements with no gradient history (docs/design.md section 13).

The kernel's rule (`lift_ext.sgld_step`): v <- g^2 while v == 0, else alpha v + (1 - alpha) g^2,
and G = 1 / (sqrt(v) + eps'). An element whose gradient has been exactly 0 at every step so far
(LoRA A while B = 0, a weight the loss does not reach) keeps v = 0, so G = 1 / eps': 1e8 at the
default eps without a prior, and that element's noise has standard deviation sqrt(2 lr T / eps).

`lift_ext.optim.SGLD` instead preconditions such an element as its parameter group's typical
element. Before each step it computes

    r = mean over the group's elements WITH history of their square average after this step

(the kernel's update, so r is in units of g^2) and gives every element still without history
v = r / alpha: the kernel's update then leaves exactly v = r on it (its gradient being 0), so
G = 1 / (sqrt(r) + eps'). An element gains history with its first nonzero gradient: its v is
reset to 0 first, and the kernel starts it at g^2 as for a fresh average. Which elements have
history is kept per parameter as a bool mask, dropped once every element has one.

Where no element of the group has history yet (every gradient 0 so far), there is no r and the
kernel's own rule applies. With alpha = 0 there is no average to hold r in (v is g^2 every
step), so the rule does not apply either.
"""
from typing import Dict, List

import torch

HISTORY = "has_grad"  # the state key of a parameter's mask: True where a nonzero gradient was seen


def step_square_avg(square_avg: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
    """The kernel's update of the square average, out of place, float64:
    g^2 where v == 0, else alpha v + (1 - alpha) g^2."""
    v, g2 = square_avg.double(), grad.double().square()
    return torch.where(v == 0, g2, alpha * v + (1.0 - alpha) * g2)


def fill_unseen_(params: List[torch.Tensor], square_avgs: List[torch.Tensor],
                 states: List[Dict], alpha: float) -> None:
    """Apply the module's rule to one group before its step. `params` have their `.grad`,
    `square_avgs` are theirs, `states` their optimizer state dicts, which hold the HISTORY
    mask of a parameter with elements still without history (without a mask, the elements
    with v != 0 have history: all of them, or none for a fresh average of zeros). Writes
    square averages and masks in place, nothing else."""
    if alpha == 0.0:
        return
    histories = []  # (history before this step, history after it) per parameter
    total = torch.zeros((), dtype=torch.float64, device=params[0].device)
    count = 0
    for p, v, state in zip(params, square_avgs, states):
        had = state.get(HISTORY)
        if had is None:
            had = v != 0
        seen = had | (p.grad != 0)
        total += torch.where(seen, step_square_avg(v, p.grad, alpha), 0.0).sum()
        count += int(seen.sum())
        histories.append((had, seen))
    if count == 0:
        return  # no element of the group has history: the kernel's rule
    reference = float(total) / count
    for v, state, (had, seen) in zip(square_avgs, states, histories):
        v.masked_fill_(seen & ~had, 0.0)  # first nonzero gradient: the kernel starts it at g^2
        v.masked_fill_(~seen, reference / alpha)  # the kernel's update leaves `reference` here
        if bool(seen.all()):
            state.pop(HISTORY, None)
        else:
            state[HISTORY] = seen
