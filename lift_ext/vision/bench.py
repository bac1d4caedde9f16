"""The vision suite's benchmark: headroom, then the harness's ranking (run by
``lift-ext demo --suite vision`` and benchmarks/vision_headroom.py).

Headroom, on the ranked split's tasks (``eval_split``; with ``val_headroom`` on the meta-val
tasks too), before any method is compared:
    chance         1 / classes
    prototypes     the unadapted backbone: nearest class mean (cosine) of its frozen features
                   over the support shots (no training; the adapter's own head starts at zero,
                   i.e. at chance)
    independent    the adapter fine-tuned on the support shots from its initialisation
    pool ceiling   (with ``pool_ceiling``) the adapter fine-tuned on the task's whole support
                   pool (800 images): what more data of the task would give
    label-set oracle
                   the ceiling of what meta-training can transfer: a start told which meta-train
                   tasks share the task's label set (its "siblings": the same characters in
                   another font, the same attribute under another style), trained on their
                   whole pools with the pool ceiling's budget, head kept (the labels agree),
                   then adapted on the shots as every method is; the initial adapter when no
                   meta-train task shares the label set (then it is independent fine-tuning)
    noise floor    independent under seed 1 minus seed 0, paired over tasks (another draw of
                   the shots and of the minibatch order)
Ranking: every method of lift_ext.harness on the ``eval_split`` tasks with every seed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Dict, List, Optional

import torch
from tqdm.auto import tqdm

from lift_ext import baselines
from lift_ext.harness import BenchSuite, BenchTask, LiftSettings, MethodSettings
from lift_ext.harness import methods as hm
from lift_ext.harness.suite import head_mask, headroom_splits
from lift_ext.lift import MapConfig
from lift_ext.vision import backbone as vb
from lift_ext.vision import methods as vm
from lift_ext.vision import tasks as vt


@dataclass(frozen=True)
class Settings:
    """Every knob of a run. Adaptation: ``shots`` per class, at most ``adapt_steps`` full-batch
    RMSprop steps at ``adapt_lr`` (MapConfig, objective checked every 5 steps, patience 3).
    The label-set oracle's start and the pool ceiling (computed when ``pool_ceiling`` is set):
    ``pool_steps`` RMSprop steps of ``pool_batch`` pool images at ``adapt_lr``.
    Meta-training: ``lift`` (the harness's LiftSettings: LiFT's chain and every method's
    budget), ``meta_lr``, ``inner_steps``, ``outer_lr``, ``reset_head``, lift_sgld's
    ``sampling_temperature``, MBC's ``mbc_clusters`` and retrieval's ``retrieval_k``
    (lift_ext.harness.methods). ``ranked``: the methods the ranking runs.
    ``tasks_per_group`` > 0 keeps that many tasks per group of each evaluated split (quick runs).
    ``val_headroom``: the headroom on the meta-val tasks as well as the ranked split's (the
    sweep's view, benchmarks/vision_headroom.py --val-headroom; off in the default run, which
    ranks meta-test and needs its headroom there only).

    Chosen on the 9 meta-val tasks (seeds 0 and 1; benchmarks/vision_headroom.py --select,
    docs/benchmark.md "Vision suite" lists every value tried): adapt_lr, reset_head, LiFT's
    components, beta and steps; its warm-up, lr, sigma and (at adapt_beta 1.0, the meta-test
    prior's spread, the beta chosen before) the chain's beta again by benchmarks/chain_select.py;
    sampling_temperature by benchmarks/sgld_temperature.py (docs/calibration.md); mbc_clusters
    and retrieval_k by benchmarks/peer_select.py. Every other value was set once, not searched."""
    seeds: tuple = (0, 1, 2)
    shots: int = 5
    adapt_steps: int = 25
    adapt_lr: float = 1e-3
    pool_steps: int = 40
    pool_batch: int = 64
    pool_ceiling: bool = False
    val_headroom: bool = False
    meta_lr: float = 1e-3
    lift: LiftSettings = LiftSettings(steps=150, tasks_per_step=4, batch=12, lr=1e-3, temperature=0.01,
                                      components=24, sigma=0.1, beta=0.1, warmup=0.25, shift_lr=1e-3,
                                      adapt_beta=1.0)
    inner_steps: int = 5
    outer_lr: float = 0.5
    reset_head: bool = True
    eval_split: str = "test"
    tasks_per_group: int = 0
    rank: int = 4
    sampling_temperature: Optional[float] = 0.01
    mbc_clusters: int = 13
    retrieval_k: int = 5
    ranked: tuple = hm.METHODS

    def __post_init__(self):
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must hold at least two distinct seeds (the noise floor), got {self.seeds}")
        if self.eval_split not in ("val", "test"):
            raise ValueError(f"eval_split must be 'val' or 'test', got {self.eval_split!r}")
        unknown = [m for m in self.ranked if m not in hm.METHODS]
        if unknown or not self.ranked:
            raise ValueError(f"ranked: unknown {unknown or 'none given'} (known: {', '.join(hm.METHODS)})")

    def headroom_splits(self) -> tuple:
        """The splits the headroom covers (lift_ext.harness.suite.headroom_splits)."""
        return headroom_splits(self.eval_split, self.val_headroom)

    def map_config(self) -> MapConfig:
        return MapConfig(steps=self.adapt_steps, lr=self.adapt_lr, preconditioned=True, tol=1e-3, patience=3,
                         eval_every=5)

    def methods(self, methods=None) -> MethodSettings:
        """The harness's MethodSettings of ``methods`` (default: ``ranked``)."""
        methods = self.ranked if methods is None else methods
        return MethodSettings(lift=self.lift, meta_lr=self.meta_lr, inner_steps=self.inner_steps,
                              outer_lr=self.outer_lr, reset_head=self.reset_head, adapt=self.map_config(),
                              seeds=tuple(self.seeds), methods=tuple(methods),
                              sampling_temperature=self.sampling_temperature, mbc_clusters=self.mbc_clusters,
                              retrieval_k=self.retrieval_k)


QUICK = Settings(seeds=(0, 1), adapt_steps=5, pool_steps=8, tasks_per_group=1,
                 lift=replace(Settings().lift, steps=12, batch=8))


def bench_task(task: vt.VisionTask, shots: int, episode_batch: int) -> BenchTask:
    """``task`` as the harness sees it (support: ``shots`` images per class; FO-MAML episodes
    of ``episode_batch`` support and as many query images)."""
    return BenchTask(name=task.spec.name, group=task.spec.group,
                     support=partial(vm.support_task, task, shots),
                     pool=partial(vm.pool_task, task),
                     episode=partial(vm.episode, task, episode_batch),
                     query=vm.query_task(task))


class Suite:
    """The loaded suite: tasks, split, backbone, adapter (flat) and the harness's BenchSuite."""

    def __init__(self, settings: Settings, cache=None, progress: bool = False):
        self.settings = settings
        self.tasks = vt.load_tasks(cache=cache)
        self.split = vt.split()
        self.state, self.pretraining = vb.load_backbone(cache=cache, progress=progress)
        self.model, self.flat = vb.adapter_model(self.state, rank=settings.rank)
        self.init = self.flat.vector.detach().clone()
        self.groups = [t.spec.group for t in self.tasks]
        self.adaptations = hm.Adaptations()  # the headroom's independent fine-tuning, reused by the ranking
        self._bench = None  # (settings, BenchSuite): rebuilt only when the settings change

    def evaluated(self, split: str) -> List[int]:
        """The task indices of ``split`` (the first tasks_per_group of each group when set;
        every meta-train task)."""
        keep = 0 if split == "train" else self.settings.tasks_per_group
        out = []
        for group in vt.GROUPS:
            members = [i for i in self.split[split] if self.groups[i] == group]
            out += members[:keep] if keep else members
        return out

    def bench(self) -> BenchSuite:
        """The harness's view of the suite under the current settings: every method starts
        from the same initial adapter (the seed draws the support shots and the orders)."""
        if self._bench is None or self._bench[0] != self.settings:
            self._bench = (self.settings, self._new_bench())
        return self._bench[1]

    def _new_bench(self) -> BenchSuite:
        return BenchSuite(name="vision", flat=self.flat, initial=lambda seed: self.init, loss_fn=vb.loss_fn,
                          logits_fn=vm.logits_fn, head=head_mask(self.flat), groups=vt.GROUPS,
                          splits={split: [self.bench_task(i) for i in self.evaluated(split)]
                                  for split in ("train", "val", "test")})

    def bench_task(self, index: int) -> BenchTask:
        s = self.settings
        return bench_task(self.tasks[index], s.shots, s.lift.batch * s.lift.tasks_per_step)


def independent(suite: Suite, index: int, seed: int) -> float:
    """Query accuracy (%) of the adapter fine-tuned from its init on the task's support shots."""
    s = suite.settings
    return hm.adapted_scores(suite.bench(), suite.bench_task(index), suite.init, s.map_config(), seed,
                             adaptations=suite.adaptations)["acc"]


def headroom(suite: Suite, seeds=(0, 1), progress: bool = False) -> Dict[str, dict]:
    """Per method a record {task name: accuracy (%)} on the tasks of the settings'
    headroom_splits (module docstring); "independent_seed<k>" per seed of ``seeds``;
    ``progress``: a bar over the tasks."""
    s = suite.settings
    out: Dict[str, dict] = {"chance": {}, "prototypes": {}, **({"pool_ceiling": {}} if s.pool_ceiling else {}),
                            "label_set_oracle": {}}
    out.update({f"independent_seed{k}": {} for k in seeds})
    oracle_starts: Dict[tuple, torch.Tensor] = {}
    indices = [i for split in s.headroom_splits() for i in suite.evaluated(split)]
    for index in tqdm(indices, desc="vision headroom", unit="task", disable=not progress):
        task = suite.tasks[index]
        name = task.spec.name
        out["chance"][name] = 100.0 / task.spec.num_classes
        rows = vt.few_shot(task, s.shots, seeds[0])
        query_x, query_y = task.query
        feats = vb.features(suite.state, vb.BackboneConfig(), torch.cat([task.images[rows], query_x]))
        out["prototypes"][name] = vm.prototype_accuracy(feats[:len(rows)], task.labels[rows], feats[len(rows):], query_y)
        for k in seeds:
            out[f"independent_seed{k}"][name] = independent(suite, index, k)
        if s.pool_ceiling:
            out["pool_ceiling"][name] = vm.query_accuracy(suite.flat, pool_start(suite, [task], seeds[0]), task)
        labels = task.spec.label_set
        if labels not in oracle_starts:
            oracle_starts[labels] = label_set_start(suite, labels, seeds[0])
        out["label_set_oracle"][name] = hm.adapted_scores(suite.bench(), suite.bench_task(index), oracle_starts[labels],
                                                          s.map_config(), seeds[0], adaptations=suite.adaptations)["acc"]
    return out


def pool_start(suite: Suite, tasks: List[vt.VisionTask], seed: int) -> torch.Tensor:
    """Multitask from the initial adapter over the whole support pools of ``tasks``:
    ``pool_steps`` RMSprop steps of ``pool_batch`` images at ``adapt_lr`` (the pool ceiling's and
    the label-set oracle's training)."""
    s = suite.settings
    return baselines.train_multitask(suite.flat, [vm.pool_task(t, s.pool_batch) for t in tasks], vb.loss_fn,
                                     suite.init, steps=s.pool_steps, lr=s.adapt_lr, seed=seed)


def label_set_start(suite: Suite, labels: tuple, seed: int) -> torch.Tensor:
    """The label-set oracle's start (module docstring): pool_start over the meta-train tasks
    whose label set is ``labels``; the initial adapter when none has it."""
    siblings = [suite.tasks[i] for i in suite.split["train"] if suite.tasks[i].spec.label_set == labels]
    return pool_start(suite, siblings, seed) if siblings else suite.init


def ranking(suite: Suite, methods=None, cpu_seconds=None, state=None, progress: bool = False,
            workers: int = 1) -> hm.Scores:
    """{metric: {method: {seed: {task name: value}}}} of ``methods`` (default: the settings'
    ``ranked``) on the eval split (lift_ext.harness.ranking; ``state``: its RunState; ``workers``:
    its worker processes)."""
    s = suite.settings
    return hm.ranking(suite.bench(), s.methods(methods), split=s.eval_split, cpu_seconds=cpu_seconds,
                      adaptations=suite.adaptations, state=state, progress=progress, workers=workers)


def settings_dict(s: Settings) -> dict:
    return asdict(s)
