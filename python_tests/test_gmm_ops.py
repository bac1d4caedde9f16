"""The Gaussian-mixture ops (gmm_estep, gmm_mstep_, gmm_prior_grad_) against the float64
reference, on every available device."""
import math

import pytest
import torch

import lift_ext  # noqa: F401
from lift_ext import ops
from lift_ext import reference as ref

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CASES = [(b, k, d) for b in (1, 7) for k in (1, 3, 8) for d in (1, 5, 4099)] + [(1, 8, 2**18), (7, 3, 2**18)]


def _state(k, d, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g)
    counts = torch.rand(k, generator=g, dtype=torch.float64) * 20 + 1
    m2 = (torch.rand(k, d, generator=g) + 0.5) * counts.float()[:, None]
    return means.to(device), m2.to(device), counts.to(device)


def _samples(b, d, device, seed=1):
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed)).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("b,k,d", CASES)
def test_estep_matches_reference(device, b, k, d):
    means, m2, counts = _state(k, d, device)
    x = _samples(b, d, device)
    loglik, resp = ops.gmm_estep(x, means, m2, counts, reg=1e-6)
    want_ll, want_resp = ref.gmm_estep(x.cpu(), means.cpu(), m2.cpu(), counts.cpu(), 1e-6)
    assert loglik.dtype == resp.dtype == torch.float64 and loglik.shape == (b, k)
    # float32 per-element terms, float64 sums: relative error ~1e-6 of the summed magnitudes
    tol = 1e-5 * (want_ll.abs() + d)
    assert ((loglik.cpu() - want_ll).abs() <= tol).all()
    torch.testing.assert_close(resp.cpu(), want_resp, atol=1e-4, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("b,k,d", CASES)
def test_mstep_matches_reference(device, b, k, d):
    means, m2, counts = _state(k, d, device)
    x = _samples(b, d, device)
    resp = torch.softmax(torch.randn(b, k, generator=torch.Generator().manual_seed(2),
                                     dtype=torch.float64), 1).to(device)
    if k > 1:
        resp[:, -1] = 0.0  # a component with zero batch weight must stay untouched
    want = ref.gmm_mstep(means.cpu(), m2.cpu(), counts.cpu(), x.cpu(), resp.cpu())
    before = (means.clone(), m2.clone())
    ops.gmm_mstep_(means, m2, counts, x, resp)
    torch.testing.assert_close(means.cpu().double(), want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(m2.cpu().double(), want[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(counts.cpu(), want[2], rtol=1e-12, atol=0)
    if k > 1:
        assert torch.equal(means[-1], before[0][-1]) and torch.equal(m2[-1], before[1][-1])


def test_chan_merge_equals_sequential_welford():
    """With the responsibilities held fixed, one batch merge equals B single Welford steps."""
    means, m2, counts = _state(3, 17, "cpu")
    x = _samples(5, 17, "cpu").double()
    q = torch.softmax(torch.randn(5, 3, dtype=torch.float64), 1)
    mu, s, n = means.double(), m2.double(), counts.clone()
    for xb, qb in zip(x, q):
        mu, s, n = ref.gmm_welford_update(mu, s, n, xb, qb)
    batch = ref.gmm_mstep(means, m2, counts, x, q)
    for got, want in zip(batch, (mu, s, n)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_b1_sequence_matches_float64_reference(device):
    k, d = 3, 257
    means, m2, counts = _state(k, d, device)
    w_mu, w_m2, w_n = means.cpu().double(), m2.cpu().double(), counts.cpu().clone()
    xs = torch.randn(60, d, generator=torch.Generator().manual_seed(5)) + means.cpu()[torch.arange(60) % k]
    for x in xs:
        x1 = x.to(device)[None, :]
        _, q = ops.gmm_estep(x1, means, m2, counts, reg=1e-6)
        ops.gmm_mstep_(means, m2, counts, x1, q)
        _, want_q = ref.gmm_estep(x[None, :], w_mu, w_m2, w_n, 1e-6)
        w_mu, w_m2, w_n = ref.gmm_welford_update(w_mu, w_m2, w_n, x.double(), want_q[0])
    torch.testing.assert_close(means.cpu().double(), w_mu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m2.cpu().double(), w_m2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(counts.cpu(), w_n, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k,d", [(1, 5), (3, 4099), (8, 1000)])
def test_prior_grad_matches_reference(device, k, d):
    means, m2, counts = _state(k, d, device)
    theta = (means[0] + 0.1 * _samples(1, d, device)[0]).contiguous()
    beta, reg = 0.3, 1e-6
    grad = torch.full((d,), 0.5, device=device)
    _, resp = ops.gmm_estep(theta[None], means, m2, counts, reg=reg + beta**2)
    ops.gmm_prior_grad_(grad, theta, means, m2, counts, resp[0], reg=reg + beta**2, scale=2.0)
    want, want_r = ref.gmm_prior_grad(theta.cpu(), means.cpu(), m2.cpu(), counts.cpu(), reg, beta)
    torch.testing.assert_close(resp[0].cpu(), want_r, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad.cpu().double(), 0.5 + 2.0 * want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_estep_deterministic(device):
    means, m2, counts = _state(8, 70001, device)
    x = _samples(7, 70001, device)
    first = ops.gmm_estep(x, means, m2, counts, reg=1e-6)
    second = ops.gmm_estep(x, means, m2, counts, reg=1e-6)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_cpu_results_independent_of_thread_count():
    means, m2, counts = _state(3, 50000, "cpu")
    x = _samples(2, 50000, "cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.gmm_estep(x, means, m2, counts, reg=1e-6)
        torch.set_num_threads(max(2, threads))
        many = ops.gmm_estep(x, means, m2, counts, reg=1e-6)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0])


def test_raw_second_moment_form_loses_precision_in_float32():
    """mean 1e3, std 1e-2: S - mu^2 cancels in float32, the centred (Welford) form does not."""
    g = torch.Generator().manual_seed(3)
    d, n = 64, 500
    xs = 1e3 + 1e-2 * torch.randn(n, d, generator=g)
    truth = xs.double().var(0, unbiased=False)
    means, m2 = xs[:1].clone(), torch.zeros(1, d)
    counts = torch.ones(1, dtype=torch.float64)
    raw_mu, raw_s, raw_n = xs[:1].clone(), xs[:1] ** 2, torch.ones(1, dtype=torch.float64)
    one = torch.ones(1, 1, dtype=torch.float64)
    for x in xs[1:]:
        ops.gmm_mstep_(means, m2, counts, x[None].contiguous(), one)
        raw_mu, raw_s, raw_n = ref.gmm_raw_moment_update(raw_mu, raw_s, raw_n, x, one[0])
    welford_var = (m2[0].double() / counts[0])
    raw_var = ref.gmm_raw_moment_variances(raw_mu, raw_s, 0.0)[0].double()
    # float32 storage of mu (ulp 6e-5 at 1e3) bounds the centred form at ~1e-2 relative
    assert ((welford_var - truth).abs() / truth).max() < 2e-2
    # S ~ 1e6 has an ulp of 0.06 >> var ~ 1e-4: the raw form returns noise
    assert ((raw_var - truth).abs() / truth).max() > 10.0


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    means, m2, counts = _state(3, 37, device)
    x = _samples(4, 37, device)
    resp = torch.softmax(torch.randn(4, 3, dtype=torch.float64), 1).to(device)
    torch.library.opcheck(torch.ops.lift_ext.gmm_estep.default, (x, means, m2, counts, 1e-6))
    torch.library.opcheck(torch.ops.lift_ext.gmm_mstep_.default, (means, m2, counts, x, resp))
    grad, theta = torch.zeros(37, device=device), x[0].clone()
    torch.library.opcheck(torch.ops.lift_ext.gmm_prior_grad_.default,
                          (grad, theta, means, m2, counts, resp[0].contiguous(), 1e-2, 1.0))


def _bad_cases(device):
    means, m2, counts = _state(3, 6, device)
    x = _samples(2, 6, device)
    resp = torch.full((2, 3), 1 / 3, dtype=torch.float64, device=device)
    est = lambda **kw: ops.gmm_estep(kw.get("x", x), kw.get("means", means), kw.get("m2", m2),
                                     kw.get("counts", counts), reg=kw.get("reg", 1e-6))
    mst = lambda **kw: ops.gmm_mstep_(kw.get("means", means), kw.get("m2", m2),
                                      kw.get("counts", counts), kw.get("x", x), kw.get("resp", resp))
    grad, theta = torch.zeros(6, device=device), x[0].clone()
    pg = lambda **kw: ops.gmm_prior_grad_(kw.get("grad", grad), kw.get("theta", theta), means, m2,
                                          counts, kw.get("resp", resp[0].contiguous()),
                                          reg=kw.get("reg", 1e-2), scale=kw.get("scale", 1.0))
    return [
        (lambda: est(x=x.double()), "x must be"),
        (lambda: est(x=x[:, :5].contiguous()), "x must have shape"),
        (lambda: est(x=x.t().contiguous().t()), "x must be contiguous"),
        (lambda: est(means=means.double()), "means must be"),
        (lambda: est(means=means[0]), "means must be 2-D"),
        (lambda: est(m2=m2[:2].contiguous()), "m2 must have shape"),
        (lambda: est(counts=counts.float()), "counts must be"),
        (lambda: est(counts=counts[:2].contiguous()), "counts must have shape"),
        (lambda: est(reg=0.0), "reg must be"),
        (lambda: est(reg=math.nan), "reg must be"),
        (lambda: mst(resp=resp.float()), "resp must be"),
        (lambda: mst(resp=resp[:, :2].contiguous()), "resp must have shape"),
        (lambda: pg(grad=grad[:5].contiguous()), "grad must have shape"),
        (lambda: pg(theta=theta.double()), "theta must be"),
        (lambda: pg(resp=resp), "resp must have shape"),
        (lambda: pg(scale=math.inf), "scale must be finite"),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_name_the_argument(device):
    for call, message in _bad_cases(device):
        with pytest.raises(RuntimeError, match=message):
            call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mismatch_is_refused():
    means, m2, counts = _state(3, 6, "cuda")
    with pytest.raises(RuntimeError, match="x must be on the same device as means"):
        ops.gmm_estep(torch.zeros(1, 6), means, m2, counts, reg=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("batch,dim", [(7, 4099), (9, 8196)])
def test_cuda_matches_cpu(batch, dim):
    """(9, 8196): vectorised loads over several chunks and a second batch tile (B > 8)."""
    means, m2, counts = _state(8, dim, "cpu")
    x = _samples(batch, dim, "cpu")
    cpu = ops.gmm_estep(x, means, m2, counts, reg=1e-6)
    gpu = ops.gmm_estep(x.cuda(), means.cuda(), m2.cuda(), counts.cuda(), reg=1e-6)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-12, atol=1e-9)
    gm, gs, gn = means.cuda(), m2.cuda(), counts.cuda()
    ops.gmm_mstep_(means, m2, counts, x, cpu[1])
    ops.gmm_mstep_(gm, gs, gn, x.cuda(), cpu[1].cuda())
    assert torch.equal(gm.cpu(), means) and torch.equal(gs.cpu(), m2)
