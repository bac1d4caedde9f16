"""The library-based peers' meta-training for one seed (the math is lift_ext.peers): the
library (one adapter per meta-train role, each trained alone), MBC's cluster adapters (one per
cluster, on the union of its roles' pools) and retrieval's keys, into a MetaState with their
costs. Every loop is lift_ext.peers' RMSprop from the PEFT init on the mean next-character
cross-entropy (nats, lift_ext.shakespeare.methods.window_loss).
"""
from __future__ import annotations

import torch

from lift_ext import peers
from lift_ext.lift import FlatParams
from lift_ext.shakespeare import peers as shakespeare_peers
from lift_ext.clock import Clock
from lift_ext.shakespeare.episodes import pool_tasks
from lift_ext.shakespeare.lift_methods import lift_batch
from lift_ext.shakespeare.methods import MetaState, window_loss
from lift_ext.shakespeare.suite import SuiteData


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
    state.library = peers.train_library(flat, pool_tasks(data.pools, lift_batch(cfg), stride), window_loss,
                                        state.init, steps=steps, lr=cfg.meta_lr, seed=seed, progress=progress)
    library = clock.lap("library")
    budget = {"library_steps": steps, "library_windows_per_step": lift_batch(cfg), "library_roles": n}
    if "retrieval" in wanted:
        state.keys = shakespeare_peers.role_keys(flat, state.init, data.pools)
        keys = clock.lap("keys")
        state.info["retrieval"] = {**budget, "meta_seconds": library["wall"] + keys["wall"],
                                   "meta_cpu_seconds": library["cpu"] + keys["cpu"],
                                   "costs": {"library": library["cpu"], "keys": keys["cpu"]}}
    if "mbc" in wanted:
        tasks = pool_tasks(data.pools, cfg.batch_size, stride)
        costs, sizes, purity = {"library": library["cpu"]}, {}, {}
        for c in cfg.mbc_clusters:
            labels = peers.cluster_library(state.library, c, seed)
            state.clusters[c] = peers.train_cluster_adapters(flat, tasks, labels, window_loss, state.init,
                                                             meta_steps=cfg.meta_steps, lr=cfg.meta_lr, seed=seed,
                                                             progress=progress)
            costs[f"clusters C={c}"] = clock.lap(f"clusters {c}")["cpu"]
            sizes[str(c)] = torch.bincount(labels).tolist()
            if cfg.suite == "families":
                purity[str(c)] = peers.cluster_purity(labels, data.pool_families)
        laps = [lap for name, lap in clock.laps.items() if name.startswith("clusters")]
        state.info["mbc"] = {**budget, "cluster_sizes": sizes, "family_purity": purity, "costs": costs,
                             "meta_seconds": library["wall"] + sum(lap["wall"] for lap in laps),
                             "meta_cpu_seconds": library["cpu"] + sum(lap["cpu"] for lap in laps)}


__all__ = ["train_peers"]
