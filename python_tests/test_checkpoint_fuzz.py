"""Fuzzing saved checkpoints: random bit flips (one or several), truncations and appended bytes
in real SGLDGibbs files (both priors) and a ShardedSGLDGibbs set. Every damaged file must be
refused with a CheckpointError that never suggests weights_only=False, and the undamaged file
must still load."""
import os
import random

import pytest
import torch

from lift_ext.checkpoint import CheckpointError
from lift_ext.lift import (ChainStart, LangevinConfig, MixtureHierarchy, PaperHierarchy, SGLDGibbs, ShardedSGLDGibbs,
                           Sharding)

N, D = 6, 8


def _grad_fn(i, theta):
    return theta - float(i)


KINDS = {
    "paper": (SGLDGibbs, dict(langevin=LangevinConfig(lr=1e-3, preconditioned=True),
                              hierarchy=PaperHierarchy(sigma=1.0, beta=0.5, phi_update="langevin", gmm_components=2))),
    "mixture": (SGLDGibbs, dict(langevin=LangevinConfig(lr=1e-3),
                                hierarchy=MixtureHierarchy(components=2, sigma=1.0, beta=0.5))),
    "sharded": (ShardedSGLDGibbs, dict(langevin=LangevinConfig(lr=1e-3),
                                       hierarchy=PaperHierarchy(sigma=1.0, beta=0.5, phi_update="langevin",
                                                                gmm_components=2),
                                       sharding=Sharding(num_shards=2))),
}


def _damaged(data: bytes, rng: random.Random) -> bytes:
    """One random corruption: mostly single bit flips, some multi-bit flips, truncations and
    appended bytes."""
    roll = rng.random()
    out = bytearray(data)
    if roll < 0.8:
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif roll < 0.9:
        for _ in range(rng.randint(2, 16)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif roll < 0.95:
        del out[rng.randrange(1, len(out)):]
    else:
        out += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return bytes(out)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_damaged_checkpoints_are_all_refused(tmp_path, kind):
    cls, options = KINDS[kind]
    sampler = cls(N, D, _grad_fn, seed=2,
                  start=ChainStart(thetas=torch.randn(N, D, generator=torch.Generator().manual_seed(0))), **options)
    sampler.run(5, progress=False)
    path = os.path.join(tmp_path, "chain")
    sampler.save(path)
    # The files of a chain: the sampler's own file, or every file of a sharded set.
    files = [path] if os.path.isfile(path) else [os.path.join(path, f) for f in sorted(os.listdir(path))]
    rng = random.Random(kind)
    flips = 0
    for target in files:
        original = open(target, "rb").read()
        for _ in range(300 // len(files) + 1):
            with open(target, "wb") as fh:
                fh.write(_damaged(original, rng))
            with pytest.raises(CheckpointError) as info:
                cls.load(path, _grad_fn)
            assert "weights_only" not in str(info.value)
            flips += 1
        with open(target, "wb") as fh:
            fh.write(original)
    assert flips >= 300  # 900 over the three kinds
    assert cls.load(path, _grad_fn).step_count == 5
