"""Host cost of lift_ext's SGLD entry points through plain dispatch: one run, one CPU thread,
the calls of a case interleaved in rounds; min and median per call.

Cases (every tensor float32, grads and prior means given, temperature 1, prior precision 1):

  LoRA        448 tensors: 224 pairs of [8, 768] and [768, 8] (2.75 M elements), the kernel
              included, as a realistic CPU step
  host only   448 tensors of 0 elements: the kernel has nothing to do, so the call is its host
              path alone (what an eager CUDA call costs the host before its launch)

Calls: torch.ops.lift_ext.sgld_step_list_, torch.ops.lift_ext.sgld_step_table_ and the
TorchBind method TensorTable.is_current with the 448 params as the group (what optim.SGLD
checks every step). Until commit 91ef024 the module also had CPython entries on torch's
internal headers for the same three calls; that commit's version of this script
(benchmarks/bench_eager_entry.py) timed both, benchmarks/RESULTS.md has the numbers.

    python benchmarks/bench_op_dispatch.py [--rounds 41]
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lift_ext  # noqa: E402
from lift_ext.provenance import short_commit  # noqa: E402
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
    """name -> call, each through plain dispatch."""
    ops = torch.ops.lift_ext
    handle = lift_ext.TensorTable(params, grads, prior_means=means).handle
    counter = iter(range(1 << 62))
    return {
        "list step": lambda: ops.sgld_step_list_(params, grads, means, [], [], *HYPER, 7, next(counter)),
        "table step": lambda: ops.sgld_step_table_(handle, *HYPER, 7, next(counter)),
        "is_current(group)": lambda: handle.is_current(params),
    }


def time_us(fn):
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e6


def measure(fns, rounds):
    """{name: [us...]}: every call timed alone, the calls of a case interleaved in rounds
    after three warm-up rounds."""
    samples = {name: [] for name in fns}
    for round_ in range(rounds + 3):
        for name, fn in fns.items():
            t = time_us(fn)
            if round_ >= 3:
                samples[name].append(t)
    return samples


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
    print(f"{device_name(torch.device('cpu'))}, torch {torch.__version__}, commit {short_commit()}, "
          f"{args.rounds} rounds")
    print("| case | call | min / median |")
    print("|---|---|---|")
    for case, by_name in samples.items():
        for name, s in by_name.items():
            print(f"| {case} | {name} | {min(s):.1f} / {statistics.median(s):.1f} us |")

if __name__ == "__main__":
    main()
