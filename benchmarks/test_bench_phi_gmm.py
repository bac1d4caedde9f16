"""phi step and the GMM online-EM update (E + M): fused ops against eager PyTorch."""
import pytest
import torch

import bench_all
import bench_gmm
from suite_util import DEVICES, timed
from lift_ext import ops


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["fused", "flat eager"])
def test_phi_step(benchmark, impl, device):
    phi, s, mu0 = (torch.randn(1 << 20, device=device) for _ in range(3))
    benchmark.group = f"phi 2^20 {device}"
    if impl == "fused":
        fn = lambda: ops.phi_step_(phi, s, mu0, gibbs=False, seed=0, offset=1, **bench_all.PHI)  # noqa: E731
    else:
        fn = lambda: phi.copy_(bench_all.phi_eager(phi, s, mu0))  # noqa: E731
    timed(benchmark, fn, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_gmm_update(benchmark, impl, batch, device):
    state = bench_gmm.make_state(8, 1 << 20, batch, device)
    benchmark.group = f"gmm K=8 D=2^20 B={batch} {device}"
    fn = bench_gmm.fused_update if impl == "fused" else bench_gmm.eager_update
    timed(benchmark, lambda: fn(*state), device)
