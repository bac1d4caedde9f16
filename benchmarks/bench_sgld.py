"""SGLD step throughput: the fused op against the pure-PyTorch ways of writing the same step.

For each case (a flat vector or a list of tensors) it times, in one run on one device:
  fused        lift_ext.sgld_step (one pass, noise in-kernel)
  per-tensor   eager PyTorch, one tensor at a time (randn_like + elementwise ops)
  foreach      torch._foreach_* over the list
  flat eager   eager PyTorch on one flat buffer
  flat compile torch.compile of the flat-buffer step (inductor, noise generated in-kernel)
and prints milliseconds, the fused op's achieved bandwidth (16 bytes / element: read param,
grad, prior mean, write param) and the speed-up of the fused op over each alternative.

    python benchmarks/bench_sgld.py [--device cuda] [--json out.json] [--quick]
"""
import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lift_ext  # noqa: E402
from timing import copy_bandwidth_gbs, device_name, median_ms  # noqa: E402

LR, LAM, TEMP = 1e-3, 1.0, 1.0
NOISE = math.sqrt(2 * LR * TEMP)


def cases(quick: bool, device: torch.device):
    if quick:
        return [("flat 2^20", [1 << 20]), ("list 72 x 6144", [6144] * 72)]
    flat = [("flat 2^22", [1 << 22]), ("flat 2^24", [1 << 24])]
    if device.type == "cuda":
        flat.append(("flat 2^27", [1 << 27]))
    return flat + [("list 448 x 65536", [65536] * 448), ("list 72 x 6144", [6144] * 72)]


def eager_step(p, g, c):
    p.add_(-LR * (g + LAM * (p - c)) + NOISE * torch.randn_like(p))


def foreach_step(ps, gs, cs):
    diff = torch._foreach_sub(ps, cs)
    torch._foreach_mul_(diff, LAM)
    torch._foreach_add_(diff, gs)
    torch._foreach_mul_(diff, -LR)
    noise = [torch.randn_like(p) for p in ps]
    torch._foreach_add_(diff, noise, alpha=NOISE)
    torch._foreach_add_(ps, diff)


def flat_step(p, g, c):
    return p - LR * (g + LAM * (p - c)) + NOISE * torch.randn_like(p)


def run_case(name, sizes, device, compiled_flat):
    total = sum(sizes)
    flat_p, flat_g, flat_c = (torch.randn(total, device=device) for _ in range(3))
    ps = [t.clone() for t in flat_p.split(sizes)]
    gs = [t.clone() for t in flat_g.split(sizes)]
    cs = [t.clone() for t in flat_c.split(sizes)]
    fused_args = (flat_p, flat_g, flat_c) if len(sizes) == 1 else (ps, gs, cs)
    counter = iter(range(10**9))

    def fused():
        p, g, c = fused_args
        lift_ext.sgld_step(p, g, lr=LR, temperature=TEMP, prior_mean=c, prior_precision=LAM,
                           seed=0, offset=next(counter))

    def flat_compile():
        flat_p.copy_(compiled_flat(flat_p, flat_g, flat_c))

    timings = {"fused": median_ms(fused, device)}
    if len(sizes) > 1:
        timings["per-tensor"] = median_ms(lambda: [eager_step(p, g, c) for p, g, c in zip(ps, gs, cs)], device)
        timings["foreach"] = median_ms(lambda: foreach_step(ps, gs, cs), device)
    else:
        timings["per-tensor"] = median_ms(lambda: eager_step(flat_p, flat_g, flat_c), device)
    timings["flat eager"] = median_ms(lambda: flat_p.copy_(flat_step(flat_p, flat_g, flat_c)), device)
    timings["flat compile"] = median_ms(flat_compile, device)
    return {"case": name, "numel": total, "tensors": len(sizes), "ms": timings,
            "fused_GBps": 16 * total / (timings["fused"] * 1e-3) / 1e9}


def format_table(rows, bandwidth):
    alts = ["per-tensor", "foreach", "flat eager", "flat compile"]
    head = f"{'case':<18} {'fused ms':>9} {'GB/s':>7} {'%copy':>6} " + " ".join(f"{a + ' ms':>15} {'x':>5}" for a in alts)
    lines = [head, "-" * len(head)]
    for r in rows:
        t = r["ms"]
        cells = []
        for a in alts:
            if a in t:
                cells.append(f"{t[a]:>15.3f} {t[a] / t['fused']:>5.1f}")
            else:
                cells.append(f"{'-':>15} {'-':>5}")
        lines.append(f"{r['case']:<18} {t['fused']:>9.3f} {r['fused_GBps']:>7.1f} "
                     f"{100 * r['fused_GBps'] / bandwidth:>5.0f}% " + " ".join(cells))
    lines.append("x = alternative time / fused time (higher is better for the fused op); "
                 "floor = 16 B/element at the copy bandwidth")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--quick", action="store_true", help="small cases only")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    bandwidth = copy_bandwidth_gbs(device, 1 << (26 if device.type == "cuda" else 24))
    compiled_flat = torch.compile(flat_step)
    rows = [run_case(name, sizes, device, compiled_flat) for name, sizes in cases(args.quick, device)]
    print(f"device: {device_name(device)}; torch {torch.__version__}; copy bandwidth {bandwidth:.1f} GB/s")
    print(format_table(rows, bandwidth))
    if args.json:
        with open(args.json + ".tmp", "w") as fh:
            json.dump({"device": device_name(device), "cpu_isa": lift_ext.cpu_isa(), "copy_GBps": bandwidth,
                       "rows": rows}, fh, indent=1)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
