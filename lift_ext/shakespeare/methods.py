"""Meta-training of every method, and the starting point / prior each one adapts from.

All methods work on the same flat LoRA vector (``FlatParams``, D floats) of the same
backbone. A meta-training method turns the meta-train role pools into either a starting
vector (multitask, Reptile, FO-MAML), one adapter per family (the oracle), a mixture prior
(the LiFT variants, lift_ext.shakespeare.lift_methods) or a library of per-role adapters,
each trained independently, with MBC's cluster adapters and retrieval's keys
(lift_ext.shakespeare.peers; trained by lift_ext.shakespeare.library); ``adapt_role`` then
adapts each to a test role's support windows with the same ``lift_ext.lift.adapt`` settings
("backbone", the reference, is not adapted).

Multitask, Reptile and FO-MAML are the loops of lift_ext.baselines (RMSprop steps through
``lift_ext.sgld_step`` at temperature 0) on the mean next-character cross-entropy (nats) of
one minibatch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from lift_ext import baselines
from lift_ext.lift import FlatParams, MapConfig, MixturePrior, SamplingConfig, TensorTask, adapt, best_component
from lift_ext.shakespeare.backbone import target_loss
from lift_ext.shakespeare.config import PEER_OPTIONS
from lift_ext.shakespeare.episodes import sample_episode
from lift_ext.peers import best_by_support_loss, merge, retrieve
from lift_ext.shakespeare.peers import pooled_features

LIFT_METHODS = ("lift", "lift_k1", "lift_paper", "lift_sgld", "lift_ts")
# Scored with a temperature fitted on each support set (lift_ext.shakespeare.scoring.fit_temperature).
TEMPERATURE_SCALED = ("lift_ts",)
START_METHODS = ("multitask", "reptile", "fomaml")
# The library-based peers (lift_ext.shakespeare.peers); each has one option chosen on meta-val
# (MBC: the number of clusters C; retrieval: the number k of adapters retrieved).
PEER_METHODS = tuple(PEER_OPTIONS)


def window_loss(call, batch) -> torch.Tensor:
    """Mean cross-entropy (nats per predicted character) of a batch (inputs, targets)."""
    return target_loss(call, batch[0], batch[1])


def _prior_state(prior: MixturePrior) -> dict:
    return {"means": prior.means, "variances": prior.variances, "weights": prior.weights, "beta": prior.beta}


@dataclass
class MetaState:
    """What adaptation needs from meta-training, per method (all vectors float32 [D]).

    ``init``: the PEFT initialisation (LoRA A random, B = 0); ``starts``: learned starting
    vectors (multitask, reptile, fomaml); ``family_adapters`` [F, D]: the oracle's adapter of
    each family; ``priors``: the LiFT variants' meta-test priors; ``library`` [N, D]: one
    adapter per meta-train role, each trained alone; ``keys`` [N, H]: retrieval's key of each
    role (the backbone's pooled features of its pool); ``clusters``: MBC's cluster adapters
    [C', D] for each number of clusters C tried (C' = min(C, N)); ``info``: JSON-able notes
    per method (e.g. the chain's task visits, the library's budget, the cluster sizes)."""
    init: torch.Tensor
    starts: Dict[str, torch.Tensor] = field(default_factory=dict)
    family_adapters: Optional[torch.Tensor] = None
    priors: Dict[str, MixturePrior] = field(default_factory=dict)
    library: Optional[torch.Tensor] = None
    keys: Optional[torch.Tensor] = None
    clusters: Dict[int, torch.Tensor] = field(default_factory=dict)
    info: Dict[str, dict] = field(default_factory=dict)

    def to_state(self) -> dict:
        return {"init": self.init, "starts": dict(self.starts), "family_adapters": self.family_adapters,
                "library": self.library, "keys": self.keys, "clusters": dict(self.clusters), "info": dict(self.info),
                "priors": {k: _prior_state(p) for k, p in self.priors.items()}}

    @classmethod
    def from_state(cls, state: dict, device) -> "MetaState":
        def dev(x):
            return None if x is None else x.to(device)
        priors = {k: MixturePrior(p["means"], p["variances"], p["weights"], p["beta"]).to(device)
                  for k, p in state["priors"].items()}
        return cls(init=dev(state["init"]), starts={k: dev(v) for k, v in state["starts"].items()},
                   family_adapters=dev(state["family_adapters"]), priors=priors,
                   library=dev(state["library"]), keys=dev(state["keys"]),
                   clusters={int(c): dev(v) for c, v in state["clusters"].items()}, info=dict(state["info"]))


def train_multitask(flat: FlatParams, tasks: Sequence[TensorTask], init: torch.Tensor, *, steps: int,
                    lr: float, seed: int, progress: bool = True, desc: str = "multitask") -> torch.Tensor:
    """lift_ext.baselines.train_multitask on the next-character loss: one adapter for all
    ``tasks``, ``steps`` RMSprop steps, each on a minibatch of a uniformly drawn task's pool."""
    return baselines.train_multitask(flat, tasks, window_loss, init, steps=steps, lr=lr, seed=seed, progress=progress,
                                     desc=desc)


def train_family_adapters(flat: FlatParams, tasks: Sequence[TensorTask], families: Sequence[int],
                          n_families: int, init: torch.Tensor, *, steps: int, lr: float, seed: int,
                          progress: bool = True) -> torch.Tensor:
    """The oracle's adapters [F, D]: for each family, multitask training on the meta-train
    roles of that family with steps // F steps (the same total budget as one method); a family
    without meta-train roles keeps ``init``."""
    out = init.expand(n_families, -1).clone()
    for f in range(n_families):
        members = [t for t, g in zip(tasks, families) if g == f]
        if members:
            out[f] = train_multitask(flat, members, init, steps=max(1, steps // n_families), lr=lr,
                                     seed=seed * 1_000 + f, progress=progress, desc=f"oracle family {f}")
    return out


def train_reptile(flat: FlatParams, tasks: Sequence[TensorTask], init: torch.Tensor, *, steps: int,
                  inner_steps: int, lr: float, outer_lr: float, seed: int,
                  progress: bool = True) -> torch.Tensor:
    """lift_ext.baselines.train_reptile on the next-character loss over the role pools."""
    return baselines.train_reptile(flat, tasks, window_loss, init, steps=steps, inner_steps=inner_steps, lr=lr,
                                   outer_lr=outer_lr, seed=seed, progress=progress)


def train_fomaml(flat: FlatParams, pools: Sequence[tuple], init: torch.Tensor, *, steps: int,
                 inner_steps: int, lr: float, n_support: int, n_query: int, seed: int,
                 progress: bool = True) -> torch.Tensor:
    """lift_ext.baselines.train_fomaml on the next-character loss; an episode is
    ``sample_episode`` (n_support / n_query windows) of a uniformly drawn role's pool."""
    def episode(gen: torch.Generator):
        return sample_episode(pools[baselines.draw_index(len(pools), gen)], n_support, n_query, gen)
    return baselines.train_fomaml(flat, episode, window_loss, init, steps=steps, inner_steps=inner_steps, lr=lr,
                                  seed=seed, progress=progress)


def start_vector(method: str, state: MetaState, flat: FlatParams, task: TensorTask, family: int,
                 option: Optional[int] = None) -> Optional[Union[int, torch.Tensor]]:
    """Where a method starts adapting on ``task`` (a role of ``family``): for the LiFT variants
    the index of their prior's best component (lift_ext.lift.best_component, chosen once per role
    for every lr tried); the PEFT init (independent, backbone); the learned start (multitask, reptile, fomaml); the true
    family's adapter (oracle); of the ``option`` = C cluster adapters the one with the lowest
    support loss (mbc); the similarity-weighted average of the ``option`` = k library adapters
    whose keys are closest to the support inputs' pooled features at the PEFT init (retrieval)."""
    if method in LIFT_METHODS:
        return best_component(flat, task, window_loss, state.priors[method])
    if method in ("independent", "backbone"):
        return state.init
    if method in START_METHODS:
        return state.starts[method]
    if method == "oracle":
        return state.family_adapters[family]
    if method in PEER_METHODS and option is None:
        raise ValueError(f"method {method!r} needs its option (C or k), got None")
    if method == "mbc":
        adapters = state.clusters[option]
        return adapters[best_by_support_loss(flat, adapters, window_loss, task.full())]
    if method == "retrieval":
        query = pooled_features(flat, state.init, task.full()[0])
        return merge(state.library, *retrieve(query, state.keys, option))
    raise ValueError(f"unknown method {method!r}")


def adapt_role(method: str, state: MetaState, flat: FlatParams, task: TensorTask, *,
               start: Union[int, torch.Tensor], config: MapConfig, seed: int, temperature: float
               ) -> Tuple[List[torch.Tensor], Optional[int]]:
    """(adapted vectors, chosen prior component) of ``method`` on one role's support ``task``
    from ``start`` (start_vector's): lift_ext.lift.adapt with ``config`` (steps, lr, stopping
    rule) and ``seed``, under the method's prior from its best component (LiFT variants: MAP,
    one vector; ``lift_sgld``: pSGLD with the same steps and lr at ``temperature``, the samples
    kept after steps // 2, whose predictions are averaged), else without a prior. The reference
    "backbone" is not adapted."""
    if method == "backbone":
        return [state.init], None
    if method in LIFT_METHODS:
        how = SamplingConfig(steps=config.steps, lr=config.lr, preconditioned=config.preconditioned,
                             temperature=temperature) if method == "lift_sgld" else config
        out = adapt(flat, task, window_loss, prior=state.priors[method], config=how, start=start, seed=seed)
        return out.samples, out.component
    return adapt(flat, task, window_loss, config=config, start=start, seed=seed).samples, None


__all__ = ["MetaState", "window_loss", "TEMPERATURE_SCALED", "train_multitask", "train_family_adapters", "train_reptile", "train_fomaml",
           "PEER_METHODS", "start_vector", "adapt_role", "LIFT_METHODS", "START_METHODS"]
