"""The non-Bayesian meta-learning baselines, on a flat adapter vector (lift_ext.lift.FlatParams):
multitask training, Reptile and first-order MAML. Each turns meta-train tasks into one
starting adapter phi [D] that a new task is then fine-tuned from (lift_ext.lift.adapt), so a
suite compares LiFT's prior against them at the same adaptation.

Every step is ``lift_ext.sgld_step`` at temperature 0 with a running square average, i.e.
RMSprop (alpha 0.99): theta <- theta - lr * g / (sqrt(v) + eps), g the gradient of
``loss_fn(call, batch)``, the MEAN loss of one minibatch (e.g. nats per example); lr is the
change of each weight per step. A task is anything with ``batch(generator)`` (a
lift_ext.lift.TensorTask); tasks are drawn uniformly with ``int(torch.randint(n, (1,)))`` from
one torch.Generator seeded with ``seed``, so a run is a pure function of its arguments.

Budgets are counted in gradients so the three compare at equal cost: multitask takes ``steps``
gradients, Reptile steps // inner_steps outer iterations of inner_steps gradients, FO-MAML
steps // (inner_steps + 1) episodes of inner_steps + 1 gradients.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from lift_ext.lift.flat import FlatParams
from lift_ext.sgld import sgld_step
from lift_ext.types import LossFn

# An episode sampler: (generator) -> (support minibatch, query minibatch) of one meta-train task.
EpisodeFn = Callable[[torch.Generator], Tuple[Any, Any]]


def draw_index(count: int, generator: torch.Generator) -> int:
    """A uniformly random index in [0, count)."""
    return int(torch.randint(count, (1,), generator=generator))


def rmsprop_step(flat: FlatParams, theta: torch.Tensor, square_avg: torch.Tensor, loss_fn: LossFn, batch,
                 lr: float) -> None:
    """One RMSprop step of theta (in place) on the mean loss of ``batch``."""
    _, grad = flat.loss_and_grad(theta, lambda call: loss_fn(call, batch))
    sgld_step(theta, grad, lr=lr, temperature=0.0, square_avg=square_avg)


def train_multitask(flat: FlatParams, tasks: Sequence, loss_fn: LossFn, init: torch.Tensor, *, steps: int,
                    lr: float, seed: int, progress: bool = False, desc: str = "multitask") -> torch.Tensor:
    """One adapter for all ``tasks`` (one task: plain fine-tuning on it): ``steps`` RMSprop
    steps from ``init``, each on a minibatch of a uniformly drawn task."""
    gen = torch.Generator().manual_seed(seed)
    theta, square_avg = init.clone(), torch.zeros_like(init)
    for _ in tqdm(range(steps), desc=desc, disable=not progress, mininterval=1.0):
        rmsprop_step(flat, theta, square_avg, loss_fn, tasks[draw_index(len(tasks), gen)].batch(gen), lr)
    return theta


def train_reptile(flat: FlatParams, tasks: Sequence, loss_fn: LossFn, init: torch.Tensor, *, steps: int,
                  inner_steps: int, lr: float, outer_lr: float, seed: int, progress: bool = False) -> torch.Tensor:
    """Reptile: per outer iteration, ``inner_steps`` RMSprop steps on one drawn task from phi,
    then phi <- phi + outer_lr * (theta - phi); steps // inner_steps iterations. The inner
    loops share one running square average (a fresh one makes RMSprop's first steps about 10x
    too large)."""
    gen = torch.Generator().manual_seed(seed)
    phi = init.clone()
    square_avg = torch.zeros_like(phi)
    for _ in tqdm(range(max(1, steps // inner_steps)), desc="reptile", disable=not progress, mininterval=1.0):
        task = tasks[draw_index(len(tasks), gen)]
        theta = phi.clone()
        for _ in range(inner_steps):
            rmsprop_step(flat, theta, square_avg, loss_fn, task.batch(gen), lr)
        phi.add_(theta - phi, alpha=outer_lr)
    return phi


def train_fomaml(flat: FlatParams, episode: EpisodeFn, loss_fn: LossFn, init: torch.Tensor, *, steps: int,
                 inner_steps: int, lr: float, seed: int, progress: bool = False) -> torch.Tensor:
    """First-order MAML: per episode ``episode(generator)`` = (support, query) minibatches of
    one meta-train task, ``inner_steps`` RMSprop steps on the support from phi, then one outer
    RMSprop step on phi with the query-loss gradient at the adapted vector (the first-order
    approximation drops the Jacobian of the inner loop); steps // (inner_steps + 1) episodes."""
    gen = torch.Generator().manual_seed(seed)
    phi = init.clone()
    outer_avg, inner_avg = torch.zeros_like(phi), torch.zeros_like(phi)
    for _ in tqdm(range(max(1, steps // (inner_steps + 1))), desc="fomaml", disable=not progress,
                  mininterval=1.0):
        support, query = episode(gen)
        theta = phi.clone()
        for _ in range(inner_steps):
            rmsprop_step(flat, theta, inner_avg, loss_fn, support, lr)
        _, grad = flat.loss_and_grad(theta, lambda call, batch=query: loss_fn(call, batch))
        sgld_step(phi, grad, lr=lr, temperature=0.0, square_avg=outer_avg)
    return phi


__all__ = ["EpisodeFn", "draw_index", "rmsprop_step", "train_multitask", "train_reptile", "train_fomaml"]
