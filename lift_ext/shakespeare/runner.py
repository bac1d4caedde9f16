"""The benchmark pipeline in three resumable stages, each saved in the output directory.

    meta_train  data + cached backbone + every method's meta-training   -> meta_state.pt
    adapt       per method, the adaptation lr (and MBC's C, retrieval's k)
                picked on meta-val roles, then every evaluated role
                adapted from its support set (adaptation)               -> adapted.pt
    evaluate    accuracy (all / remapped targets) and NLL on each evaluated role's query set
                                                                        -> results.json/.md/.png

Stage files (fingerprinted by config, with the provenance of every stage so far) are written
and checked by :mod:`lift_ext.shakespeare.stages`. ``setups`` (a dict seed -> Setup) lets the
stages of one process share the loaded data and model. Each stage runs its seeds one after
another or, with ``processes`` > 1 (seed_processes), in forked worker processes, with the same
results to the bit.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Dict, Optional

import torch
from tqdm.auto import tqdm

from lift_ext.shakespeare import launch, stages
from lift_ext.shakespeare import methods as M
from lift_ext.shakespeare.adaptation import adapt_roles, role_scores
from lift_ext.clock import Clock
from lift_ext.shakespeare.config import BenchConfig, ConfigError
from lift_ext.shakespeare.episodes import pool_tasks
from lift_ext.shakespeare.library import train_peers
from lift_ext.shakespeare.lift_methods import train_lift_variants
from lift_ext.shakespeare.loading import Setup, setup
from lift_ext.shakespeare.stages import StageError
from lift_ext.workers import forked_map, resolve_workers


def meta_train(cfg: BenchConfig, su: Setup, seed: int, progress: bool = True,
               world: launch.World = launch.ONE) -> Optional[M.MetaState]:
    """Meta-train every configured method on the meta-train pools with ``cfg.meta_steps``
    gradient evaluations (of ``cfg.batch_size`` windows) each; notes the seconds per method.
    The library-based peers share one library (lift_ext.shakespeare.library). Under a
    launch (``world``) every rank runs the LiFT chains and rank 0 alone the other methods;
    the other ranks return None."""
    init = su.flat.vector.detach().clone()
    state = M.MetaState(init=init)
    stride = su.bench.config["pool_stride"]
    tasks = pool_tasks(su.data.pools, cfg.batch_size, stride)
    wanted = set(cfg.methods) if world.main else set(cfg.methods) & set(M.LIFT_METHODS)
    common = dict(steps=cfg.meta_steps, seed=seed, progress=progress)

    def timed(name, fn, *args, **kwargs):
        clock = Clock()
        with _diverging(name, "meta_lr", cfg.meta_lr, seed):
            out = fn(*args, **kwargs)
        lap = clock.lap(name)
        state.info[name] = {"meta_seconds": lap["wall"], "meta_cpu_seconds": lap["cpu"]}
        return out

    if "multitask" in wanted:
        state.starts["multitask"] = timed("multitask", M.train_multitask, su.flat, tasks, init,
                                          lr=cfg.meta_lr, **common)
    if "reptile" in wanted:
        state.starts["reptile"] = timed("reptile", M.train_reptile, su.flat, tasks, init,
                                        inner_steps=cfg.inner_steps, lr=cfg.meta_lr, outer_lr=cfg.outer_lr, **common)
    if "fomaml" in wanted:
        state.starts["fomaml"] = timed("fomaml", M.train_fomaml, su.flat, su.data.pools, init,
                                       inner_steps=cfg.inner_steps, lr=cfg.meta_lr, n_support=cfg.batch_size,
                                       n_query=cfg.batch_size, **common)
    if "oracle" in wanted:
        state.family_adapters = timed("oracle", M.train_family_adapters, su.flat, tasks, su.data.pool_families,
                                      cfg.families, init, lr=cfg.meta_lr, **common)
    if wanted & set(M.PEER_METHODS):
        with _diverging("the peers' library", "meta_lr", cfg.meta_lr, seed):
            train_peers(cfg, su.flat, su.data, stride, state, wanted, seed, progress)
    with _diverging("LiFT's SGLD-Gibbs chain", "lift_lr", cfg.lift_lr, seed):
        priors, info = train_lift_variants(su.model, su.data.pools, stride, cfg, wanted, seed, progress, world)
    if not world.main:
        return None
    state.priors = priors
    state.info.update(info)
    if not torch.equal(su.flat.vector, init):
        raise RuntimeError("meta-training changed the shared adapter buffer")
    return state


@contextlib.contextmanager
def _diverging(what: str, key: str, value: float, seed: int):
    """A FloatingPointError (a diverged chain or optimiser) inside, as a StageError naming the
    config key ``key`` that sets the step size of ``what``."""
    try:
        yield
    except FloatingPointError:
        raise StageError(f"meta-training of {what} diverged with seed {seed} (its parameters became "
                         f"non-finite): lower {key} in the config (now {value:g})") from None


# ---- the stages ------------------------------------------------------------------------

def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    return obj


def seed_processes(cfg: BenchConfig, world: launch.World, workers: int) -> int:
    """The processes the seeds of each stage run in (lift_ext.workers: 0 = one per CPU, 1 = this
    process), at most one per seed; one where forked workers cannot
    run: under a launch (WORLD_SIZE > 1) or with sharded chains (``lift_shards``), whose process
    groups do not survive a fork, and on a CUDA device, which does not either. There a
    ``workers`` > 1 is a ConfigError (0 gives 1)."""
    try:
        count = resolve_workers(workers)
    except ValueError as exc:
        raise ConfigError(f"--workers: {exc}") from None
    where = ("under a launch" if world.size > 1 else "with sharded chains (lift_shards)" if cfg.lift_shards
             else "on a CUDA device" if torch.device(cfg.device).type != "cpu" else None)
    if count > 1 and where is not None:
        if workers:
            raise ConfigError(f"--workers {workers}: the seeds run in forked processes only in one CPU process "
                              f"without sharded chains, not {where}; use --workers 1")
        return 1
    return min(count, len(cfg.seeds))


def _over_seeds(cfg: BenchConfig, run_seed, processes: int, what: str, progress: bool):
    """run_seed(seed) -> (seed, record) for every seed of ``cfg`` in ``processes`` forked workers
    (lift_ext.workers.forked_map: each seed loads its data and model itself, from the cache, as
    setup does in one process): {seed: record} in the order of cfg.seeds; a bar over the seeds."""
    out = {}
    with forked_map(run_seed, cfg.seeds, processes) as results:  # forked before the bar opens
        bar = tqdm(total=len(cfg.seeds), desc=f"{what} ({processes} processes)", unit="seed", disable=not progress)
        for seed, record in results:
            out[seed] = record
            bar.update()
        bar.close()
    return {seed: out[seed] for seed in cfg.seeds}


def run_meta_train(cfg: BenchConfig, output: Path, cache=None, progress: bool = True,
                   setups: Optional[dict] = None, world: launch.World = launch.ONE,
                   gate: Optional[launch.Gate] = None, processes: int = 1) -> Optional[Path]:
    """Stage 1 for every seed; writes ``output/meta_state.pt``. Under a launch every rank calls
    it; rank 0 writes the file (its record names the world) and the others return None. Rank 0
    opens ``gate`` once the first seed's data and backbone are loaded (and cached).
    ``processes`` > 1 (seed_processes): the seeds meta-trained in that many forked workers,
    every stage file the same to the bit but its timings."""
    total = Clock()

    def one_seed(seed: int, bars: bool):
        clock = Clock()
        su = setup(cfg, seed, cache, bars and world.main, setups)
        if gate is not None:
            gate.open(True)
        clock.lap("setup")
        state = meta_train(cfg, su, seed, bars, world)
        clock.lap("meta_train")
        return seed, ({"state": _to_cpu(state.to_state()), "backbone": su.backbone, "timing": clock.laps}
                      if world.main else None)

    if processes == 1:
        seeds = dict(one_seed(seed, progress) for seed in cfg.seeds)
    else:  # one process (no launch): the backbone pre-trained and cached before the workers load it
        setup(cfg, cfg.seeds[0], cache, progress)
        seeds = _over_seeds(cfg, lambda seed: one_seed(seed, False), processes, "meta-training", progress)
    if not world.main:
        return None
    path = output / stages.META_FILE
    spent = total.total()
    record = {**stages.stage_record(spent["wall"], spent["cpu"], cfg.device),
              "per_seed": {str(s): seeds[s]["timing"] for s in cfg.seeds}, "world": world.record(),
              "processes": processes}
    stages.save("meta", cfg, {"seeds": seeds, "stages": {"meta_train": record}}, path)
    return path


def _meta_state(meta: dict, seed: int, device: str, path: Path) -> M.MetaState:
    try:
        return M.MetaState.from_state(meta["seeds"][seed]["state"], device)
    except (KeyError, TypeError, AttributeError, ValueError, RuntimeError) as exc:
        raise StageError(f"{path} is not a valid {stages.META_FILE} (seed {seed}'s state does not load: "
                         f"{type(exc).__name__} {exc}): rerun `lift-ext meta-train`") from None


def run_adapt(cfg: BenchConfig, output: Path, cache=None, progress: bool = True,
              setups: Optional[dict] = None, processes: int = 1) -> Path:
    """Stage 2; needs ``meta_state.pt`` of the same config, writes ``output/adapted.pt``;
    ``processes`` > 1: the seeds in that many forked workers (run_meta_train)."""
    total = Clock()
    meta = stages.load("meta", cfg, output)
    states = {seed: _meta_state(meta, seed, cfg.device, output / stages.META_FILE) for seed in cfg.seeds}

    def one_seed(seed: int, bars: bool):
        su = setup(cfg, seed, cache, progress=False, setups=setups)
        return seed, adapt_roles(cfg, su, states[seed], seed, bars)

    if processes == 1:
        seeds = dict(one_seed(seed, progress) for seed in cfg.seeds)
    else:
        seeds = _over_seeds(cfg, lambda seed: one_seed(seed, False), processes, "adapting", progress)
    path = output / stages.ADAPT_FILE
    backbones = {s: {k: meta["seeds"][s][k] for k in ("timing", "backbone")} for s in cfg.seeds}
    notes = {s: meta["seeds"][s]["state"]["info"] for s in cfg.seeds}
    spent = total.total()
    records = {**meta["stages"], "adapt": {**stages.stage_record(spent["wall"], spent["cpu"], cfg.device),
                                           "processes": processes}}
    stages.save("adapt", cfg, {"seeds": seeds, "meta": backbones, "notes": notes, "stages": records}, path)
    return path


def run_evaluate(cfg: BenchConfig, output: Path, cache=None, extra: dict | None = None,
                 setups: Optional[dict] = None, processes: int = 1) -> dict:
    """Stage 3; needs ``adapted.pt`` of the same config. Returns the results dict (see
    ``lift_ext.shakespeare.report``) without writing it; its "stages" are the stage records
    of the stage files (the caller adds evaluate's own); ``processes`` > 1: the seeds scored in
    that many forked workers (run_meta_train)."""
    adapted = stages.load("adapt", cfg, output)

    def seed_rows(seed: int):
        su = setup(cfg, seed, cache, progress=False, setups=setups)
        return seed, {method: role_scores(su, list(adapted["seeds"][seed][method]["thetas"].to(cfg.device)), su.evaluated,
                                      scaled=method in M.TEMPERATURE_SCALED) for method in cfg.methods}

    if processes == 1:
        rows_of = dict(seed_rows(seed) for seed in cfg.seeds)
    else:
        rows_of = _over_seeds(cfg, seed_rows, processes, "evaluating", False)
    scores: Dict[str, list] = {m: [] for m in cfg.methods}
    detail: Dict[str, dict] = {m: {"lr": {}, "option": {}, "val_scores": {}, "adapt_seconds": 0.0,
                                   "adapt_cpu_seconds": 0.0, "start_cpu_seconds": 0.0, "meta_seconds": 0.0,
                                   "meta_cpu_seconds": 0.0, "costs": {}} for m in cfg.methods}
    for seed in cfg.seeds:
        for method in cfg.methods:
            rec = adapted["seeds"][seed][method]
            rows = rows_of[seed][method]
            scores[method] += rows
            if method in M.TEMPERATURE_SCALED:
                detail[method].setdefault("temperatures", []).extend(row.pop("temperature") for row in rows)
            detail[method]["lr"][str(seed)] = rec["lr"]
            detail[method]["option"][str(seed)] = rec["option"]
            detail[method]["start_cpu_seconds"] += rec["start_cpu"]
            detail[method]["val_scores"][str(seed)] = rec["val_scores"]
            detail[method].setdefault("components", []).extend(rec["components"])
            note = adapted["notes"][seed].get(method, {})
            for stage, wall, cpu in (("adapt", rec["wall"], rec["cpu"]),
                                     ("meta", note.get("meta_seconds", 0.0), note.get("meta_cpu_seconds", 0.0))):
                detail[method][f"{stage}_seconds"] += wall
                detail[method][f"{stage}_cpu_seconds"] += cpu
            for part, cpu in note.get("costs", {}).items():  # summed over seeds, like the seconds
                detail[method]["costs"][part] = detail[method]["costs"].get(part, 0.0) + cpu
            detail[method]["notes"] = {k: v for k, v in note.items() if "seconds" not in k and k != "costs"}
    from lift_ext.shakespeare.report import summarize
    backbones = {str(s): adapted["meta"][s]["backbone"] for s in cfg.seeds}
    evaluated = setup(cfg, cfg.seeds[-1], cache, progress=False, setups=setups).evaluated
    return summarize(cfg, scores, detail, [(r.key, r.family) for r in evaluated],
                     extra={**(extra or {}), "backbone": backbones, "stages": dict(adapted["stages"])})


@contextlib.contextmanager
def new_output(output: Path):
    """Create ``output`` (and missing parents) and check that files can be written there; when
    the body fails, remove the directories this created if they are still empty, so a failed
    run leaves nothing behind."""
    created = [d for d in (output, *output.parents) if not d.exists()]
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StageError(f"output directory {str(output)!r} (--output) cannot be created: "
                         f"{exc.strerror or exc}") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise StageError(f"output directory {str(output)!r} (--output) is not writable")
    try:
        yield output
    except BaseException:
        for d in created:  # innermost first
            try:
                d.rmdir()
            except OSError:  # not empty (or already gone): keep it
                break
        raise
