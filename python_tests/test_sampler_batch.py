"""SGLDGibbs with tasks_per_step = B: the visiting order, the fused step of B rows against the
same phi, the running sums, and a step that grad_fn interrupts."""
import math

import pytest
import torch

from lift_ext import ops, reference
from lift_ext.lift import ChainStart, LangevinConfig, MixtureHierarchy, PaperHierarchy, SGLDGibbs

N, D = 7, 37
LR = 3e-3
# phi by Langevin steps of its own size (the paper's eq. 9), or drawn exactly
LANGEVIN_PHI = PaperHierarchy(sigma=1.3, beta=0.4, phi_update="langevin", lr_phi=1e-3)
GIBBS_PHI = PaperHierarchy(sigma=1.3, beta=0.4, phi_update="gibbs")


@pytest.fixture(scope="module")
def problem():
    gen = torch.Generator().manual_seed(0)
    targets = torch.randn(N, D, generator=gen)
    mu0 = torch.randn(D, generator=gen)

    def grad_fn(i, theta):  # a non-linear gradient, so that a wrong theta shows in the result
        return 3.0 * (theta - targets[i]) + 0.1 * theta**3

    return dict(targets=targets, mu0=mu0, grad_fn=grad_fn)


def common(problem, langevin=LangevinConfig(lr=LR), hierarchy=LANGEVIN_PHI):
    """The constructor's keywords: the configs given, every test's start and seed."""
    return dict(langevin=langevin, hierarchy=hierarchy,
                start=ChainStart(thetas=0.5 * problem["targets"], prior_mean=problem["mu0"]), seed=5)


def oracle_chain(problem, steps, *, langevin, hierarchy, start, seed):
    """The paper's chain with one task per step written out as op calls: epoch e visits
    randperm(N) from a generator seeded (seed * 1_000_003 + e); theta at offset 2t, phi at 2t + 1."""
    lr, sigma, beta, prior_mean = langevin.lr, hierarchy.sigma, hierarchy.beta, start.prior_mean
    lr_phi = lr if hierarchy.lr_phi is None else hierarchy.lr_phi  # unused by the exact draw
    thetas = start.thetas.clone()
    total = torch.zeros(D, dtype=torch.float64)
    for row in thetas:
        total += row
    task_sum, phi = total.float(), (total / N).float()
    visits = []
    for epoch in range(steps // N + 1):
        visits += torch.randperm(N, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    for t, task in enumerate(visits[:steps]):
        grad = problem["grad_fn"](task, thetas[task])
        ops.sgld_step_(thetas[task], grad, phi, task_sum, None, lr=lr, temperature=1.0,
                       prior_precision=1 / beta**2, alpha=0.99, eps=max(1e-8, lr / beta**2), seed=seed,
                       offset=2 * t)
        ops.phi_step_(phi, task_sum, prior_mean, lr=lr_phi, temperature=1.0, sigma=sigma, beta=beta,
                      num_tasks=N, gibbs=hierarchy.phi_update == "gibbs", seed=seed, offset=2 * t + 1)
    return visits[:steps], thetas, phi, task_sum


@pytest.mark.parametrize("hierarchy", [LANGEVIN_PHI, GIBBS_PHI], ids=["langevin", "gibbs"])
def test_one_task_per_step_is_the_paper_chain_bitwise(problem, hierarchy):
    kw = common(problem, hierarchy=hierarchy)
    sampler = SGLDGibbs(N, D, problem["grad_fn"], **kw)
    visits = [task for _ in range(40) for task in sampler.step()]
    want_visits, thetas, phi, task_sum = oracle_chain(problem, 40, **kw)
    assert visits == want_visits
    assert torch.equal(sampler.thetas, thetas) and torch.equal(sampler.phi, phi)
    assert torch.equal(sampler.task_sum, task_sum)


@pytest.mark.parametrize("batch", [2, 3, N])
def test_visits_follow_the_round_robin_whatever_the_batch(problem, batch):
    one = SGLDGibbs(N, D, problem["grad_fn"], **common(problem))
    many = SGLDGibbs(N, D, problem["grad_fn"], **common(problem, LangevinConfig(lr=LR, tasks_per_step=batch)))
    steps = [many.step() for _ in range(12)]
    flat = [task for step in steps for task in step]
    assert flat == [task for _ in range(len(flat)) for task in one.step()]
    assert all(1 <= len(step) <= batch and len(set(step)) == len(step) for step in steps)
    assert sum(len(step) < batch for step in steps) <= len(flat) // N + 1  # only at epoch boundaries
    assert many.step_count == 12


@pytest.mark.parametrize("preconditioned", [False, True])
def test_batched_step_matches_the_float64_reference(problem, preconditioned):
    """Step 1 (after step 0, which may start the RMSprop average) of B = 3: each row is the
    reference SGLD step against the same phi with noise elements b D .. (b + 1) D - 1 of offset
    2; the shared average becomes the mean of the rows' own averages; phi the reference draw."""
    langevin = LangevinConfig(lr=LR, tasks_per_step=3, preconditioned=preconditioned)
    sampler = SGLDGibbs(N, D, problem["grad_fn"], **common(problem, langevin, GIBBS_PHI))
    sampler.step()
    thetas, phi, task_sum = sampler.thetas.clone(), sampler.phi.clone(), sampler.task_sum.clone()
    square_avg = None if sampler.square_avg is None else sampler.square_avg.clone()
    tasks = sampler.step()
    noise = reference.philox_normal(3 * D, seed=5, offset=2).reshape(3, D)
    averages = []
    for b, task in enumerate(tasks):
        want, _, avg = reference.sgld_step(thetas[task], problem["grad_fn"](task, thetas[task]), noise[b],
                                           lr=LR, prior_mean=phi, prior_precision=1 / GIBBS_PHI.beta ** 2,
                                           square_avg=square_avg, eps=sampler.damping)
        torch.testing.assert_close(sampler.thetas[task], want.float(), rtol=1e-5, atol=1e-6)
        task_sum += sampler.thetas[task] - thetas[task]
        averages.append(avg)
    if preconditioned:
        torch.testing.assert_close(sampler.square_avg, torch.stack(averages).mean(0).float(), rtol=1e-5, atol=0)
    want_phi = reference.phi_step(phi, sampler.task_sum, problem["mu0"], reference.philox_normal(D, seed=5, offset=3),
                                  lr=LR, temperature=1.0, sigma=GIBBS_PHI.sigma, beta=GIBBS_PHI.beta,
                                  num_tasks=N, gibbs=True)
    torch.testing.assert_close(sampler.phi, want_phi.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sampler.task_sum, task_sum, rtol=0, atol=1e-6)


@pytest.mark.parametrize("langevin,hierarchy", [
    (LangevinConfig(lr=LR, tasks_per_step=4), GIBBS_PHI),
    (LangevinConfig(lr=LR, tasks_per_step=4, preconditioned=True), GIBBS_PHI),
    # sigma << beta: overlapping components, so tasks move between them
    (LangevinConfig(lr=LR, tasks_per_step=4), MixtureHierarchy(components=3, sigma=0.3, beta=4.0))])
def test_batched_sums_stay_exact_and_runs_are_deterministic(problem, langevin, hierarchy):
    args = common(problem, langevin, hierarchy)
    first = SGLDGibbs(N, D, problem["grad_fn"], **args)
    second = SGLDGibbs(N, D, problem["grad_fn"], **args)
    moves, previous = 0, first.assignments
    for _ in range(300):
        first.step()
        moves += int((first.assignments != previous).sum())
        previous = first.assignments
    second.run(300, progress=False)
    assert moves > 0 or not isinstance(hierarchy, MixtureHierarchy)
    assert torch.equal(first.thetas, second.thetas) and torch.equal(first.phis, second.phis)
    assert torch.equal(first.task_sums, second.task_sums)
    z = first.assignments
    for k in range(first.task_sums.shape[0]):
        members = first.thetas[z == k].double().sum(0)
        scale = first.thetas.double().abs().sum(0).max()
        assert float((first.task_sums[k].double() - members).abs().max() / scale) < 1e-5


class Interrupt(KeyboardInterrupt):
    pass


def snapshot(sampler):
    state = {"thetas": sampler.thetas.clone(), "phis": sampler.phis.clone(), "sums": sampler.task_sums.clone(),
             "z": sampler.assignments, "pi": sampler.weights, "step": sampler.step_count,
             "order": sampler.state_dict()["order"]}
    if sampler.square_avg is not None:
        state["square_avg"] = sampler.square_avg.clone()
    if sampler.gmm is not None:
        state["gmm"] = sampler.gmm.state_dict()
    return state


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert a[key].keys() == b[key].keys(), key
            assert all(torch.equal(v, b[key][k]) if isinstance(v, torch.Tensor) else v == b[key][k]
                       for k, v in a[key].items()), key
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("langevin,hierarchy", [
    (LangevinConfig(lr=LR, tasks_per_step=1, preconditioned=True),
     PaperHierarchy(sigma=1.3, beta=0.4, phi_update="langevin", lr_phi=1e-3, burn_in=2, gmm_components=2)),
    (LangevinConfig(lr=LR, tasks_per_step=3, preconditioned=True),
     PaperHierarchy(sigma=1.3, beta=0.4, phi_update="langevin", lr_phi=1e-3, burn_in=2, gmm_components=2)),
    (LangevinConfig(lr=LR, tasks_per_step=3), MixtureHierarchy(components=2, sigma=1.3, beta=0.4))])
def test_interrupt_in_grad_fn_changes_nothing(problem, langevin, hierarchy):
    """A KeyboardInterrupt in grad_fn, at the last task of a step (the others' gradients done),
    leaves every piece of state as it was, and the run then continues as if never stopped."""
    calls = {"n": 0, "fail_at": None}

    def grad_fn(i, theta):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise Interrupt
        return problem["grad_fn"](i, theta)

    sampler = SGLDGibbs(N, D, grad_fn, **common(problem, langevin, hierarchy))
    straight = SGLDGibbs(N, D, problem["grad_fn"], **common(problem, langevin, hierarchy))
    for _ in range(5):  # past an epoch boundary and the OnlineGMM's warm-up
        sampler.step()
    before = snapshot(sampler)
    calls["fail_at"] = calls["n"] + langevin.tasks_per_step
    with pytest.raises(Interrupt):
        sampler.step()
    assert_same(before, snapshot(sampler))
    sampler.run(20, progress=False)
    straight.run(25, progress=False)
    assert_same(snapshot(straight), snapshot(sampler))


def test_batch_larger_than_the_tasks_is_refused(problem):
    with pytest.raises(ValueError, match="tasks_per_step"):
        SGLDGibbs(N, D, problem["grad_fn"], **common(problem, LangevinConfig(lr=LR, tasks_per_step=N + 1)))
    with pytest.raises(ValueError, match="tasks_per_step"):
        SGLDGibbs(N, D, problem["grad_fn"], **common(problem, LangevinConfig(lr=LR, tasks_per_step=0)))


def test_noise_of_a_batched_step_is_the_flat_buffer_noise(problem):
    """Zero gradients, theta = phi = 0, no pull: each row moves by exactly its share of the
    noise of one flat [B D] buffer at offset 0 (rows never share noise)."""
    sampler = SGLDGibbs(N, D, lambda i, t: torch.zeros(D), langevin=LangevinConfig(lr=1e-2, tasks_per_step=N),
                        hierarchy=PaperHierarchy(sigma=1.0, beta=1e3, phi_update="gibbs"), seed=9)
    tasks = sampler.step()
    noise = reference.philox_normal(N * D, seed=9, offset=0).reshape(N, D).float()
    for b, task in enumerate(tasks):
        torch.testing.assert_close(sampler.thetas[task], math.sqrt(2e-2) * noise[b], rtol=1e-5, atol=1e-6)
