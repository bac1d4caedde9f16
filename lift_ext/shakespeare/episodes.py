"""Tasks and episodes over character windows (int64 [n, seq_len + 1]).

Meta-train roles are seen through their ``pool`` (all windows, stride seq_len / 2); test and
val roles through their few-shot ``support`` windows. An episode (Reptile / FO-MAML) draws
disjoint support and query minibatches from one meta-train role's pool.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

from lift_ext.lift import TensorTask


def pool_tasks(pools: Sequence[torch.Tensor], batch_size: int, stride: int) -> list:
    """One ``TensorTask`` per meta-train role pool. The loss is a mean over predicted
    characters, so the likelihood counts characters: windows overlapping with ``stride``
    cover about windows * stride distinct ones (num_examples)."""
    return [TensorTask(p, batch_size=batch_size, examples_per_row=stride) for p in pools]


def support_task(support: torch.Tensor, batch_size: int) -> TensorTask:
    """A test / val role's disjoint support windows as a task (full batch when n <=
    batch_size); num_examples = predicted characters (windows * seq_len)."""
    return TensorTask(support, batch_size=batch_size, examples_per_row=support.shape[1] - 1)


def sample_role(num_roles: int, generator: torch.Generator) -> int:
    """A uniformly random role index."""
    return int(torch.randint(num_roles, (1,), generator=generator))


def sample_episode(pool: torch.Tensor, n_support: int, n_query: int,
                   generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """(support [n_support, L], query [n_query, L]): distinct windows of ``pool`` drawn without
    replacement. The pool has stride L / 2, so a query window may overlap a support window's
    text by half; with fewer than n_support + n_query windows the two halves share none and
    are split in proportion."""
    n = pool.shape[0]
    perm = torch.randperm(n, generator=generator)
    if n < n_support + n_query:
        cut = max(1, min(n - 1, round(n * n_support / (n_support + n_query))))
        return pool[perm[:cut]], pool[perm[cut:]]
    return pool[perm[:n_support]], pool[perm[n_support:n_support + n_query]]
