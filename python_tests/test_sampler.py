"""SGLDGibbs on the conjugate hierarchical Gaussian model, where phi's posterior is exact:

    y_ij ~ N(theta_i, s^2),  theta_i ~ N(phi, beta^2),  phi ~ N(mu0, sigma^2)   (per dimension)
    => ybar_i | phi ~ N(phi, beta^2 + s^2/n_i) and
       p(phi | y) = N(m, v),  1/v = 1/sigma^2 + sum_i 1/(beta^2 + s^2/n_i),
                              m = v (mu0/sigma^2 + sum_i ybar_i / (beta^2 + s^2/n_i)).
Each of D dimensions is an independent replicate, which gives the moment checks their power.
"""
import math
import os

import pytest
import torch

from lift_ext.checkpoint import CheckpointError, load_checked, save_atomic
from lift_ext.lift import ChainStart, LangevinConfig, MixtureHierarchy, PaperHierarchy, SGLDGibbs

from conftest import requires_cuda

N_TASKS, DIM, S2, BETA, SIGMA = 5, 256, 1.0, 0.5, 1.0
TASK_SIZES = [10, 12, 8, 10, 15]


@pytest.fixture(scope="module")
def problem():
    gen = torch.Generator().manual_seed(0)
    mu0 = 0.3 * torch.randn(DIM, generator=gen)
    phi_true = mu0 + SIGMA * torch.randn(DIM, generator=gen)
    ybar = []
    for n in TASK_SIZES:
        theta = phi_true + BETA * torch.randn(DIM, generator=gen)
        y = theta + math.sqrt(S2) * torch.randn(n, DIM, generator=gen)
        ybar.append(y.mean(0))
    ybar = torch.stack(ybar)
    sizes = torch.tensor(TASK_SIZES, dtype=torch.float64)
    w = 1.0 / (BETA**2 + S2 / sizes)
    var = 1.0 / (1.0 / SIGMA**2 + w.sum())
    mean = var * (mu0.double() / SIGMA**2 + (w[:, None] * ybar.double()).sum(0))

    def grad_fn(i, theta):  # exact gradient of -log p(y_i | theta) = n_i (theta - ybar_i) / s^2
        return TASK_SIZES[i] * (theta - ybar[i]) / S2

    return dict(mu0=mu0, grad_fn=grad_fn, post_mean=mean, post_var=float(var), ybar=ybar)


def sample_phi(problem, phi_update, steps=12000, burn_in=2000, lr=2e-3, preconditioned=False):
    sampler = SGLDGibbs(N_TASKS, DIM, problem["grad_fn"],
                        langevin=LangevinConfig(lr=lr, preconditioned=preconditioned),
                        hierarchy=PaperHierarchy(sigma=SIGMA, beta=BETA, phi_update=phi_update, burn_in=burn_in),
                        start=ChainStart(thetas=problem["ybar"], prior_mean=problem["mu0"]), seed=7)
    total = torch.zeros(DIM, dtype=torch.float64)
    total_sq = torch.zeros(DIM, dtype=torch.float64)
    sampler.run(burn_in, progress=False)
    for _ in range(steps - burn_in):
        sampler.step()
        total += sampler.phi.double()
        total_sq += sampler.phi.double() ** 2
    kept = steps - burn_in
    mean = total / kept
    return sampler, mean, total_sq / kept - mean**2


@pytest.mark.parametrize("phi_update", ["langevin", "gibbs"])
def test_phi_posterior_matches_closed_form(problem, phi_update):
    """Tolerances: the mean error is judged in posterior sd (chains are correlated, so the
    effective sample size per dimension is ~10^2: allow 0.25 sd on average over dimensions); the
    variance ratio within 15% (O(lr) discretisation bias is ~2-4% here). Noise sqrt(lr) instead of
    sqrt(2 lr) halves the variance, a missing J pins phi near mu0: both fail."""
    _, mean, var = sample_phi(problem, phi_update)
    sd = math.sqrt(problem["post_var"])
    mean_error = ((mean - problem["post_mean"]).abs() / sd).mean().item()
    var_ratio = (var.mean() / problem["post_var"]).item()
    assert mean_error < 0.25, mean_error
    assert abs(var_ratio - 1.0) < 0.15, var_ratio


def test_preconditioned_chain_matches_closed_form(problem):
    """pSGLD theta steps (shared RMSprop average): the preconditioner settles near 1/|g| ~ 0.2
    here, so lr = 1e-2 is about the plain chain's 2e-3 per unit gradient. Without a Gamma term
    a fluctuating preconditioner biases the chain slightly; the same tolerances hold."""
    sampler, mean, var = sample_phi(problem, "gibbs", lr=1e-2, preconditioned=True)
    assert sampler.square_avg is not None and bool((sampler.square_avg > 0).all())
    sd = math.sqrt(problem["post_var"])
    mean_error = ((mean - problem["post_mean"]).abs() / sd).mean().item()
    var_ratio = (var.mean() / problem["post_var"]).item()
    assert mean_error < 0.25, mean_error
    assert abs(var_ratio - 1.0) < 0.15, var_ratio


def test_preconditioned_damping_keeps_vanishing_gradients_stable():
    """Weights with zero data gradient: G = 1/damping, damping = lr/beta^2, so the prior
    pull lr G / beta^2 = 1 snaps theta to phi instead of overshooting, and thetas stay finite."""
    beta = 0.1
    sampler = SGLDGibbs(3, 64, lambda i, t: torch.zeros(64),
                        langevin=LangevinConfig(lr=1e-2, temperature=0.0, preconditioned=True),
                        hierarchy=PaperHierarchy(sigma=1.0, beta=beta, phi_update="gibbs"),
                        start=ChainStart(thetas=torch.randn(3, 64, generator=torch.Generator().manual_seed(0))))
    assert sampler.damping == pytest.approx(1e-2 / beta**2)
    start = sampler.thetas.abs().max().item()
    for _ in range(30):
        phi_before = sampler.phi.clone()
        (task,) = sampler.step()
        torch.testing.assert_close(sampler.thetas[task], phi_before, rtol=0, atol=1e-6)
    assert sampler.thetas.abs().max().item() <= start


def test_running_sum_stays_equal_to_thetas_sum(problem):
    sampler, _, _ = sample_phi(problem, "langevin", steps=3000, burn_in=100)
    torch.testing.assert_close(sampler.task_sum, sampler.thetas.sum(0), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("options", [
    dict(langevin=LangevinConfig(lr=2e-3), hierarchy=PaperHierarchy(sigma=SIGMA, beta=BETA, phi_update="langevin")),
    dict(langevin=LangevinConfig(lr=2e-3, tasks_per_step=2),
         hierarchy=PaperHierarchy(sigma=SIGMA, beta=BETA, phi_update="langevin")),
    dict(langevin=LangevinConfig(lr=2e-3, tasks_per_step=2),
         hierarchy=MixtureHierarchy(components=2, sigma=SIGMA, beta=BETA))])
def test_a_grad_fn_that_edits_theta_in_place_is_refused_and_undone(problem, options):
    """A grad_fn that writes into the theta row it is given (a view of the state) is caught by the
    thetas' version counter: ValueError, no step, the edited rows put back (the whole state as
    before), and S_k = the sum of its members' rows."""
    def editing(i, theta):
        theta.add_(1.0)  # the edit the sampler must notice
        return problem["grad_fn"](i, theta)

    sampler = SGLDGibbs(N_TASKS, DIM, problem["grad_fn"],
                        start=ChainStart(thetas=problem["ybar"], prior_mean=problem["mu0"]), seed=3, **options)
    sampler.run(7, progress=False)
    sampler.grad_fn = editing
    before = sampler.state_dict()
    with pytest.raises(ValueError, match="grad_fn edited theta in place"):
        sampler.step()
    assert sampler.step_count == 7
    assert torch.equal(sampler.thetas, before["thetas"]) and torch.equal(sampler.task_sums,
                                                                         before["components"]["sums"])
    z = sampler.assignments
    for k in range(sampler.phis.shape[0]):
        members = sampler.thetas[z == k].double().sum(0)
        torch.testing.assert_close(sampler.task_sums[k].double(), members, rtol=0, atol=1e-5)
    sampler.grad_fn = problem["grad_fn"]
    sampler.run(3, progress=False)  # the chain goes on


def test_a_sharded_grad_fn_that_edits_theta_in_place_leaves_the_state():
    """ShardedSGLDGibbs keeps a copy of the step's rows: an edit is undone, the state is as before."""
    from lift_ext.lift import ShardedSGLDGibbs, Sharding
    sampler = ShardedSGLDGibbs(6, 4, lambda i, t: t - float(i),
                               langevin=LangevinConfig(lr=1e-2, tasks_per_step=2),
                               hierarchy=PaperHierarchy(sigma=1.0, beta=0.5, phi_update="langevin"),
                               sharding=Sharding(num_shards=2), seed=1)
    sampler.run(3, progress=False)
    thetas, sums = sampler.thetas.clone(), sampler.task_sums.clone()
    sampler.grad_fn = lambda i, t: t.mul_(2.0) - float(i)
    with pytest.raises(ValueError, match="grad_fn edited theta in place"):
        sampler.step()
    assert torch.equal(sampler.thetas, thetas) and torch.equal(sampler.task_sums, sums)
    assert sampler.step_count == 3


def test_a_gradient_that_is_not_finite_is_refused_before_the_step(problem):
    """NaN from grad_fn during the burn-in (no phi sample reaches the OnlineGMM yet):
    FloatingPointError naming grad_fn, and nothing changed."""
    sampler = SGLDGibbs(N_TASKS, DIM, problem["grad_fn"], langevin=LangevinConfig(lr=2e-3),
                        hierarchy=PaperHierarchy(sigma=SIGMA, beta=BETA, phi_update="langevin", burn_in=1000),
                        start=ChainStart(thetas=problem["ybar"], prior_mean=problem["mu0"]))
    sampler.run(4, progress=False)
    before = (sampler.thetas.clone(), sampler.phi.clone(), sampler.task_sum.clone())
    sampler.grad_fn = lambda i, theta: torch.full_like(theta, float("nan"))
    with pytest.raises(FloatingPointError, match=r"grad_fn\(\d, theta\) returned NaN or Inf at step 4"):
        sampler.step()
    assert all(torch.equal(a, b) for a, b in zip(before, (sampler.thetas, sampler.phi, sampler.task_sum)))
    assert sampler.step_count == 4


def test_checked_gradients_tell_an_overflowing_sum_from_a_gradient_that_is_not_finite():
    """The finiteness check sums each gradient first: finite entries whose sum overflows float32
    pass; one NaN among them raises FloatingPointError naming the task."""
    from lift_ext.lift.batched_grad import checked_gradients
    thetas = torch.zeros(2, 4)
    big = torch.full((4,), 3e38)
    rows = list(thetas)
    out = checked_gradients(lambda i, t: big, [0, 1], rows, thetas, step=0)
    assert all(torch.equal(g, big) for g in out)
    bad = big.clone()
    bad[2] = float("nan")
    with pytest.raises(FloatingPointError, match=r"grad_fn\(1, theta\) returned NaN or Inf at step 0"):
        checked_gradients(lambda i, t: bad if i == 1 else big, [0, 1], rows, thetas, step=0)


def test_gmm_receives_thinned_samples_after_burn_in(problem):
    sampler = SGLDGibbs(N_TASKS, DIM, problem["grad_fn"], langevin=LangevinConfig(lr=2e-3),
                        hierarchy=PaperHierarchy(sigma=SIGMA, beta=BETA, phi_update="langevin", burn_in=30, thin=4,
                                                 gmm_components=2),
                        start=ChainStart(thetas=problem["ybar"]), seed=1)
    sampler.run(130, progress=False)
    assert sampler.num_gmm_samples == (130 - 30) // 4
    assert float(sampler.gmm.counts.sum()) == pytest.approx((130 - 30) // 4)


def test_round_robin_visits_every_task_each_epoch(problem):
    sampler = SGLDGibbs(N_TASKS, DIM, problem["grad_fn"], langevin=LangevinConfig(lr=2e-3),
                        hierarchy=PaperHierarchy(sigma=SIGMA, beta=BETA, phi_update="langevin"), seed=3)
    visits = [task for _ in range(4 * N_TASKS) for task in sampler.step()]
    for epoch in range(4):
        assert sorted(visits[epoch * N_TASKS:(epoch + 1) * N_TASKS]) == list(range(N_TASKS))
    assert visits[:N_TASKS] != visits[N_TASKS:2 * N_TASKS] or visits[N_TASKS:2 * N_TASKS] != visits[2 * N_TASKS:3 * N_TASKS]


@pytest.mark.parametrize("phi_update,preconditioned", [("langevin", False), ("gibbs", False), ("gibbs", True)])
def test_resume_is_bitwise_exact(problem, tmp_path, phi_update, preconditioned):
    kw = dict(langevin=LangevinConfig(lr=2e-3, preconditioned=preconditioned),
              hierarchy=PaperHierarchy(sigma=SIGMA, beta=BETA, phi_update=phi_update, burn_in=5, thin=2,
                                       gmm_components=2),
              start=ChainStart(thetas=problem["ybar"], prior_mean=problem["mu0"]), seed=11)
    straight = SGLDGibbs(N_TASKS, DIM, problem["grad_fn"], **kw)
    straight.run(47, progress=False)

    first = SGLDGibbs(N_TASKS, DIM, problem["grad_fn"], **kw)
    first.run(23, progress=False)
    path = os.path.join(tmp_path, "chain.pt")
    first.save(path)
    resumed = SGLDGibbs.load(path, problem["grad_fn"])
    resumed.run(24, progress=False)
    assert torch.equal(straight.phi, resumed.phi)
    assert torch.equal(straight.thetas, resumed.thetas)
    assert torch.equal(straight.task_sum, resumed.task_sum)
    assert torch.equal(straight.gmm.means, resumed.gmm.means)
    assert torch.equal(straight.gmm.counts, resumed.gmm.counts)
    assert resumed.step_count == 47


def test_corrupt_and_foreign_checkpoints_are_refused(problem, tmp_path):
    sampler = SGLDGibbs(N_TASKS, DIM, problem["grad_fn"], langevin=LangevinConfig(lr=2e-3),
                        hierarchy=PaperHierarchy(sigma=SIGMA, beta=BETA, phi_update="langevin"), seed=0)
    sampler.run(3, progress=False)
    good = os.path.join(tmp_path, "good.pt")
    sampler.save(good)
    data = open(good, "rb").read()
    truncated = os.path.join(tmp_path, "truncated.pt")
    with open(truncated, "wb") as fh:
        fh.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        SGLDGibbs.load(truncated, problem["grad_fn"])
    foreign = os.path.join(tmp_path, "foreign.pt")
    save_atomic({"format": "something else", "version": 1}, foreign)
    with pytest.raises(CheckpointError, match="not a lift_ext.SGLDGibbs checkpoint"):
        SGLDGibbs.load(foreign, problem["grad_fn"])
    state = load_checked(good, fmt="lift_ext.SGLDGibbs", version=3, required=())
    del state["components"]
    incomplete = os.path.join(tmp_path, "incomplete.pt")
    save_atomic(state, incomplete)
    with pytest.raises(CheckpointError, match="missing components"):
        SGLDGibbs.load(incomplete, problem["grad_fn"])
    state = load_checked(good, fmt="lift_ext.SGLDGibbs", version=3, required=())
    state["thetas"] = state["thetas"][:, :-1].contiguous()
    save_atomic(state, incomplete)
    with pytest.raises(CheckpointError, match="thetas must be a float32 tensor of shape"):
        SGLDGibbs.load(incomplete, problem["grad_fn"])
    state = load_checked(good, fmt="lift_ext.SGLDGibbs", version=3, required=())
    state["version"] = 99
    save_atomic(state, incomplete)
    with pytest.raises(CheckpointError, match="version"):
        SGLDGibbs.load(incomplete, problem["grad_fn"])
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")], "no temp files left behind"


def test_unstable_settings_warn(problem):
    with pytest.warns(RuntimeWarning, match="lr / beta"):
        SGLDGibbs(N_TASKS, DIM, problem["grad_fn"], langevin=LangevinConfig(lr=1e-3),
                  hierarchy=PaperHierarchy(sigma=SIGMA, beta=0.01, phi_update="langevin"))
    with pytest.warns(RuntimeWarning, match="lr_phi"):
        SGLDGibbs(N_TASKS, DIM, problem["grad_fn"], langevin=LangevinConfig(lr=1e-3),
                  hierarchy=PaperHierarchy(sigma=SIGMA, beta=BETA, phi_update="langevin", lr_phi=0.1))


@pytest.mark.parametrize("langevin,hierarchy,start,message", [
    (dict(), dict(phi_update="metropolis"), dict(), "phi_update"), (dict(), dict(thin=0), dict(), "thin"),
    (dict(), dict(sigma=0.0), dict(), "sigma"),
    (dict(), dict(), dict(thetas=torch.zeros(3)), "start.thetas"),
    (dict(), dict(), dict(prior_mean=torch.full((DIM,), float("nan"))), "prior_mean"),
    (dict(lr=float("inf")), dict(), dict(), "lr"),
])
def test_bad_arguments(problem, langevin, hierarchy, start, message):
    """Each bad setting is refused with a ValueError naming it, by its config or by the sampler."""
    with pytest.raises(ValueError, match=message):
        SGLDGibbs(N_TASKS, DIM, problem["grad_fn"], langevin=LangevinConfig(**{"lr": 2e-3, **langevin}),
                  hierarchy=PaperHierarchy(**{"sigma": SIGMA, "beta": BETA, "phi_update": "langevin", **hierarchy}),
                  start=ChainStart(**start))


def test_bad_gradient_shape_is_reported(problem):
    sampler = SGLDGibbs(N_TASKS, DIM, lambda i, t: torch.zeros(DIM + 1), langevin=LangevinConfig(lr=2e-3),
                        hierarchy=PaperHierarchy(sigma=SIGMA, beta=BETA, phi_update="langevin"))
    with pytest.raises(ValueError, match="grad_fn"):
        sampler.step()


def test_divergence_is_reported_clearly(problem):
    # lr * n_i / s^2 = 0.5 * 10 > 2: every theta step overshoots its data term and blows up.
    with pytest.warns(RuntimeWarning, match="lr / beta"):
        sampler = SGLDGibbs(N_TASKS, DIM, problem["grad_fn"], langevin=LangevinConfig(lr=0.5),
                            hierarchy=PaperHierarchy(sigma=SIGMA, beta=BETA, phi_update="gibbs"),
                            start=ChainStart(thetas=problem["ybar"]), seed=1)
    with pytest.raises(FloatingPointError, match="diverged.*lower lr"):
        sampler.run(3000, progress=False)


def test_gradient_on_another_device_is_reported():
    sampler = SGLDGibbs(N_TASKS, DIM, lambda i, t: torch.zeros(DIM, device="meta"),
                        langevin=LangevinConfig(lr=2e-3),
                        hierarchy=PaperHierarchy(sigma=SIGMA, beta=BETA, phi_update="langevin"))
    with pytest.raises(ValueError, match="grad_fn.*meta.*cpu"):
        sampler.step()


@requires_cuda
def test_state_follows_the_prior_mean_device(problem):
    mu0 = problem["mu0"].cuda()
    sampler = SGLDGibbs(N_TASKS, DIM, lambda i, t: problem["grad_fn"](i, t.cpu()).cuda(),
                        langevin=LangevinConfig(lr=2e-3),
                        hierarchy=PaperHierarchy(sigma=SIGMA, beta=BETA, phi_update="langevin", gmm_components=2),
                        start=ChainStart(prior_mean=mu0))
    sampler.run(20, progress=False)
    assert sampler.device.type == "cuda" and sampler.thetas.is_cuda and sampler.gmm.means.is_cuda
    assert torch.isfinite(sampler.phi).all()
