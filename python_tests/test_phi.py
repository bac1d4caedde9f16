"""The fused phi (shared prior) update of SGLD-Gibbs against lift_ext.reference."""
import pytest
import torch

import lift_ext
from lift_ext import ops, reference

from conftest import DEVICES, requires_cuda

KW = dict(lr=1e-6, temperature=1.0, sigma=0.05, beta=0.02, num_tasks=7)


def make(n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g).to(device) for _ in range(3)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("numel", [0, 1, 3, 4097, 1 << 18])
@pytest.mark.parametrize("gibbs", [False, True])
@pytest.mark.parametrize("with_mu0", [False, True])
def test_matches_reference(device, numel, gibbs, with_mu0):
    phi, task_sum, mu0 = make(numel, device)
    mu0 = mu0 if with_mu0 else None
    noise = lift_ext.philox_normal(numel, seed=3, offset=5)
    expected = reference.phi_step(phi.cpu(), task_sum.cpu(), None if mu0 is None else mu0.cpu(), noise,
                                  gibbs=gibbs, **KW)
    ops.phi_step_(phi, task_sum, mu0, gibbs=gibbs, seed=3, offset=5, **KW)
    torch.testing.assert_close(phi.cpu().double(), expected, rtol=1e-5, atol=1e-5)


def test_temperature_zero_is_deterministic_drift():
    phi, task_sum, mu0 = make(999, "cpu")
    expected = reference.phi_step(phi, task_sum, mu0, None, gibbs=False, **{**KW, "temperature": 0.0})
    ops.phi_step_(phi, task_sum, mu0, gibbs=False, seed=0, offset=0, **{**KW, "temperature": 0.0})
    torch.testing.assert_close(phi.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tasks", [5, 0], ids=["five-tasks", "no-task-prior-draw"])
def test_gibbs_draws_have_the_conditional_moments(tasks):
    n, sigma, beta = 1 << 18, 0.3, 0.1
    phi = torch.zeros(n)
    total = 2.0 if tasks else 0.0
    task_sum = torch.full((n,), total)
    ops.phi_step_(phi, task_sum, None, lr=0.0, temperature=1.0, sigma=sigma, beta=beta,
                  num_tasks=tasks, gibbs=True, seed=1, offset=0)
    v = 1 / (1 / sigma**2 + tasks / beta**2)
    m = v * total / beta**2
    assert abs(phi.mean().item() - m) < 5 * (v / n) ** 0.5
    assert abs(phi.var().item() / v - 1) < 0.02


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    phi, task_sum, mu0 = make(1029, device)
    for gibbs in (False, True):
        torch.library.opcheck(torch.ops.lift_ext.phi_step_.default,
                              (phi, task_sum, mu0, 1e-6, 1.0, 0.05, 0.02, 7, gibbs, 3, 5))
        torch.library.opcheck(torch.ops.lift_ext.phi_step_.default,
                              (phi, task_sum, None, 1e-6, 1.0, 0.05, 0.02, 7, gibbs, 3, 5))


@pytest.mark.parametrize("kwargs,message", [
    (dict(task_sum=torch.zeros(4)), "task_sum must have the shape of phi"),
    (dict(task_sum=torch.zeros(5, dtype=torch.float64)), "task_sum must be float32"),
    (dict(prior_mean=torch.zeros(6)), "prior_mean must have the shape of phi"),
    (dict(sigma=0.0), "sigma must be"), (dict(beta=-1.0), "beta must be"),
    (dict(num_tasks=-1), "num_tasks must be"), (dict(lr=-1.0), "lr must be"),
])
def test_bad_inputs(kwargs, message):
    phi = torch.randn(5)
    snapshot = phi.clone()
    args = dict(task_sum=torch.zeros(5), prior_mean=None, lr=1e-3, temperature=1.0, sigma=1.0, beta=1.0,
                num_tasks=2, gibbs=False, seed=0, offset=0)
    args.update(kwargs)
    task_sum, prior_mean = args.pop("task_sum"), args.pop("prior_mean")
    with pytest.raises(RuntimeError, match=message):
        ops.phi_step_(phi, task_sum, prior_mean, **args)
    assert torch.equal(phi, snapshot)


@requires_cuda
@pytest.mark.parametrize("gibbs", [False, True])
def test_cpu_and_cuda_agree(gibbs):
    cpu = make(4099, "cpu", seed=2)
    gpu = [t.cuda() for t in cpu]
    for phi, task_sum, mu0 in (cpu, gpu):
        ops.phi_step_(phi, task_sum, mu0, gibbs=gibbs, seed=4, offset=1, **KW)
    assert torch.equal(cpu[0], gpu[0].cpu())


@pytest.mark.parametrize("kwargs,message", [
    (dict(sigma=1e-30), r"sigma must be within float32's range .*1 / sigma\^2"),
    (dict(beta=1e-30), r"beta must be within float32's range"),
    (dict(sigma=1e300, num_tasks=0), r"sigma must be within float32's range"),
    (dict(lr=1e39), r"lr must be within float32's range"),
])
def test_scalars_beyond_float32_are_refused_by_name(kwargs, message):
    """A finite double that overflows float32 (directly or as 1/sigma^2) would be inf in the kernel."""
    phi, task_sum, _ = make(5, "cpu")
    snapshot = phi.clone()
    with pytest.raises(RuntimeError, match=message):
        ops.phi_step_(phi, task_sum, None, **{**KW, "gibbs": True, "seed": 0, "offset": 0, **kwargs})
    assert torch.equal(phi, snapshot)
