"""The C++ floating-point flags of the extension's build (CMakeLists.txt), for the tests that
compile csrc/cpu/normals.cpp on their own: the normals' bits depend on them."""
import re
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
FLOAT_FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno"]


def cmake_cxx_flags() -> set:
    """The flags on CMakeLists.txt's C++ compile-options line."""
    cmake = (CHECKOUT / "CMakeLists.txt").read_text()
    line = next(line for line in cmake.splitlines() if "COMPILE_LANGUAGE:CXX" in line and "-ffp-contract" in line)
    return set(re.split(r"[\s:>]+", line))
