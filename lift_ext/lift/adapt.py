"""Meta-test: adapting an adapter to a new task from its support set (docs/design.md
section 5).

Prior (optional): a `MixturePrior` p(theta) = sum_k w_k N(theta; m_k, diag(v_k) + beta^2 I)
(an `OnlineGMM` over phi samples converts to one: `MixturePrior.from_gmm(gmm, beta)`). The
support objective, in units of the loss per example (nats per example for a log-loss):

    J(theta) = mean support loss(theta) + (C - log p(theta)) / n,   n = task.num_examples,

with C = `prior.log_peak()` leaving the normalising constants out (C - log p >= -log K is the
prior's cost in nats; docs/design.md section 5). Its prior part has gradient
(1/n) sum_k r_k(theta) (theta - m_k) / (v_k + beta^2), added by the fused `gmm_prior_grad_`
op (r from the E-step kernel). Without a prior J is the mean support loss (plain fine-tuning,
the no-meta-learning baseline).

Start (`start`): "best_component" (default) starts at the mean of the component with the
largest score_k = log w_k - n * mean support loss(m_k), i.e. log w_k + log p(support | m_k):
the log posterior p(z = k | support) up to a constant, with each component's evidence
int p(support | theta) N(theta; m_k, .) dtheta replaced by its value at theta = m_k (exact as
the component's spread shrinks to 0; the neglected Occam factor is the same for components
of equal spread). It costs K forward passes over the support set; `best_component` gives the
same choice alone, so that several adaptations of one support set under one prior (another
config, lr or seed) choose once and pass it on as an int. An int k starts at component k's
mean m_k; "mean" starts at sum_k w_k m_k; a Tensor [D] at that adapter (e.g. the PEFT
initialisation), which a run without a prior needs.

Steps use `lift_ext.sgld_step` on minibatches `task.batch(generator)`; with
``preconditioned=True`` (the configs' default) they are RMSprop-preconditioned, the average of g^2 starting
at 0, which the step replaces by g^2 itself while it is 0 (so no weight takes an oversized
first step, whatever its first gradient), and damped by the prior's largest curvature,
eps' = max(eps, lr * prior.max_precision() / n), so a weight whose gradient the prior dominates
settles on its MAP instead of jittering around it by lr (docs/design.md section 5).

MapConfig: temperature 0 (RMSprop / SGD on J), run to a stopping rule. J on the whole
support set (`task.full()`) is evaluated at the start and after every `eval_every` steps (and
after the last); where the minibatch is the whole support set (`task.batch(g)` returns
`task.full()` itself, as a TensorTask with no more rows than its batch size does), J at an
iterate is read off the next step's own forward pass instead of a pass of its own (the same
value). The run stops when the best J seen has improved by at most `tol` over the
last `patience` evaluations ("no_improvement"), when J is not finite ("non_finite"), or after
`steps` steps ("max_steps"). It returns the iterate with the best J seen, so the result is
never worse on J than the start.

SamplingConfig: pSGLD at temperature T/n (samples of the tempered posterior), exactly `steps`
steps; after `burn_in` steps every `thin`-th theta is kept, and `average_predictions` averages
predictions over them.
"""
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple, Union

import torch

from lift_ext import validate
from lift_ext.lift.config import AdaptConfig, MapConfig, SamplingConfig, check_type
from lift_ext.lift.flat import FlatParams
from lift_ext.lift.prior import MixturePrior
from lift_ext.lift.tasks import Task
from lift_ext.sgld import sgld_step
from lift_ext.types import LossFn

StartLike = Union[str, int, torch.Tensor]

STARTS = ("best_component", "mean")
STOP_REASONS = ("no_improvement", "non_finite", "max_steps")


@dataclass
class Adapted:
    """The result of `adapt`.

    theta: the MAP estimate (the best iterate by J), or the last SGLD iterate [D] float32.
    samples: the kept SGLD samples ([theta] in MAP mode, or when none was kept).
    component: the component started from (start "best_component" or an int), else None.
    scores: score_k = log w_k - n * mean support loss(m_k) of every component [K] float64
        (start "best_component"), else None; softmax(scores) = the plug-in p(z = k | support).
    losses: the minibatch mean loss before each step.
    objectives: (steps done, J) at every evaluation of the full-support objective (MAP mode).
    best_step: the steps done when theta was reached (MAP mode; steps_run in SGLD mode).
    steps_run: the steps taken.
    stop_reason: one of STOP_REASONS (SGLD mode: "max_steps").
    """

    theta: torch.Tensor
    samples: List[torch.Tensor]
    component: Optional[int] = None
    scores: Optional[torch.Tensor] = None
    losses: List[float] = field(default_factory=list)
    objectives: List[Tuple[int, float]] = field(default_factory=list)
    best_step: int = 0
    steps_run: int = 0
    stop_reason: str = "max_steps"


def checked_prior(prior: Optional[MixturePrior], dim: int, device: torch.device) -> Optional[MixturePrior]:
    """`prior` (a MixturePrior over vectors of length `dim`, or None) on `device`."""
    if prior is None:
        return None
    check_type("prior", prior, MixturePrior)
    if prior.dim != dim:
        raise ValueError(f"prior is over vectors of length {prior.dim}, the adapter has {dim}")
    return prior if prior.device == device else prior.to(device)


def _support_loss(flat: FlatParams, theta: torch.Tensor, task: Task, loss_fn: LossFn) -> float:
    with torch.no_grad():
        return float(loss_fn(flat.call(theta), task.full()))


def support_objective(flat: FlatParams, theta: torch.Tensor, task: Task, loss_fn: LossFn,
                      prior: Optional[MixturePrior]) -> float:
    """J(theta) = mean loss over task.full() + (C - log p(theta)) / n (module docstring)."""
    return _objective(_support_loss(flat, theta, task, loss_fn), theta, task, prior)


def _objective(support_loss: float, theta: torch.Tensor, task: Task, prior: Optional[MixturePrior]) -> float:
    """J(theta) from the mean loss over task.full() at theta."""
    return support_loss if prior is None else support_loss + (prior.log_peak() - prior.log_prob(theta)) / task.num_examples


def component_scores(flat: FlatParams, task: Task, loss_fn: LossFn, prior: MixturePrior) -> torch.Tensor:
    """score_k = log w_k - n * mean support loss(m_k) [K] float64 (module docstring)."""
    losses = torch.tensor([_support_loss(flat, mean, task, loss_fn) for mean in prior.means],
                          dtype=torch.float64)
    return prior.weights.cpu().log() - task.num_examples * losses


def best_component(flat: FlatParams, task: Task, loss_fn: LossFn, prior: MixturePrior) -> int:
    """argmax_k score_k (component_scores): the component start="best_component" starts from,
    to pass as ``start`` to several adaptations of `task` under `prior` (module docstring)."""
    check_type("prior", prior, MixturePrior)
    return int(component_scores(flat, task, loss_fn, prior).argmax())


def _start(flat: FlatParams, task: Task, loss_fn: LossFn, prior: Optional[MixturePrior], start: StartLike
           ) -> Tuple[torch.Tensor, Optional[int], Optional[torch.Tensor]]:
    """(starting theta, chosen component, component scores) for `start` (module docstring)."""
    if isinstance(start, torch.Tensor):
        return validate.vector("start", start, flat.dim, flat.vector.device), None, None
    if not isinstance(start, (str, numbers.Integral)) or isinstance(start, bool):
        raise TypeError(f"start must be one of {STARTS}, a component index (int) or an adapter Tensor [D], "
                        f"got {type(start).__name__}")
    if isinstance(start, str):
        validate.one_of("start", start, STARTS)
    if prior is None:
        raise ValueError(f"start={start!r} chooses among a prior's components: without a prior, start must be "
                         "the adapter to begin from (a Tensor [D], e.g. the PEFT initialisation)")
    if isinstance(start, numbers.Integral):
        index = int(start)
        if not 0 <= index < prior.n_components:
            raise ValueError(f"start: component index {index} out of range for a prior of "
                             f"{prior.n_components} components")
        return prior.means[index].clone(), index, None
    if start == "mean":
        return prior.weights.float() @ prior.means, None, None
    scores = component_scores(flat, task, loss_fn, prior)
    best = int(scores.argmax())
    return prior.means[best].clone(), best, scores


class _BestIterate:
    """MAP mode's record of the best J and the stopping rule (module docstring)."""

    def __init__(self, theta: torch.Tensor, value: float, tol: float, patience: int):
        if not math.isfinite(value):
            raise ValueError(f"the support objective at the starting adapter is {value}: check the "
                             "loss function, the data and the start (start)")
        self.theta, self.value, self.step = theta.clone(), value, 0
        self.tol, self.patience = tol, patience
        self.record = [value]  # the best J after each evaluation

    def update(self, step: int, theta: torch.Tensor, value: float) -> Optional[str]:
        """Take J(theta) after `step` steps; return the stop reason, or None to go on."""
        if not math.isfinite(value):
            return "non_finite"
        if value < self.value:
            self.theta, self.value, self.step = theta.clone(), value, step
        self.record.append(self.value)
        if len(self.record) > self.patience and self.record[-1 - self.patience] - self.value <= self.tol:
            return "no_improvement"
        return None


def adapt(flat: FlatParams, task: Task, loss_fn: LossFn, *, prior: Optional[MixturePrior] = None,
          config: AdaptConfig = MapConfig(), start: StartLike = "best_component", seed: int = 0) -> Adapted:
    """Adapt to `task` (its `batch` gives support minibatches, `full()` the whole support set);
    see the module docstring for the objective, the start, the two configs and the stopping rule.

    prior: a MixturePrior or None. config: MapConfig (MAP to a stopping rule) or SamplingConfig
    (pSGLD samples). start: "best_component", "mean", a component index (int; best_component's
    choice, made once for several adaptations) or an adapter Tensor [D]. seed: minibatch
    order and SGLD noise. Neither `flat.vector` nor the module changes; bad arguments raise
    before any work.
    """
    check_type("config", config, MapConfig, SamplingConfig)
    seed = validate.integer("seed", seed)
    device = flat.vector.device
    prior = checked_prior(prior, flat.dim, device)
    mapping = isinstance(config, MapConfig)
    steps, lr = config.steps, config.lr
    theta, component, scores = _start(flat, task, loss_fn, prior, start)
    theta = theta.to(device, torch.float32).contiguous()
    n = task.num_examples
    square_avg = torch.zeros_like(theta) if config.preconditioned else None
    damping = 1e-8 if prior is None else max(1e-8, lr * prior.max_precision() / n)
    step_temperature = 0.0 if mapping else config.temperature / n
    out = Adapted(theta=theta, samples=[], component=component, scores=scores)
    best: Optional[_BestIterate] = None
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps + 1):  # pass `step` holds the iterate after `step` steps; the last only evaluates it
        if step < steps:
            batch = task.batch(gen)
            loss, grad = flat.loss_and_grad(theta, lambda call: loss_fn(call, batch))
        if mapping and (step % config.eval_every == 0 or step == steps):
            whole = step < steps and batch is task.full()  # then this step's loss is the support loss
            value = _objective(float(loss) if whole else _support_loss(flat, theta, task, loss_fn), theta, task,
                               prior)
            out.objectives.append((step, value))
            if best is None:
                best = _BestIterate(theta, value, config.tol, config.patience)
            else:
                reason = best.update(step, theta, value)
                if reason is not None:
                    out.stop_reason = reason
                    break
        if step == steps:
            break
        if prior is not None:
            prior.add_prior_grad_(grad, theta, scale=1.0 / n)
        sgld_step(theta, grad, lr=lr, temperature=step_temperature, square_avg=square_avg, eps=damping,
                  seed=seed, offset=step)
        out.losses.append(float(loss))
        out.steps_run = step + 1
        if not mapping and step >= config.kept_after and (step - config.kept_after) % config.thin == 0:
            out.samples.append(theta.clone())
    if best is None:
        out.best_step = out.steps_run
    else:
        out.theta, out.best_step = best.theta, best.step
    out.samples = out.samples or [out.theta]
    return out


def average_predictions(flat: FlatParams, thetas: List[torch.Tensor],
                        predict: Callable[[Callable[..., Any]], torch.Tensor]) -> torch.Tensor:
    """Mean over `thetas` of predict(model call at theta) (e.g. class probabilities), no grad."""
    if not thetas:
        raise ValueError("thetas is empty")
    with torch.no_grad():
        total = None
        for theta in thetas:
            out = predict(flat.call(theta))
            total = out.clone() if total is None else total.add_(out)
    return total / len(thetas)


__all__ = ["Adapted", "adapt", "average_predictions", "best_component", "checked_prior", "support_objective",
           "component_scores", "STARTS", "STOP_REASONS"]
