"""SGLDGibbs(hierarchy=MixtureHierarchy(...)) on a clustered conjugate hierarchical Gaussian model, where the
posterior of each phi_k given the assignments is exact (per dimension):

    y_ij ~ N(theta_i, s^2) (n_i of them),  theta_i | z_i = k ~ N(phi_k, beta^2),  phi_k ~ N(mu0, sigma^2)
    => p(phi_k | y, z) = N(m_k, v_k),  1/v_k = 1/sigma^2 + sum_{z_i = k} 1/(beta^2 + s^2/n_i),
                                       m_k = v_k (mu0/sigma^2 + sum_{z_i = k} ybar_i / (beta^2 + s^2/n_i)).
"""
import math

import pytest
import torch

from lift_ext import reference
from lift_ext.lift import ChainStart, LangevinConfig, MixtureHierarchy, MixturePrior, PaperHierarchy, SGLDGibbs
from lift_ext.lift.mixture import COMPONENT_STRIDE, Components, initial_assignments

from conftest import requires_cuda

K, N, D, S2, BETA, SIGMA = 3, 30, 20, 1.0, 0.5, 3.0
LANGEVIN = LangevinConfig(lr=5e-3, tasks_per_step=10)
HIERARCHY = MixtureHierarchy(components=K, sigma=SIGMA, beta=BETA)


@pytest.fixture(scope="module")
def clustered():
    gen = torch.Generator().manual_seed(1)
    mu0 = 0.5 * torch.randn(D, generator=gen)
    phi_true = mu0 + SIGMA * torch.randn(K, D, generator=gen)
    z_true = torch.arange(N) % K
    sizes = torch.randint(5, 15, (N,), generator=gen)
    theta = phi_true[z_true] + BETA * torch.randn(N, D, generator=gen)
    ybar = torch.stack([(theta[i] + math.sqrt(S2) * torch.randn(int(sizes[i]), D, generator=gen)).mean(0)
                        for i in range(N)])
    w = 1.0 / (BETA**2 + S2 / sizes.double())
    means, variances = [], []
    for k in range(K):
        members = z_true == k
        v = 1.0 / (1.0 / SIGMA**2 + w[members].sum())
        variances.append(float(v))
        means.append(v * (mu0.double() / SIGMA**2 + (w[members, None] * ybar[members].double()).sum(0)))

    def grad_fn(i, theta):  # exact gradient of -log p(y_i | theta) = n_i (theta - ybar_i) / s^2
        return float(sizes[i]) * (theta - ybar[i]) / S2

    return dict(mu0=mu0, ybar=ybar, z_true=z_true, grad_fn=grad_fn, post_mean=torch.stack(means),
                post_var=torch.tensor(variances, dtype=torch.float64))


def mixture(clustered, langevin=LANGEVIN, hierarchy=HIERARCHY, start=None, seed=0):
    """The chain of the clustered problem with these configs; start None: from the task means
    ybar_i, with mu0 as the prior mean."""
    if start is None:
        start = ChainStart(thetas=clustered["ybar"], prior_mean=clustered["mu0"])
    return SGLDGibbs(N, D, clustered["grad_fn"], langevin=langevin, hierarchy=hierarchy, start=start, seed=seed)


def matching(z, z_true):
    """label_of[k] = the sampler's label of true cluster k; asserts z is z_true relabelled."""
    label_of = [int(z[z_true == k][0]) for k in range(K)]
    assert sorted(label_of) == list(range(K)), (z.tolist(), z_true.tolist())
    assert torch.equal(z, torch.tensor(label_of)[z_true]), (z.tolist(), z_true.tolist())
    return label_of


def assert_samples_exact_phi_posteriors(sampler, clustered, variance_tolerance=0.1, steps=5000):
    """After 1000 steps of burn-in, `steps` more: the partition is found (checked every 500
    steps) and the mean over the steps of each phi_k (and of its Rao-Blackwellised mean m_k,
    every 10 steps) lies within 0.2 posterior sd of the exact posterior mean, averaged over the
    K D replicates; the sampled variance within `variance_tolerance` of the exact one."""
    sampler.run(1000, progress=False)
    total = torch.zeros(K, D, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    rb_total = torch.zeros_like(total)
    for t in range(steps):
        sampler.step()
        total += sampler.phis.double()
        total_sq += sampler.phis.double() ** 2
        if t % 10 == 0:
            rb_total += sampler.meta_test_prior().means.double()
        if t % 500 == 0:
            matching(sampler.assignments, clustered["z_true"])
    label_of = matching(sampler.assignments, clustered["z_true"])
    mean = (total / steps)[label_of]
    var = (total_sq / steps)[label_of] - mean**2
    sd = clustered["post_var"].sqrt()[:, None]
    rb_mean = (rb_total / (steps // 10))[label_of]
    ratio = var.mean(1) / clustered["post_var"]
    assert float(((mean - clustered["post_mean"]).abs() / sd).mean()) < 0.2
    assert float(((rb_mean - clustered["post_mean"]).abs() / sd).mean()) < 0.2
    assert bool(((ratio - 1).abs() < variance_tolerance).all()), ratio


def test_recovers_the_partition_and_the_exact_phi_posteriors(clustered):
    """Tolerances as in test_sampler.py: mean error in posterior sd averaged over the K D
    replicates < 0.2, variance ratio within 10 % (measured: 0.065 and < 1 %). A theta noise off
    by sqrt(2), phi draws without T v_k or a pull toward the wrong phi_k fail them."""
    assert_samples_exact_phi_posteriors(mixture(clustered), clustered)


def test_labels_differ_by_seed_but_the_partition_and_prior_do_not(clustered):
    """Label switching: seeds 0 and 1 start from permuted labels (k-means++ picks other first
    centres); both chains find the same partition and, matched by label, the same prior."""
    a, b = mixture(clustered, seed=0), mixture(clustered, seed=1)
    assert not torch.equal(a.assignments, b.assignments)
    a.run(1500, progress=False)
    b.run(1500, progress=False)
    la, lb = matching(a.assignments, clustered["z_true"]), matching(b.assignments, clustered["z_true"])
    pa, pb = a.meta_test_prior(), b.meta_test_prior()
    sd = clustered["post_var"].sqrt()[:, None]
    assert float(((pa.means[la] - pb.means[lb]).double().abs() / sd).max()) < 3.0
    torch.testing.assert_close(pa.weights[la], pb.weights[lb])


def test_warmup_then_kmeans_finds_the_clusters_from_a_common_start(clustered):
    """All tasks start at mu0: W one-phi steps separate the thetas, then k-means++ sets z."""
    sampler = mixture(clustered, hierarchy=MixtureHierarchy(components=K, sigma=SIGMA, beta=BETA, warmup_steps=300),
                      start=ChainStart(prior_mean=clustered["mu0"]))
    sampler.run(299, progress=False)
    assert bool((sampler.assignments == 0).all())
    with pytest.raises(RuntimeError, match="warmup_steps=300"):
        sampler.meta_test_prior()
    sampler.run(301, progress=False)
    matching(sampler.assignments, clustered["z_true"])


def test_initial_assignments_cluster_directions_not_lengths():
    """Three groups of task vectors leave a common start at 120 degrees to each other, each task
    by a length from 0.3 to 30 (tasks with more data travel farther; every group holds the same
    lengths). k-means over the directions (with restarts) finds the groups."""
    gen = torch.Generator().manual_seed(3)
    plane = torch.linalg.qr(torch.randn(40, 2, generator=gen))[0].T  # two orthonormal rows
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    axes = torch.cos(angles)[:, None] * plane[0] + torch.sin(angles)[:, None] * plane[1]
    truth = torch.arange(60) % 3
    lengths = torch.logspace(math.log10(0.3), math.log10(30), 20).repeat_interleave(3)
    thetas = 5.0 + lengths[:, None] * (axes[truth] + 0.1 * torch.randn(60, 40, generator=gen))
    z = initial_assignments(thetas, 3, torch.Generator().manual_seed(0))
    assert all(len(set(z[truth == g].tolist())) == 1 for g in range(3)), z.tolist()
    assert len(set(z.tolist())) == 3


def test_a_common_start_without_warmup_warns(clustered):
    with pytest.warns(RuntimeWarning, match="warmup_steps"):
        sampler = mixture(clustered, start=ChainStart(prior_mean=clustered["mu0"]))
    assert sorted(torch.bincount(sampler.assignments).tolist()) == [10, 10, 10]  # balanced


def test_meta_test_prior_is_the_conditional_posterior_of_the_state(clustered):
    sampler = mixture(clustered, langevin=LangevinConfig(lr=5e-3, tasks_per_step=10, temperature=0.7))
    sampler.run(50, progress=False)
    prior = sampler.meta_test_prior()
    assert isinstance(prior, MixturePrior) and prior.beta == BETA
    counts = torch.bincount(sampler.assignments, minlength=K).double()
    v = 1.0 / (1.0 / SIGMA**2 + counts / BETA**2)
    m = v[:, None] * (clustered["mu0"].double() / SIGMA**2 + sampler.task_sums.double() / BETA**2)
    torch.testing.assert_close(prior.means, m.float())
    torch.testing.assert_close(prior.variances, (0.7 * v[:, None]).float().expand(K, D))
    torch.testing.assert_close(prior.weights, (1.0 + counts) / (K + N))
    for k in range(K):
        members = sampler.thetas[sampler.assignments == k].double().sum(0)
        torch.testing.assert_close(sampler.task_sums[k].double(), members, rtol=0, atol=1e-4)


def test_empty_component_is_drawn_from_its_prior_at_its_own_offset():
    """Two distinct starting rows and K = 3: one component has no task, so its phi is
    mu0 + sqrt(T) sigma xi with xi the Philox noise of offset 2t + 1 + 2 * 2^40."""
    theta_init = torch.zeros(4, 8)
    theta_init[2:] = 5.0
    mu0 = torch.linspace(-1, 1, 8)
    sampler = SGLDGibbs(4, 8, lambda i, t: torch.zeros(8),
                        langevin=LangevinConfig(lr=1e-3, temperature=0.5, tasks_per_step=2),
                        hierarchy=MixtureHierarchy(components=3, sigma=2.0, beta=0.1),
                        start=ChainStart(thetas=theta_init, prior_mean=mu0), seed=3)
    empty = [k for k, n in enumerate(torch.bincount(sampler.assignments, minlength=3).tolist()) if n == 0]
    assert len(empty) == 1
    sampler.step()
    noise = reference.philox_normal(8, seed=3, offset=1 + empty[0] * COMPONENT_STRIDE).float()
    torch.testing.assert_close(sampler.phis[empty[0]], mu0 + math.sqrt(0.5) * 2.0 * noise)


def test_assignment_draws_follow_their_conditional():
    """P(z = k) ∝ pi_k exp(-||theta - phi_k||^2 / (2 beta^2 T)) at T = 2, from 4000 draws: the
    Gaussian term tempered, pi not (docs/design.md section 10, the tempered target); the
    untempered conditional (T = 1) is ruled out."""
    beta, temperature = 0.5, 2.0
    comps = Components(3, 1, 4, torch.device("cpu"))
    theta = torch.tensor([[0.3, -0.2, 0.1, 0.0]])
    comps.rebuild_(theta, torch.zeros(1, dtype=torch.int64), None)
    comps.phis.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.3, -0.2, 0.1, 1.5]]))
    comps.weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    logits = comps.weights.log() - (theta - comps.phis).double().pow(2).sum(1) / (2 * beta**2 * temperature)
    want = torch.softmax(logits, 0)
    seen = torch.zeros(3)
    for i in range(4000):
        uniform = comps.gumbel_uniforms(1, temperature, torch.Generator().manual_seed(i))
        (label,) = comps.choose(theta, beta=beta, temperature=temperature, uniform=uniform)
        if label != int(comps.assignments[0]):  # the step's move (lift_ext.lift.reduction.LocalReduction.assign)
            comps.move_(0, label, theta[0], theta[0])
        seen[int(comps.assignments[0])] += 1
        for k in range(3):  # the task's sum moves with it; an emptied component's sum is 0 exactly
            assert torch.equal(comps.sums[k], theta[0] if k == int(comps.assignments[0]) else torch.zeros(4))
    freq = seen.double() / 4000
    assert bool(((freq - want).abs() < 4 * (want * (1 - want) / 4000).sqrt()).all()), (freq, want)
    untempered = torch.softmax(comps.weights.log() - (theta - comps.phis).double().pow(2).sum(1) / (2 * beta**2), 0)
    assert bool(((freq - untempered).abs() > 8 * (untempered * (1 - untempered) / 4000).sqrt()).any())


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_a_row_whose_distances_all_overflow_is_a_divergence(temperature):
    """A stepped theta 1e20 from every phi_k: every float32 distance overflows, so no component
    has a finite score; that is a divergence (FloatingPointError), not a draw of component 0."""
    comps = Components(2, 1, 3, torch.device("cpu"))
    comps.phis.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    uniform = comps.gumbel_uniforms(1, temperature, torch.Generator().manual_seed(0))
    with pytest.raises(FloatingPointError, match="not finite"):
        comps.choose(torch.tensor([[1e20, 0.0, 0.0]]), beta=0.5, temperature=temperature, uniform=uniform)


def test_weight_draws_are_dirichlet():
    comps = Components(3, 6, 2, torch.device("cpu"), a0=0.5)
    comps.rebuild_(torch.zeros(6, 2), torch.tensor([0, 0, 0, 1, 1, 2]), None)
    draws = []
    for i in range(3000):
        comps.draw_weights_(temperature=1.0, generator=torch.Generator().manual_seed(i))
        draws.append(comps.weights)
    draws = torch.stack(draws)
    concentration = torch.tensor([3.5, 2.5, 1.5], dtype=torch.float64)
    mean = concentration / concentration.sum()
    var = mean * (1 - mean) / (concentration.sum() + 1)
    assert bool(((draws.mean(0) - mean).abs() < 4 * (var / 3000).sqrt()).all())
    assert bool(((draws.var(0) / var - 1).abs() < 0.15).all())


def test_zero_temperature_is_deterministic_and_exact(clustered):
    """T = 0: theta steps are SGD, z the nearest phi_k, phi_k = m_k exactly, pi its mean."""
    sampler = mixture(clustered, langevin=LangevinConfig(lr=5e-3, tasks_per_step=10, temperature=0.0))
    sampler.run(200, progress=False)
    prior = sampler.meta_test_prior()
    torch.testing.assert_close(sampler.phis, prior.means, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sampler.weights, prior.weights)
    assert float(prior.variances.abs().max()) == 0.0
    matching(sampler.assignments, clustered["z_true"])


def test_one_component_is_the_exact_gibbs_paper_chain_bitwise(clustered):
    for batch in (1, 4):
        kw = dict(langevin=LangevinConfig(lr=5e-3, tasks_per_step=batch),
                  start=ChainStart(thetas=clustered["ybar"], prior_mean=clustered["mu0"]), seed=4)
        paper = SGLDGibbs(N, D, clustered["grad_fn"], hierarchy=PaperHierarchy(sigma=SIGMA, beta=BETA,
                                                                               phi_update="gibbs"), **kw)
        single = SGLDGibbs(N, D, clustered["grad_fn"], hierarchy=MixtureHierarchy(components=1, sigma=SIGMA,
                                                                                  beta=BETA), **kw)
        for _ in range(60):
            assert paper.step() == single.step()
        assert torch.equal(paper.thetas, single.thetas)
        assert torch.equal(paper.phi, single.phis[0])
        assert torch.equal(paper.task_sum, single.task_sums[0])
        assert single.weights.tolist() == [1.0]


def test_paper_prior_names_its_knobs_before_the_mixture_exists(clustered):
    sampler = SGLDGibbs(N, D, clustered["grad_fn"], langevin=LangevinConfig(lr=5e-3),
                        hierarchy=PaperHierarchy(sigma=SIGMA, beta=BETA, phi_update="langevin", burn_in=10, thin=2,
                                                 gmm_components=2),
                        start=ChainStart(thetas=clustered["ybar"]))
    sampler.run(15, progress=False)
    with pytest.raises(RuntimeError, match=r"thin=2 steps after burn_in=10, so 15 steps have given 2: run at least 11 more") as info:
        sampler.meta_test_prior()
    assert "update()" not in str(info.value)
    sampler.run(11, progress=False)
    prior = sampler.meta_test_prior()
    assert isinstance(prior, MixturePrior) and prior.n_components <= 2


def test_mixture_has_no_single_phi(clustered):
    sampler = mixture(clustered)
    with pytest.raises(AttributeError, match="phis"):
        sampler.phi
    with pytest.raises(AttributeError, match="task_sums"):
        sampler.task_sum
    assert sampler.gmm is None and sampler.num_gmm_samples == 0


@pytest.mark.parametrize("settings,error,message", [
    (lambda: dict(hierarchy="hierarchical"), TypeError, "hierarchy"),
    (lambda: dict(hierarchy=MixtureHierarchy(components=0, sigma=SIGMA, beta=BETA)), ValueError, "components"),
    (lambda: dict(hierarchy=MixtureHierarchy(components=N + 1, sigma=SIGMA, beta=BETA)), ValueError, "components"),
    (lambda: dict(langevin=LangevinConfig(lr=5e-3, tasks_per_step=N + 1)), ValueError, "tasks_per_step"),
    (lambda: dict(hierarchy=MixtureHierarchy(components=K, sigma=SIGMA, beta=BETA, dirichlet_alpha=0.0)),
     ValueError, "dirichlet_alpha"),
    (lambda: dict(hierarchy=MixtureHierarchy(components=K, sigma=SIGMA, beta=BETA, dirichlet_alpha=-1.0)),
     ValueError, "dirichlet_alpha"),
    # an option of the other hierarchy is no field of this one's config
    (lambda: dict(hierarchy=MixtureHierarchy(components=K, sigma=SIGMA, beta=BETA, phi_update="langevin")),
     TypeError, "phi_update"),
    (lambda: dict(hierarchy=MixtureHierarchy(components=K, sigma=SIGMA, beta=BETA, warmup_steps=-1)),
     ValueError, "warmup_steps"),
    (lambda: dict(hierarchy=PaperHierarchy(sigma=SIGMA, beta=BETA, warmup_steps=5)), TypeError, "warmup_steps"),
])
def test_bad_arguments_are_refused(clustered, settings, error, message):
    """`settings` builds the bad configs inside the check: a config refuses its own bad field on
    construction, the sampler what depends on the problem (N); grad_fn is never called."""
    calls = []
    with pytest.raises(error, match=message):
        SGLDGibbs(N, D, lambda i, t: calls.append(i), **{"langevin": LangevinConfig(lr=5e-3),
                                                          "hierarchy": HIERARCHY, **settings()})
    assert not calls


@requires_cuda
def test_mixture_chain_runs_on_the_gpu(clustered):
    """Every piece on the device of the state: E-step, phi_k draws, sums; z and pi on the host."""
    sampler = mixture(clustered, hierarchy=MixtureHierarchy(components=K, sigma=SIGMA, beta=BETA, warmup_steps=50),
                      start=ChainStart(thetas=clustered["ybar"].cuda(), prior_mean=clustered["mu0"].cuda()))
    sampler.grad_fn = lambda i, theta: clustered["grad_fn"](i, theta.cpu()).cuda()
    sampler.run(400, progress=False)
    assert sampler.phis.is_cuda and sampler.task_sums.is_cuda and not sampler.assignments.is_cuda
    matching(sampler.assignments, clustered["z_true"])
    z = sampler.assignments.cuda()
    for k in range(K):
        torch.testing.assert_close(sampler.task_sums[k], sampler.thetas[z == k].sum(0), rtol=1e-5, atol=1e-4)
    assert sampler.meta_test_prior().means.is_cuda


@pytest.mark.parametrize("k", [1, K])
def test_divergence_is_reported_clearly(clustered, k):
    # lr * n_i / s^2 >= 2.5: every theta step overshoots its data term and blows up.
    with pytest.warns(RuntimeWarning, match="lr / beta"):
        sampler = mixture(clustered, langevin=LangevinConfig(lr=0.25, tasks_per_step=10),
                          hierarchy=MixtureHierarchy(components=k, sigma=SIGMA, beta=BETA))
    with pytest.raises(FloatingPointError, match="diverged.*lower lr"):
        sampler.run(3000, progress=False)
