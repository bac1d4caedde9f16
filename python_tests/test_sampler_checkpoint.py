"""SGLDGibbs checkpoints: a run saved and loaded continues the exact chain (both hierarchies,
B > 1, across the mixture's warm-up), and an inconsistent mixture state is refused."""
import os

import pytest
import torch

from lift_ext.checkpoint import CheckpointError, load_checked, save_atomic
from lift_ext.lift import ChainStart, LangevinConfig, MixtureHierarchy, PaperHierarchy, SGLDGibbs
from conftest import chain_state

N, D = 9, 24


@pytest.fixture(scope="module")
def grad_fn():
    targets = torch.randn(N, D, generator=torch.Generator().manual_seed(2))
    targets[: N // 2] += 3.0  # two groups of tasks
    return lambda i, theta: 4.0 * (theta - targets[i])


CASES = {
    "paper-B3-precond": dict(langevin=LangevinConfig(lr=1e-3, tasks_per_step=3, preconditioned=True),
                             hierarchy=PaperHierarchy(sigma=2.0, beta=0.5, phi_update="langevin", burn_in=4, thin=2,
                                                      gmm_components=2)),
    "mixture-B4": dict(langevin=LangevinConfig(lr=1e-3, tasks_per_step=4),
                       hierarchy=MixtureHierarchy(components=3, sigma=2.0, beta=0.5, dirichlet_alpha=0.5)),
    "mixture-warmup": dict(langevin=LangevinConfig(lr=1e-3, tasks_per_step=2),
                           hierarchy=MixtureHierarchy(components=2, sigma=2.0, beta=0.5, warmup_steps=20)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("split", [11, 23])  # before and after the warm-up's end at step 20
def test_resume_continues_the_exact_chain(grad_fn, tmp_path, case, split):
    start = torch.randn(N, D, generator=torch.Generator().manual_seed(5))
    kw = dict(seed=3, start=ChainStart(thetas=start), **CASES[case])
    straight = SGLDGibbs(N, D, grad_fn, **kw)
    straight.run(40, progress=False)
    first = SGLDGibbs(N, D, grad_fn, **kw)
    first.run(split, progress=False)
    path = os.path.join(tmp_path, "chain.pt")
    first.save(path)
    resumed = SGLDGibbs.load(path, grad_fn)
    assert resumed.config() == first.config()
    resumed.run(40 - split, progress=False)
    assert resumed.step_count == 40
    for a, b in zip(chain_state(straight), chain_state(resumed)):
        assert torch.equal(a, b)
    assert straight.step() == resumed.step()


def test_inconsistent_mixture_state_is_refused(grad_fn, tmp_path):
    sampler = SGLDGibbs(N, D, grad_fn, start=ChainStart(thetas=torch.randn(N, D)), **CASES["mixture-B4"])
    path = os.path.join(tmp_path, "mix.pt")
    sampler.save(path)
    for key, value, message in (("assignments", torch.full((N,), 3), "assignments"),
                                ("weights", torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64), "weights"),
                                ("phis", torch.zeros(2, D), "phis")):
        bad = load_checked(path, fmt="lift_ext.SGLDGibbs", version=3, required=())
        bad["components"][key] = value
        broken = os.path.join(tmp_path, f"bad-{key}.pt")
        save_atomic(bad, broken)
        with pytest.raises(CheckpointError, match=message):
            SGLDGibbs.load(broken, grad_fn)
    bad = load_checked(path, fmt="lift_ext.SGLDGibbs", version=3, required=())
    bad["order"]["position"] = N + 1
    save_atomic(bad, os.path.join(tmp_path, "bad-order.pt"))
    with pytest.raises(CheckpointError, match="order"):
        SGLDGibbs.load(os.path.join(tmp_path, "bad-order.pt"), grad_fn)
