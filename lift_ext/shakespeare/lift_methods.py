"""The LiFT variants' meta-training: SGLD-Gibbs chains over the meta-train roles and the
meta-test prior each variant adapts under (docs/design.md sections 3, 4, 10 and 12).

    lift        the chain of ``cfg.lift_prior``: "mixture" (K = n_components shared adapters
                phi_k in the hierarchy, with the non-centred moves of ``lift_shift_lr`` and
                ``lift_z_update``; its conditional phi_k, z, pi read as the prior) or "paper"
                (one phi, an online-EM mixture of K components over its samples)
    lift_k1     the same chain with one component (mixture prior: K = 1 with the same moves;
                paper prior: a single Gaussian over its phi samples), the ablation of K
    lift_paper  the paper's chain (no non-centred moves) with its K-component mixture over
                phi samples, whatever ``cfg.lift_prior`` is
    lift_sgld   lift's prior, adapted by SGLD sampling with prediction averaging (not MAP)
    lift_ts     lift's MAP adapters, scored with a temperature fitted on each support set

Sharded chains (``lift_shards`` S > 0, or under torchrun; lift_ext.shakespeare.launch): each
chain is a `ShardedLiFT` of S shards over the launch's ranks, tasks_per_step / S tasks per shard
and step, each rank binding only its roles.

Budget: a chain takes ``meta_steps`` steps of ``tasks_per_step`` = B tasks, each task's
gradient on max(1, batch_size // B) windows of its pool, so a step sees about as many windows
as one minibatch of the other methods, and each role is visited meta_steps * B / N times.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Dict, Sequence, Set, Tuple

import torch

from lift_ext.gmm import OnlineGMM
from lift_ext.lift import LangevinConfig, LiFT, MixtureHierarchy, MixturePrior, PaperHierarchy, Sharding
from lift_ext.lift.config import Hierarchy
from lift_ext.lift.sharded_trainer import ShardedLiFT
from lift_ext.shakespeare import launch
from lift_ext.shakespeare.config import ConfigError
from lift_ext.shakespeare.episodes import pool_tasks
from lift_ext.shakespeare.methods import LIFT_METHODS, window_loss

def lift_batch(cfg) -> int:
    """Windows per task visit of a LiFT chain."""
    return max(1, cfg.batch_size // cfg.tasks_per_step)


def chain_configs(cfg, prior: str, n_components: int, shards: int) -> Tuple[LangevinConfig, Hierarchy]:
    """The (langevin, hierarchy) configs of a chain of ``prior`` with ``n_components`` components,
    tasks_per_step split over ``shards`` shards (0: one process)."""
    langevin = LangevinConfig(lr=cfg.lift_lr, temperature=cfg.temperature, preconditioned=cfg.lift_preconditioned,
                              tasks_per_step=cfg.tasks_per_step // max(1, shards))
    if prior == "mixture":
        return langevin, MixtureHierarchy(components=n_components, sigma=cfg.sigma, beta=cfg.beta,
                                          dirichlet_alpha=1.0, warmup_steps=int(cfg.lift_warmup * cfg.meta_steps),
                                          shift_lr=cfg.lift_shift_lr, z_update=cfg.lift_z_update)
    return langevin, PaperHierarchy(sigma=cfg.sigma, beta=cfg.beta, phi_update="gibbs",
                                    burn_in=int(cfg.burn_in * cfg.meta_steps), thin=cfg.thin,
                                    gmm_components=n_components)


def build_chain(model, tasks, cfg, world: launch.World, *, prior: str, n_components: int, seed: int) -> LiFT:
    """The LiFT chain of ``prior`` with ``n_components`` components over ``tasks`` (a ShardedLiFT
    holding this rank's tasks when the launch shards the chains)."""
    shards = launch.shards(cfg, world)
    langevin, hierarchy = chain_configs(cfg, prior, n_components, shards)
    if not shards:
        return LiFT(model, tasks, window_loss, langevin=langevin, hierarchy=hierarchy, seed=seed)
    sharding = Sharding(process_group=world.group, num_shards=shards)
    mine = set(ShardedLiFT.local_task_ids(len(tasks), sharding))
    return ShardedLiFT(model, [task if i in mine else None for i, task in enumerate(tasks)], window_loss,
                       langevin=langevin, hierarchy=hierarchy, sharding=sharding, seed=seed)


def _run_paper(lift: LiFT, steps: int, progress: bool) -> OnlineGMM:
    """Run the paper chain; its phi samples also feed a one-component mixture (returned).
    ``progress`` must be the same on every rank (the bar's diagnostics are a collective)."""
    sampler = lift.sampler
    single = OnlineGMM(1, lift.flat.dim, device=lift.flat.vector.device)
    fed = [sampler.num_gmm_samples]

    def feed_single(step: int, tasks) -> None:
        if sampler.num_gmm_samples != fed[0]:
            fed[0] = sampler.num_gmm_samples
            single.update(sampler.phi)

    lift.run(steps, progress=progress, callback=feed_single)
    return single


def _needs(method: str, cfg) -> Tuple[str, int]:
    """The (prior, components) of ``method``'s meta-test prior."""
    if method == "lift_paper":
        return "paper", cfg.n_components
    if method == "lift_k1":
        return cfg.lift_prior, 1
    return cfg.lift_prior, cfg.n_components  # lift, lift_sgld, lift_ts


def _chain_of(prior: str, components: int, cfg) -> Tuple[str, int]:
    """The chain that yields a (prior, components) meta-test prior: the paper chain serves
    both K and 1 components (mixtures over the same phi samples); a mixture chain has its K."""
    return (prior, cfg.n_components) if prior == "paper" else (prior, components)


def chains_needed(cfg, wanted: Set[str]) -> Set[Tuple[str, int]]:
    """The (prior, K) chains the wanted methods need."""
    return {_chain_of(*_needs(m, cfg), cfg) for m in LIFT_METHODS if m in wanted}


def _cpu_seconds(lift: LiFT, seconds: float) -> float:
    """This process's CPU seconds of a chain, summed over the ranks for a sharded one (a collective)."""
    if not isinstance(lift, ShardedLiFT):
        return seconds
    comm = lift.sampler.comm
    total = comm.buffer(1, torch.float64, lift.flat.vector.device)
    total[0] = seconds
    comm.raise_failures(comm.sum_(total, "the sum of the chain's CPU seconds"), "the end of the chain")
    return float(total[0])


def check_launch(cfg, world: launch.World):
    """The config of this launch (under torchrun ``lift_shards`` 0 resolved to the world size,
    so the stage files' fingerprint says how many shards the chains had), or ConfigError when
    the chains cannot run sharded over ``world``. Runs on every rank before any collective."""
    chains = chains_needed(cfg, set(cfg.methods))
    count = launch.shards(cfg, world)
    if not count or not chains:
        return cfg
    where = f"under torchrun with WORLD_SIZE={world.size}" if world.size > 1 else f"lift_shards={count}"
    if cfg.lift_z_update == "likelihood" and any(prior == "mixture" for prior, _ in chains):
        raise ConfigError(f"lift_z_update 'likelihood' does not run sharded ({where}): use 'distance', or run "
                          "in one process without torchrun and with lift_shards 0")
    if count % world.size:
        raise ConfigError(f"lift_shards ({cfg.lift_shards}) must be a multiple of the number of ranks "
                          f"({world.size}) under torchrun (0: one shard per rank)")
    if cfg.tasks_per_step % count:
        raise ConfigError(f"tasks_per_step ({cfg.tasks_per_step}) must be a multiple of the number of LiFT "
                          f"shards ({count}, one per rank under torchrun unless lift_shards says otherwise)")
    return dataclasses.replace(cfg, lift_shards=count)


def train_lift_variants(model, pools: Sequence[tuple], stride: int, cfg, wanted: Set[str], seed: int,
                        progress: bool = True, world: launch.World = launch.ONE
                        ) -> Tuple[Dict[str, MixturePrior], dict]:
    """Run the chains the ``wanted`` methods need; return (meta-test prior per wanted LiFT
    variant, notes per variant).
    Every rank of ``world`` calls it (the same chains, the same collectives); only rank 0 draws
    bars. A variant's meta_seconds and meta_cpu_seconds count its chain from after its
    construction (under a launch that is where every rank has arrived), the CPU seconds summed
    over the ranks."""
    tasks = pool_tasks(pools, lift_batch(cfg), stride)
    results: Dict[Tuple[str, int], MixturePrior] = {}
    seconds = {}
    for prior, k in sorted(chains_needed(cfg, wanted)):
        lift = build_chain(model, tasks, cfg, world, prior=prior, n_components=k, seed=seed)
        wall, cpu = time.perf_counter(), time.process_time()  # after the construction's collectives
        if prior == "paper":
            single = _run_paper(lift, cfg.meta_steps, progress)
            results[prior, 1] = MixturePrior.from_gmm(single, cfg.beta)
        else:
            lift.run(cfg.meta_steps, progress=progress)
        results[prior, k] = lift.meta_test_prior()
        seconds[prior, k] = (time.perf_counter() - wall, _cpu_seconds(lift, time.process_time() - cpu))
    priors, info = {}, {}
    for method in LIFT_METHODS:
        if method in wanted:
            prior, k = _needs(method, cfg)
            priors[method] = results[prior, k]
            chain = seconds[_chain_of(prior, k, cfg)]
            info[method] = {"prior": prior, "components": k, "windows_per_visit": lift_batch(cfg),
                            "visits_per_role": cfg.meta_steps * cfg.tasks_per_step / len(tasks),
                            "meta_seconds": chain[0], "meta_cpu_seconds": chain[1],
                            "shards": launch.shards(cfg, world), "ranks": world.size}
    return priors, info


__all__ = ["train_lift_variants", "chains_needed", "check_launch", "lift_batch", "build_chain", "chain_configs"]
