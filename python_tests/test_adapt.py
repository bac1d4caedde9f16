"""Meta-test adaptation (`lift_ext.lift.adapt`) on a linear model, where the objective, its
minimiser and the component scores have closed forms (float64 references)."""
import math

import pytest
import torch

from lift_ext.gmm import OnlineGMM
from lift_ext.lift import (FlatParams, MapConfig, MixturePrior, SamplingConfig, TensorTask, adapt, average_predictions,
                           best_component)
from lift_ext.lift.adapt import STOP_REASONS
from lift_ext.sgld import sgld_step

N, D = 6, 4


def mse(call, batch):
    x, y = batch
    return ((call(x).squeeze(-1) - y) ** 2).mean()


@pytest.fixture
def linear():
    """A bias-free linear model (the adapter is its weight, D = 4) and one task of N = 6 rows,
    one minibatch = the whole support set (deterministic gradients)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(D, 1, bias=False)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=gen)
    y = x @ torch.randn(D, generator=gen) + 0.1 * torch.randn(N, generator=gen)
    return model, FlatParams(model), TensorTask(x, y, batch_size=N), x, y


def ref_log_prior(theta, prior):
    """log sum_k w_k N(theta; m_k, diag(v_k) + beta^2 I) in float64."""
    std = (prior.variances.double() + prior.beta ** 2).sqrt()
    comp = torch.distributions.Normal(prior.means.double(), std).log_prob(theta.double()).sum(-1)
    return torch.logsumexp(prior.weights.log() + comp, 0)


def ref_log_peak(prior):
    """max_k [log w_k + log N(m_k; m_k, diag(v_k) + beta^2 I)] in float64."""
    variances = prior.variances.double() + prior.beta ** 2
    return (prior.weights.log() - 0.5 * torch.log(2 * math.pi * variances).sum(-1)).max()


def ref_objective(theta, x, y, prior):
    """J = mean loss + (C - log p(theta)) / n: the prior's cost without normalising constants."""
    loss = ((x.double() @ theta.double() - y.double()) ** 2).mean()
    return loss if prior is None else loss + (ref_log_peak(prior) - ref_log_prior(theta, prior)) / x.shape[0]


def random_prior(k, beta=0.5, seed=2):
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(k, generator=gen, dtype=torch.float64) + 0.2
    return MixturePrior(torch.randn(k, D, generator=gen), 0.3 * torch.rand(k, D, generator=gen),
                        weights / weights.sum(), beta)


def test_log_prob_matches_float64_reference():
    prior = random_prior(3)
    theta = torch.randn(D)
    assert prior.log_prob(theta) == pytest.approx(float(ref_log_prior(theta, prior)), rel=1e-6)


def test_map_steps_match_gradient_descent_on_the_reference_objective(linear):
    """Plain SGD (preconditioned=False) on J: each step is theta - lr * grad J(theta), grad J by
    autograd through the float64 reference; the objectives recorded are J at those iterates."""
    model, flat, task, x, y = linear
    prior = random_prior(2)
    start = prior.means[0].clone()
    out = adapt(flat, task, mse, prior=prior, start=start,
                config=MapConfig(steps=6, lr=0.02, preconditioned=False, eval_every=1, tol=0.0))
    theta, expected = start.double(), []
    for _ in range(6):
        t = theta.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(ref_objective(t, x, y, prior), t)
        theta = theta - 0.02 * grad
        expected.append(float(ref_objective(theta, x, y, prior)))
    assert out.steps_run == 6 and out.stop_reason == "max_steps" and out.best_step == 6
    torch.testing.assert_close(out.theta.double(), theta, rtol=1e-5, atol=1e-6)
    assert [s for s, _ in out.objectives] == list(range(7))
    assert out.objectives[0][1] == pytest.approx(float(ref_objective(start, x, y, prior)), rel=1e-6)
    assert [v for _, v in out.objectives[1:]] == pytest.approx(expected, rel=1e-5)


def test_map_stops_early_at_the_closed_form_minimiser(linear):
    """K = 1: J is quadratic with minimiser (2 X'X + diag(1/s^2)) w = 2 X'y + m / s^2,
    s^2 = v + beta^2. The stopping rule ends the run long before the step budget, there."""
    model, flat, task, x, y = linear
    prior = random_prior(1)
    s2 = prior.variances[0].double() + prior.beta ** 2
    xd, yd = x.double(), y.double()
    w_star = torch.linalg.solve(2 * xd.T @ xd + torch.diag(1 / s2), 2 * xd.T @ yd + prior.means[0].double() / s2)
    out = adapt(flat, task, mse, prior=prior,
                config=MapConfig(steps=20_000, lr=0.05, preconditioned=False, tol=1e-7, patience=3, eval_every=10))
    assert out.stop_reason == "no_improvement" and out.steps_run < 5_000, out.steps_run
    torch.testing.assert_close(out.theta.double(), w_star, rtol=0, atol=2e-4)
    best = min(v for _, v in out.objectives)
    assert best == pytest.approx(float(ref_objective(w_star, x, y, prior)), abs=1e-6)
    assert best == pytest.approx(float(ref_objective(out.theta, x, y, prior)), abs=1e-6)
    # the rule: the last `patience` evaluations improved the best J by at most tol, earlier ones did not
    record = [min(v for _, v in out.objectives[: i + 1]) for i in range(len(out.objectives))]
    assert record[-4] - record[-1] <= 1e-7 < record[-5] - record[-2]


@pytest.mark.parametrize("preconditioned, lr", [(False, 5.0), (False, 0.3), (True, 3.0), (True, 0.3)])
def test_never_returns_a_worse_objective_than_the_start(linear, preconditioned, lr):
    """Step sizes from too large to divergent: the result is the best iterate evaluated, never
    worse on J than the start; when every step makes J worse, the start itself."""
    model, flat, task, x, y = linear
    prior = random_prior(2)
    out = adapt(flat, task, mse, prior=prior, start="mean",
                config=MapConfig(steps=200, lr=lr, preconditioned=preconditioned, eval_every=1))
    start = prior.weights.float() @ prior.means
    values = [v for _, v in out.objectives]
    assert float(ref_objective(out.theta, x, y, prior)) == pytest.approx(min(values), abs=1e-5)
    assert min(values) <= values[0] and out.samples == [out.theta]
    assert out.objectives[[s for s, _ in out.objectives].index(out.best_step)][1] == min(values)
    if all(v > values[0] or not math.isfinite(v) for v in values[1:]):
        assert out.best_step == 0 and torch.equal(out.theta, start)
    if (preconditioned, lr) == (False, 5.0):  # SGD far beyond 2 / curvature: diverges at once
        assert out.best_step == 0 and out.stop_reason in ("no_improvement", "non_finite")


def test_component_is_chosen_by_weighted_support_evidence(linear):
    """score_k = log w_k - n * mean support loss(m_k), reference-checked; the start is the
    argmax, which is not the lowest-loss component when the weights say otherwise."""
    model, flat, task, x, y = linear
    w_fit = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
    means = torch.stack([w_fit + 1.0, w_fit, w_fit + 0.02])
    for weights, expected in (([0.3, 0.3, 0.4], None), ([0.01, 0.01, 0.98], 2), ([0.2, 0.79, 0.01], 1)):
        prior = MixturePrior(means, torch.zeros(3, D), torch.tensor(weights, dtype=torch.float64), 0.1)
        out = adapt(flat, task, mse, prior=prior, config=MapConfig(steps=0))
        losses = torch.stack([((x.double() @ m.double() - y.double()) ** 2).mean() for m in means])
        reference = torch.tensor(weights, dtype=torch.float64).log() - N * losses
        torch.testing.assert_close(out.scores, reference, rtol=1e-5, atol=1e-6)
        assert out.component == int(reference.argmax()) and torch.equal(out.theta, means[out.component])
        if expected is not None:
            assert out.component == expected
    assert int(losses.argmin()) == 1  # component 2 won above on its weight, not its loss


@pytest.mark.parametrize("config", [MapConfig(steps=12, lr=1e-2, eval_every=3),
                                    SamplingConfig(steps=12, lr=1e-2, burn_in=6, thin=2)], ids=["map", "sgld"])
def test_a_component_chosen_once_and_passed_on_gives_the_same_adaptation(linear, config):
    """best_component is the choice start="best_component" makes; adapting from that index
    gives bitwise the same run (the component recorded, no scores: nothing was scored)."""
    model, flat, task, x, y = linear
    prior = random_prior(4, beta=0.3)
    chosen = adapt(flat, task, mse, prior=prior, config=config, seed=3)
    best = best_component(flat, task, mse, prior)
    passed = adapt(flat, task, mse, prior=prior, config=config, start=best, seed=3)
    assert best == chosen.component == passed.component and passed.scores is None
    assert torch.equal(chosen.theta, passed.theta) and chosen.losses == passed.losses
    assert all(torch.equal(a, b) for a, b in zip(chosen.samples, passed.samples))
    other = (best + 1) % prior.n_components
    for index in (other, torch.tensor(other).numpy()[()]):  # a numpy integer too
        out = adapt(flat, task, mse, prior=prior, config=MapConfig(steps=0), start=index)
        assert torch.equal(out.theta, prior.means[other]) and out.component == other
    with pytest.raises(TypeError, match="prior"):
        best_component(flat, task, mse, None)


def test_online_gmm_prior_equals_its_mixture_prior(linear):
    """An OnlineGMM over phi samples becomes a prior with beta (MixturePrior.from_gmm): adapting
    under it equals adapting under the mixture of its moments; adapt itself takes a MixturePrior
    only, and the conversion refuses a bad beta or a mixture that has seen no sample."""
    model, flat, task, x, y = linear
    gmm = OnlineGMM(2, D)
    gmm.update(torch.randn(16, D, generator=torch.Generator().manual_seed(5)))
    converted = MixturePrior.from_gmm(gmm, 0.3)
    assert bool((gmm.weights > 0).all()) and converted.beta == 0.3
    moments = MixturePrior(gmm.means, gmm.variances, gmm.weights / gmm.weights.sum(), 0.3)
    a = adapt(flat, task, mse, prior=converted, config=MapConfig(steps=30, lr=1e-2))
    b = adapt(flat, task, mse, prior=moments, config=MapConfig(steps=30, lr=1e-2))
    assert torch.equal(a.theta, b.theta) and a.objectives == b.objectives and a.component == b.component
    with pytest.raises(TypeError, match="prior"):
        adapt(flat, task, mse, prior=gmm, config=MapConfig(steps=3))
    with pytest.raises(ValueError, match="beta"):
        MixturePrior.from_gmm(gmm, 0.0)
    with pytest.raises(ValueError, match="no fitted component"):
        MixturePrior.from_gmm(OnlineGMM(2, D), 0.3)


def test_without_a_prior_the_objective_is_the_support_loss(linear):
    model, flat, task, x, y = linear
    start = flat.vector.clone()
    out = adapt(flat, task, mse, start=start, config=MapConfig(steps=20, lr=0.01, preconditioned=False, eval_every=5))
    assert out.component is None and out.scores is None
    for step, value in out.objectives:
        assert step % 5 == 0
    assert out.objectives[0][1] == pytest.approx(float(ref_objective(start, x, y, None)), rel=1e-6)
    assert out.objectives[-1][1] == pytest.approx(float(ref_objective(out.theta, x, y, None)), rel=1e-5)


def test_sgld_mode_keeps_thinned_samples_and_averages_predictions(linear):
    model, flat, task, x, y = linear
    prior = random_prior(2)
    out = adapt(flat, task, mse, prior=prior, config=SamplingConfig(steps=19, burn_in=10, thin=2, lr=1e-3), seed=4)
    assert out.steps_run == 19 and out.stop_reason == "max_steps" and out.objectives == []
    assert len(out.samples) == 5 and torch.equal(out.samples[-1], out.theta)
    assert len({tuple(s.tolist()) for s in out.samples}) == 5, "the noise moves every kept sample"
    mean = average_predictions(flat, out.samples, lambda call: call(x))
    torch.testing.assert_close(mean, torch.stack([x @ s[:, None] for s in out.samples]).mean(0))


def first_step_is_bounded_by_lr() -> bool:
    """Whether the SGLD kernel starts an RMSprop average of 0 at g^2 (then a first
    preconditioned step moves each weight by at most lr)."""
    theta, avg = torch.zeros(1), torch.zeros(1)
    sgld_step(theta, torch.ones(1), lr=1e-3, temperature=0.0, square_avg=avg, seed=0)
    return float(avg) == 1.0


@pytest.mark.skipif(not first_step_is_bounded_by_lr(), reason="needs the SGLD kernel that starts the "
                    "RMSprop average at g^2 where it is 0")
def test_preconditioned_steps_stay_near_lr_for_weights_with_zero_first_gradients():
    """LoRA-like f(x) = b (a . x) from b = 0: a's first gradient is 0 and appears at step 2.
    Every weight's first move is lr * g / |g| = lr (a 10 lr step from an average started at 0
    without the rule). The iterates are those of SamplingConfig at temperature 0 (the MAP steps,
    every one kept)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(D, 1, bias=False), torch.nn.Linear(1, 1, bias=False))
    flat = FlatParams(model)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=gen)
    task = TensorTask(x, x.sum(1), batch_size=N)
    start = torch.cat([torch.randn(D, generator=gen), torch.zeros(1)])
    lr = 1e-2
    out = adapt(flat, task, mse, start=start, config=SamplingConfig(temperature=0.0, steps=6, burn_in=0, lr=lr))
    moves = torch.diff(torch.stack([start] + out.samples), dim=0).abs()
    assert float(moves[0, :D].max()) == 0.0 and float(moves[1, :D].min()) > 0, "a moves from step 2 on"
    first = torch.cat([moves[1, :D], moves[0, D:]])  # a moves first at step 2, b at step 1
    torch.testing.assert_close(first, torch.full_like(first, lr), rtol=1e-4, atol=0)


WRONG_DIM_PRIOR = MixturePrior(torch.zeros(1, D + 1), torch.zeros(1, D + 1), torch.ones(1, dtype=torch.float64), 0.1)
# (what is wrong, the exception, its match): a bad field fails where its config is built, a bad
# argument of adapt itself in adapt; either way inside the call below
BAD = [(lambda: dict(config="vi"), TypeError, "config"),
       (lambda: dict(config=MapConfig(steps=3), start="best"), ValueError, "start"),
       (lambda: dict(config=MapConfig(steps=-1)), ValueError, "steps"),
       (lambda: dict(config=MapConfig(steps=2.0)), ValueError, "steps"),
       (lambda: dict(config=MapConfig(steps=3, lr=0.0)), ValueError, "lr"),
       (lambda: dict(config=MapConfig(steps=3, tol=-1e-3)), ValueError, "tol"),
       (lambda: dict(config=MapConfig(steps=3, patience=0)), ValueError, "patience"),
       (lambda: dict(config=MapConfig(steps=3, eval_every=0)), ValueError, "eval_every"),
       (lambda: dict(config=SamplingConfig(steps=3, temperature=-1.0)), ValueError, "temperature"),
       (lambda: dict(config=SamplingConfig(steps=3, burn_in=-1)), ValueError, "burn_in"),
       (lambda: dict(config=SamplingConfig(steps=3, thin=0)), ValueError, "thin"),
       (lambda: dict(config=MapConfig(steps=3), seed=-1), ValueError, "seed"),
       (lambda: dict(config=MapConfig(steps=3, preconditioned=1)), ValueError, "preconditioned"),
       (lambda: dict(config=MapConfig(steps=3), beta=0.2), TypeError, "beta"),  # beta is the prior's own
       (lambda: dict(config=SamplingConfig(steps=3, tol=0.0)), TypeError, "tol"),  # MAP's: not a sampling field
       (lambda: dict(config=MapConfig(steps=3), start=torch.zeros(D + 1)), ValueError, "start"),
       (lambda: dict(config=MapConfig(steps=3), start=torch.full((D,), math.nan)), ValueError, "start"),
       (lambda: dict(config=MapConfig(steps=3), prior=WRONG_DIM_PRIOR), ValueError, "prior"),
       (lambda: dict(config=MapConfig(steps=3), start=2), ValueError, "start: component index 2"),
       (lambda: dict(config=MapConfig(steps=3), start=-1), ValueError, "start: component index -1"),
       (lambda: dict(config=MapConfig(steps=3), start=True), TypeError, "start"),
       (lambda: dict(config=MapConfig(steps=3), start=1.0), TypeError, "start"),
       (lambda: dict(config=MapConfig(steps=3), start=0, prior=None), ValueError, "start")]
BAD_IDS = ["config", "start", "steps", "steps-float", "lr", "tol", "patience", "eval_every", "temperature",
           "burn_in", "thin", "seed", "preconditioned", "beta", "tol-sampling", "start-shape", "start-nan",
           "prior-dim", "start-index-high", "start-index-negative", "start-bool", "start-float", "start-index-no-prior"]


@pytest.mark.parametrize("bad, error, match", BAD, ids=BAD_IDS)
def test_bad_arguments_are_refused_and_nothing_changes(linear, bad, error, match):
    model, flat, task, x, y = linear
    before, weight = flat.vector.clone(), model.weight.detach().clone()
    calls = []
    with pytest.raises(error, match=match):
        adapt(flat, task, lambda call, batch: calls.append(1) or mse(call, batch),
              **{"prior": random_prior(2), **bad()})
    assert not calls, "refused before any forward pass"
    assert torch.equal(flat.vector, before) and torch.equal(model.weight, weight)


def test_prior_of_another_kind_is_a_type_error_and_a_run_leaves_the_model_alone(linear):
    model, flat, task, x, y = linear
    with pytest.raises(TypeError, match="prior"):
        adapt(flat, task, mse, prior=torch.zeros(D))
    before = flat.vector.clone()
    out = adapt(flat, task, mse, prior=random_prior(2), config=MapConfig(steps=30, lr=1e-2))
    assert torch.equal(flat.vector, before) and out.stop_reason in STOP_REASONS


def test_prior_dominated_weights_settle_instead_of_jittering():
    """2,000 weights the support barely informs (a gradient of 1e-2 d each) under a tight prior
    (beta = 0.05, n = 8): RMSprop scales every gradient to a step of about lr, so without the
    prior's damping (eps' = lr max_precision / n, docs/design.md section 5) each weight jitters
    by about lr around its MAP and J rises far above its start (80e-3 after 5 steps, from
    -0.008e-3); with it J falls at every evaluation and reaches the closed-form minimum."""
    torch.manual_seed(0)
    dim, n, beta = 2000, 8, 0.05
    direction = torch.randn(dim)
    flat = FlatParams(torch.nn.Linear(dim, 1, bias=False))
    task = TensorTask(direction.expand(n, dim).clone(), batch_size=n)

    def weak(call, batch):  # J's data part 1e-2 d.theta: gradient 1e-2 d
        (x,) = batch
        return 1e-2 * call(x).mean()

    prior = MixturePrior(torch.zeros(1, dim), torch.zeros(1, dim), torch.ones(1, dtype=torch.float64), beta)
    out = adapt(flat, task, weak, prior=prior, start="mean", config=MapConfig(steps=60, eval_every=5))
    # J(theta) = 1e-2 d.theta + |theta|^2 / (2 n beta^2), minimal at -(1e-2)^2 |d|^2 n beta^2 / 2,
    # at |theta_i| ~ 2e-4: below the jitter of lr = 1e-3, whose prior cost is ~0.05 nats
    optimum = -(1e-2) ** 2 * float(direction @ direction) * n * beta ** 2 / 2
    values = [value for _, value in out.objectives]
    assert all(later <= earlier + 1e-5 for earlier, later in zip(values, values[1:]))
    assert min(values) == pytest.approx(optimum, rel=0.02)


class _CopiedBatches:
    """The same support set as ``task``, each minibatch a new tuple: adapt cannot tell that a
    step's minibatch is the whole support set, so it evaluates J with passes of its own."""

    def __init__(self, task):
        self.task, self.num_examples = task, task.num_examples

    def batch(self, generator):
        return tuple(list(self.task.batch(generator)))  # a new tuple (tuple() of a tuple is the same object)

    def full(self):
        return self.task.full()


@pytest.mark.parametrize("steps, eval_every, patience, tol", [(10, 3, 100, 0.0), (12, 2, 1, 10.0), (7, 1, 2, 0.0)])
def test_objective_read_off_the_steps_forward_pass_is_the_same(linear, steps, eval_every, patience, tol):
    """On a whole-support minibatch J comes from the step's own forward pass: bitwise the same
    run as with separate evaluation passes (with a prior, an early stop and a last evaluation
    off the eval_every grid), one forward pass fewer for every iterate a step follows."""
    model, flat, task, x, y = linear
    prior = random_prior(2)
    calls = []

    def counted(call, batch):
        calls.append(1)
        return mse(call, batch)

    config = MapConfig(steps=steps, lr=0.02, eval_every=eval_every, patience=patience, tol=tol)
    shared = adapt(flat, task, counted, prior=prior, config=config, seed=3)
    shared_calls = len(calls)
    calls.clear()
    separate = adapt(flat, _CopiedBatches(task), counted, prior=prior, config=config, seed=3)
    separate_calls = len(calls)
    assert torch.equal(shared.theta, separate.theta) and shared.objectives == separate.objectives
    assert shared.losses == separate.losses and shared.component == separate.component
    assert (shared.steps_run, shared.best_step, shared.stop_reason) == \
        (separate.steps_run, separate.best_step, separate.stop_reason)
    read_off = [step for step, _ in shared.objectives if step < steps]  # iterates a step's pass evaluated
    assert separate_calls - shared_calls == len(read_off) > 0
    if tol > 1.0:  # no evaluation can improve J by more than tol: the run stops after `patience` of them
        assert shared.stop_reason == "no_improvement" and shared.steps_run == patience * eval_every
