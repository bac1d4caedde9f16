"""The non-centred moves of SGLDGibbs (lift_ext.lift.noncentred): the shift of a component with
all its members, and the assignment draw by likelihood. Checked against the float64 reference
step, against their conditionals, and on the clustered conjugate model of
test_sampler_mixture.py (whose exact phi_k posteriors the chain must keep)."""
import math

import pytest
import torch

from lift_ext import reference
from lift_ext.lift import ChainStart, LangevinConfig, MixtureHierarchy, PaperHierarchy, SGLDGibbs
from lift_ext.lift.mixture import Components
from lift_ext.lift.noncentred import (draw_assignments_by_likelihood_, member_mean_gradients, shift_components_,
                                     shift_seed)

from test_sampler_mixture import (BETA, D, K, N, S2, SIGMA, assert_samples_exact_phi_posteriors,  # noqa: F401
                                  clustered, matching, mixture)


def _state(k=3, n=7, d=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    thetas = torch.randn(n, d, generator=gen)
    comps = Components(k, n, d, torch.device("cpu"))
    comps.rebuild_(thetas, torch.arange(n) % k, None)
    return thetas, comps, gen


@pytest.mark.parametrize("preconditioned", [False, True])
def test_shift_is_one_sgld_step_of_phi_carrying_its_members(preconditioned):
    """Components 0 and 2 have stepped members (tasks 0, 3 and 2); component 1 has none and
    does not move. A moved phi_k is the reference step (mean gradient, prior precision
    1/(n_k sigma^2), temperature T / n_k, the shift's Philox stream); every member moves by
    the same delta, S_k grows by n_k delta (and stays the sum of the members' rows)."""
    thetas, comps, gen = _state()
    mu0 = torch.randn(5, generator=gen)
    grads = [torch.randn(5, generator=gen) for _ in range(3)]
    square_avg = torch.rand(5, generator=gen) + 0.1 if preconditioned else None
    before_avg = None if square_avg is None else square_avg.clone()
    tasks, (lr, temperature, sigma, seed, step) = [0, 3, 2], (0.01, 0.5, 2.0, 11, 4)
    old_thetas, old_phis = thetas.clone(), comps.phis.clone()
    old_sums = comps.sums.clone()
    mean_grads = member_mean_gradients(comps, tasks, grads)
    assert sorted(mean_grads) == [0, 2]
    shift_components_(thetas, comps, mean_grads, square_avg, mu0, lr=lr, temperature=temperature,
                      sigma=sigma, alpha=0.9, eps=1e-8, seed=seed, step=step)
    if square_avg is not None:
        assert torch.equal(square_avg, before_avg)  # the sampler's own average is not changed
    for comp, rows in ((0, [0, 1]), (2, [2])):
        n_k = comps.counts[comp]
        noise = reference.philox_normal(5, seed=shift_seed(seed), offset=Components.phi_offset(step, comp))
        want, _, _ = reference.sgld_step(old_phis[comp], torch.stack([grads[r] for r in rows]).mean(0), noise,
                                         lr=lr, temperature=temperature / n_k, prior_mean=mu0,
                                         prior_precision=1.0 / (n_k * sigma**2), square_avg=before_avg,
                                         alpha=0.9, eps=1e-8)
        torch.testing.assert_close(comps.phis[comp].double(), want, rtol=1e-5, atol=1e-6)
        members = comps.assignments == comp
        delta = comps.phis[comp] - old_phis[comp]
        torch.testing.assert_close(thetas[members], old_thetas[members] + delta)
        torch.testing.assert_close(comps.sums[comp], old_sums[comp] + n_k * delta)
        torch.testing.assert_close(comps.sums[comp], thetas[members].sum(0))
    assert torch.equal(comps.phis[1], old_phis[1])
    assert torch.equal(thetas[comps.assignments == 1], old_thetas[comps.assignments == 1])


def test_shift_keeps_the_exact_phi_posteriors(clustered):
    """The shift is a Langevin move of the same posterior: with it the chain still finds the
    partition and samples each phi_k's exact posterior (test_sampler_mixture's tolerances, the
    variance within 15 %). A shift noise without the 1 / n_k (n_k times too much variance)
    fails them."""
    shifted = MixtureHierarchy(components=K, sigma=SIGMA, beta=BETA, shift_lr=5e-3)
    assert_samples_exact_phi_posteriors(mixture(clustered, hierarchy=shifted), clustered, variance_tolerance=0.15)


def test_likelihood_draw_follows_its_conditional_and_carries_theta():
    """P(z = k) ∝ pi_k exp(-nll(theta + phi_k - phi_z) / T) at T = 2 from 4000 draws; a move
    carries theta to its candidate and S with it."""
    temperature = 2.0
    thetas, comps, _ = _state(k=3, n=1, d=4)
    comps.phis.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.5, 1.5]]))
    comps.weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    target = torch.tensor([0.5, 0.2, 0.0, 1.0])

    def nll(task, candidates):
        return (candidates - target).pow(2).sum(1)

    start = thetas[0].clone()
    candidates = start[None] + comps.phis - comps.phis[0]
    want = torch.softmax(comps.weights.log() - nll(0, candidates).double() / temperature, 0)
    seen = torch.zeros(3)
    for i in range(4000):
        rows, state = thetas.clone(), Components(3, 1, 4, torch.device("cpu"))
        state.rebuild_(rows, torch.zeros(1, dtype=torch.int64), None)
        state.phis.copy_(comps.phis)
        state.weights = comps.weights
        draw_assignments_by_likelihood_(rows, state, [0], nll, temperature=temperature,
                                        generator=torch.Generator().manual_seed(i))
        k = int(state.assignments[0])
        seen[k] += 1
        torch.testing.assert_close(rows[0], candidates[k])
        assert torch.equal(state.sums[k], rows[0]) and state.counts[k] == 1
    freq = seen.double() / 4000
    assert bool(((freq - want).abs() < 4 * (want * (1 - want) / 4000).sqrt()).all()), (freq, want)


class _ExactGradients:
    """grad_fn of the clustered model with `losses`: nll_i(c) = n_i ||c - ybar_i||^2 / (2 s^2)."""

    def __init__(self, clustered):
        self.grad_fn, self.ybar = clustered["grad_fn"], clustered["ybar"]
        self.sizes = [float(clustered["grad_fn"](i, self.ybar[i] + 1)[0] * S2) for i in range(N)]

    def __call__(self, task, theta):
        return self.grad_fn(task, theta)

    def losses(self, task, candidates):
        return self.sizes[task] * (candidates - self.ybar[task]).pow(2).sum(1) / (2 * S2)


def _carried_into_the_wrong_component(clustered, z_update):
    """A chain at the true partition with every theta_i at its phi_k plus a little noise, except
    that tasks 0, 3 and 6 (cluster 0) sit at phi_1 and are assigned to component 1 (as after a
    shift with the wrong component)."""
    sampler = SGLDGibbs(N, D, _ExactGradients(clustered),
                        langevin=LangevinConfig(lr=5e-3, temperature=0.1, tasks_per_step=N),
                        hierarchy=MixtureHierarchy(components=K, sigma=SIGMA, beta=BETA, z_update=z_update),
                        start=ChainStart(thetas=clustered["ybar"], prior_mean=clustered["mu0"]))
    z = clustered["z_true"].clone()
    z[[0, 3, 6]] = 1
    centres = clustered["post_mean"].float()
    sampler.thetas.copy_(centres[z] + 0.01 * torch.randn(N, D, generator=torch.Generator().manual_seed(0)))
    sampler._components.rebuild_(sampler.thetas, z, clustered["mu0"])
    return sampler


def test_likelihood_assignments_move_a_task_near_the_wrong_component(clustered):
    """Tasks whose vectors sit at the wrong phi_k: the likelihood draw moves them to the
    component that fits their data within one step and carries their vectors there; the
    distance draw alone keeps them where they are."""
    sampler = _carried_into_the_wrong_component(clustered, "likelihood")
    sampler.step()
    matching(sampler.assignments, clustered["z_true"])
    home, away = sampler.phis[int(sampler.assignments[0])], sampler.phis[int(sampler.assignments[1])]
    assert float((sampler.thetas[0] - home).norm()) < 0.1 * float((home - away).norm())
    for k in range(K):
        members = sampler.thetas[sampler.assignments == k].double().sum(0)
        torch.testing.assert_close(sampler.task_sums[k].double(), members, rtol=0, atol=1e-4)
    stuck = _carried_into_the_wrong_component(clustered, "distance")
    stuck.run(5, progress=False)
    assert stuck.assignments[[0, 3, 6]].tolist() == [int(stuck.assignments[1])] * 3


def test_defaults_change_nothing(clustered):
    """shift_lr = 0 and z_update = "distance" are the mixture chain as before, bitwise."""
    a = mixture(clustered)
    b = mixture(clustered, hierarchy=MixtureHierarchy(components=K, sigma=SIGMA, beta=BETA, shift_lr=0.0,
                                                      z_update="distance"))
    a.run(40, progress=False)
    b.run(40, progress=False)
    assert torch.equal(a.thetas, b.thetas) and torch.equal(a.phis, b.phis)


@pytest.mark.parametrize("hierarchy, error, message", [
    (lambda: MixtureHierarchy(components=K, sigma=SIGMA, beta=BETA, shift_lr=-1e-3), ValueError, "shift_lr"),
    (lambda: MixtureHierarchy(components=K, sigma=SIGMA, beta=BETA, z_update="nearest"), ValueError, "z_update"),
    (lambda: MixtureHierarchy(components=K, sigma=SIGMA, beta=BETA, z_update="likelihood"), TypeError, "losses"),
    # the paper's hierarchy has no assignments to draw: z_update is no field of its config
    (lambda: PaperHierarchy(sigma=SIGMA, beta=BETA, phi_update="gibbs", z_update="likelihood"), TypeError,
     "z_update"),
])
def test_bad_arguments_are_refused(clustered, hierarchy, error, message):
    """`hierarchy` builds the config inside the check: the config refuses its own bad field, the
    sampler a grad_fn without the `losses` that z_update="likelihood" needs."""
    with pytest.raises(error, match=message):
        mixture(clustered, hierarchy=hierarchy())


def test_one_component_shift_moves_every_task(clustered):
    """One component (the paper's hierarchy with exact phi draws, bitwise: test_sampler_mixture)
    takes the shift too: phi and all N thetas move together. The shift is a field of
    MixtureHierarchy only."""
    with pytest.raises(TypeError, match="shift_lr"):
        PaperHierarchy(sigma=SIGMA, beta=BETA, phi_update="gibbs", shift_lr=1e-2)
    sampler = SGLDGibbs(N, D, clustered["grad_fn"],
                        langevin=LangevinConfig(lr=1e-3, temperature=0.0, tasks_per_step=3),
                        hierarchy=MixtureHierarchy(components=1, sigma=SIGMA, beta=BETA, shift_lr=1e-2),
                        start=ChainStart(thetas=clustered["ybar"], prior_mean=clustered["mu0"]))
    before = sampler.thetas.clone()
    stepped = sampler.step()
    untouched = [i for i in range(N) if i not in stepped]
    delta = sampler.thetas[untouched] - before[untouched]
    assert float(delta.abs().max()) > 0
    torch.testing.assert_close(delta, delta[:1].expand_as(delta))
    assert math.isclose(float(sampler.task_sums[0].sum()), float(sampler.thetas.sum()), rel_tol=1e-5)


def test_lift_passes_shift_lr_in_the_units_of_lr():
    """LiFT: shift_lr is an RMSprop step with preconditioning and per example without it
    (divided by the mean task size, like lr)."""
    from lift_ext.lift import LiFT, TensorTask
    model = torch.nn.Linear(3, 1)
    gen = torch.Generator().manual_seed(0)
    tasks = [TensorTask(torch.randn(n, 3, generator=gen), torch.randn(n, 1, generator=gen), batch_size=2)
             for n in (4, 8)]

    def loss(call, batch):
        return (call(batch[0]) - batch[1]).pow(2).mean()

    hierarchy = MixtureHierarchy(components=1, sigma=1.0, beta=0.5, shift_lr=2e-3)
    preconditioned = LiFT(model, tasks, loss, langevin=LangevinConfig(lr=1e-3, preconditioned=True),
                          hierarchy=hierarchy)
    assert preconditioned.sampler.hierarchy.shift_lr == 2e-3
    plain = LiFT(model, tasks, loss, langevin=LangevinConfig(lr=1e-3), hierarchy=hierarchy)
    assert plain.sampler.hierarchy.shift_lr == pytest.approx(2e-3 / 6)


def test_a_warm_up_that_diverges_is_reported_as_divergence(clustered):
    """Task vectors too far apart for k-means at the end of the warm-up: FloatingPointError."""
    sampler = mixture(clustered, hierarchy=MixtureHierarchy(components=K, sigma=SIGMA, beta=BETA, warmup_steps=2),
                      start=ChainStart(prior_mean=clustered["mu0"]))
    sampler.step()
    sampler.thetas[0].fill_(3e38)
    sampler.thetas[1].fill_(-3e38)
    sampler.grad_fn = lambda task, theta: torch.zeros_like(theta)  # finite there: the k-means is what fails
    with pytest.raises(FloatingPointError, match="too far apart"):
        sampler.step()


class _InterruptedLosses(_ExactGradients):
    """The exact gradients, but `losses` is interrupted (Ctrl-C) on its call number `at`."""

    def __init__(self, clustered, at):
        super().__init__(clustered)
        self.calls, self.at = 0, at

    def losses(self, task, candidates):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return super().losses(task, candidates)


@pytest.mark.parametrize("preconditioned", [False, True])
def test_an_interrupted_likelihood_draw_leaves_the_chain_as_it_was(clustered, preconditioned):
    """grad_fn.losses runs after the theta step: a KeyboardInterrupt in it undoes the step (thetas,
    phis, S, z, pi, v and the task order), and the resumed chain equals an uninterrupted one."""
    from conftest import chain_state

    def make(grad_fn):
        return SGLDGibbs(N, D, grad_fn,
                         langevin=LangevinConfig(lr=5e-3, temperature=0.1, preconditioned=preconditioned,
                                                 tasks_per_step=10),
                         hierarchy=MixtureHierarchy(components=K, sigma=SIGMA, beta=BETA, shift_lr=5e-3,
                                                    z_update="likelihood"),
                         start=ChainStart(thetas=clustered["ybar"], prior_mean=clustered["mu0"]))

    plain, interrupted = make(_ExactGradients(clustered)), make(_InterruptedLosses(clustered, at=25))
    for sampler in (plain, interrupted):
        sampler.run(2, progress=False)
    before = [t.clone() for t in chain_state(interrupted)]
    with pytest.raises(KeyboardInterrupt):
        interrupted.step()  # the 5th call of the step's 10
    assert interrupted.step_count == 2
    for a, b in zip(before, chain_state(interrupted)):
        assert torch.equal(a, b)
    for sampler in (plain, interrupted):
        sampler.run(3, progress=False)
    for a, b in zip(chain_state(plain), chain_state(interrupted)):
        assert torch.equal(a, b)


class _MoveEveryVisit:
    """grad_fn with `losses` that sends the visited task to another component (loss 1e4 for
    the one it is in, 0 elsewhere), or, with move=False, keeps it where it is."""

    def __init__(self, move: bool):
        self.move, self.sampler = move, None

    def __call__(self, task, theta):
        return theta - 5.0

    def losses(self, task, candidates):
        here = int(self.sampler.assignments[task])
        inside = torch.zeros(candidates.shape[0])
        inside[here] = 1.0
        return 1e4 * (inside if self.move else 1.0 - inside)


@pytest.mark.parametrize("move", [True, False])
def test_a_task_moved_by_likelihood_gives_no_gradient_to_the_shift(move):
    """The shift's gbar_k leaves out a task the likelihood draw carried into k in this step (its
    gradient was taken at its old theta, docs/design.md section 12): with one task per step, a
    moved task's step shifts no component, so every other row stays; without a move its
    component is shifted and the other members move (the control)."""
    grad_fn = _MoveEveryVisit(move)
    rows = torch.tensor([[5.0, 5.0, 5.0], [5.2, 4.9, 5.1], [-5.0, -5.0, -5.0], [-4.8, -5.1, -5.0]])
    sampler = SGLDGibbs(4, 3, grad_fn, langevin=LangevinConfig(lr=1e-2),
                        hierarchy=MixtureHierarchy(components=2, sigma=10.0, beta=0.5, shift_lr=1e-2,
                                                   z_update="likelihood"),
                        start=ChainStart(thetas=rows), seed=2)
    grad_fn.sampler = sampler
    for _ in range(4):
        before, z = sampler.thetas.clone(), sampler.assignments
        (task,) = sampler.step()
        others = [j for j in range(4) if j != task]
        assert (int(sampler.assignments[task]) != int(z[task])) == move
        mates = [j for j in others if int(sampler.assignments[j]) == int(sampler.assignments[task])]
        if move:
            assert torch.equal(sampler.thetas[others], before[others])
        else:
            assert mates and not torch.equal(sampler.thetas[mates], before[mates])
        for k in range(2):
            members = sampler.thetas[sampler.assignments == k].double().sum(0)
            torch.testing.assert_close(sampler.task_sums[k].double(), members, rtol=0, atol=1e-5)
