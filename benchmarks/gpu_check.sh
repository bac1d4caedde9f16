#!/usr/bin/env bash
# The one device check, for a lent GPU machine (H100/H200, torch preinstalled, no network),
# in under 8 minutes: build the extension against the installed torch, run the whole test
# suite (the CUDA tests run there instead of skipping), the full benchmark table
# (bench_all.py: JSON + bandwidth plot), and compute-sanitizer memcheck and racecheck over a
# short run of every kernel. Results go to $OUT (or benchmarks/out); copy the table and the
# card into benchmarks/RESULTS.md with the date and commit.
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 LIFT_EXT_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
status=0
step() { echo "=== $1 ($(date -u +%H:%M:%S))"; }
{ date -u; git rev-parse HEAD 2>/dev/null || true; } | tee "$out/meta.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv | tee -a "$out/meta.txt" || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/meta.txt"

step "build"
time pip install -q --no-build-isolation --no-deps . 2>&1 | tail -n 20
python -c "import lift_ext; assert lift_ext.cuda_kernels_built(), 'CUDA kernels not built'" || exit 1

step "tests"
# From a neutral directory so the installed package (with _C) is imported.
(cd /tmp && timeout 180 python -m pytest "$OLDPWD/python_tests" -q -x -p no:cacheprovider 2>&1 | tail -n 30) \
  | tee "$out/tests.txt"
grep -qE "^[0-9]+ passed" "$out/tests.txt" && ! grep -qE "failed|error" "$out/tests.txt" || status=1

step "benchmark table"
timeout 240 python benchmarks/bench_all.py --device cuda --json "$out/bench_cuda.json" \
  --plot "$out/bench_cuda.png" | tee "$out/bench_cuda.txt" || status=1

step "compute-sanitizer"
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    timeout 120 compute-sanitizer --tool "$tool" --error-exitcode 3 \
      python benchmarks/sanitizer_driver.py > "$out/sanitizer_$tool.txt" 2>&1
    rc=$?
    tail -n 5 "$out/sanitizer_$tool.txt"
    echo "compute-sanitizer $tool: exit $rc" | tee -a "$out/sanitizer_summary.txt"
    [ "$rc" -eq 0 ] || status=1
  done
else
  echo "compute-sanitizer not found on PATH" | tee "$out/sanitizer_summary.txt"; status=1
fi
step "done, status $status"
exit "$status"
