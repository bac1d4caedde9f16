"""Tasks and episodes over (inputs, targets) pairs of int64 [n, seq_len] (lift_ext.shakespeare.suite).

Meta-train roles are seen through their ``pool`` (all windows, stride seq_len / 2); test and
val roles through their few-shot ``support`` windows. An episode (FO-MAML) draws disjoint
support and query minibatches from one meta-train role's pool.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch

from lift_ext.lift import TensorTask


Pair = Tuple[torch.Tensor, torch.Tensor]
Windows = Union[Pair, torch.Tensor]


def as_pair(windows: Windows) -> Pair:
    """An (inputs, targets) pair as it is, or plain-text windows [n, L + 1] as (w[:, :-1],
    w[:, 1:]) (every target the next character)."""
    if isinstance(windows, torch.Tensor):
        return windows[:, :-1], windows[:, 1:]
    return windows


def pool_tasks(pools: Sequence[Windows], batch_size: int, stride: int) -> list:
    """One ``TensorTask`` per meta-train role pool. The loss is a mean over predicted
    characters, so the likelihood counts characters: windows overlapping with ``stride``
    cover about windows * stride distinct ones (num_examples)."""
    return [TensorTask(*as_pair(p), batch_size=batch_size, examples_per_row=stride) for p in pools]


def support_task(support: Windows, batch_size: int) -> TensorTask:
    """A test / val role's disjoint support windows as a task (full batch when n <=
    batch_size); num_examples = predicted characters (windows * seq_len)."""
    inputs, targets = as_pair(support)
    return TensorTask(inputs, targets, batch_size=batch_size, examples_per_row=targets.shape[1])


def sample_episode(pool: Pair, n_support: int, n_query: int,
                   generator: torch.Generator) -> Tuple[Pair, Pair]:
    """(support, query): (inputs, targets) pairs of n_support and n_query distinct windows of
    ``pool`` drawn without replacement. The pool has stride L / 2, so a query window may
    overlap a support window's text by half; with fewer than n_support + n_query windows the
    two halves share none and are split in proportion."""
    n = pool[0].shape[0]
    perm = torch.randperm(n, generator=generator)
    if n < n_support + n_query:
        cut = max(1, min(n - 1, round(n * n_support / (n_support + n_query))))
        rows = perm[:cut], perm[cut:]
    else:
        rows = perm[:n_support], perm[n_support:n_support + n_query]
    return tuple(tuple(t[r] for t in pool) for r in rows)
