"""pytest-benchmark suite (`pytest benchmarks --benchmark-only`): the fused ops and their
pure-PyTorch peers at small sizes, on CPU always and on CUDA when a GPU and the CUDA kernels
are present. Not part of the unit tests (`pytest python_tests`). Puts benchmarks/ on the path
so the suite reuses the bench scripts' step functions."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
