"""The text suite's tasks as the harness sees them (lift_ext.harness), its per-kind oracle and
the unadapted backbone's reference, all on the one flat adapter vector
(lift_ext.text.backbone: LoRA on the top layer plus the head).

Every ranked method is the harness's (lift_ext.harness.methods); this suite adds two headroom
rows:

    oracle        one multitask adapter per KIND (lift_ext.baselines.train_multitask on that
                  kind's meta-train tasks), the evaluated task's own kind adapted: a ceiling,
                  it is told the kind
    prototype     not adapted: nearest class centroid (cosine) of the frozen backbone's
                  mean-pooled top-layer states over the support set (the unadapted backbone)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence

import torch

from lift_ext import baselines
from lift_ext.harness import BenchTask
from lift_ext.lift import FlatParams, TensorTask
from lift_ext.text.backbone import classification_loss
from lift_ext.text.tasks import KINDS


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


def pool_in_batches(task: SuiteTask, batch: int) -> TensorTask:
    """The task's pool with minibatches of ``batch`` sentences."""
    return TensorTask(*task.pool.full(), batch_size=batch)


def episode(task: SuiteTask, batch: int, gen: torch.Generator):
    """FO-MAML's episode: (support, query) minibatches of distinct pool sentences, ``batch``
    each (half the pool each when it holds fewer than 2 * batch)."""
    rows = task.pool.full()
    n = len(rows[0])
    size = min(batch, n // 2)
    perm = torch.randperm(n, generator=gen)
    return tuple(r[perm[:size]] for r in rows), tuple(r[perm[size:2 * size]] for r in rows)


def bench_task(task: SuiteTask, episode_batch: int) -> BenchTask:
    """``task`` as the harness sees it: the same 32 support sentences under every seed (the
    seed draws the adaptation's minibatch order only), scored on its query rows."""
    return BenchTask(name=task.name, group=KINDS[task.kind], support=lambda seed: task.support,
                     pool=lambda batch: pool_in_batches(task, batch),
                     episode=lambda gen: episode(task, episode_batch, gen),
                     query=task.query)


def oracle_starts(flat: FlatParams, train: Sequence[SuiteTask], init: torch.Tensor, *, steps: int, batch: int,
                  lr: float, seed: int) -> Dict[int, torch.Tensor]:
    """{kind: a multitask adapter of that kind's meta-train tasks}, steps // kinds steps each
    (one method's budget over all kinds)."""
    kinds = sorted({t.kind for t in train})
    return {k: baselines.train_multitask(flat, [pool_in_batches(t, batch) for t in train if t.kind == k],
                                         classification_loss, init, steps=max(1, steps // len(kinds)), lr=lr,
                                         seed=seed * 1_000 + k) for k in kinds}


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


__all__ = ["SuiteTask", "bench_task", "episode", "oracle_starts", "pool_in_batches", "prototype_accuracy"]
