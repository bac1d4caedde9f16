"""Every CPU path's Box-Muller code on every radius word and every angle word, bitwise against
box_muller in philox.h (python_tests/cpp/box_muller_words.cpp, built here with the extension's
floating-point flags). The AVX2 path computes the header's floats through exact rewrites
(benchmarks/NOTES.md entry 15); the stream tests (test_cpu_normals.py) draw a few million
normals, this one covers all 2^24 values of each word's bits that Box-Muller reads."""
import shutil
import subprocess

import pytest
from cxx_flags import CHECKOUT, FLOAT_FLAGS, cmake_cxx_flags

import lift_ext

COMPILER = shutil.which("c++") or shutil.which("g++")
SOURCE = CHECKOUT / "python_tests" / "cpp" / "box_muller_words.cpp"


def test_built_with_the_extensions_floating_point_flags():
    assert set(FLOAT_FLAGS) <= cmake_cxx_flags()


@pytest.mark.skipif(COMPILER is None, reason="no C++ compiler")
def test_every_radius_and_angle_word_is_bitwise_the_headers(tmp_path):
    program = tmp_path / "box_muller_words"
    cpu = CHECKOUT / "csrc" / "cpu"
    build = [COMPILER, *FLOAT_FLAGS, "-std=c++17", "-I", str(CHECKOUT / "csrc" / "include"), str(SOURCE),
             str(cpu / "normals.cpp"), str(cpu / "normals_avx2.cpp"),
             str(cpu / "normals_avx512.cpp"), "-o", str(program)]
    built = subprocess.run(build, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    ran = subprocess.run([str(program)], capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    checked = {line.split(":")[0] for line in ran.stdout.splitlines() if " differ" in line}
    assert checked == set(lift_ext._C.cpu_isas()), ran.stdout
    assert all(line.endswith(" 0 differ") for line in ran.stdout.splitlines()), ran.stdout
