"""Meta-test: adapting an adapter to a new task from its support set (DESIGN.md section 5).

Prior from meta-training (optional): the marginal p(theta*) = sum_k alpha_k N(theta*; mu_k,
var_k + beta^2) of the OnlineGMM over phi samples. Objective per support example (mean units):

    L(theta) = mean support loss(theta) - (1/n) log p(theta),   n = support examples,

whose prior part has gradient (1/n) sum_k r_k(theta) (theta - mu_k)/(var_k + beta^2), added by
the fused `gmm_prior_grad_` op (r from the E-step kernel). Steps use `lift_ext.sgld_step`:
mode "map" at temperature 0 (RMSprop-preconditioned by default, i.e. RMSprop on L, its
average of g^2 started at the first gradient's square rather than at 0), mode
"sgld" at temperature T/n (pSGLD sampling of the tempered posterior; after burn-in every
`thin`-th theta is kept and predictions are averaged over them).

Initialisation: "best_component" (default) picks the component k maximising
log alpha_k - n * support loss(mu_k); "mean" starts at sum_k alpha_k mu_k; "init" starts at
`init_vector` (the PEFT initialisation), as does any run without a prior.
"""
import math
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

import torch

from lift_ext.gmm import OnlineGMM
from lift_ext.lift.flat import FlatParams
from lift_ext.lift.tasks import Task
from lift_ext.sgld import sgld_step, start_square_avg_

LossFn = Callable[[Callable[..., Any], Any], torch.Tensor]

INITS = ("best_component", "mean", "init")
MODES = ("map", "sgld")


@dataclass
class Adapted:
    """The result of `adapt`: `theta` (the MAP estimate, or the last sample), `samples` (the
    kept SGLD samples; [theta] in MAP mode), the chosen component (best_component init) and the
    support objective after every step."""

    theta: torch.Tensor
    samples: List[torch.Tensor]
    component: Optional[int] = None
    losses: List[float] = field(default_factory=list)


def _support_loss(flat: FlatParams, theta: torch.Tensor, task: Task, loss_fn: LossFn) -> float:
    with torch.no_grad():
        return float(loss_fn(flat.call(theta), task.full()))


def initial_vector(flat: FlatParams, task: Task, loss_fn: LossFn, prior: Optional[OnlineGMM],
                   init: str, init_vector: Optional[torch.Tensor]) -> "tuple[torch.Tensor, Optional[int]]":
    """The starting adapter for `init` (see the module docstring) and the chosen component."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if prior is None or init == "init":
        if init_vector is None:
            raise ValueError("init_vector (the adapter's initialisation) is needed without a prior or with init='init'")
        return init_vector.detach().clone().float(), None
    if init == "mean":
        return (prior.weights.to(prior.means.dtype) @ prior.means).clone(), None
    n = task.num_examples
    scores = [math.log(max(float(w), 1e-300)) - n * _support_loss(flat, mu, task, loss_fn)
              for w, mu in zip(prior.weights.tolist(), prior.means)]
    best = max(range(len(scores)), key=scores.__getitem__)
    return prior.means[best].clone(), best


def adapt(flat: FlatParams, task: Task, loss_fn: LossFn, *, prior: Optional[OnlineGMM] = None,
          beta: float = 0.01, init: str = "best_component", init_vector: Optional[torch.Tensor] = None,
          mode: str = "map", steps: int = 100, lr: float = 1e-3, preconditioned: bool = True,
          temperature: float = 1.0, burn_in: Optional[int] = None, thin: int = 1, seed: int = 0) -> Adapted:
    """Adapt to `task` (its `batch` gives support minibatches, `full()` the whole support set).

    lr is per example (mean-loss units; with preconditioning an RMSprop step size). Without a
    prior this is plain fine-tuning from `init_vector`, the no-meta-learning baseline.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if prior is not None and not beta > 0:
        raise ValueError(f"beta must be > 0 with a prior, got {beta!r}")
    theta, component = initial_vector(flat, task, loss_fn, prior, init, init_vector)
    theta = theta.to(flat.vector.device).contiguous()
    n = task.num_examples
    square_avg = torch.zeros_like(theta) if preconditioned else None
    burn_in = steps // 2 if burn_in is None else burn_in
    step_temperature = 0.0 if mode == "map" else temperature / n
    gen = torch.Generator().manual_seed(seed)
    samples: List[torch.Tensor] = []
    losses: List[float] = []
    for step in range(steps):
        batch = task.batch(gen)
        loss, grad = flat.loss_and_grad(theta, lambda call: loss_fn(call, batch))
        if prior is not None:
            prior.add_prior_grad_(grad, theta, beta=beta, scale=1.0 / n)
        if square_avg is not None and step == 0:
            start_square_avg_(square_avg, grad)
        sgld_step(theta, grad, lr=lr, temperature=step_temperature, square_avg=square_avg,
                  seed=seed, offset=step)
        losses.append(float(loss))
        if mode == "sgld" and step >= burn_in and (step - burn_in) % thin == 0:
            samples.append(theta.clone())
    if mode == "map" or not samples:
        samples = [theta]
    return Adapted(theta=theta, samples=samples, component=component, losses=losses)


def average_predictions(flat: FlatParams, thetas: List[torch.Tensor],
                        predict: Callable[[Callable[..., Any]], torch.Tensor]) -> torch.Tensor:
    """Mean over `thetas` of predict(model call at theta) (e.g. class probabilities), no grad."""
    if not thetas:
        raise ValueError("thetas is empty")
    with torch.no_grad():
        total = None
        for theta in thetas:
            out = predict(flat.call(theta))
            total = out.clone() if total is None else total.add_(out)
    return total / len(thetas)


__all__ = ["Adapted", "adapt", "average_predictions", "initial_vector", "INITS", "MODES"]
