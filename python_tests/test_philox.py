"""Philox4x32-10 known answers and the statistics of the normals."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import lift_ext
from lift_ext import reference

from conftest import DEVICES, requires_cuda

# Random123 kat_vectors: counter words, key words -> output words.
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_reference_philox_known_answers(counter, key, expected):
    out = reference.philox4x32_10(torch.tensor(counter), torch.tensor(key))
    assert tuple(out.tolist()) == expected


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_philox_known_answers(device):
    counters = torch.tensor([c for c, _, _ in KNOWN_ANSWERS], dtype=torch.int64, device=device)
    keys = torch.tensor([k for _, k, _ in KNOWN_ANSWERS], dtype=torch.int64, device=device)
    words = lift_ext.ops.philox4x32_10(counters, keys).cpu()
    assert words.tolist() == [list(e) for _, _, e in KNOWN_ANSWERS]


def test_normals_are_box_muller_of_the_words():
    """philox_normal's element 4g+j comes from the words of counter (g, offset), key seed."""
    seed, offset, groups = 0x299F31D0A4093822, 0x03707344_13198A2E, 300
    z = lift_ext.philox_normal(4 * groups, seed=seed, offset=offset)
    g = torch.arange(groups, dtype=torch.int64)
    counters = torch.stack([g & 0xFFFFFFFF, g >> 32, torch.full_like(g, offset & 0xFFFFFFFF),
                            torch.full_like(g, offset >> 32)], -1)
    keys = torch.tensor([[seed & 0xFFFFFFFF, seed >> 32]]).expand(groups, 2).contiguous()
    w = lift_ext.ops.philox4x32_10(counters, keys).reshape(-1, 2)
    u = (w[:, 0] >> 8).double() * 2.0**-24 + 2.0**-25
    angle = ((w[:, 1] >> 30).double() + ((w[:, 1] >> 6) & 0xFFFFFF).double() * 2.0**-24) * (math.pi / 2)
    r = torch.sqrt(-2.0 * torch.log(u))
    expected = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], -1).reshape(-1)
    torch.testing.assert_close(z.double(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("numel", [0, 1, 3, 4097, 1 << 16])
def test_kernel_normals_match_reference(numel):
    z = lift_ext.philox_normal(numel, seed=2024, offset=11)
    ref = reference.philox_normal(numel, 2024, 11)
    assert z.dtype == torch.float32 and z.shape == (numel,)
    torch.testing.assert_close(z.double(), ref, rtol=0, atol=1e-5)


def test_large_seed_and_offset_use_all_64_bits():
    big = 2**40 + 3
    a = lift_ext.philox_normal(64, seed=big, offset=5)
    b = lift_ext.philox_normal(64, seed=3, offset=5)
    c = lift_ext.philox_normal(64, seed=big, offset=2**40 + 5)
    assert not torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(a.double(), reference.philox_normal(64, big, 5), rtol=0, atol=1e-5)
    torch.testing.assert_close(c.double(), reference.philox_normal(64, big, 2**40 + 5), rtol=0, atol=1e-5)


def test_same_seed_offset_same_noise():
    a = lift_ext.philox_normal(10001, seed=7, offset=3)
    b = lift_ext.philox_normal(10001, seed=7, offset=3)
    assert torch.equal(a, b)


def test_prefix_property():
    """The noise of element i does not depend on the vector length."""
    long = lift_ext.philox_normal(5000, seed=9, offset=1)
    short = lift_ext.philox_normal(1234, seed=9, offset=1)
    assert torch.equal(long[:1234], short)


@pytest.fixture(scope="module")
def z():
    return lift_ext.philox_normal(TestNoiseStatistics.N, seed=12345, offset=0).double().numpy()


class TestNoiseStatistics:
    N = 1 << 20

    def test_mean_and_variance(self, z):
        # standard errors: mean 1/sqrt(N) ~ 1e-3, variance sqrt(2/N) ~ 1.4e-3; allow 5 sigma
        assert abs(z.mean()) < 5 / math.sqrt(self.N)
        assert abs(z.var() - 1.0) < 5 * math.sqrt(2.0 / self.N)

    def test_higher_moments(self, z):
        assert abs(stats.skew(z)) < 5 * math.sqrt(6.0 / self.N)
        assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24.0 / self.N)

    def test_kolmogorov_smirnov(self, z):
        assert stats.kstest(z, "norm").pvalue > 1e-3

    def test_tails(self, z):
        # P(|z| > 3) = 0.0027; expected ~2831 of 2^20, sd ~53
        count = int((np.abs(z) > 3).sum())
        assert abs(count - 0.0026998 * self.N) < 5 * math.sqrt(0.0027 * self.N)

    def test_neighbour_correlation(self, z):
        # lag 1 pairs within a Box-Muller pair, lag 2 across pairs, lag 4 across groups
        for lag in (1, 2, 3, 4, 5):
            r = np.corrcoef(z[:-lag], z[lag:])[0, 1]
            assert abs(r) < 5 / math.sqrt(self.N), f"lag {lag}: {r}"

    def test_pair_squares_uncorrelated(self, z):
        # Box-Muller pairs share a radius: their squares must still be uncorrelated
        r = np.corrcoef(z[0::2] ** 2, z[1::2] ** 2)[0, 1]
        assert abs(r) < 5 / math.sqrt(self.N / 2)

    def test_independent_across_offsets_and_seeds(self, z):
        other_offset = lift_ext.philox_normal(self.N, seed=12345, offset=1).double().numpy()
        other_seed = lift_ext.philox_normal(self.N, seed=12346, offset=0).double().numpy()
        for other in (other_offset, other_seed):
            assert abs(np.corrcoef(z, other)[0, 1]) < 5 / math.sqrt(self.N)
            assert stats.kstest(other, "norm").pvalue > 1e-3


@requires_cuda
@pytest.mark.parametrize("numel", [1, 3, 4097, 1 << 20])
def test_cpu_and_cuda_noise_bitwise_equal(numel):
    cpu = lift_ext.philox_normal(numel, seed=77, offset=4)
    gpu = lift_ext.philox_normal(numel, seed=77, offset=4, device="cuda").cpu()
    assert torch.equal(cpu, gpu)


@pytest.mark.parametrize("device", DEVICES)
def test_philox_opcheck(device):
    out = torch.empty(4099, device=device)
    torch.library.opcheck(torch.ops.lift_ext.philox_normal_.default, (out, 5, 6))
    counters = torch.randint(0, 2**32, (9, 4), dtype=torch.int64, device=device)
    keys = torch.randint(0, 2**32, (9, 2), dtype=torch.int64, device=device)
    torch.library.opcheck(torch.ops.lift_ext.philox4x32_10.default, (counters, keys))


def test_philox_words_bad_input():
    with pytest.raises(RuntimeError, match="counters must have shape"):
        lift_ext.ops.philox4x32_10(torch.zeros(3, 3, dtype=torch.int64), torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="int64"):
        lift_ext.ops.philox4x32_10(torch.zeros(3, 4), torch.zeros(3, 2))


@pytest.mark.parametrize("kwargs,message", [
    (dict(numel=-1), "numel must be an int >= 0"), (dict(numel=True), "numel must be an int"),
    (dict(numel=4.0), "numel must be an int"), (dict(numel=4, seed=-1), "seed must be an int"),
    (dict(numel=4, offset=2**63), "offset must be an int"),
])
def test_philox_normal_bad_arguments_are_named(kwargs, message):
    kwargs = {"seed": 1, "offset": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        lift_ext.philox_normal(kwargs.pop("numel"), **kwargs)
