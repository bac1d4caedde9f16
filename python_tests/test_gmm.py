"""lift_ext.gmm.OnlineGMM: recovery of a known mixture, agreement with scikit-learn, state
handling and refused inputs."""
import numpy as np
import pytest
import torch

from lift_ext import reference as ref
from lift_ext.gmm import OnlineGMM

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
K, D, N = 3, 8, 3000
TRUE_WEIGHTS = torch.tensor([0.5, 0.3, 0.2])


def _mixture_data(seed=1):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(K, D, generator=g) * 10  # pairwise separation ~ 40 std
    stds = torch.rand(K, D, generator=g) * 1.5 + 0.5
    labels = torch.multinomial(TRUE_WEIGHTS, N, replacement=True, generator=g)
    x = means[labels] + stds[labels] * torch.randn(N, D, generator=g)
    return x, means, stds ** 2


def _match(est_means, true_means):
    return [int((est_means - m).pow(2).sum(1).argmin()) for m in true_means]


def _fit(x, device, batch=1):
    model = OnlineGMM(K, D, device=device)
    for i in range(0, len(x), batch):
        model.update(x[i:i + batch].to(device) if batch > 1 else x[i].to(device))
    return model


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 16])
def test_recovers_known_mixture(device, batch):
    x, means, variances = _mixture_data()
    model = _fit(x, device, batch)
    order = _match(model.means.cpu(), means)
    assert sorted(order) == list(range(K))
    # tolerances: ~4 standard errors with >= 550 samples per component
    assert (model.means.cpu()[order] - means).abs().max() < 0.25
    assert (model.weights.cpu()[order].float() - TRUE_WEIGHTS).abs().max() < 0.04
    assert ((model.variances.cpu()[order] / variances) - 1).abs().max() < 0.25
    assert float(model.counts.sum()) == pytest.approx(N)


def test_agrees_with_sklearn():
    sklearn_mixture = pytest.importorskip("sklearn.mixture")
    x, means, _ = _mixture_data()
    model = _fit(x, "cpu")
    sk = sklearn_mixture.GaussianMixture(K, covariance_type="diag", random_state=0).fit(x.double().numpy())
    order = _match(model.means, torch.from_numpy(sk.means_).float())
    np.testing.assert_allclose(model.means[order].numpy(), sk.means_, atol=0.02)
    np.testing.assert_allclose(model.weights[order].numpy(), sk.weights_, atol=0.005)
    np.testing.assert_allclose(model.variances[order].numpy(), sk.covariances_, rtol=0.03)
    # the same log density per sample (same parameters up to the tolerances above)
    np.testing.assert_allclose(model.log_prob(x[:50]).numpy(), sk.score_samples(x[:50].double().numpy()),
                               rtol=1e-2)


def test_predictions_match_sklearn_labels():
    sklearn_mixture = pytest.importorskip("sklearn.mixture")
    x, means, _ = _mixture_data()
    model = _fit(x, "cpu")
    sk = sklearn_mixture.GaussianMixture(K, covariance_type="diag", random_state=0).fit(x.double().numpy())
    ours = model.predict(x).numpy()
    theirs = sk.predict(x.double().numpy())
    mapping = {int(t): int(o) for t, o in zip(theirs, ours)}
    assert (np.vectorize(mapping.get)(theirs) == ours).mean() > 0.999


def test_queries_against_reference():
    x, _, _ = _mixture_data()
    model = _fit(x[:500], "cpu")
    st = model.state_dict()
    want_ll, want_resp = ref.gmm_estep(x[:20], st["means"], st["m2"], st["counts"], model.reg_covar)
    torch.testing.assert_close(model.log_prob(x[:20]), torch.logsumexp(want_ll, 1), rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(model.responsibilities(x[:20]), want_resp, rtol=0, atol=1e-6)
    assert model.log_prob(x[0]).shape == () and model.responsibilities(x[0]).shape == (K,)
    assert model.predict(x[:4]).dtype == torch.int64


def test_update_b1_matches_float64_reference():
    x, _, _ = _mixture_data()
    model = _fit(x[:200], "cpu")
    st = model.state_dict()
    mu, m2, n = st["means"].double(), st["m2"].double(), st["counts"]
    for xb in x[200:400]:
        model.update(xb)
        _, q = ref.gmm_estep(xb[None], mu, m2, n, model.reg_covar)
        mu, m2, n = ref.gmm_welford_update(mu, m2, n, xb.double(), q[0])
    torch.testing.assert_close(model.means.double(), mu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.state_dict()["m2"].double(), m2, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(model.counts, n)


def test_initialisation_ignores_global_rng_and_is_deterministic():
    x, _, _ = _mixture_data()
    torch.manual_seed(123)
    a = _fit(x[:300], "cpu")
    torch.manual_seed(999)
    torch.rand(17)
    b = _fit(x[:300], "cpu")
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_state_dict_round_trip():
    x, _, _ = _mixture_data()
    a = _fit(x[:400], "cpu")
    b = OnlineGMM(K, D)
    b.load_state_dict(a.state_dict())
    for xb in x[400:450]:
        a.update(xb)
        b.update(xb)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    # during warm-up too
    c, e = OnlineGMM(K, D), OnlineGMM(K, D)
    c.update(x[:5])
    e.load_state_dict(c.state_dict())
    c.update(x[5:40])
    e.update(x[5:40])
    assert torch.equal(c.means, e.means)


def test_load_state_dict_validates():
    x, _, _ = _mixture_data()
    model = _fit(x[:100], "cpu")
    before = model.state_dict()
    good = model.state_dict()
    bad_states = [
        {k: v for k, v in good.items() if k != "m2"},
        {**good, "extra": torch.zeros(1)},
        {**good, "means": torch.zeros(K + 1, D)},
        {**good, "counts": torch.zeros(K, 2, dtype=torch.float64)},
        {**good, "m2": torch.full((K, D), float("nan"))},
        {**good, "reg_covar": torch.tensor(-1.0, dtype=torch.float64)},
        {**good, "warmup_buffer": torch.zeros(3, D + 1)},
    ]
    for state in bad_states:
        with pytest.raises(ValueError):
            model.load_state_dict(state)
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key])


@pytest.mark.parametrize("phase", ["warmup", "fitted"])
def test_bad_samples_are_refused_and_leave_the_state(phase):
    x, _, _ = _mixture_data()
    model = OnlineGMM(K, D)
    model.update(x[:5] if phase == "warmup" else x[:100])
    before = model.state_dict()
    bad = [x[:3].clone(), x[0].clone(), x[0, :D - 1].clone(), x[:2, :D - 1].clone(), torch.zeros(2, 2, D)]
    bad[0][2, 3] = float("nan")
    bad[1][0] = float("inf")
    for sample in bad:
        with pytest.raises(ValueError, match="NaN or Inf|must have shape"):
            model.update(sample)
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), key


def test_queries_before_initialisation_raise():
    model = OnlineGMM(K, D)
    model.update(torch.zeros(D))
    with pytest.raises(RuntimeError, match="not initialised"):
        model.log_prob(torch.zeros(D))
    with pytest.raises(RuntimeError, match="not initialised"):
        model.sample(3)


def test_constructor_checks():
    for kwargs in (dict(n_components=0, dim=3), dict(n_components=2, dim=0),
                   dict(n_components=2, dim=3, reg_covar=0.0), dict(n_components=2, dim=3, warmup=1)):
        with pytest.raises(ValueError):
            OnlineGMM(**kwargs)
    for reg in (1e-50, 1e39):  # finite, but 0 or inf as the kernels' float32
        with pytest.raises(ValueError, match="reg_covar must be within float32's range"):
            OnlineGMM(2, 3, reg_covar=reg)


def test_sample_is_reproducible_with_a_generator():
    x, means, variances = _mixture_data()
    model = _fit(x, "cpu")
    a = model.sample(4000, generator=torch.Generator().manual_seed(7))
    b = model.sample(4000, generator=torch.Generator().manual_seed(7))
    assert a.shape == (4000, D) and torch.equal(a, b)
    counts = torch.bincount(model.predict(a), minlength=K).double() / 4000
    torch.testing.assert_close(counts, model.weights, atol=0.03, rtol=0)


def test_prior_grad_matches_reference():
    x, _, _ = _mixture_data()
    model = _fit(x[:300], "cpu")
    st = model.state_dict()
    theta = x[301].clone()
    grad = torch.zeros(D)
    r = model.add_prior_grad_(grad, theta, beta=0.5, scale=3.0)
    want, want_r = ref.gmm_prior_grad(theta, st["means"], st["m2"], st["counts"], model.reg_covar, 0.5)
    torch.testing.assert_close(r, want_r, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad.double(), 3.0 * want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_device_round_trip():
    x, _, _ = _mixture_data()
    model = _fit(x[:300], "cpu")
    ll = model.log_prob(x[:10])
    model.to("cuda")
    assert model.means.is_cuda
    torch.testing.assert_close(model.log_prob(x[:10]).cpu(), ll, rtol=1e-9, atol=1e-6)
    model.to("cpu")
    assert torch.equal(model.log_prob(x[:10]), ll)


@pytest.mark.parametrize("seen,far", [(4, 3e37), (3, 3e38)], ids=["fitted", "completing-warmup"])
def test_far_finite_sample_is_refused_with_the_mixture_unchanged(seen, far):
    gen = torch.Generator().manual_seed(seen)
    gmm = OnlineGMM(2, 5, warmup=4)
    gmm.update(torch.randn(seen, 5, generator=gen))
    before = gmm.state_dict()
    with pytest.raises(ValueError, match="unchanged"):
        gmm.update(torch.full((5,), far))
    after = gmm.state_dict()
    assert gmm.initialized == (seen >= 4) and all(torch.equal(before[k], after[k]) for k in before)
    gmm.update(torch.randn(5, generator=gen))  # still updates (and completes the warm-up)
    assert gmm.initialized and bool(torch.isfinite(gmm.means).all())
    OnlineGMM(2, 5, warmup=4).load_state_dict(gmm.state_dict())  # and its state reloads
