"""The instruction-set paths of the CPU normals (csrc/cpu/normals.cpp: AVX-512, AVX2, portable).
Each path the machine can run must give bitwise the normals of the portable one, on odd group
counts (partial SIMD vectors), odd first groups, group counters whose low word wraps into the
high word, and seeds and offsets with nonzero high words; the path the kernels take must be the
fastest the CPU has, or the one $LIFT_EXT_CPU_ISA names, with bitwise the same SGLD steps. The
op `fill_normals_on_` draws any element groups on a named path."""
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lift_ext
from lift_ext import _C, ops
from lift_ext._loader import CPU_ISA_VARIABLE

PATHS = _C.cpu_isas()
VECTOR_PATHS = [isa for isa in PATHS if isa != "generic"]

SEEDS = [0, 2**64 - 1, 0x299F31D0A4093822, 2**40 + 3]
OFFSETS = [0, 11, 0x03707344_13198A2E, 2**63 - 1]
# group low word: from 0, odd, wrapping inside a vector, at 2^32 - 1, wrapping the high word too
FIRST_GROUPS = [0, 1, 12345, 2**32 - 20, 2**32 - 1, 2**33 - 7, 2**64 - 9]
GROUP_COUNTS = [1, 3, 7, 8, 9, 15, 16, 17, 33, 255, 1001]


def normals(isa: str, seed: int, offset: int, first_group: int, groups: int) -> torch.Tensor:
    out = torch.empty(4 * groups)
    ops.fill_normals_on_(out, isa=isa, seed=seed, offset=offset, first_group=first_group)
    return out


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


def cpu_flags() -> set:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return set()
    for line in path.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not cpu_flags(),
                    reason="needs an x86-64 Linux machine")
def test_kernels_take_the_fastest_path_the_cpu_has():
    flags = cpu_flags()
    fastest = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "generic"
    assert lift_ext.cpu_isa() == (os.environ.get(CPU_ISA_VARIABLE) or fastest)
    assert PATHS[-1] == fastest and PATHS[0] == "generic"


# One SGLD step of a flat vector and of a list (odd sizes), its result's bytes hashed, and the
# path the process took.
STEP_PROGRAM = """
import hashlib, os, torch, lift_ext
flat = torch.linspace(-1, 1, 40_003)
params = [torch.linspace(-1, 1, n) for n in (5, 1027, 4099)]
grads = [p.cos() for p in params]
lift_ext.sgld_step(flat, flat.sin(), lr=1e-3, temperature=1.0, seed=7, offset=3)
lift_ext.sgld_step(params, grads, lr=1e-3, temperature=1.0, seed=9, offset=0)
digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in [flat, *params])).hexdigest()
os.environ[{variable!r}] = "generic"  # read once at import: no effect now
print(lift_ext.cpu_isa(), digest)
"""


def run_with_isa(isa):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop(CPU_ISA_VARIABLE, None)
    if isa is not None:
        env[CPU_ISA_VARIABLE] = isa
    return subprocess.run([sys.executable, "-c", STEP_PROGRAM.format(variable=CPU_ISA_VARIABLE)],
                          env=env, capture_output=True, text=True, timeout=300)


def test_the_environment_variable_picks_the_path_and_the_bits_stay():
    unset = run_with_isa(None)
    assert unset.returncode == 0, unset.stderr
    fastest, digest = unset.stdout.split()
    assert fastest == PATHS[-1]
    for isa in PATHS:
        picked = run_with_isa(isa)
        assert picked.returncode == 0, picked.stderr
        assert picked.stdout.split() == [isa, digest]


def test_the_environment_variable_refuses_a_path_the_machine_cannot_run():
    for isa in ["sse9", "AVX2", *({"avx2", "avx512"} - set(PATHS))]:
        refused = run_with_isa(isa)
        assert refused.returncode != 0
        assert f"{CPU_ISA_VARIABLE}={isa!r} names no CPU path this machine runs" in refused.stderr
        assert ", ".join(PATHS) in refused.stderr


@pytest.mark.parametrize("isa", VECTOR_PATHS)
def test_vector_path_is_bitwise_the_portable_one(isa):
    for seed in SEEDS:
        for offset in OFFSETS:
            for first in FIRST_GROUPS:
                for groups in GROUP_COUNTS:
                    got = normals(isa, seed, offset, first, groups)
                    want = normals("generic", seed, offset, first, groups)
                    assert torch.equal(bits(got), bits(want)), (isa, seed, offset, first, groups)


@pytest.mark.parametrize("isa", PATHS)
@pytest.mark.parametrize("first", [2**32 - 5, 2**64 - 6])
def test_group_counter_carries_into_the_high_word(isa, first):
    """The normals of groups first .. first + 8 are the Box-Muller of the Philox words of
    counters (group mod 2^32, group div 2^32 mod 2^32, offset words), across the wrap."""
    seed, offset, groups = 0xA4093822_299F31D0, 2**40 + 5, 9
    z = normals(isa, seed, offset, first, groups)
    g = [(first + j) % 2**64 for j in range(groups)]
    counters = torch.tensor([[x & 0xFFFFFFFF, x >> 32, offset & 0xFFFFFFFF, offset >> 32] for x in g])
    keys = torch.tensor([[seed & 0xFFFFFFFF, seed >> 32]]).expand(groups, 2).contiguous()
    w = ops.philox4x32_10(counters, keys).reshape(-1, 2)
    u = (w[:, 0] >> 8).double() * 2.0**-24 + 2.0**-25
    angle = ((w[:, 1] >> 30).double() + ((w[:, 1] >> 6) & 0xFFFFFF).double() * 2.0**-24) * (math.pi / 2)
    r = torch.sqrt(-2.0 * torch.log(u))
    expected = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], -1).reshape(-1)
    torch.testing.assert_close(z.double(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("numel", [1, 3, 4097, 70001])
def test_philox_normal_draws_the_chosen_path(numel):
    seed, offset = 2**63 - 1, 2**33 + 1
    groups = (numel + 3) // 4
    z = lift_ext.philox_normal(numel, seed=seed, offset=offset)
    for isa in PATHS:
        assert torch.equal(bits(z), bits(normals(isa, seed, offset, 0, groups)[:numel])), isa


def test_fill_normals_on_refuses_bad_arguments():
    out = torch.empty(8)
    call = lambda out=out, isa="generic", seed=0, offset=0, first_group=0: ops.fill_normals_on_(  # noqa: E731
        out, isa=isa, seed=seed, offset=offset, first_group=first_group)
    with pytest.raises(ValueError, match="isa must be"):
        call(isa="sse9")
    for isa in {"generic", "avx2", "avx512"} - set(PATHS):
        with pytest.raises(ValueError, match="cannot run"):
            call(isa=isa)
    with pytest.raises(RuntimeError, match="multiple of 4"):
        call(torch.empty(6))
    with pytest.raises(RuntimeError, match="float32"):
        call(torch.empty(8, dtype=torch.float64))
    with pytest.raises(TypeError, match="out must be a Tensor"):
        call([0.0] * 8)
    with pytest.raises(ValueError, match="seed must be an int"):
        call(seed=-1)
    with pytest.raises(ValueError, match="offset must be an int"):
        call(offset=2**64)
    with pytest.raises(ValueError, match="first_group must be an int"):
        call(first_group=1.5)


def test_opcheck_fill_normals_on():
    torch.library.opcheck(torch.ops.lift_ext.fill_normals_on_.default, (torch.empty(12), "generic", -1, 5, 2**63 - 9))
