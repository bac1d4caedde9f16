"""The library-based peers of LiFT as published, on flat adapter vectors (float32 [D]); the
math every suite shares (the Shakespeare suites: lift_ext.shakespeare.peers and .library; the
vision and text suites: lift_ext.harness.peers).

Both start from the same per-task LIBRARY: one adapter per meta-train task, each trained
independently of the others from the suite's initial adapter (``train_library``).

    mbc        Model-Based Clustering (Ostapenko et al. 2024): the library's vectors,
               L2-normalised, clustered by k-means into C clusters (``cluster_library``); one
               adapter per cluster trained on the union of its tasks' pools
               (``train_cluster_adapters``). At meta-test the cluster adapter with the lowest
               support loss is the start.
    retrieval  LoRA-Retriever (Zhao et al. 2024): a task is keyed by the backbone's pooled
               features of its inputs; a new task's support inputs are embedded the same way,
               the k library adapters of highest cosine similarity are retrieved and merged by a
               similarity-weighted average of their flat vectors (``retrieve``, ``merge``), and
               that is the start.

Either then adapts like every method. Budgets, in gradient evaluations on examples:

* library: the shared meta-training budget, ``meta_steps`` minibatches of ``batch_size``
  examples, shared equally by the N tasks in steps of b examples (LiFT's per-task minibatch),
  i.e. s = max(1, round(meta_steps * batch_size / (N * b))) RMSprop steps per task
  (``library_steps``): exactly the steps and examples LiFT's chain gives each task's vector
  (meta_steps * tasks_per_step / N visits of b examples, batch_size = tasks_per_step * b).
* cluster adapters: again the shared budget, each cluster's share in proportion to its tasks:
  max(1, round(meta_steps * n_c / N)) steps of ``batch_size`` examples (``cluster_steps``).

So MBC spends two budgets per C (the library, shared with retrieval, and its cluster
adapters) and retrieval one.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from tqdm.auto import tqdm

from lift_ext import baselines
from lift_ext.lift import FlatParams
from lift_ext.types import LossFn


def library_steps(meta_steps: int, batch_size: int, examples_per_step: int, n_tasks: int) -> int:
    """RMSprop steps of one library adapter: the shared budget of ``meta_steps`` minibatches of
    ``batch_size`` examples split equally over ``n_tasks`` tasks in steps of ``examples_per_step``."""
    for name, value in (("meta_steps", meta_steps), ("batch_size", batch_size),
                        ("examples_per_step", examples_per_step), ("n_tasks", n_tasks)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return max(1, round(meta_steps * batch_size / (n_tasks * examples_per_step)))


def kmeans(x: torch.Tensor, k: int, seed: int, iters: int = 50) -> torch.Tensor:
    """Cluster labels [N] int64 of the rows of x [N, D]: Lloyd's k-means with k-means++ seeding
    (private generator seeded with ``seed``), min(k, N) clusters minimising the summed squared
    Euclidean distance; labels are 0..C-1 in order of first appearance, and an emptied cluster
    keeps its last centre."""
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a non-empty [N, D] tensor, got shape {tuple(x.shape)}")
    gen = torch.Generator().manual_seed(seed)
    k = min(k, x.shape[0])
    centres = x[int(torch.randint(x.shape[0], (1,), generator=gen))][None].clone()
    while centres.shape[0] < k:
        d2 = torch.cdist(x, centres).pow(2).min(1).values
        pick = int(torch.multinomial(d2 / d2.sum(), 1, generator=gen)) if float(d2.sum()) > 0 \
            else int(torch.randint(x.shape[0], (1,), generator=gen))
        centres = torch.cat([centres, x[pick][None]])
    assign = torch.cdist(x, centres).argmin(1)
    for _ in range(iters):
        centres = torch.stack([x[assign == j].mean(0) if bool((assign == j).any()) else centres[j]
                               for j in range(k)])
        new = torch.cdist(x, centres).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
    first = {}
    for label in assign.tolist():
        first.setdefault(label, len(first))
    return torch.tensor([first[label] for label in assign.tolist()], dtype=torch.int64)


def cluster_library(library: torch.Tensor, clusters: int, seed: int) -> torch.Tensor:
    """MBC's clustering: k-means labels [N] of the library's rows scaled to unit L2 norm (their
    directions, the cosine geometry of Ostapenko et al.); a zero row stays zero."""
    return kmeans(torch.nn.functional.normalize(library.double(), dim=1), clusters, seed)


def cluster_purity(labels: torch.Tensor, families: Sequence[int]) -> float:
    """The fraction of tasks whose cluster's most common family (over ``labels`` [N]) is their own."""
    table: dict = {}
    for label, family in zip(labels.tolist(), families):
        table.setdefault(label, {}).setdefault(family, 0)
        table[label][family] += 1
    return sum(max(counts.values()) for counts in table.values()) / len(families)


def cluster_steps(meta_steps: int, members: int, n_tasks: int) -> int:
    """RMSprop steps of the adapter of a cluster of ``members`` of ``n_tasks`` tasks: its share
    of the shared ``meta_steps`` budget."""
    return max(1, round(meta_steps * members / n_tasks))


def train_library(flat: FlatParams, tasks: Sequence, loss_fn: LossFn, init: torch.Tensor, *, steps: int, lr: float,
                  seed: int, progress: bool = False) -> torch.Tensor:
    """The library [N, D]: row i is ``steps`` RMSprop steps (lr ``lr``, lift_ext.baselines) on
    minibatches of task i's pool ``tasks[i]`` alone, from ``init``, with a generator seeded by
    (seed, i)."""
    rows = [baselines.train_multitask(flat, [task], loss_fn, init, steps=steps, lr=lr, seed=seed * 100_003 + i)
            for i, task in enumerate(tqdm(tasks, desc="library", disable=not progress, mininterval=1.0))]
    return torch.stack(rows)


def train_cluster_adapters(flat: FlatParams, tasks: Sequence, labels: torch.Tensor, loss_fn: LossFn,
                           init: torch.Tensor, *, meta_steps: int, lr: float, seed: int,
                           progress: bool = False) -> torch.Tensor:
    """MBC's adapters [C, D]: for cluster c (labels 0..C-1 over ``tasks``), multitask RMSprop from
    ``init`` on minibatches of the union of its tasks' pools, ``cluster_steps`` steps."""
    n = len(tasks)
    if labels.shape != (n,):
        raise ValueError(f"labels must hold one cluster per task ({n}), got shape {tuple(labels.shape)}")
    out = []
    for c in range(int(labels.max()) + 1):
        members = [t for t, label in zip(tasks, labels.tolist()) if label == c]
        out.append(baselines.train_multitask(flat, members, loss_fn, init, steps=cluster_steps(meta_steps, len(members), n),
                                             lr=lr, seed=seed * 1_009 + c, progress=progress, desc=f"mbc cluster {c}"))
    return torch.stack(out)


def best_by_support_loss(flat: FlatParams, candidates: torch.Tensor, loss_fn: LossFn, support) -> int:
    """MBC's routing: the index of the row of candidates [M, D] with the lowest mean loss
    ``loss_fn`` on the ``support`` batch (the first on a tie)."""
    with torch.no_grad():
        losses = [float(loss_fn(flat.call(c), support)) for c in candidates]
    return min(range(len(losses)), key=losses.__getitem__)


def retrieve(query: torch.Tensor, keys: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(indices [k'], weights [k']) of the k' = min(k, N) keys [N, H] of highest cosine similarity
    to ``query`` [H], most similar first; weights are the similarities clipped at 0 and
    normalised to sum to 1 (uniform when all are <= 0)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    sims = torch.nn.functional.cosine_similarity(keys.double(), query.double()[None], dim=1)
    top = sims.topk(min(k, keys.shape[0]))
    weights = top.values.clamp_min(0.0)
    weights = weights / weights.sum() if float(weights.sum()) > 0 else torch.full_like(weights, 1 / weights.numel())
    return top.indices, weights


def merge(library: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The weighted average sum_j w_j library[i_j] of the retrieved flat adapters: float32 [D]."""
    return (weights.to(library)[:, None] * library[indices]).sum(0)


__all__ = ["best_by_support_loss", "cluster_library", "cluster_purity", "cluster_steps", "kmeans", "library_steps", "merge", "retrieve",
           "train_cluster_adapters", "train_library"]
