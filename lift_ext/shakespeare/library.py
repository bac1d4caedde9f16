"""The library-based peers' meta-training for one seed (the math is lift_ext.shakespeare.peers).

    train_library           one adapter per meta-train role, each trained alone
    train_cluster_adapters  MBC: one adapter per cluster, on the union of its roles' pools
    train_peers             both, and retrieval's keys, into a MetaState with their costs

Every loop is RMSprop through lift_ext.shakespeare.methods.train_multitask (temperature-0
``sgld_step``), from the PEFT init, on the mean next-character cross-entropy (nats).
"""
from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from lift_ext.lift import FlatParams, TensorTask
from lift_ext.shakespeare import peers
from lift_ext.shakespeare.clock import Clock
from lift_ext.shakespeare.episodes import pool_tasks
from lift_ext.shakespeare.lift_methods import lift_batch
from lift_ext.shakespeare.methods import MetaState, train_multitask
from lift_ext.shakespeare.suite import SuiteData


def train_library(flat: FlatParams, tasks: Sequence[TensorTask], init: torch.Tensor, *, steps: int, lr: float,
                  seed: int, progress: bool = True) -> torch.Tensor:
    """The library [N, D]: row i is ``steps`` RMSprop steps (lr ``lr``) on minibatches of role i's
    pool ``tasks[i]`` alone, from ``init``, with a generator seeded by (seed, i)."""
    rows = [train_multitask(flat, [task], init, steps=steps, lr=lr, seed=seed * 100_003 + i, progress=False)
            for i, task in enumerate(tqdm(tasks, desc="library", disable=not progress, mininterval=1.0))]
    return torch.stack(rows)


def train_cluster_adapters(flat: FlatParams, tasks: Sequence[TensorTask], labels: torch.Tensor, init: torch.Tensor,
                           *, meta_steps: int, lr: float, seed: int, progress: bool = True) -> torch.Tensor:
    """MBC's adapters [C, D]: for cluster c (labels 0..C-1 over the roles of ``tasks``), multitask
    RMSprop from ``init`` on minibatches of the union of its roles' pools, ``cluster_steps`` steps."""
    n = len(tasks)
    if labels.shape != (n,):
        raise ValueError(f"labels must hold one cluster per role ({n}), got shape {tuple(labels.shape)}")
    out = []
    for c in range(int(labels.max()) + 1):
        members = [t for t, label in zip(tasks, labels.tolist()) if label == c]
        out.append(train_multitask(flat, members, init, steps=peers.cluster_steps(meta_steps, len(members), n), lr=lr,
                                   seed=seed * 1_009 + c, progress=progress, desc=f"mbc cluster {c}"))
    return torch.stack(out)


def train_peers(cfg, flat: FlatParams, data: SuiteData, stride: int, state: MetaState, wanted: set, seed: int,
                progress: bool = True) -> None:
    """Fill ``state`` for the wanted library-based peers of ``cfg`` (a BenchConfig) on the
    meta-train pools of ``data`` (windows at ``stride``): the
    library (one adapter per meta-train role, ``peers.library_steps`` RMSprop steps of
    ``lift_batch(cfg)`` windows each, lr ``meta_lr``), retrieval's keys, and MBC's clustering
    and cluster adapters for every C of ``mbc_clusters``. Notes per method: meta_seconds /
    meta_cpu_seconds (the library counted in each, as each needs it) and "costs", the CPU
    seconds of each part; MBC's notes add the cluster sizes and, with families, the fraction
    of roles whose cluster's most common family is their own."""
    n = len(data.pools)
    steps = peers.library_steps(cfg.meta_steps, cfg.batch_size, lift_batch(cfg), n)
    clock = Clock()
    state.library = train_library(flat, pool_tasks(data.pools, lift_batch(cfg), stride), state.init,
                                    steps=steps, lr=cfg.meta_lr, seed=seed, progress=progress)
    library = clock.lap("library")
    budget = {"library_steps": steps, "library_windows_per_step": lift_batch(cfg), "library_roles": n}
    if "retrieval" in wanted:
        state.keys = peers.role_keys(flat, state.init, data.pools)
        keys = clock.lap("keys")
        state.info["retrieval"] = {**budget, "meta_seconds": library["wall"] + keys["wall"],
                                   "meta_cpu_seconds": library["cpu"] + keys["cpu"],
                                   "costs": {"library": library["cpu"], "keys": keys["cpu"]}}
    if "mbc" in wanted:
        tasks = pool_tasks(data.pools, cfg.batch_size, stride)
        costs, sizes, purity = {"library": library["cpu"]}, {}, {}
        for c in cfg.mbc_clusters:
            labels = peers.cluster_library(state.library, c, seed)
            state.clusters[c] = train_cluster_adapters(flat, tasks, labels, state.init, meta_steps=cfg.meta_steps,
                                                         lr=cfg.meta_lr, seed=seed, progress=progress)
            costs[f"clusters C={c}"] = clock.lap(f"clusters {c}")["cpu"]
            sizes[str(c)] = torch.bincount(labels).tolist()
            if cfg.suite == "families":
                purity[str(c)] = peers.cluster_purity(labels, data.pool_families)
        laps = [lap for name, lap in clock.laps.items() if name.startswith("clusters")]
        state.info["mbc"] = {**budget, "cluster_sizes": sizes, "family_purity": purity, "costs": costs,
                             "meta_seconds": library["wall"] + sum(lap["wall"] for lap in laps),
                             "meta_cpu_seconds": library["cpu"] + sum(lap["cpu"] for lap in laps)}


__all__ = ["train_cluster_adapters", "train_library", "train_peers"]
