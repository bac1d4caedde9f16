"""Do lift_ext's CPython eager entries (csrc/module.cpp: `_C.sgld_step_list_eager`,
`_C.sgld_step_table_eager`, `_C.tensor_table_is_current`) save enough next to plain
dispatch to justify building on torch's internal headers? One run, one CPU thread, the
calls of a case interleaved in rounds; min and median per call.

Cases (every tensor float32, grads and prior means given, temperature 1, prior precision 1):

  LoRA        448 tensors: 224 pairs of [8, 768] and [768, 8] (2.75 M elements), the kernel
              included, as a realistic CPU step
  host only   448 tensors of 0 elements: the kernel has nothing to do, so the call is its host
              path alone (what an eager CUDA call costs the host before its launch)

For each case:
  list step     (a) _C.sgld_step_list_eager      (b) torch.ops.lift_ext.sgld_step_list_
  table step    (a) _C.sgld_step_table_eager     (b) torch.ops.lift_ext.sgld_step_table_
  is_current    (a) _C.tensor_table_is_current   (b) the TorchBind method TensorTable.is_current
                (with the 448 params as the group: what optim.SGLD checks every step)

    python benchmarks/bench_eager_entry.py [--rounds 41]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lift_ext  # noqa: E402
from lift_ext import _loader  # noqa: E402
from timing import device_name  # noqa: E402

HYPER = (1e-3, 1.0, 1.0, 0.99, 1e-8)  # lr, temperature, prior_precision, alpha, eps


def lora_lists(pairs, width, rank):
    shapes = [(rank, width), (width, rank)] * pairs
    params = [torch.randn(s) for s in shapes]
    grads = [torch.randn(s) for s in shapes]
    means = [p.clone() for p in params]
    for p, g in zip(params, grads):
        p.grad = g
    return params, grads, means


def empty_lists(count):
    params = [torch.empty(0) for _ in range(count)]
    grads = [torch.empty(0) for _ in range(count)]
    means = [torch.empty(0) for _ in range(count)]
    for p, g in zip(params, grads):
        p.grad = g
    return params, grads, means


def calls(params, grads, means):
    """name -> (a, b): the eager entry and plain dispatch of the same operation."""
    C, ops = _loader._C, torch.ops.lift_ext
    handle = lift_ext.TensorTable(params, grads, prior_means=means).handle
    counter = iter(range(1 << 62))
    return {
        "list step": (
            lambda: C.sgld_step_list_eager(params, grads, means, [], [], *HYPER, 7, next(counter)),
            lambda: ops.sgld_step_list_(params, grads, means, [], [], *HYPER, 7, next(counter))),
        "table step": (
            lambda: C.sgld_step_table_eager(handle, *HYPER, 7, next(counter)),
            lambda: ops.sgld_step_table_(handle, *HYPER, 7, next(counter))),
        "is_current(group)": (
            lambda: C.tensor_table_is_current(handle, params),
            lambda: handle.is_current(params)),
    }


def time_us(fn):
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e6


def measure(fns, rounds):
    """{name: {"a": [us...], "b": [us...]}}: every call timed alone, the calls of a case
    interleaved in rounds (a, b of each name in turn) after three warm-up rounds."""
    samples = {name: {"a": [], "b": []} for name in fns}
    for round_ in range(rounds + 3):
        for name, (a, b) in fns.items():
            ta, tb = time_us(a), time_us(b)
            if round_ >= 3:
                samples[name]["a"].append(ta)
                samples[name]["b"].append(tb)
    return samples


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=41)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with torch.no_grad():
        cases = {"LoRA 448 x [8,768]/[768,8]": calls(*lora_lists(224, 768, 8)),
                 "host only 448 x 0": calls(*empty_lists(448))}
        samples = {case: measure(fns, args.rounds) for case, fns in cases.items()}
    print(f"{device_name(torch.device('cpu'))}, torch {torch.__version__}, commit {commit()}, "
          f"{args.rounds} rounds")
    print("| case | call | (a) eager entry min / median | (b) dispatch min / median | (b) - (a), medians |")
    print("|---|---|---|---|---|")
    for case, by_name in samples.items():
        for name, s in by_name.items():
            ma, mb = statistics.median(s["a"]), statistics.median(s["b"])
            print(f"| {case} | {name} | {min(s['a']):.1f} / {ma:.1f} us | {min(s['b']):.1f} / {mb:.1f} us "
                  f"| {mb - ma:+.1f} us ({(mb - ma) / mb:+.1%} of (b)) |")


if __name__ == "__main__":
    main()
