"""The library-based peers as published, on the benchmark's flat LoRA vectors (float32 [D]).

Both start from the same per-task LIBRARY: one adapter per meta-train role, each trained
independently of the others from the PEFT init (lift_ext.shakespeare.library trains it and
the cluster adapters; the math of the peers is here).

    mbc        Model-Based Clustering (Ostapenko et al. 2024): the library's vectors,
               L2-normalised, clustered by k-means into C clusters; one adapter per cluster
               trained on the union of its roles' pools (library.train_cluster_adapters). At
               meta-test the cluster adapter with the lowest support loss is the start.
    retrieval  LoRA-Retriever (Zhao et al. 2024): a role is keyed by the backbone's pooled
               features of its inputs (``pooled_features``); a new role's support inputs are
               embedded the same way, the k library adapters of highest cosine similarity are
               retrieved and merged by a similarity-weighted average of their flat vectors
               (``retrieve``, ``merge``), and that is the start.

Either then adapts like every method (lift_ext.shakespeare.methods.adapt_role). C and k are
chosen per seed on the meta-val roles with the adaptation lr (lift_ext.shakespeare.runner).

Budgets, in gradient evaluations on windows of ``seq_len`` predicted characters:

* library: the shared meta-training budget, ``meta_steps`` minibatches of ``batch_size``
  windows, shared equally by the N roles in steps of b = max(1, batch_size // tasks_per_step)
  windows, i.e. s = max(1, round(meta_steps * batch_size / (N * b))) RMSprop steps per role
  (``library_steps``). That is exactly the steps and windows LiFT's chain gives each role's
  task vector (meta_steps * tasks_per_step / N visits of b windows).
* cluster adapters: again the shared budget, each cluster's share in proportion to its roles:
  max(1, round(meta_steps * n_c / N)) steps of ``batch_size`` windows (``cluster_steps``).

So MBC spends two budgets per C tried (the library, shared with retrieval, and its cluster
adapters) and retrieval one; the report states each cost in CPU seconds.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

from lift_ext.lift import FlatParams


def library_steps(meta_steps: int, batch_size: int, windows_per_step: int, n_roles: int) -> int:
    """RMSprop steps of one library adapter: the shared budget of ``meta_steps`` minibatches of
    ``batch_size`` windows split equally over ``n_roles`` roles in steps of ``windows_per_step``."""
    for name, value in (("meta_steps", meta_steps), ("batch_size", batch_size),
                        ("windows_per_step", windows_per_step), ("n_roles", n_roles)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return max(1, round(meta_steps * batch_size / (n_roles * windows_per_step)))


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
    """The fraction of roles whose cluster's most common family (over ``labels`` [N]) is their own."""
    table: dict = {}
    for label, family in zip(labels.tolist(), families):
        table.setdefault(label, {}).setdefault(family, 0)
        table[label][family] += 1
    return sum(max(counts.values()) for counts in table.values()) / len(families)


def cluster_steps(meta_steps: int, members: int, n_roles: int) -> int:
    """RMSprop steps of the adapter of a cluster of ``members`` of ``n_roles`` roles: its share
    of the shared ``meta_steps`` budget."""
    return max(1, round(meta_steps * members / n_roles))


@torch.no_grad()
def pooled_features(flat: FlatParams, theta: torch.Tensor, inputs: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """The mean, over windows and positions, of the last hidden layer (after the final layer
    norm) of the model at adapter ``theta`` reading ``inputs`` [n, L]: float32 [H]."""
    if inputs.dim() != 2 or inputs.shape[0] < 1:
        raise ValueError(f"inputs must be a non-empty [n, L] tensor, got shape {tuple(inputs.shape)}")
    call = flat.call(theta)
    total = None
    for rows in inputs.split(chunk):
        hidden = call(input_ids=rows, output_hidden_states=True).hidden_states[-1].float()
        part = hidden.sum((0, 1))
        total = part if total is None else total + part
    return total / (inputs.shape[0] * inputs.shape[1])


def role_keys(flat: FlatParams, theta: torch.Tensor, pools: Sequence[tuple], max_windows: int = 64) -> torch.Tensor:
    """Retrieval keys [N, H]: ``pooled_features`` of the first ``max_windows`` input windows of
    each role's pool (inputs, targets)."""
    return torch.stack([pooled_features(flat, theta, pool[0][:max_windows]) for pool in pools])


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


__all__ = ["cluster_library", "cluster_purity", "cluster_steps", "kmeans", "library_steps", "merge",
           "pooled_features", "retrieve", "role_keys"]
