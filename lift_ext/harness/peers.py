"""MBC and LoRA-Retriever as published, on a BenchSuite (the math and budgets: lift_ext.peers).

* library: one adapter per meta-train task trained alone from the suite's initial adapter,
  ``lift_ext.peers.library_steps`` RMSprop steps of ``lift.batch`` examples at ``meta_lr``: the
  steps and examples LiFT's chain gives each task's adapter.
* keys (retrieval): a task's key is the mean, over its first ``KEY_ROWS`` pool rows, of the
  features the adapter's head reads (the head layer's input) at the initial adapter, where LoRA
  B = 0: the frozen backbone's pooled features (vision: the ViT's pre-logits; text: MiniLM's
  mean-pooled sentence embedding). A meta-test task is embedded the same way from its support set.
* mbc: the library's directions clustered by k-means into ``mbc_clusters`` clusters, one adapter
  per cluster on the union of its tasks' pools (multitask's budget split by cluster size);
  at meta-test the cluster adapter of lowest mean support loss is the start.
* retrieval: the ``retrieval_k`` library adapters whose keys are most cosine-similar to the
  task's support embedding, merged by a similarity-weighted average, are the start.

Both keep their adapters' heads (like LiFT's components, unlike the learned single starts): a
cluster or a retrieved task with the new task's label semantics carries a head that fits it,
and the support loss that routes MBC reads the head. C and k are chosen on meta-val (the
suites' settings say where).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from lift_ext import peers
from lift_ext.harness.suite import BenchSuite

KEY_ROWS = 64  # pool rows a meta-train task's retrieval key averages over


@dataclass
class PeerStarts:
    """What MBC or retrieval adapts from: ``adapters`` [M, D] (MBC's cluster adapters or the
    library) and, for retrieval, the library's ``keys`` [M, H] and ``k``."""
    method: str
    adapters: torch.Tensor
    keys: Optional[torch.Tensor] = None
    k: int = 1

    def start(self, suite: BenchSuite, initial: torch.Tensor, support) -> torch.Tensor:
        """The start [D] for a task with ``support`` (module docstring)."""
        if self.method == "mbc":
            return self.adapters[peers.best_by_support_loss(suite.flat, self.adapters, suite.loss_fn,
                                                            support.full())].clone()
        indices, weights = peers.retrieve(embedding(suite, initial, support.full()), self.keys, self.k)
        return peers.merge(self.adapters, indices, weights)


def _head_layer(suite: BenchSuite) -> torch.nn.Module:
    """The module owning the head's weight (the layer whose input is the pooled features)."""
    names = [n for n, o, m in zip(suite.flat.names, suite.flat.offsets, suite.flat.numels)
             if bool(suite.head[o:o + m].all()) and n.endswith("weight")]
    if len(names) != 1:
        raise ValueError(f"the head must be one layer with one weight, found {names}")
    return suite.flat.module.get_submodule(names[0].rsplit(".", 1)[0])


@torch.no_grad()
def embedding(suite: BenchSuite, theta: torch.Tensor, batch) -> torch.Tensor:
    """The mean over the rows of ``batch`` of the head layer's input at adapter ``theta``: float32 [H]."""
    seen = []
    hook = _head_layer(suite).register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        suite.loss_fn(suite.flat.call(theta), batch)
    finally:
        hook.remove()
    return seen[0].float().mean(0)


def _first_rows(task, rows: int):
    return tuple(t[:rows] for t in task.pool(rows).full())


def train(method: str, suite: BenchSuite, s, seed: int, library: torch.Tensor) -> PeerStarts:
    """MBC's cluster adapters or retrieval's library and keys under ``seed`` for MethodSettings
    ``s``, from the ``library`` [N, D] of train_library."""
    train_tasks, init = suite.splits["train"], suite.initial(seed)
    if method == "retrieval":
        keys = torch.stack([embedding(suite, init, _first_rows(t, KEY_ROWS)) for t in train_tasks])
        return PeerStarts("retrieval", library, keys, s.retrieval_k)
    labels = peers.cluster_library(library, s.mbc_clusters, seed)
    pools = [t.pool(s.lift.batch * s.lift.tasks_per_step) for t in train_tasks]
    return PeerStarts("mbc", peers.train_cluster_adapters(suite.flat, pools, labels, suite.loss_fn, init,
                                                          meta_steps=s.lift.steps, lr=s.meta_lr, seed=seed))


def train_library(suite: BenchSuite, s, seed: int) -> torch.Tensor:
    """The library [N, D] of the meta-train tasks under ``seed`` (module docstring)."""
    train_tasks = suite.splits["train"]
    steps = peers.library_steps(s.lift.steps, s.lift.batch * s.lift.tasks_per_step, s.lift.batch, len(train_tasks))
    return peers.train_library(suite.flat, [t.pool(s.lift.batch) for t in train_tasks], suite.loss_fn,
                               suite.initial(seed), steps=steps, lr=s.meta_lr, seed=seed)


__all__ = ["KEY_ROWS", "PeerStarts", "embedding", "train", "train_library"]
