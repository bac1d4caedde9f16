"""Host time of ONE SGLD step call against the number of tensors: the list call, the
TensorTable call, and torch's foreach and fused optimizers as references, in one run.

For each case (COUNT tensors of NUMEL elements; by default 1, 72, 448 and 4,096 tensors of 16
elements, so that the kernel is small and the host work shows) it times, interleaved in rounds:

  list          lift_ext.sgld_step(params, grads, prior_mean=..., ...)   (prior mean, noise)
  table         lift_ext.sgld_step(table, ...) on a TensorTable of the same lists
  foreach SGD   torch._foreach_add + torch._foreach_add_: SGD with weight decay, as
                torch.optim.SGD(foreach=True) writes it
  fused Adam    torch.optim.Adam(fused=True).step() (foreach=True where fused is unsupported)

and reports, per call, the median `total` time and the `host` time:
  CPU   the kernel runs inside the call, so host = total - kernel, the kernel being the median
        length of the "lift_ext::sgld_cpu_kernel" range under torch.profiler (lift_ext calls
        only; for the references host = total: their per-tensor work is dispatch, the
        arithmetic on 16 elements is a few ns);
  CUDA  host = the call without synchronising (the launch returns first), total = the call
        and the device work up to a synchronisation; the table kernel alone = one replay of a
        CUDA graph of the table step (rng_state form).
Also per case: the table call on COUNT tensors of 0 elements (the host path alone, measured
directly: the kernel has nothing to do), building the table, TensorTable.is_current() (what
optim.SGLD checks each step), and optim.SGLD.step() with a kept table (grads kept in place).

    python benchmarks/bench_host.py [--device cuda] [--cases 448x65536,72x6144] [--threads 1]

The table prints on stdout; JSON goes to benchmarks/results/host_<device>.json (or --json).
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lift_ext  # noqa: E402
from lift_ext.optim import SGLD  # noqa: E402
from lift_ext.provenance import cpu_model, short_commit  # noqa: E402
from timing import device_name, graph_replay_ms  # noqa: E402

LR, LAM, TEMP = 1e-3, 1.0, 1.0
KERNEL_RANGE = "lift_ext::sgld_cpu_kernel"
DEFAULT_CASES = "1x16,72x16,448x16,4096x16"


def parse_cases(text):
    cases = []
    for item in text.split(","):
        count, numel = item.lower().split("x")
        cases.append((int(count), int(numel)))
    return cases


def median_us(fn, device, samples, sync_inside):
    """Median microseconds of one fn() call: `samples` single calls, each timed alone after the
    device is idle; the device work is inside the timing only with sync_inside."""
    out = []
    for _ in range(samples):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if sync_inside and device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1e6


def interleaved(fns, device, rounds, per_round, sync_inside):
    """{name: median us} over `rounds` rounds of `per_round` calls of each fn, in turn."""
    samples = {name: [] for name in fns}
    for name, fn in fns.items():  # warm-up
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(median_us(fn, device, per_round, sync_inside))
    return {name: statistics.median(values) for name, values in samples.items()}


def cpu_kernel_us(fn, calls=400):
    """Median length of the CPU kernel's profiler range over `calls` calls of fn."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    lengths = [e.time_range.elapsed_us() for e in prof.events() if e.name == KERNEL_RANGE]
    return statistics.median(lengths) if lengths else float("nan")


def make_steps(count, numel, device):
    gen = torch.Generator().manual_seed(count)
    made = [[torch.randn(numel, generator=gen).to(device) for _ in range(count)] for _ in range(3)]
    ps, gs, cs = made
    table = lift_ext.TensorTable(ps, gs, prior_means=cs)
    offsets = iter(range(1 << 62))
    adam_params = [torch.nn.Parameter(p.clone()) for p in ps]
    for p, g in zip(adam_params, gs):
        p.grad = g.clone()
    try:
        adam = torch.optim.Adam(adam_params, lr=LR, fused=True)
        adam.step()
        adam_kind = "fused"
    except RuntimeError:
        adam = torch.optim.Adam(adam_params, lr=LR, foreach=True)
        adam_kind = "foreach"
    model_params = [torch.nn.Parameter(p.clone()) for p in ps]
    for p, g in zip(model_params, gs):
        p.grad = g.clone()
    sgld = SGLD(model_params, lr=LR, temperature=TEMP, prior_precision=LAM, seed=0)
    sgld.step()  # builds the table it keeps
    hyper = dict(lr=LR, temperature=TEMP, prior_precision=LAM, seed=0)

    def foreach_sgd():
        steps = torch._foreach_add(gs, ps, alpha=LAM)
        torch._foreach_add_(ps, steps, alpha=-LR)

    steps = {
        "list": lambda: lift_ext.sgld_step(ps, gs, prior_mean=cs, offset=next(offsets), **hyper),
        "table": lambda: lift_ext.sgld_step(table, offset=next(offsets), **hyper),
        "foreach SGD": foreach_sgd,
        "fused Adam": adam.step,
    }
    empty = [[torch.zeros(0, device=device) for _ in range(count)] for _ in range(3)]
    empty_table = lift_ext.TensorTable(empty[0], empty[1], prior_means=empty[2])
    extras = {
        "table, 0 elements": lambda: lift_ext.sgld_step(empty_table, offset=next(offsets), **hyper),
        "table build": lambda: lift_ext.TensorTable(ps, gs, prior_means=cs),
        "is_current": table.is_current,
        "SGLD.step kept": sgld.step,
    }
    return steps, extras, table, adam_kind


def run_case(count, numel, device, rounds):
    steps, extras, table, adam_kind = make_steps(count, numel, device)
    per_round = max(20, min(400, 80000 // count))
    total = interleaved(steps, device, rounds, per_round, sync_inside=True)
    other = interleaved(extras, device, max(3, rounds // 2), max(3, per_round // 4), sync_inside=False)
    row = {"count": count, "numel": numel, "adam": adam_kind, "total_us": total, "other_us": other}
    if device.type == "cpu":
        kernel = {name: cpu_kernel_us(steps[name]) for name in ("list", "table")}
        row["kernel_us"] = kernel
        row["host_us"] = {name: total[name] - kernel.get(name, 0.0) for name in total}
    else:
        row["host_us"] = interleaved(steps, device, rounds, per_round, sync_inside=False)
        state = torch.tensor([0, 0], dtype=torch.int64, device=device)
        replay = graph_replay_ms(lambda: lift_ext.sgld_step(table, lr=LR, temperature=TEMP,
                                                            prior_precision=LAM, rng_state=state), device)
        row["kernel_us"] = {"table": replay * 1e3}
    return row


def format_table(rows, device):
    names = ["list", "table", "foreach SGD", "fused Adam"]
    head = (f"{'tensors':>7} x {'numel':<6}" + "".join(f" {n + ' host':>16} {'total':>8}" for n in names)
            + f" {'table kernel':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(f" {r['host_us'][n]:>16.1f} {r['total_us'][n]:>8.1f}" for n in names)
        lines.append(f"{r['count']:>7} x {r['numel']:<6}{cells} {r['kernel_us']['table']:>12.1f}")
    lines.append("")
    head2 = (f"{'tensors':>7}   {'table, 0 elements':>17} {'table build':>12} {'is_current':>11} "
             f"{'SGLD.step kept':>15}")
    lines += [head2, "-" * len(head2)]
    for r in rows:
        o = r["other_us"]
        lines.append(f"{r['count']:>7}   {o['table, 0 elements']:>17.1f} {o['table build']:>12.1f} "
                     f"{o['is_current']:>11.2f} {o['SGLD.step kept']:>15.1f}")
    adam = {r["adam"] for r in rows}
    lines.append(f"microseconds per call, median; host = "
                 + ("total - kernel (profiler range)" if device.type == "cpu" else "the call without a sync")
                 + f"; Adam: {'/'.join(sorted(adam))}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", default=DEFAULT_CASES, help="COUNTxNUMEL,... (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", help="default: benchmarks/results/host_<device>.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [run_case(count, numel, device, args.rounds) for count, numel in parse_cases(args.cases)]
    info = {"device": device_name(device), "cpu": cpu_model(), "torch": torch.__version__, "commit": short_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "threads": torch.get_num_threads()}
    host = f" (host CPU {info['cpu']})" if device.type == "cuda" else ""
    print(f"device: {info['device']}{host}; torch {info['torch']}; commit {info['commit']}; "
          f"{info['date']}")
    print(format_table(rows, device))
    path = args.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                     f"host_{device.type}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as fh:
        json.dump({**info, "rows": rows}, fh, indent=1)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
