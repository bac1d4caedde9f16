"""The methods every suite ranks, on its flat adapter vector, and the ranking loop.

    independent   no meta-training: adapt from the suite's initial adapter
    multitask     one adapter trained on all meta-train pools (lift_ext.baselines), then adapted
    reptile       Reptile over the meta-train pools, then adapted
    fomaml        first-order MAML over meta-train episodes, then adapted
    lift          LiFT: MixtureHierarchy with ``components`` components over the meta-train
                  pools; adaptation to the MAP under its meta-test prior from the best component
    lift_k1       the same chain with K = 1
    lift_sgld     lift's prior; adaptation by pSGLD sampling of the support posterior from the
                  best component (``sampling_config``), predictions averaged over the samples
    lift_ts       lift's MAP adapter, its logits divided by one temperature fitted on the
                  task's support set (the non-Bayesian reference for calibration)
    mbc           MBC as published: a library of one adapter per meta-train task, clustered;
                  the cluster adapter of lowest support loss, adapted (lift_ext.harness.peers)
    retrieval     LoRA-Retriever as published: the library adapters of the most similar
                  meta-train tasks, merged, adapted (lift_ext.harness.peers)

lift, lift_sgld and lift_ts share one chain per seed, mbc and retrieval one library
(``ranking`` trains each once). Every meta-training method spends the same budget:
``lift.steps`` steps of ``tasks_per_step`` minibatches of ``batch`` examples (LiFT: one of each
of tasks_per_step tasks; multitask and Reptile: one minibatch of tasks_per_step * batch
examples of one task per gradient; FO-MAML: the suite's episodes; the library: that budget
split equally over the meta-train tasks), counted in gradients as lift_ext.baselines does;
MBC spends it twice (the library, then its cluster adapters). The starts of
multitask, Reptile and FO-MAML have their head reset to zero when ``reset_head`` is set. All
adaptation is lift_ext.lift.adapt on the task's support set under the same seed, with
``adapt`` (a MapConfig) except lift_sgld's. Every method is scored on the query rows by
lift_ext.harness.scoring: accuracy (%), NLL (nats per example), Brier score and ECE (%).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, fields, replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from tqdm.auto import tqdm

from lift_ext import baselines, validate
from lift_ext.calibration import METRICS
from lift_ext.harness import peers as peer_training
from lift_ext.harness.peers import PeerStarts
from lift_ext.harness.progress import RunState
from lift_ext.harness.scoring import query_scores, support_temperature
from lift_ext.harness.suite import BenchSuite, BenchTask
from lift_ext.workers import forked_map, resolve_workers
from lift_ext.lift import (ChainStart, LangevinConfig, LiFT, MapConfig, MixtureHierarchy, MixturePrior, SamplingConfig,
                           adapt, best_component)
from lift_ext.lift.config import AdaptConfig

METHODS = ("independent", "multitask", "reptile", "fomaml", "lift", "lift_k1", "lift_sgld", "lift_ts", "mbc",
           "retrieval")
START_METHODS = ("multitask", "reptile", "fomaml")
LIFT_METHODS = ("lift", "lift_k1", "lift_sgld", "lift_ts")
PEER_METHODS = ("mbc", "retrieval")
SGLD_SAMPLES = 5


@dataclass(frozen=True)
class LiftSettings:
    """A LiFT chain: ``steps`` steps of ``tasks_per_step`` meta-train tasks, one minibatch of
    ``batch`` examples of each; pSGLD ``lr`` (the RMSprop step size, change of a weight per step) at ``temperature``;
    MixtureHierarchy ``components`` K, ``sigma`` (spread of the component means around the
    initial adapter) and ``beta`` (spread of a task's adapter around its component's mean),
    both in adapter-weight units; the first ``warmup`` fraction of the steps with one
    component; non-centred ``shift_lr``. ``adapt_beta``: the task spread of the meta-test
    prior a new task adapts under (None: the chain's ``beta``). The chain's beta ties the
    meta-train tasks to their components and so sets how far the components follow their tasks
    (m_k = v_k (mu0 / sigma^2 + S_k / beta^2), v_k = 1 / (1 / sigma^2 + n_k / beta^2));
    adapt_beta sets how far a new task may move from its component."""
    steps: int
    tasks_per_step: int
    batch: int
    lr: float
    temperature: float
    components: int
    sigma: float
    beta: float
    warmup: float
    shift_lr: float
    adapt_beta: Optional[float] = None

    def __post_init__(self):
        if self.adapt_beta is not None:
            try:
                validate.number("adapt_beta", self.adapt_beta)
            except ValueError:
                raise ValueError(f"adapt_beta must be a number > 0 (finite, float32) or None (the chain's beta), "
                                 f"got {self.adapt_beta!r}") from None


@dataclass(frozen=True)
class MethodSettings:
    """Everything the methods need: ``lift`` (LiftSettings, also the budget of the other
    meta-training methods), ``meta_lr`` (their RMSprop step size), Reptile's and FO-MAML's
    ``inner_steps``, Reptile's ``outer_lr``, ``reset_head`` (module docstring), ``adapt`` (the
    MapConfig of every adaptation), ``seeds``, lift_sgld's ``sampling_temperature`` (None:
    the chain's, lift.temperature), MBC's ``mbc_clusters`` C and retrieval's ``retrieval_k``."""
    lift: LiftSettings
    meta_lr: float
    inner_steps: int
    outer_lr: float
    reset_head: bool
    adapt: MapConfig
    seeds: tuple = (0, 1, 2)
    methods: tuple = field(default=METHODS)
    sampling_temperature: Optional[float] = None
    mbc_clusters: int = 4
    retrieval_k: int = 3

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {unknown} (known: {', '.join(METHODS)})")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        for name in ("mbc_clusters", "retrieval_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")


Learned = Union[torch.Tensor, MixturePrior, PeerStarts]


def lift_chain(suite: BenchSuite, components: int, s: LiftSettings, seed: int) -> LiFT:
    """A LiFT chain with ``components`` over the meta-train pools, started at the suite's
    initial adapter of ``seed``, run for ``s.steps`` steps."""
    init = suite.initial(seed)
    lift = LiFT(suite.flat, [t.pool(s.batch) for t in suite.splits["train"]], suite.loss_fn,
                langevin=LangevinConfig(lr=s.lr, temperature=s.temperature, preconditioned=True,
                                        tasks_per_step=s.tasks_per_step),
                hierarchy=MixtureHierarchy(components=components, sigma=s.sigma, beta=s.beta,
                                           warmup_steps=int(s.warmup * s.steps), shift_lr=s.shift_lr),
                start=ChainStart(thetas=init, prior_mean=init), seed=seed)
    lift.batched_grads = suite.batched_grads
    return lift.run(s.steps, progress=False)


def lift_prior(suite: BenchSuite, components: int, s: LiftSettings, seed: int) -> MixturePrior:
    """The meta-test prior of lift_chain(suite, components, s, seed), its task spread
    s.adapt_beta when that is set (else the chain's beta)."""
    prior = lift_chain(suite, components, s, seed).meta_test_prior()
    return prior if s.adapt_beta is None else replace(prior, beta=float(s.adapt_beta))


def meta_train(method: str, suite: BenchSuite, s: MethodSettings, seed: int,
               shared: Optional[Dict] = None) -> Optional[Learned]:
    """What ``method`` adapts from: a start [D] (independent: the suite's initial adapter; the start
    methods: learned, head reset when s.reset_head), a MixturePrior (the LiFT methods: K = 1
    for lift_k1, s.lift.components for the others) or PeerStarts (mbc, retrieval). ``shared``
    (of this seed: {components: prior}, "library": [N, D]) keeps each chain's prior and the
    peers' library, so what another method already trained is not trained again."""
    train, init = suite.splits["train"], suite.initial(seed)
    shared = {} if shared is None else shared
    if method == "independent":
        return init
    if method in LIFT_METHODS:
        components = 1 if method == "lift_k1" else s.lift.components
        if components not in shared:
            shared[components] = lift_prior(suite, components, s.lift, seed)
        return shared[components]
    if method in PEER_METHODS:
        if "library" not in shared:
            shared["library"] = peer_training.train_library(suite, s, seed)
        return peer_training.train(method, suite, s, seed, shared["library"])
    budget = dict(steps=s.lift.steps, lr=s.meta_lr, seed=seed)
    pools = [t.pool(s.lift.batch * s.lift.tasks_per_step) for t in train]
    if method == "multitask":
        theta = baselines.train_multitask(suite.flat, pools, suite.loss_fn, init, **budget)
    elif method == "reptile":
        theta = baselines.train_reptile(suite.flat, pools, suite.loss_fn, init, inner_steps=s.inner_steps,
                                        outer_lr=s.outer_lr, **budget)
    elif method == "fomaml":
        def episode(gen):
            return train[baselines.draw_index(len(train), gen)].episode(gen)
        theta = baselines.train_fomaml(suite.flat, episode, suite.loss_fn, init, inner_steps=s.inner_steps,
                                       **budget)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return suite.without_head(theta) if s.reset_head else theta


def sampling_config(s: MethodSettings) -> SamplingConfig:
    """lift_sgld's adaptation: pSGLD at s.sampling_temperature (None: the chain's temperature;
    the posterior tempered to T / n, SamplingConfig) with the MAP adaptation's lr,
    preconditioning and step limit S = adapt.steps (the MAP adaptation's budget, as the
    Shakespeare suites' lift_sgld): the first S // 2 steps a burn-in, then every thin-th
    iterate kept, thin = ceil((S - S // 2) / SGLD_SAMPLES), i.e. at most SGLD_SAMPLES samples."""
    steps = s.adapt.steps
    burn_in = steps // 2
    return SamplingConfig(steps=steps, lr=s.adapt.lr, preconditioned=s.adapt.preconditioned,
                          temperature=s.lift.temperature if s.sampling_temperature is None else s.sampling_temperature,
                          burn_in=burn_in, thin=-(-(steps - burn_in) // SGLD_SAMPLES))


class Adaptations:
    """The adaptations of a run so far, so that one done twice is done once: adapting is a
    deterministic function of (suite, task, learned start or prior, config, seed), so lift_ts
    scores the MAP adapter lift already found, and a ranking's independent fine-tuning reuses
    the headroom's. Keyed by the suite and task names, a SHA-1 of the bytes of the support set's
    tensors and of the learned tensors, the config (a frozen dataclass) and the seed. Under a
    prior the start component (lift_ext.lift.best_component: K forward passes over the support
    set) is chosen once per support set and prior, so lift and lift_sgld choose it once."""

    def __init__(self):
        self._done: Dict[tuple, object] = {}
        self._component: Dict[tuple, int] = {}

    @staticmethod
    def _content(suite: BenchSuite, task: BenchTask, support, learned: Learned) -> tuple:
        digest = hashlib.sha1()
        tensors = ((learned.means, learned.variances, learned.weights, torch.tensor(learned.beta))
                   if isinstance(learned, MixturePrior) else (learned,))
        for t in (*support.full(), *tensors):
            digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return suite.name, task.name, type(learned).__name__, digest.hexdigest()

    def adapt(self, suite: BenchSuite, task: BenchTask, learned: Learned, config: AdaptConfig, seed: int):
        """lift_ext.lift.adapt's result for ``task``'s support set under ``seed``: from a start
        (no prior) or under a prior from its best component; done once per key."""
        support = task.support(seed)
        content = self._content(suite, task, support, learned)
        key = content + (config, seed)
        if key not in self._done:
            if isinstance(learned, MixturePrior):
                if content not in self._component:
                    self._component[content] = best_component(suite.flat, support, suite.loss_fn, learned)
                self._done[key] = adapt(suite.flat, support, suite.loss_fn, prior=learned, config=config,
                                        start=self._component[content], seed=seed)
            else:
                self._done[key] = adapt(suite.flat, support, suite.loss_fn, config=config, start=learned, seed=seed)
        return self._done[key]


def adapted_scores(suite: BenchSuite, task: BenchTask, learned: Learned, config: AdaptConfig, seed: int,
                   temperature_scaled: bool = False, adaptations: Optional[Adaptations] = None) -> Dict[str, object]:
    """Query scores (lift_ext.harness.scoring.query_scores) of ``task`` after adapting to its
    support set under ``seed`` with ``config`` (Adaptations.adapt; ``adaptations`` keeps what
    was done before). A MapConfig scores the MAP adapter, a SamplingConfig the average over the
    kept samples; ``temperature_scaled`` divides the MAP adapter's logits by the temperature
    fitted on the support set."""
    if temperature_scaled and not isinstance(config, MapConfig):
        raise ValueError("temperature_scaled needs a MapConfig (one adapter to scale)")
    result = (Adaptations() if adaptations is None else adaptations).adapt(suite, task, learned, config, seed)
    if not temperature_scaled:
        return query_scores(suite, result.samples, task.query)
    return query_scores(suite, [result.theta], task.query,
                        support_temperature(suite, result.theta, task.support(seed)))


def method_scores(method: str, suite: BenchSuite, task: BenchTask, learned: Learned, s: MethodSettings,
                  seed: int, adaptations: Optional[Adaptations] = None) -> Dict[str, object]:
    """adapted_scores as ``method`` adapts: lift_sgld by sampling_config, lift_ts temperature
    scaled, every other method to the MAP under s.adapt; mbc and retrieval from their start for
    the task (PeerStarts.start)."""
    config = sampling_config(s) if method == "lift_sgld" else s.adapt
    if isinstance(learned, PeerStarts):
        learned = learned.start(suite, suite.initial(seed), task.support(seed))
    return adapted_scores(suite, task, learned, config, seed, temperature_scaled=method == "lift_ts",
                          adaptations=adaptations)


Scores = Dict[str, Dict[str, Dict[int, Dict[str, object]]]]


def share_key(method: str, s: MethodSettings) -> tuple:
    """What ``method`` shares with other methods of a seed: its LiFT chain (by its number of
    components), the peers' library, or nothing (its own name)."""
    if method in LIFT_METHODS:
        return "chain", 1 if method == "lift_k1" else s.lift.components
    if method in PEER_METHODS:
        return ("library",)
    return (method,)


def work_units(pending: Sequence[Tuple[int, str]], s: MethodSettings) -> List[Tuple[int, Tuple[str, ...]]]:
    """The (seed, method) pieces of ``pending`` grouped into units of work that share nothing:
    the methods of one seed with the same share_key, in the order of s.methods; the units that
    train a chain or the library (the longest) first."""
    groups: Dict[Tuple[int, tuple], List[str]] = {}
    for seed, method in pending:
        groups.setdefault((seed, share_key(method, s)), []).append(method)
    units = [(seed, tuple(sorted(methods, key=s.methods.index))) for (seed, _), methods in groups.items()]
    return sorted(units, key=lambda unit: unit[1][0] not in LIFT_METHODS + PEER_METHODS)  # stable: seeds in order


def _piece(method: str, suite: BenchSuite, s: MethodSettings, split: str, seed: int, shared: Dict,
           adaptations: Adaptations, tick) -> Dict[str, object]:
    """One (seed, method) of the ranking: {"scores": {task name: method_scores}, "cpu_seconds"}
    (meta-training, adapting and scoring, in this process); ``tick()`` after each task."""
    start = time.process_time()
    learned = meta_train(method, suite, s, seed, shared)
    per_task = {}
    for t in suite.splits[split]:
        per_task[t.name] = method_scores(method, suite, t, learned, s, seed, adaptations)
        tick()
    return {"scores": per_task, "cpu_seconds": time.process_time() - start}


def ranking(suite: BenchSuite, s: MethodSettings, split: str = "test", cpu_seconds: Optional[Dict] = None,
            adaptations: Optional[Adaptations] = None, state: Optional[RunState] = None,
            progress: bool = False, workers: int = 1) -> Scores:
    """{metric: {method: {seed: {task name: value}}}} over the tasks of ``split`` for every seed,
    the metrics lift_ext.calibration.METRICS (acc in %, nll in nats per example, brier, ece in
    %) and "bins" (each task's reliability bins, a list [15][3]). ``cpu_seconds`` (a dict)
    receives each method's CPU seconds of meta-training and adaptation; a LiFT chain shared by
    several methods counts under the first of them in s.methods, an adaptation shared (Adaptations:
    ``adaptations`` may hold the headroom's) under the first method that did it. ``state`` (a
    RunState) keeps every finished (seed, method), LiFT chain and peers' library, and a resumed run takes them
    from it (with the CPU seconds they cost then) instead of computing them again. ``progress``
    shows a bar over the (seed, method) pieces, one tick per task adapted (per unit of work with
    workers). ``workers`` (lift_ext.workers.resolve_workers: 0 = one per CPU, 1 = this
    process) runs the work_units in forked processes: the same scores to the bit, the wall time
    divided by up to the number of workers."""
    cpu_seconds = {} if cpu_seconds is None else cpu_seconds
    adaptations = Adaptations() if adaptations is None else adaptations
    state = RunState(None, "") if state is None else state
    tasks = suite.splits[split]
    pending = [(seed, m) for seed in s.seeds for m in s.methods if _piece_key(split, seed, m) not in state]

    def run_unit(unit):
        seed, methods = unit
        shared = _shared_of(state, seed, {})  # this process's copy of the state: read only
        return seed, {m: _piece(m, suite, s, split, seed, shared, adaptations, lambda: None) for m in methods}, shared

    forked = resolve_workers(workers) > 1
    with forked_map(run_unit, work_units(pending, s) if forked else [], workers) as units:  # forked before the bar
        bar = tqdm(total=len(s.seeds) * len(s.methods) * len(tasks), desc=f"{suite.name} ranking", unit="task",
                   disable=not progress, mininterval=1.0)
        bar.update((len(s.seeds) * len(s.methods) - len(pending)) * len(tasks))
        if not forked:
            shared_of_seed: Dict[int, Dict] = {}
            for seed, method in pending:
                bar.set_postfix_str(f"seed {seed}, {method}")
                shared = _shared_of(state, seed, shared_of_seed.setdefault(seed, {}))
                state.put(_piece_key(split, seed, method), _piece(method, suite, s, split, seed, shared, adaptations,
                                                                  bar.update))
                _keep_shared(state, seed, shared)
        for seed, pieces, shared in units:
            for method, piece in pieces.items():
                state.put(_piece_key(split, seed, method), piece)
            _keep_shared(state, seed, shared)
            bar.update(len(pieces) * len(tasks))
        bar.close()
    out: Scores = {key: {m: {} for m in s.methods} for key in METRICS + ("bins",)}
    for seed in s.seeds:
        for method in s.methods:
            piece = state[_piece_key(split, seed, method)]
            for metric in out:
                out[metric][method][seed] = {name: scores[metric] for name, scores in piece["scores"].items()}
            cpu_seconds[method] = cpu_seconds.get(method, 0.0) + piece["cpu_seconds"]
    return out


def _piece_key(split: str, seed: int, method: str) -> str:
    return f"ranking/{split}/{seed}/{method}"


def _shared_of(state: RunState, seed: int, shared: Dict) -> Dict:
    """``shared`` with what ``state`` keeps of ``seed``: its chains' priors and the peers' library."""
    for key in [k for k in state.keys() if k.startswith(f"chain/{seed}/")]:
        components = int(key.rsplit("/", 1)[1])
        if components not in shared:
            shared[components] = MixturePrior(**state[key])
    if "library" not in shared and f"library/{seed}" in state:
        shared["library"] = state[f"library/{seed}"]
    return shared


def _keep_shared(state: RunState, seed: int, shared: Dict) -> None:
    for name, value in shared.items():
        if name == "library":
            if f"library/{seed}" not in state:
                state.put(f"library/{seed}", value)
        elif f"chain/{seed}/{name}" not in state:
            state.put(f"chain/{seed}/{name}", {f.name: getattr(value, f.name) for f in fields(value)})
