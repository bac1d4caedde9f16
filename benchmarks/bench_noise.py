"""The CPU noise against PyTorch's, in one run (default one thread):

  philox_normal   lift_ext.philox_normal_ into a preallocated buffer of 2^22 floats
  torch normal_   torch.Tensor.normal_ on the same buffer
  T=1             lift_ext.sgld_step(p, g, lr=LR, temperature=1): the fused step, noise drawn
  T=0             the same call at temperature 0 (no normals drawn)
  eager           p.add_(g, alpha=-LR); p.add_(torch.randn_like(p), alpha=sqrt(2 LR)), per tensor

for a flat vector of 2^22 float32 elements and a list of 72 tensors of 6144. The methods take
turns within each of `--repeats` rounds (so that load from other jobs hits all of them); a
round times each method by the median of a few calls, and the table shows the median over the
rounds. The header names the CPU model and the instruction-set path of the normals
(lift_ext.cpu_isa()).

    python benchmarks/bench_noise.py [--threads 1] [--repeats 7] [--json F] [--quick]
"""
import argparse
import datetime
import json
import math
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lift_ext  # noqa: E402
from lift_ext.provenance import short_commit  # noqa: E402
from timing import device_name, median_ms  # noqa: E402

LR = 1e-3
NOISE = math.sqrt(2 * LR)
CPU = torch.device("cpu")


def step_methods(sizes):
    """The three SGLD forms over fresh tensors of `sizes` (one size: a flat vector)."""
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(n, generator=gen) for n in sizes]
    gs = [torch.randn(n, generator=gen) for n in sizes]
    params, grads = (ps[0], gs[0]) if len(sizes) == 1 else (ps, gs)
    offsets = iter(range(1 << 62))

    def fused(temperature):
        return lambda: lift_ext.sgld_step(params, grads, lr=LR, temperature=temperature, seed=0,
                                          offset=next(offsets))

    def eager():
        for p, g in zip(ps, gs):
            p.add_(g, alpha=-LR)
            p.add_(torch.randn_like(p), alpha=NOISE)

    return {"T=1": fused(1.0), "T=0": fused(0.0), "eager": eager}


def normal_methods(numel):
    out = torch.empty(numel)
    return {"philox_normal": lambda: torch.ops.lift_ext.philox_normal_(out, 1, 2),
            "torch normal_": lambda: out.normal_()}


def measure(methods, repeats):
    """Median over `repeats` rounds of each method's median call time (ms), methods interleaved."""
    samples = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            samples[name].append(median_ms(fn, CPU, warmup=1, repeats=5, min_seconds=0.05))
    return {name: {"ms": statistics.median(s), "min": min(s), "max": max(s), "rounds": s}
            for name, s in samples.items()}


def format_report(normals, steps):
    def cell(t):
        return f"{t['ms']:>8.3f} ({t['min']:.3g}-{t['max']:.3g})"

    lines = [f"{'normals':<16} {'philox_normal ms (range)':>26} {'torch normal_ ms (range)':>26} {'normal_/philox':>15}"]
    for name, t in normals.items():
        lines.append(f"{name:<16} {cell(t['philox_normal']):>26} {cell(t['torch normal_']):>26} "
                     f"{t['torch normal_']['ms'] / t['philox_normal']['ms']:>14.2f}x")
    lines.append("")
    lines.append(f"{'sgld_step':<16} {'T=1 ms (range)':>26} {'T=0 ms (range)':>26} {'eager ms (range)':>26} "
                 f"{'eager/T=1':>10} {'T=1/T=0':>8}")
    for name, t in steps.items():
        lines.append(f"{name:<16} {cell(t['T=1']):>26} {cell(t['T=0']):>26} {cell(t['eager']):>26} "
                     f"{t['eager']['ms'] / t['T=1']['ms']:>9.2f}x {t['T=1']['ms'] / t['T=0']['ms']:>7.2f}x")
    lines.append("ms: median over rounds of each round's median call; range: min-max of the round medians")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--repeats", type=int, default=7, help="rounds (default 7)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    flat, count, numel = (1 << 12, 4, 96) if args.quick else (1 << 22, 72, 6144)
    normals = {f"flat {flat}": measure(normal_methods(flat), args.repeats)}
    steps = {f"flat {flat}": measure(step_methods([flat]), args.repeats),
             f"list {count} x {numel}": measure(step_methods([numel] * count), args.repeats)}
    meta = {"device": device_name(CPU), "cpu_isa": lift_ext.cpu_isa(), "torch": torch.__version__,
            "commit": short_commit(), "threads": torch.get_num_threads(), "repeats": args.repeats,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    print(f"device: {meta['device']}; torch {meta['torch']}; commit {meta['commit']}; {meta['date']}")
    print(format_report(normals, steps))
    if args.json:
        with open(args.json + ".tmp", "w") as fh:
            json.dump({**meta, "normals": normals, "sgld_step": steps}, fh, indent=1)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
