"""Meta-training and adaptation on the text suite, all on the one flat adapter vector
(lift_ext.text.backbone: LoRA on the top layer plus the head).

A method turns the meta-train tasks into a start or a prior, then ``lift_ext.lift.adapt``
fits each evaluated task's 32 support sentences (MapConfig: RMSprop-preconditioned MAP steps
on the whole support set, the best iterate by the support objective kept) and the adapted
vector is scored on the task's query sentences:

    independent   no meta-training: adapt from the initial adapter (LoRA B = 0, head = 0)
    multitask     one adapter trained on all meta-train tasks (RMSprop on minibatches of a
                  uniformly drawn task), then adapted
    oracle        one multitask adapter per KIND (trained on that kind's meta-train tasks),
                  the evaluated task's own kind adapted: a ceiling, it is told the kind
    lift          LiFT with MixtureHierarchy, K = the number of kinds, MAP under its prior
    lift_k1       the same chain with K = 1
    prototype     not adapted: nearest class centroid (cosine) of the frozen backbone's
                  mean-pooled top-layer states over the support set (the unadapted backbone)

RMSprop steps are ``lift_ext.sgld_step`` at temperature 0 with a running square average
(alpha 0.99): theta <- theta - lr * g / (sqrt(v) + eps), g the gradient of the mean
cross-entropy (nats per sentence) of one minibatch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from lift_ext.lift import (ChainStart, FlatParams, LangevinConfig, LiFT, MapConfig, MixtureHierarchy, MixturePrior,
                           TensorTask, adapt)
from lift_ext.sgld import sgld_step
from lift_ext.text.backbone import accuracy, classification_loss

ADAPTED = ("independent", "multitask", "oracle", "lift", "lift_k1")


@dataclass
class SuiteTask:
    """One task as the methods see it: ``name``, ``kind`` index, ``support`` (32 rows, one
    minibatch), ``query`` (the scored rows) and ``pool`` (support and query together, the
    meta-training data of a meta-train task)."""
    name: str
    kind: int
    support: TensorTask
    query: TensorTask
    pool: TensorTask


@dataclass(frozen=True)
class LiftSettings:
    """A LiFT chain: ``steps`` steps of ``tasks_per_step`` tasks (each on a minibatch of the
    pool's batch size), pSGLD step ``lr`` (an RMSprop step size), ``temperature``, prior scales
    ``sigma`` / ``beta`` (adapter-weight units), ``warmup`` (fraction of steps with one prior)
    and the non-centred ``shift_lr``."""
    steps: int = 300
    tasks_per_step: int = 4
    lr: float = 3e-3
    temperature: float = 0.01
    sigma: float = 0.1
    beta: float = 0.05
    warmup: float = 0.25
    shift_lr: float = 3e-3


def train_multitask(flat: FlatParams, tasks: Sequence[SuiteTask], init: torch.Tensor, *, steps: int, lr: float,
                    seed: int) -> torch.Tensor:
    """One adapter for all ``tasks``: ``steps`` RMSprop steps, each on a minibatch of one
    uniformly drawn task's pool."""
    gen = torch.Generator().manual_seed(seed)
    theta, square_avg = init.clone(), torch.zeros_like(init)
    for _ in range(steps):
        batch = tasks[int(torch.randint(len(tasks), (1,), generator=gen))].pool.batch(gen)
        _, grad = flat.loss_and_grad(theta, lambda call: classification_loss(call, batch))
        sgld_step(theta, grad, lr=lr, temperature=0.0, square_avg=square_avg)
    return theta


def train_lift(flat: FlatParams, tasks: Sequence[SuiteTask], init: torch.Tensor, *, components: int,
               settings: LiftSettings, seed: int) -> MixturePrior:
    """The meta-test prior of a LiFT chain with ``components`` shared adapters over ``tasks``'
    pools, started at ``init`` (thetas and the prior mean)."""
    lift = LiFT(flat, [t.pool for t in tasks], classification_loss,
                langevin=LangevinConfig(lr=settings.lr, temperature=settings.temperature, preconditioned=True,
                                        tasks_per_step=settings.tasks_per_step),
                hierarchy=MixtureHierarchy(components=components, sigma=settings.sigma, beta=settings.beta,
                                           warmup_steps=int(settings.warmup * settings.steps),
                                           shift_lr=settings.shift_lr),
                start=ChainStart(thetas=init, prior_mean=init), seed=seed)
    lift.batched_grads = False  # the loss trims padding per minibatch: shapes differ between tasks
    lift.run(settings.steps, progress=False)
    return lift.meta_test_prior()


def adapt_and_score(flat: FlatParams, task: SuiteTask, config: MapConfig, *, seed: int,
                    start: Optional[torch.Tensor] = None, prior: Optional[MixturePrior] = None) -> float:
    """Query accuracy (a fraction) after adapting on the support set from ``start`` (no prior)
    or under ``prior`` from its best component."""
    if prior is None:
        out = adapt(flat, task.support, classification_loss, config=config, start=start, seed=seed)
    else:
        out = adapt(flat, task.support, classification_loss, prior=prior, config=config, seed=seed)
    return accuracy(flat, out.theta, task.query)


def prototype_accuracy(flat: FlatParams, task: SuiteTask) -> float:
    """Query accuracy of the nearest class centroid (cosine) of the frozen backbone's mean-pooled
    top-layer states over the support set (LoRA switched off)."""
    model = flat.module

    def pooled(rows: TensorTask) -> torch.Tensor:
        states, mask, _, _ = rows.full()
        width = int(mask.sum(1).max())
        with torch.no_grad(), model.disable_adapter():
            out = model.base_model.model.pool(states[:, :width], mask[:, :width])
        return torch.nn.functional.normalize(out, dim=1)

    labels = task.support.full()[2]
    sup = pooled(task.support)
    centres = torch.nn.functional.normalize(
        torch.stack([sup[labels == c].mean(0) for c in range(int(labels.max()) + 1)]), dim=1)
    return float(((pooled(task.query) @ centres.T).argmax(1) == task.query.full()[2]).float().mean())


def meta_train(method: str, flat: FlatParams, train: Sequence[SuiteTask], init: torch.Tensor, *, kinds: int,
               meta_steps: int, meta_lr: float, lift: LiftSettings, seed: int) -> Dict[str, object]:
    """What ``method`` adapts from: {"start": [D]}, {"starts": {kind: [D]}} (oracle) or
    {"prior": MixturePrior}."""
    if method == "independent":
        return {"start": init}
    if method == "multitask":
        return {"start": train_multitask(flat, train, init, steps=meta_steps, lr=meta_lr, seed=seed)}
    if method == "oracle":
        return {"starts": {k: train_multitask(flat, [t for t in train if t.kind == k], init,
                                              steps=max(1, meta_steps // kinds), lr=meta_lr, seed=seed * 1_000 + k)
                           for k in range(kinds)}}
    if method in ("lift", "lift_k1"):
        return {"prior": train_lift(flat, train, init, components=kinds if method == "lift" else 1,
                                    settings=lift, seed=seed)}
    raise ValueError(f"method must be one of {ADAPTED}, got {method!r}")


def evaluate(flat: FlatParams, state: Dict[str, object], tasks: Sequence[SuiteTask], config: MapConfig,
             seed: int) -> List[float]:
    """Query accuracy of each task after adapting from a meta_train state."""
    out = []
    for task in tasks:
        if "prior" in state:
            out.append(adapt_and_score(flat, task, config, seed=seed, prior=state["prior"]))
        else:
            start = state["starts"][task.kind] if "starts" in state else state["start"]
            out.append(adapt_and_score(flat, task, config, seed=seed, start=start))
    return out


__all__ = ["ADAPTED", "SuiteTask", "LiftSettings", "train_multitask", "train_lift", "adapt_and_score",
           "prototype_accuracy", "meta_train", "evaluate"]
