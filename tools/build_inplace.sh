#!/usr/bin/env bash
# Developer build: compiles lift_ext/_C*.so into the source tree (no pip install), so several
# checkouts can share one Python environment: run tests with PYTHONPATH=<checkout>. It builds
# the CPU kernels, and the CUDA ones where they can be used (LIFT_EXT_CUDA as in CMakeLists.txt:
# by default only where torch sees a GPU or TORCH_CUDA_ARCH_LIST is set).
# Usage: tools/build_inplace.sh [python]   (build files in build/inplace)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python}
cmake -S . -B build/inplace -G Ninja -DPython_EXECUTABLE="$(command -v "$PY")" >/dev/null
cmake --build build/inplace -j"$(nproc)"
rm -f lift_ext/_C*.so  # an older build's module would shadow this one (another file name)
cp build/inplace/_C*.so lift_ext/
