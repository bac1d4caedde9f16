"""Checkpoint values are checked for range and consistency when loaded (a file with a valid
checksum can still be crafted): each damaged value is a CheckpointError naming the problem,
never a raw KeyError / RuntimeError or an allocation the file does not hold."""
import os

import pytest
import torch

from lift_ext.checkpoint import CheckpointError, load_checked, save_atomic
from lift_ext.lift import ChainStart, LangevinConfig, PaperHierarchy, SGLDGibbs

N, D = 6, 5


def _grad_fn(i, theta):
    return theta - float(i)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "chain.pt")
    sampler = SGLDGibbs(N, D, _grad_fn, langevin=LangevinConfig(lr=1e-3, preconditioned=True),
                        hierarchy=PaperHierarchy(sigma=2.0, beta=0.5, phi_update="langevin"),
                        start=ChainStart(thetas=torch.randn(N, D, generator=torch.Generator().manual_seed(0))),
                        seed=3)
    sampler.run(7, progress=False)
    sampler.save(path)
    return path


def _edit(state, key, value):
    *parents, last = key.split(".")
    for part in parents:
        state = state[part]
    state[last] = value


def _bad_thetas():
    t = torch.zeros(N, D)
    t[2, 1] = float("nan")
    return t


SPOILED = [
    ("thetas", _bad_thetas(), "thetas must be finite"),
    ("thetas", torch.zeros(N, D + 1), "components must hold|thetas must be"),
    ("components.sums", torch.full((1, D), 1e3), "task sum"),
    ("step", -1, "step must be a count"),
    ("step", 2.5, "step must be a count"),
    ("order.position", N + 1, "order"),
    ("order", {"epoch": 0}, "order"),
    ("components.assignments", torch.full((N,), 1), "assignments must lie"),
    ("square_avg", -torch.ones(D), "square_avg must be >= 0"),
    ("square_avg", torch.full((D,), float("inf")), "square_avg must be finite"),
    ("prior_mean", torch.zeros(D + 2), "prior_mean must be"),
    ("config", 5, "config must be a dict"),
    ("config.dim", 10**9, "components must hold"),  # would allocate N x 1e9 floats: refused first
    ("config.num_tasks", 10**10, "components must hold"),
    ("config.hierarchy.gmm_components", 10**9, "OnlineGMM state must hold"),
    ("config.hierarchy.sigma", "2.0", "inconsistent"),
    ("config.unknown", 1, "inconsistent"),
    ("gmm", None, "OnlineGMM state must hold"),
    ("gmm.counts", torch.tensor([float("nan"), 0.0], dtype=torch.float64), "inconsistent"),
    ("components", {"phis": torch.zeros(1, D)}, "components must hold|inconsistent"),
]


@pytest.mark.parametrize("key,value,message", SPOILED, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(SPOILED)])
def test_spoiled_value_is_refused(saved, tmp_path, key, value, message):
    state = load_checked(saved, fmt="lift_ext.SGLDGibbs", version=3, required=())
    _edit(state, key, value)
    broken = os.path.join(tmp_path, "broken.pt")
    save_atomic(state, broken)
    with pytest.raises(CheckpointError, match=message) as info:
        SGLDGibbs.load(broken, _grad_fn)
    assert "weights_only" not in str(info.value)


def test_unspoiled_file_loads(saved):
    assert SGLDGibbs.load(saved, _grad_fn).step_count == 7


@pytest.mark.parametrize("spoil,message", [
    (lambda s: s.update(thetas=torch.full_like(s["thetas"], float("nan"))), "finite"),
    (lambda s: s.update(thetas=torch.zeros(1, D)), "thetas of shard"),
    (lambda s: s.update(shard=1), "holds shard"),
])
def test_spoiled_shard_file_is_refused(tmp_path, spoil, message):
    from lift_ext.lift import ShardedSGLDGibbs, Sharding
    sampler = ShardedSGLDGibbs(N, D, _grad_fn, langevin=LangevinConfig(lr=1e-3),
                               hierarchy=PaperHierarchy(sigma=2.0, beta=0.5, phi_update="langevin"),
                               sharding=Sharding(num_shards=2), seed=3)
    sampler.run(3, progress=False)
    path = str(tmp_path / "set")
    sampler.save(path)
    shard0 = os.path.join(path, next(f for f in sorted(os.listdir(path)) if f.startswith("shard-0-")))
    state = load_checked(shard0, fmt="lift_ext.ShardedSGLDGibbs.shard", version=2, required=())
    spoil(state)
    save_atomic(state, shard0)
    with pytest.raises(CheckpointError, match=message):
        ShardedSGLDGibbs.load(path, _grad_fn)
