"""Headroom and the first ranking of methods on the vision suite (run by
benchmarks/vision_headroom.py).

Headroom, on the meta-val and meta-test tasks, before any method is compared:
    chance         1 / classes
    prototypes     the unadapted backbone: nearest class mean (cosine) of its frozen features
                   over the support shots (no training; the adapter's own head starts at zero,
                   i.e. at chance)
    independent    the adapter fine-tuned on the support shots from its initialisation
    pool ceiling   the adapter fine-tuned on the task's whole support pool (800 images)
    noise floor    independent under seed 1 minus seed 0, paired over tasks (another draw of
                   the shots and of the minibatch order)
Ranking on the ``eval_split`` tasks with every seed: independent, multitask (one adapter
RMSprop-trained on all meta-train pools, then adapted) and LiFT (MixtureHierarchy with K = the
number of groups, and K = 1, over the meta-train pools; adapted to the MAP under its prior).
All adaptation is lift_ext.lift.adapt with the same MapConfig on ``shots`` images per class.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Sequence

import torch

from lift_ext.lift import MapConfig
from lift_ext.vision import backbone as vb
from lift_ext.vision import methods as vm
from lift_ext.vision import tasks as vt

METHODS = ("independent", "multitask", "lift", "lift_k1")


@dataclass(frozen=True)
class Settings:
    """Every knob of a run. Adaptation: ``shots`` per class, at most ``adapt_steps`` full-batch
    RMSprop steps at ``adapt_lr`` (MapConfig, objective checked every 5 steps, patience 3).
    Ceiling: ``pool_steps`` RMSprop steps of ``pool_batch`` pool images at ``adapt_lr``.
    Multitask: ``meta_steps`` RMSprop steps of ``tasks_per_step * lift.batch`` images at
    ``meta_lr``. LiFT: ``lift`` (methods.LiftSettings). ``tasks_per_group`` > 0 keeps that
    many tasks per group of each evaluated split (quick runs).

    Chosen on the meta-val tasks (seeds 0 and 1, benchmarks/vision_headroom.py --select):
    adapt_lr 1e-3 of {3e-4, 1e-3, 3e-3, 1e-2} by independent fine-tuning (55.7, 58.7, 49.0,
    20.0 %), then LiFT's beta 0.1 of {0.02, 0.05, 0.1} (29.1, 33.4, 50.3 %). Every other value
    was set once, not searched."""
    seeds: tuple = (0, 1, 2)
    shots: int = 5
    adapt_steps: int = 25
    adapt_lr: float = 1e-3
    pool_steps: int = 40
    pool_batch: int = 64
    meta_steps: int = 150
    meta_lr: float = 1e-3
    lift: vm.LiftSettings = vm.LiftSettings(steps=150, tasks_per_step=4, batch=12, lr=1e-3, temperature=0.01,
                                            sigma=0.1, beta=0.1, warmup=0.25, shift_lr=1e-3)
    eval_split: str = "test"
    tasks_per_group: int = 0
    rank: int = 4

    def __post_init__(self):
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must hold at least two distinct seeds (the noise floor), got {self.seeds}")
        if self.eval_split not in ("val", "test"):
            raise ValueError(f"eval_split must be 'val' or 'test', got {self.eval_split!r}")

    def map_config(self) -> MapConfig:
        return MapConfig(steps=self.adapt_steps, lr=self.adapt_lr, preconditioned=True, tol=1e-3, patience=3,
                         eval_every=5)


QUICK = Settings(seeds=(0, 1), adapt_steps=5, pool_steps=10, meta_steps=20, tasks_per_group=1,
                 lift=replace(Settings().lift, steps=20))


class Suite:
    """The loaded suite: tasks, split, backbone, adapter (flat) and the frozen features."""

    def __init__(self, settings: Settings, cache=None, progress: bool = False):
        self.settings = settings
        self.tasks = vt.load_tasks(cache=cache)
        self.split = vt.split()
        self.state, self.pretraining = vb.load_backbone(cache=cache, progress=progress)
        self.model, self.flat = vb.adapter_model(self.state, rank=settings.rank)
        self.init = self.flat.vector.detach().clone()
        self.groups = [t.spec.group for t in self.tasks]
        self.independent_scores: Dict[tuple, float] = {}  # shared by the headroom and the ranking

    def evaluated(self, split: str) -> List[int]:
        """The task indices of ``split`` (the first tasks_per_group of each group when set)."""
        keep = self.settings.tasks_per_group
        out = []
        for group in vt.GROUPS:
            members = [i for i in self.split[split] if self.groups[i] == group]
            out += members[:keep] if keep else members
        return out


def _timed(record: Dict[str, dict], name: str, fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    record[name] = {"wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
    return out


def independent(suite: Suite, index: int, seed: int) -> float:
    """Query accuracy (%) of the adapter fine-tuned from its init on the task's support shots
    (computed once per task, seed and adaptation setting)."""
    s, task = suite.settings, suite.tasks[index]
    key = (index, seed, s.shots, s.map_config())
    if key not in suite.independent_scores:
        support = vm.support_task(task, s.shots, seed)
        theta = vm.adapted(suite.flat, support, s.map_config(), seed, start=suite.init).theta
        suite.independent_scores[key] = vm.query_accuracy(suite.flat, theta, task)
    return suite.independent_scores[key]


def headroom(suite: Suite, seeds=(0, 1)) -> Dict[str, dict]:
    """Per method a record {task name: accuracy (%)} on the meta-val and meta-test tasks
    (module docstring); "independent_seed<k>" per seed of ``seeds``."""
    s = suite.settings
    out: Dict[str, dict] = {"chance": {}, "prototypes": {}, "pool_ceiling": {}}
    out.update({f"independent_seed{k}": {} for k in seeds})
    for index in suite.evaluated("val") + suite.evaluated("test"):
        task = suite.tasks[index]
        name = task.spec.name
        out["chance"][name] = 100.0 / task.spec.num_classes
        rows = vt.few_shot(task, s.shots, seeds[0])
        query_x, query_y = task.query
        feats = vb.features(suite.state, vb.BackboneConfig(), torch.cat([task.images[rows], query_x]))
        out["prototypes"][name] = vm.prototype_accuracy(feats[:len(rows)], task.labels[rows], feats[len(rows):], query_y)
        for k in seeds:
            out[f"independent_seed{k}"][name] = independent(suite, index, k)
        theta = vm.rmsprop(suite.flat, [vm.pool_task(task, s.pool_batch)], suite.init, steps=s.pool_steps,
                           lr=s.adapt_lr, seed=seeds[0])
        out["pool_ceiling"][name] = vm.query_accuracy(suite.flat, theta, task)
    return out


def ranking(suite: Suite, methods: Sequence[str] = METHODS, stages=None) -> Dict[str, Dict[int, dict]]:
    """{method: {seed: {task name: accuracy (%)}}} on the eval split (module docstring);
    ``stages`` (a dict) receives the wall and CPU seconds of each seed's meta-training."""
    s = suite.settings
    stages = {} if stages is None else stages
    pools = [vm.pool_task(suite.tasks[i], s.lift.batch) for i in suite.split["train"]]
    multitask_pools = [vm.pool_task(suite.tasks[i], s.lift.batch * s.lift.tasks_per_step) for i in suite.split["train"]]
    out = {m: {} for m in methods}
    for seed in s.seeds:
        starts, priors = {"independent": suite.init}, {}
        if "multitask" in methods:
            starts["multitask"] = _timed(stages, f"multitask_seed{seed}", lambda: vm.rmsprop(
                suite.flat, multitask_pools, suite.init, steps=s.meta_steps, lr=s.meta_lr, seed=seed))
        for method, k in (("lift", len(vt.GROUPS)), ("lift_k1", 1)):
            if method in methods:
                priors[method] = _timed(stages, f"{method}_seed{seed}",
                                        lambda: vm.lift_prior(suite.flat, pools, k, s.lift, seed))
        for method in methods:
            scores = out[method].setdefault(seed, {})
            for index in suite.evaluated(s.eval_split):
                task = suite.tasks[index]
                if method == "independent":
                    scores[task.spec.name] = independent(suite, index, seed)
                    continue
                support = vm.support_task(task, s.shots, seed)
                result = vm.adapted(suite.flat, support, s.map_config(), seed, start=starts.get(method),
                                    prior=priors.get(method))
                scores[task.spec.name] = vm.query_accuracy(suite.flat, result.theta, task)
    return out


def mean_se(values: Sequence[float]):
    """(mean, standard error of the mean); s.e. 0 for one value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def group_means(scores: Dict[str, float], groups: Dict[str, str]) -> Dict[str, float]:
    """Mean accuracy per group of {task name: accuracy}, plus "overall" (mean over tasks)."""
    out = {g: [v for n, v in scores.items() if groups[n] == g] for g in vt.GROUPS}
    means = {g: sum(v) / len(v) for g, v in out.items() if v}
    means["overall"] = sum(scores.values()) / len(scores)
    return means


def paired(a: Dict, b: Dict):
    """Mean and s.e. of a - b over the keys both have (task names, or (seed, task) pairs)."""
    keys = [k for k in a if k in b]
    return mean_se([a[k] - b[k] for k in keys]) + (len(keys),)


def flatten(per_seed: Dict[int, Dict[str, float]]) -> Dict[tuple, float]:
    """{(seed, task): accuracy} of {seed: {task: accuracy}}."""
    return {(seed, name): v for seed, scores in per_seed.items() for name, v in scores.items()}


def settings_dict(s: Settings) -> dict:
    return asdict(s)
