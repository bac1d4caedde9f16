#!/usr/bin/env bash
# The one device check, for a lent GPU machine (H100/H200, torch preinstalled, no network),
# in under 8 minutes: build the extension against the installed torch, run the whole test
# suite (the CUDA tests run there instead of skipping), the full benchmark table
# (bench_all.py: JSON + bandwidth plot), one SGLDGibbs step at D = 2^22 (bench_sampler.py),
# the host time of one step call, list vs TensorTable vs torch's foreach SGD and fused Adam
# (bench_host.py: 1 to 4,096 small tensors, and 72 x 6144 / 448 x 65536 against the table
# kernel's graph replay), compute-sanitizer memcheck and racecheck over a short run of every
# kernel, and an Nsight Compute summary of the SGLD kernel at the benchmark shapes
# (ncu_driver.py). Each stage
# has its own time limit and writes its log to $OUT (or benchmarks/out) as it goes, so a
# stage that runs long still leaves the others' results. Copy the table and the card into
# benchmarks/RESULTS.md with the date and commit.
#   LIFT_EXT_COMMIT=<hash> bash benchmarks/gpu_check.sh     (the hash when .git is absent)
#   STAGES="build tests sanitizer" bash benchmarks/gpu_check.sh   (a subset; default: all of
#   build tests sanitizer sampler host table profile, run in that order)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/out}"
mkdir -p "$out" && out="$(cd "$out" && pwd)"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
export PYTHONUNBUFFERED=1 LIFT_EXT_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export LIFT_EXT_COMMIT="${LIFT_EXT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
STAGES=" ${STAGES:-build tests sanitizer sampler host table profile} "
status=0
step() { echo "=== $1 ($(date -u +%H:%M:%S))"; }
want() { [[ "$STAGES" == *" $1 "* ]]; }
{
  date -u; echo "commit $LIFT_EXT_COMMIT"; echo "python $PY"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.memory,driver_version --format=csv,noheader
  lscpu | grep -E "^(Model name|Flags)" | cut -c1-200
  nvcc --version | tail -n 2
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$out/summary.txt"

if want build; then
  step "build"
  # Unstripped, so that a crash's backtrace names the extension's functions.
  timeout 150 "$PY" -m pip install -v --no-build-isolation --no-deps -C install.strip=false -C build.verbose=true . \
    > "$out/build.txt" 2>&1
  grep -E "lift_ext: |error|Successfully installed" "$out/build.txt" | head -n 20
fi
(cd /tmp && "$PY" -c "import lift_ext; assert lift_ext.cuda_kernels_built(), 'CUDA kernels not built'") || exit 1

if want tests; then
  step "tests"
  # From a neutral directory so the installed package (with _C) is imported, not the source
  # tree; with pytest-xdist (when present) a crashing test is reported and the rest still run.
  parallel=()
  "$PY" -c "import xdist" 2>/dev/null && parallel=(-n 8 --max-worker-restart 20)
  (cd /tmp && timeout 150 "$PY" -m pytest "$OLDPWD/python_tests" -q -rfE -p no:cacheprovider \
    "${parallel[@]}" --durations=8 > "$out/tests.txt" 2>&1)
  grep -E "^(FAILED|ERROR)|crashed" "$out/tests.txt" | head -n 40
  tail -n 12 "$out/tests.txt"
  grep -qE "^=*.*[0-9]+ passed" "$out/tests.txt" && ! grep -qE "[0-9]+ (failed|error)" "$out/tests.txt" \
    || status=1
fi

if ! want sanitizer; then
  :
elif command -v compute-sanitizer >/dev/null; then
  step "compute-sanitizer"
  for tool in memcheck racecheck; do
    timeout 50 compute-sanitizer --tool "$tool" --error-exitcode 3 \
      "$PY" benchmarks/sanitizer_driver.py > "$out/sanitizer.tmp" 2>&1
    rc=$?
    { echo "--- $tool"; cat "$out/sanitizer.tmp"; } >> "$out/sanitizer.txt"; rm -f "$out/sanitizer.tmp"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|all kernels ran" "$out/sanitizer.txt" | tail -n 2
    echo "compute-sanitizer $tool: exit $rc"
    [ "$rc" -eq 0 ] || status=1
  done
else
  echo "compute-sanitizer not found on PATH"; status=1
fi

if want sampler; then
  step "one SGLDGibbs step, D = 2^22"
  timeout 40 "$PY" benchmarks/bench_sampler.py --device cuda --dim 4194304 2>&1 \
    | tee -a "$out/summary.txt" || status=1
fi

if want host; then
  step "host time of one step call (bench_host.py)"
  timeout 150 "$PY" benchmarks/bench_host.py --device cuda \
    --cases 1x16,72x16,448x16,4096x16,72x6144,448x65536 --json "$out/host_cuda.json" \
    > "$out/host_cuda.txt" 2>&1 || status=1
  cat "$out/host_cuda.txt" | tail -n 20
fi

if want table; then
  step "benchmark table"
  timeout 180 "$PY" benchmarks/bench_all.py --device cuda --json "$out/bench_cuda.json" \
    --plot "$out/bench_cuda.png" > "$out/bench_cuda.txt" 2>&1 || status=1
  sed -n '/^case /,$p' "$out/bench_cuda.txt"
  grep -q "^case " "$out/bench_cuda.txt" || tail -n 30 "$out/bench_cuda.txt"
fi

if want profile; then
  step "Nsight Compute, SGLD kernel"
  if command -v ncu >/dev/null; then
    timeout 90 ncu --clock-control none -k regex:sgld_kernel --section SpeedOfLight --section Occupancy \
      --section LaunchStats "$PY" benchmarks/ncu_driver.py > "$out/ncu.txt" 2>&1 || status=1
    grep -E "sgld_kernel<|Duration|DRAM Throughput|Compute \(SM\) Throughput|Registers Per|Achieved Occupancy" \
      "$out/ncu.txt" | sed -E 's/\(SlotTable.*\) \(/ (/'
  else
    echo "ncu not found on PATH"
  fi
fi
step "done, status $status"
exit "$status"
