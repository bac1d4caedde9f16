"""What a suite gives the harness: its tasks and its adapter."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from lift_ext.baselines import EpisodeFn
from lift_ext.lift import FlatParams, TensorTask
from lift_ext.types import LossFn

SPLITS = ("train", "val", "test")


@dataclass
class BenchTask:
    """One task. ``support(seed)``: the labelled few-shot set adaptation sees under ``seed``
    (one full batch); ``pool(batch)``: the meta-training data of a meta-train task in minibatches
    of ``batch`` examples; ``episode``: (generator) -> (support, query) minibatches
    of distinct pool rows (FO-MAML); ``query``: the held-out rows every method is scored on
    (``query.full()`` is one batch the suite's ``logits_fn`` takes); ``group``: the group
    (vision) or kind (text) it reports under."""
    name: str
    group: str
    support: Callable[[int], TensorTask]
    pool: Callable[[int], TensorTask]
    episode: EpisodeFn
    query: TensorTask


@dataclass
class BenchSuite:
    """A suite: ``flat`` (the adapter vector over the frozen backbone: LoRA + head),
    ``initial(seed)`` (the adapter every method starts from under ``seed``: LoRA A drawn as
    peft does, LoRA B = 0, head = 0; a suite whose support sets do not depend on the seed
    draws LoRA A from it, so that seeds differ),
    ``loss_fn(call, batch)`` (the mean cross-entropy, nats per example), ``logits_fn(call,
    batch)`` (no grad: (logits [n, C] over the batch's task's own C classes, labels [n]), whose
    softmax is the distribution loss_fn scores), ``head`` (bool [D], the
    head's coordinates), ``groups`` (the group names in report order), ``splits`` {split:
    [BenchTask]} and ``batched_grads`` (whether LiFT may stack minibatches of its tasks: False
    where minibatch shapes differ between tasks)."""
    name: str
    flat: FlatParams
    initial: Callable[[int], torch.Tensor]
    loss_fn: LossFn
    logits_fn: Callable[[Callable, tuple], Tuple[torch.Tensor, torch.Tensor]]
    head: torch.Tensor
    groups: Tuple[str, ...]
    splits: Dict[str, List[BenchTask]]
    batched_grads: bool = True

    def __post_init__(self):
        if set(self.splits) != set(SPLITS):
            raise ValueError(f"splits must have the keys {SPLITS}, got {sorted(self.splits)}")
        if self.head.dtype != torch.bool or self.head.shape != (self.flat.dim,):
            raise ValueError(f"head must be a bool Tensor [{self.flat.dim}]")
        unknown = {t.group for ts in self.splits.values() for t in ts} - set(self.groups)
        if unknown:
            raise ValueError(f"tasks name groups {sorted(unknown)} that groups {self.groups} lacks")

    def without_head(self, theta: torch.Tensor) -> torch.Tensor:
        """``theta`` with its head set to zero (uniform predictions): a start learned across
        tasks has a head fitted to the meta-train label sets, which a new task need not share."""
        out = theta.clone()
        out[self.head.to(out.device)] = 0.0
        return out

    def group_of(self, tasks: Sequence[BenchTask]) -> Dict[str, str]:
        """{task name: group}."""
        return {t.name: t.group for t in tasks}


def head_mask(flat: FlatParams, module_name: str = "head") -> torch.Tensor:
    """bool [D]: the coordinates of ``flat`` in parameters under a module called ``module_name``."""
    mask = torch.zeros(flat.dim, dtype=torch.bool)
    for name, offset, numel in zip(flat.names, flat.offsets, flat.numels):
        if f".{module_name}." in f".{name}.":
            mask[offset:offset + numel] = True
    if not bool(mask.any()):
        raise ValueError(f"no parameter of the adapter lies under a module called {module_name!r}")
    return mask


def headroom_splits(ranked: str, with_val: bool) -> Tuple[str, ...]:
    """The splits a run's headroom covers: the ``ranked`` split, and meta-val before it when
    ``with_val`` (the meta-val sweep's view; a default run needs the ranked split's only)."""
    return tuple(dict.fromkeys(("val", ranked))) if with_val else (ranked,)
