"""SGLDGibbs with tasks_per_step = B: the visiting order, the fused step of B rows against the
same phi, the running sums, and a step that grad_fn interrupts."""
import math

import pytest
import torch

from lift_ext import ops, reference
from lift_ext.lift import SGLDGibbs

N, D = 7, 37


@pytest.fixture(scope="module")
def problem():
    gen = torch.Generator().manual_seed(0)
    targets = torch.randn(N, D, generator=gen)
    mu0 = torch.randn(D, generator=gen)

    def grad_fn(i, theta):  # a non-linear gradient, so that a wrong theta shows in the result
        return 3.0 * (theta - targets[i]) + 0.1 * theta**3

    return dict(targets=targets, mu0=mu0, grad_fn=grad_fn)


def common(problem, **kw):
    args = dict(sigma=1.3, beta=0.4, lr=3e-3, lr_phi=1e-3, prior_mean=problem["mu0"],
                theta_init=0.5 * problem["targets"], seed=5)
    args.update(kw)
    return args


def oracle_chain(problem, steps, *, sigma, beta, lr, lr_phi, prior_mean, theta_init, seed,
                 phi_update):
    """The paper's chain with one task per step written out as op calls: epoch e visits
    randperm(N) from a generator seeded (seed * 1_000_003 + e); theta at offset 2t, phi at 2t + 1."""
    thetas = theta_init.clone()
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
                      num_tasks=N, gibbs=phi_update == "gibbs", seed=seed, offset=2 * t + 1)
    return visits[:steps], thetas, phi, task_sum


@pytest.mark.parametrize("phi_update", ["langevin", "gibbs"])
def test_one_task_per_step_is_the_paper_chain_bitwise(problem, phi_update):
    kw = common(problem, phi_update=phi_update)
    sampler = SGLDGibbs(N, D, problem["grad_fn"], **kw)
    visits = [task for _ in range(40) for task in sampler.step()]
    want_visits, thetas, phi, task_sum = oracle_chain(problem, 40, **kw)
    assert visits == want_visits
    assert torch.equal(sampler.thetas, thetas) and torch.equal(sampler.phi, phi)
    assert torch.equal(sampler.task_sum, task_sum)


@pytest.mark.parametrize("batch", [2, 3, N])
def test_visits_follow_the_round_robin_whatever_the_batch(problem, batch):
    one = SGLDGibbs(N, D, problem["grad_fn"], **common(problem))
    many = SGLDGibbs(N, D, problem["grad_fn"], **common(problem, tasks_per_step=batch))
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
    kw = common(problem, tasks_per_step=3, phi_update="gibbs", preconditioned=preconditioned)
    sampler = SGLDGibbs(N, D, problem["grad_fn"], **kw)
    sampler.step()
    thetas, phi, task_sum = sampler.thetas.clone(), sampler.phi.clone(), sampler.task_sum.clone()
    square_avg = None if sampler.square_avg is None else sampler.square_avg.clone()
    tasks = sampler.step()
    noise = reference.philox_normal(3 * D, seed=5, offset=2).reshape(3, D)
    averages = []
    for b, task in enumerate(tasks):
        want, _, avg = reference.sgld_step(thetas[task], problem["grad_fn"](task, thetas[task]), noise[b],
                                           lr=kw["lr"], prior_mean=phi, prior_precision=1 / kw["beta"] ** 2,
                                           square_avg=square_avg, eps=sampler.damping)
        torch.testing.assert_close(sampler.thetas[task], want.float(), rtol=1e-5, atol=1e-6)
        task_sum += sampler.thetas[task] - thetas[task]
        averages.append(avg)
    if preconditioned:
        torch.testing.assert_close(sampler.square_avg, torch.stack(averages).mean(0).float(), rtol=1e-5, atol=0)
    want_phi = reference.phi_step(phi, sampler.task_sum, problem["mu0"], reference.philox_normal(D, seed=5, offset=3),
                                  lr=kw["lr_phi"], temperature=1.0, sigma=kw["sigma"], beta=kw["beta"],
                                  num_tasks=N, gibbs=True)
    torch.testing.assert_close(sampler.phi, want_phi.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sampler.task_sum, task_sum, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(), dict(preconditioned=True),
                                # sigma << beta: overlapping components, so tasks move between them
                                dict(prior="mixture", n_components=3, sigma=0.3, beta=4.0)])
def test_batched_sums_stay_exact_and_runs_are_deterministic(problem, kw):
    args = common(problem, tasks_per_step=4, phi_update="gibbs", **kw)
    first = SGLDGibbs(N, D, problem["grad_fn"], **args)
    second = SGLDGibbs(N, D, problem["grad_fn"], **args)
    moves, previous = 0, first.assignments
    for _ in range(300):
        first.step()
        moves += int((first.assignments != previous).sum())
        previous = first.assignments
    second.run(300, progress=False)
    assert moves > 0 or "prior" not in kw
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
             "order": (sampler._order.epoch, sampler._order.position)}
    if sampler.square_avg is not None:
        state["square_avg"] = sampler.square_avg.clone()
    if sampler.gmm is not None:
        state["gmm"] = sampler.gmm.state_dict()
    return state


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("kw", [dict(tasks_per_step=1, preconditioned=True, burn_in=2, n_components=2),
                                dict(tasks_per_step=3, preconditioned=True, burn_in=2, n_components=2),
                                dict(tasks_per_step=3, prior="mixture", n_components=2, phi_update="gibbs")])
def test_interrupt_in_grad_fn_changes_nothing(problem, kw):
    """A KeyboardInterrupt in grad_fn, at the last task of a step (the others' gradients done),
    leaves every piece of state as it was, and the run then continues as if never stopped."""
    calls = {"n": 0, "fail_at": None}

    def grad_fn(i, theta):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise Interrupt
        return problem["grad_fn"](i, theta)

    sampler = SGLDGibbs(N, D, grad_fn, **common(problem, **kw))
    straight = SGLDGibbs(N, D, problem["grad_fn"], **common(problem, **kw))
    for _ in range(5):  # past an epoch boundary and the OnlineGMM's warm-up
        sampler.step()
    before = snapshot(sampler)
    calls["fail_at"] = calls["n"] + kw["tasks_per_step"]
    with pytest.raises(Interrupt):
        sampler.step()
    assert_same(before, snapshot(sampler))
    sampler.run(20, progress=False)
    straight.run(25, progress=False)
    assert_same(snapshot(straight), snapshot(sampler))


def test_batch_larger_than_the_tasks_is_refused(problem):
    with pytest.raises(ValueError, match="tasks_per_step"):
        SGLDGibbs(N, D, problem["grad_fn"], **common(problem, tasks_per_step=N + 1))
    with pytest.raises(ValueError, match="tasks_per_step"):
        SGLDGibbs(N, D, problem["grad_fn"], **common(problem, tasks_per_step=0))


def test_noise_of_a_batched_step_is_the_flat_buffer_noise(problem):
    """Zero gradients, theta = phi = 0, no pull: each row moves by exactly its share of the
    noise of one flat [B D] buffer at offset 0 (rows never share noise)."""
    sampler = SGLDGibbs(N, D, lambda i, t: torch.zeros(D), sigma=1.0, beta=1e3, lr=1e-2, seed=9,
                        tasks_per_step=N, phi_update="gibbs")
    tasks = sampler.step()
    noise = reference.philox_normal(N * D, seed=9, offset=0).reshape(N, D).float()
    for b, task in enumerate(tasks):
        torch.testing.assert_close(sampler.thetas[task], math.sqrt(2e-2) * noise[b], rtol=1e-5, atol=1e-6)
