"""Meta-training of every method, and the starting point / prior each one adapts from.

All methods work on the same flat LoRA vector (``FlatParams``, D floats) of the same
backbone. A meta-training method turns the meta-train role pools into either a starting
vector (multitask, Reptile, FO-MAML), a mixture prior (LiFT, LiFT K=1) or a library of
per-role adapters (retrieval, MBC); ``adapt_role`` then runs the same number of
RMSprop-preconditioned steps on a test role's support windows (``lift_ext.lift.adapt``).

Steps below are ``lift_ext.sgld_step`` at temperature 0 with a running square average, i.e.
RMSprop (alpha = 0.99): theta <- theta - lr * g / (sqrt(v) + eps), g the gradient of the mean
next-character cross-entropy (nats) of one minibatch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import torch
from tqdm.auto import tqdm

from lift_ext.shakespeare.episodes import sample_episode, sample_role
from lift_ext.gmm import OnlineGMM
from lift_ext.lift import LiFT, FlatParams, TensorTask, adapt
from lift_ext.shakespeare.backbone import lm_loss
from lift_ext.sgld import sgld_step


def window_loss(call, batch) -> torch.Tensor:
    """Mean next-character cross-entropy (nats per predicted character) of a batch (windows,)."""
    return lm_loss(call, batch[0])


class _RMSprop:
    """RMSprop on one flat vector through the fused kernel (temperature 0: no noise)."""

    def __init__(self, theta: torch.Tensor, lr: float):
        self.theta, self.lr = theta, lr
        self.square_avg = torch.zeros_like(theta)

    def step(self, grad: torch.Tensor) -> None:
        sgld_step(self.theta, grad, lr=self.lr, temperature=0.0, square_avg=self.square_avg)


@dataclass
class MetaState:
    """What adaptation needs from meta-training, per method (all vectors float32 [D]).

    ``init``: the PEFT initialisation (LoRA A random, B = 0); ``starts``: learned starting
    vectors (multitask, reptile, fomaml); ``priors``: mixtures over LiFT's phi samples (lift:
    K components, lift_k1: one); ``library``: LiFT's per-role task vectors theta_i [N, D];
    ``centres``: k-means centres of the library [C, D]."""
    init: torch.Tensor
    starts: Dict[str, torch.Tensor] = field(default_factory=dict)
    priors: Dict[str, OnlineGMM] = field(default_factory=dict)
    library: Optional[torch.Tensor] = None
    centres: Optional[torch.Tensor] = None

    def to_state(self) -> dict:
        return {"init": self.init, "starts": dict(self.starts), "library": self.library,
                "centres": self.centres, "priors": {k: g.state_dict() for k, g in self.priors.items()},
                "prior_sizes": {k: [g.n_components, g.dim] for k, g in self.priors.items()}}

    @classmethod
    def from_state(cls, state: dict) -> "MetaState":
        priors = {}
        for name, (k, d) in state["prior_sizes"].items():
            gmm = OnlineGMM(k, d)
            gmm.load_state_dict(state["priors"][name])
            priors[name] = gmm
        return cls(init=state["init"], starts=dict(state["starts"]), priors=priors,
                   library=state["library"], centres=state["centres"])


def train_multitask(flat: FlatParams, tasks: Sequence[TensorTask], init: torch.Tensor, *, steps: int,
                    lr: float, seed: int, progress: bool = True) -> torch.Tensor:
    """One adapter for all meta-train roles: ``steps`` RMSprop steps, each on a minibatch of
    a uniformly drawn role's pool."""
    gen = torch.Generator().manual_seed(seed)
    theta = init.clone()
    opt = _RMSprop(theta, lr)
    for _ in tqdm(range(steps), desc="multitask", disable=not progress, mininterval=1.0):
        batch = tasks[sample_role(len(tasks), gen)].batch(gen)
        _, grad = flat.loss_and_grad(theta, lambda call: window_loss(call, batch))
        opt.step(grad)
    return theta


def train_reptile(flat: FlatParams, tasks: Sequence[TensorTask], init: torch.Tensor, *, steps: int,
                  inner_steps: int, lr: float, outer_lr: float, seed: int,
                  progress: bool = True) -> torch.Tensor:
    """Reptile: per outer iteration, ``inner_steps`` RMSprop steps on one role's pool from
    phi, then phi <- phi + outer_lr * (theta - phi). steps // inner_steps outer iterations,
    so it uses the same number of gradients as the other methods. The inner loops share one
    running square average (a fresh one makes RMSprop's first steps ~10x too large)."""
    gen = torch.Generator().manual_seed(seed)
    phi = init.clone()
    square_avg = torch.zeros_like(phi)
    for _ in tqdm(range(max(1, steps // inner_steps)), desc="reptile", disable=not progress, mininterval=1.0):
        task = tasks[sample_role(len(tasks), gen)]
        theta = phi.clone()
        for _ in range(inner_steps):
            batch = task.batch(gen)
            _, grad = flat.loss_and_grad(theta, lambda call: window_loss(call, batch))
            sgld_step(theta, grad, lr=lr, temperature=0.0, square_avg=square_avg)
        phi.add_(theta - phi, alpha=outer_lr)
    return phi


def train_fomaml(flat: FlatParams, pools: Sequence[torch.Tensor], init: torch.Tensor, *, steps: int,
                 inner_steps: int, lr: float, n_support: int, n_query: int, seed: int,
                 progress: bool = True) -> torch.Tensor:
    """First-order MAML: per episode (support / query minibatches of one role's pool),
    ``inner_steps`` RMSprop steps on the support windows from phi, then one outer RMSprop
    step on phi with the query-loss gradient at the adapted vector (the first-order
    approximation drops the Jacobian of the inner loop). steps // (inner_steps + 1)
    episodes: the same number of gradients as the other methods."""
    gen = torch.Generator().manual_seed(seed)
    phi = init.clone()
    outer = _RMSprop(phi, lr)
    inner_avg = torch.zeros_like(phi)
    for _ in tqdm(range(max(1, steps // (inner_steps + 1))), desc="fomaml", disable=not progress,
                  mininterval=1.0):
        support, query = sample_episode(pools[sample_role(len(pools), gen)], n_support, n_query, gen)
        theta = phi.clone()
        for _ in range(inner_steps):
            _, grad = flat.loss_and_grad(theta, lambda call: window_loss(call, (support,)))
            sgld_step(theta, grad, lr=lr, temperature=0.0, square_avg=inner_avg)
        _, grad = flat.loss_and_grad(theta, lambda call: window_loss(call, (query,)))
        outer.step(grad)
    return phi


def train_lift(model: torch.nn.Module, tasks: Sequence[TensorTask], *, steps: int, sigma: float,
               beta: float, lr: float, temperature: float, n_components: int, burn_in: int, thin: int,
               seed: int, preconditioned: bool = False, progress: bool = True):
    """LiFT's SGLD-Gibbs chain over (phi, theta_1..N) with ``steps`` steps (one role's
    minibatch each). Its phi samples feed two mixtures: the K-component one of the sampler
    (``lift``) and a one-component one (``lift_k1``, the ablation: the same posterior samples,
    one Gaussian). Returns (gmm_K, gmm_1, thetas [N, D])."""
    lift = LiFT(model, tasks, window_loss, sigma=sigma, beta=beta, lr=lr, temperature=temperature,
                phi_update="gibbs", burn_in=burn_in, thin=thin, n_components=n_components, seed=seed,
                preconditioned=preconditioned)
    single = OnlineGMM(1, lift.flat.dim, device=lift.flat.vector.device)
    sampler = lift.sampler
    for _ in tqdm(range(steps), desc="LiFT SGLD-Gibbs", disable=not progress, mininterval=1.0):
        before = sampler.num_gmm_samples
        sampler.step()
        if sampler.num_gmm_samples != before:
            single.update(sampler.phi)
    return lift.gmm, single, sampler.thetas.clone()


def kmeans(x: torch.Tensor, k: int, seed: int, iters: int = 25) -> torch.Tensor:
    """Lloyd's k-means of the rows of x [N, D] with k-means++ seeding (private generator):
    centres [min(k, N), D] minimising the summed squared Euclidean distance."""
    gen = torch.Generator().manual_seed(seed)
    k = min(k, x.shape[0])
    centres = x[int(torch.randint(x.shape[0], (1,), generator=gen))][None].clone()
    while centres.shape[0] < k:
        d2 = torch.cdist(x, centres).pow(2).min(1).values
        pick = int(torch.multinomial(d2 / d2.sum(), 1, generator=gen)) if float(d2.sum()) > 0 \
            else int(torch.randint(x.shape[0], (1,), generator=gen))
        centres = torch.cat([centres, x[pick][None]])
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        new = torch.stack([x[assign == j].mean(0) if bool((assign == j).any()) else centres[j]
                           for j in range(k)])
        if torch.equal(new, centres):
            break
        centres = new
    return centres


def best_by_support_loss(flat: FlatParams, candidates: torch.Tensor, task: TensorTask) -> int:
    """Index of the row of candidates [M, D] with the lowest mean loss on the support set."""
    with torch.no_grad():
        losses = [float(window_loss(flat.call(c), task.full())) for c in candidates]
    return min(range(len(losses)), key=losses.__getitem__)


def start_vector(method: str, state: MetaState, flat: FlatParams, task: TensorTask) -> Optional[torch.Tensor]:
    """Where a non-LiFT method starts adapting on ``task`` (None for the LiFT variants, whose
    start is the best mixture component, chosen inside ``lift_ext.lift.adapt``): the PEFT init
    (independent), the learned start (multitask, reptile, fomaml), or the library vector /
    k-means centre with the lowest support loss (retrieval / mbc)."""
    if method in ("lift", "lift_k1"):
        return None
    if method == "independent":
        return state.init
    if method in ("multitask", "reptile", "fomaml"):
        return state.starts[method]
    if method == "retrieval":
        return state.library[best_by_support_loss(flat, state.library, task)]
    if method == "mbc":
        return state.centres[best_by_support_loss(flat, state.centres, task)]
    raise ValueError(f"unknown method {method!r}")


def adapt_role(method: str, state: MetaState, flat: FlatParams, task: TensorTask, *, steps: int,
               lr: float, beta: float, seed: int, start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The adapted vector [D] of ``method`` on one role's support task: ``steps`` RMSprop
    steps of lift_ext.lift.adapt. LiFT variants: MAP under their mixture prior from the best
    component; the others without a prior from ``start`` (default: ``start_vector``)."""
    common = dict(steps=steps, lr=lr, seed=seed)
    if method in ("lift", "lift_k1"):
        return adapt(flat, task, window_loss, prior=state.priors[method], beta=beta,
                     init="best_component", **common).theta
    start = start_vector(method, state, flat, task) if start is None else start
    return adapt(flat, task, window_loss, init="init", init_vector=start, **common).theta


@torch.no_grad()
def query_accuracy(flat: FlatParams, theta: torch.Tensor, windows: torch.Tensor) -> float:
    """Fraction of correct argmax next-character predictions over all positions of windows."""
    call = flat.call(theta)
    logits = call(input_ids=windows[:, :-1]).logits
    return float((logits.argmax(-1) == windows[:, 1:]).float().mean())


__all__ = ["MetaState", "window_loss", "train_multitask", "train_reptile", "train_fomaml",
                      "train_lift", "kmeans", "best_by_support_loss", "start_vector", "adapt_role", "query_accuracy"]
