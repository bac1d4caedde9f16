#!/usr/bin/env bash
# The one device check, for a lent GPU machine (H100/H200, torch preinstalled, no network):
# build the extension against the installed torch, run the whole test suite (the CUDA tests
# run there instead of skipping), then print the benchmark tables with the device's copy
# bandwidth. Finishes in a few minutes; results go to $OUT (or benchmarks/out) as JSON.
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 LIFT_EXT_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
time pip install -q --no-build-isolation --no-deps . 2>&1 | tail -n 20
python -c "import lift_ext; assert lift_ext.cuda_kernels_built(), 'CUDA kernels not built'"
# Tests from a neutral directory so the installed package (with _C) is imported.
(cd /tmp && python -m pytest "$OLDPWD/python_tests" -q -x -p no:cacheprovider 2>&1 | tail -n 30) | tee "$out/tests.txt"
python benchmarks/bench_sgld.py --device cuda --json "$out/sgld.json" | tee "$out/sgld.txt"
if [ -f benchmarks/bench_gmm.py ]; then
  python benchmarks/bench_gmm.py --device cuda | tee "$out/gmm.txt"
fi
