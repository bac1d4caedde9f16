"""The CPU normals on aarch64 (ARM servers, Apple silicon), checked on this machine: the
portable path of csrc/cpu/normals.cpp, cross-compiled for aarch64 with zig's clang and the
project's floating-point flags, run in an ARM64 emulator (unicorn), must give bitwise the
normals the portable path gives here, on the same grid of seeds, offsets, first groups and
group counts as test_cpu_normals.py. The aarch64 build takes the portable path, which the
compiler vectorises with NEON there (benchmarks/NOTES.md entry 14). Skipped without the
packages of the ``aarch64-check`` extra (ziglang, unicorn, pyelftools)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ziglang")
pytest.importorskip("unicorn")
pytest.importorskip("elftools")

from cxx_flags import CHECKOUT, FLOAT_FLAGS, cmake_cxx_flags  # noqa: E402
from elftools.elf.elffile import ELFFile  # noqa: E402
from test_cpu_normals import FIRST_GROUPS, GROUP_COUNTS, OFFSETS, SEEDS, bits, normals  # noqa: E402
from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, UC_PROT_ALL, Uc  # noqa: E402
from unicorn import arm64_const as arm64  # noqa: E402

IMAGE_SOURCE = Path(__file__).resolve().parent / "aarch64" / "normals_image.cpp"
GENERIC = 0  # lift_ext::NormalsIsa::kGeneric
PAGE = 0x1000
STACK_TOP, OUT, STOP = 0x7000_0000, 0x6000_0000, 0x5000_0000
OUT_BYTES = 0x10_0000


def test_the_image_is_built_with_the_extensions_floating_point_flags():
    assert set(FLOAT_FLAGS) <= cmake_cxx_flags()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The aarch64 image of normals.cpp: a static ELF without a C library."""
    out = tmp_path_factory.mktemp("aarch64")
    zig = [sys.executable, "-m", "ziglang"]
    common = ["-target", "aarch64-linux-musl", *FLOAT_FLAGS, "-fno-exceptions", "-fno-rtti",
              "-fno-threadsafe-statics", "-I", str(CHECKOUT / "csrc" / "include")]
    steps = [zig + ["c++", *common, "-fno-builtin", "-c", str(IMAGE_SOURCE), "-o", str(out / "image.o")],
             zig + ["c++", *common, "-c", str(CHECKOUT / "csrc" / "cpu" / "normals.cpp"), "-o", str(out / "normals.o")],
             zig + ["cc", "-target", "aarch64-linux-musl", "-nostdlib", "-static", "-Wl,-e,lift_fill_normals",
                    str(out / "image.o"), str(out / "normals.o"), "-o", str(out / "normals.elf")]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(step)}\n{done.stderr}"
    return out / "normals.elf"


class Aarch64Normals:
    """The image's functions called in an ARM64 emulator: its loadable segments mapped at their
    addresses, a stack, an output buffer, and a return address where emulation stops."""

    def __init__(self, path: Path):
        self.uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            for segment in elf.iter_segments():
                if segment["p_type"] != "PT_LOAD":
                    continue
                start = segment["p_vaddr"] & ~(PAGE - 1)
                end = (segment["p_vaddr"] + segment["p_memsz"] + PAGE - 1) & ~(PAGE - 1)
                self.uc.mem_map(start, end - start, UC_PROT_ALL)
                self.uc.mem_write(segment["p_vaddr"], segment.data())
            self.symbols = {s.name: s["st_value"] for s in elf.get_section_by_name(".symtab").iter_symbols()}
        self.uc.mem_map(STACK_TOP - 0x10_0000, 0x10_0000, UC_PROT_ALL)
        self.uc.mem_map(OUT, OUT_BYTES, UC_PROT_ALL)
        self.uc.mem_map(STOP, PAGE, UC_PROT_ALL)
        self.uc.reg_write(arm64.UC_ARM64_REG_CPACR_EL1, 0x300000)  # FP and SIMD enabled

    def call(self, name: str, *args: int) -> int:
        registers = [getattr(arm64, f"UC_ARM64_REG_X{i}") for i in range(len(args))]
        for register, value in zip(registers, args):
            self.uc.reg_write(register, value % 2**64)
        self.uc.reg_write(arm64.UC_ARM64_REG_SP, STACK_TOP - 16)
        self.uc.reg_write(arm64.UC_ARM64_REG_LR, STOP)
        self.uc.emu_start(self.symbols[name], STOP)
        return self.uc.reg_read(arm64.UC_ARM64_REG_X0)

    def normals(self, seed: int, offset: int, first_group: int, groups: int) -> torch.Tensor:
        assert 16 * groups <= OUT_BYTES
        self.call("lift_fill_normals", GENERIC, seed, offset, first_group, groups, OUT)
        return torch.from_numpy(np.frombuffer(bytes(self.uc.mem_read(OUT, 16 * groups)), dtype=np.float32).copy())


@pytest.fixture(scope="module")
def arm(image):
    return Aarch64Normals(image)


def test_the_aarch64_build_takes_the_portable_path(arm):
    assert arm.call("lift_isa") == GENERIC


def test_aarch64_normals_are_bitwise_those_of_this_machine(arm):
    compared = 0
    for seed in SEEDS:
        for offset in OFFSETS:
            for first in FIRST_GROUPS:
                for groups in GROUP_COUNTS:
                    here = normals("generic", seed, offset, first, groups)
                    there = arm.normals(seed, offset, first, groups)
                    assert torch.equal(bits(there), bits(here)), (seed, offset, first, groups)
                    compared += groups * 4
    assert compared > 500_000
