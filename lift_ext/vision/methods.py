"""The vision suite's methods on the flat adapter vector (LoRA + head, lift_ext.vision.backbone):
training loops, LiFT's meta-test prior, adaptation to a support set and query accuracy.

Steps are ``lift_ext.sgld_step`` at temperature 0 with a running square average, i.e. RMSprop
(alpha 0.99): theta <- theta - lr * g / (sqrt(v) + eps), g the gradient of the mean
cross-entropy (nats per image) of one minibatch; lr is the change of each weight per step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from lift_ext.lift import FlatParams, LangevinConfig, LiFT, MapConfig, MixtureHierarchy, MixturePrior, TensorTask, adapt
from lift_ext.sgld import sgld_step
from lift_ext.vision import tasks as vt
from lift_ext.vision.backbone import loss_fn, masked_logits, to_input


def labelled(task: vt.VisionTask, rows: torch.Tensor, batch_size: int) -> TensorTask:
    """The images ``rows`` of ``task`` as a TensorTask of (inputs, labels, classes) with
    minibatches of ``batch_size`` images (all of them when there are fewer)."""
    classes = torch.full((len(rows),), task.spec.num_classes, dtype=torch.long)
    return TensorTask(to_input(task.images[rows]), task.labels[rows], classes, batch_size=batch_size)


def support_task(task: vt.VisionTask, shots: int, seed: int) -> TensorTask:
    """``shots`` images per class of the support pool (tasks.few_shot), one full batch."""
    rows = vt.few_shot(task, shots, seed)
    return labelled(task, rows, batch_size=len(rows))


def pool_task(task: vt.VisionTask, batch_size: int) -> TensorTask:
    """The whole support pool (SUPPORT_POOL images) with minibatches of ``batch_size``."""
    return labelled(task, torch.arange(vt.SUPPORT_POOL), batch_size)


def query_accuracy(flat: FlatParams, theta: torch.Tensor, task: vt.VisionTask) -> float:
    """Accuracy (%) at adapter ``theta`` on the task's held-out query images, the argmax over
    the task's own classes."""
    images, labels = task.query
    classes = torch.full((len(labels),), task.spec.num_classes, dtype=torch.long)
    with torch.no_grad():
        logits = masked_logits(flat.call(theta)(to_input(images)), classes)
    return 100.0 * float((logits.argmax(-1) == labels).float().mean())


def prototype_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                       test_labels: torch.Tensor) -> float:
    """Accuracy (%) of the nearest class mean by cosine similarity on frozen features (no
    training: the unadapted backbone's reference)."""
    classes = int(train_labels.max()) + 1
    means = torch.stack([train_features[train_labels == c].mean(0) for c in range(classes)])
    sims = torch.nn.functional.normalize(test_features, dim=-1) @ torch.nn.functional.normalize(means, dim=-1).T
    return 100.0 * float((sims.argmax(-1) == test_labels).float().mean())


def rmsprop(flat: FlatParams, tasks: Sequence[TensorTask], init: torch.Tensor, *, steps: int, lr: float,
            seed: int) -> torch.Tensor:
    """``steps`` RMSprop steps from ``init``, each on a minibatch of a uniformly drawn task of
    ``tasks`` (one task: plain fine-tuning; all meta-train pools: multitask)."""
    gen = torch.Generator().manual_seed(seed)
    theta, square_avg = init.clone(), torch.zeros_like(init)
    for _ in range(steps):
        batch = tasks[int(torch.randint(len(tasks), (1,), generator=gen))].batch(gen)
        _, grad = flat.loss_and_grad(theta, lambda call: loss_fn(call, batch))
        sgld_step(theta, grad, lr=lr, temperature=0.0, square_avg=square_avg)
    return theta


@dataclass(frozen=True)
class LiftSettings:
    """A LiFT chain: ``steps`` steps of ``tasks_per_step`` meta-train tasks with ``batch`` images
    each; pSGLD ``lr`` (per weight and step) at ``temperature``; MixtureHierarchy ``sigma``,
    ``beta``, the first ``warmup`` fraction of the steps with one component, non-centred
    ``shift_lr``."""
    steps: int
    tasks_per_step: int
    batch: int
    lr: float
    temperature: float
    sigma: float
    beta: float
    warmup: float
    shift_lr: float


def lift_prior(flat: FlatParams, pools: Sequence[TensorTask], components: int, s: LiftSettings,
               seed: int) -> MixturePrior:
    """The meta-test prior of a LiFT chain with ``components`` shared adapters over ``pools``
    (TensorTasks of the meta-train support pools, minibatches of ``s.batch``)."""
    lift = LiFT(flat, list(pools), loss_fn,
                langevin=LangevinConfig(lr=s.lr, temperature=s.temperature, preconditioned=True,
                                        tasks_per_step=s.tasks_per_step),
                hierarchy=MixtureHierarchy(components=components, sigma=s.sigma, beta=s.beta,
                                           warmup_steps=int(s.warmup * s.steps), shift_lr=s.shift_lr),
                seed=seed)
    return lift.run(s.steps, progress=False).meta_test_prior()


def adapted(flat: FlatParams, support: TensorTask, config: MapConfig, seed: int, *,
            start: Optional[torch.Tensor] = None, prior: Optional[MixturePrior] = None):
    """lift_ext.lift.adapt to the MAP on ``support``: under ``prior`` from its best component,
    else from ``start`` without a prior. Returns the Adapted result."""
    if prior is not None:
        return adapt(flat, support, loss_fn, prior=prior, config=config, start="best_component", seed=seed)
    return adapt(flat, support, loss_fn, config=config, start=start, seed=seed)
