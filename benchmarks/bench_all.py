"""Every fused op against every pure-PyTorch way of writing it, in one run on one device.

For each case it times (median ms, benchmarks/timing.py):
  fused         the lift_ext op
  per-tensor    eager PyTorch, one tensor at a time            (tensor lists only)
  foreach       torch._foreach_* over the list                 (tensor lists only)
  flat eager    eager PyTorch on one flat buffer
  flat compile  torch.compile of the flat-buffer formulation (inductor)
  floor         bytes that must move / the measured copy bandwidth (not a run: a bound)
and reports each as ms, achieved GB/s (the case's minimal bytes / time) and the ratio
alternative / fused (higher is better for the fused op). Prints a table, writes JSON and a
PNG of achieved bandwidth against size per op.

Minimal bytes per element: SGLD 16 (read theta, g, c; write theta), bf16 grads 14,
preconditioned 24 (+ read and write v); phi step 16 (read phi, S, mu0; write phi); GMM E+M
per update 4*B*D + 24*K*D (read x, means, m2 once; read and write means, m2 once).

    python benchmarks/bench_all.py [--device cpu|cuda] [--quick] [--json F] [--plot F.png]
"""
import argparse
import datetime
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lift_ext  # noqa: E402
from lift_ext import ops  # noqa: E402
from lift_ext.provenance import short_commit  # noqa: E402

import bench_gmm  # noqa: E402
import bench_sgld  # noqa: E402
from timing import copy_bandwidth_gbs, device_name, graph_replay_ms, median_ms  # noqa: E402

LR, LAM, TEMP = bench_sgld.LR, bench_sgld.LAM, bench_sgld.TEMP
NOISE = bench_sgld.NOISE
ALPHA, EPS = 0.99, 1e-8
PHI = dict(lr=1e-3, temperature=1.0, sigma=1.0, beta=0.5, num_tasks=16)
ALTS = ["per-tensor", "foreach", "flat eager", "flat compile"]


# ---- SGLD cases -------------------------------------------------------------------------

def sgld_cases(device: torch.device, quick: bool):
    """(name, sizes, variant); variant in plain | precond | bf16."""
    if quick:
        shapes = [("flat 2^20", [1 << 20]), ("list 72 x 6144", [6144] * 72)]
        variants = ["plain", "precond", "bf16"]
    else:
        shapes = [("flat 2^20", [1 << 20]), ("flat 2^24", [1 << 24])]
        if device.type == "cuda":
            shapes.append(("flat 2^27", [1 << 27]))
        shapes += [("list 72 x 6144", [6144] * 72), ("list 128 x 65536", [65536] * 128),
                   ("list 448 x 65536", [65536] * 448)]
        variants = ["plain", "precond", "bf16"]
    return [(n, s, v) for n, s in shapes for v in variants]


def precond_eager_step(p, g, c, v):
    v.mul_(ALPHA).addcmul_(g, g, value=1 - ALPHA)
    precond = (v.sqrt() + EPS).reciprocal()
    p.add_(-LR * precond * (g + LAM * (p - c)) + NOISE * precond.sqrt() * torch.randn_like(p))


def precond_foreach_step(ps, gs, cs, vs):
    torch._foreach_mul_(vs, ALPHA)
    torch._foreach_addcmul_(vs, gs, gs, value=1 - ALPHA)
    precond = torch._foreach_sqrt(vs)
    torch._foreach_add_(precond, EPS)
    torch._foreach_reciprocal_(precond)
    drift = torch._foreach_sub(ps, cs)
    torch._foreach_mul_(drift, LAM)
    torch._foreach_add_(drift, gs)
    torch._foreach_mul_(drift, precond)
    torch._foreach_mul_(drift, -LR)
    noise = [torch.randn_like(p) for p in ps]
    torch._foreach_mul_(noise, torch._foreach_sqrt(precond))
    torch._foreach_add_(drift, noise, alpha=NOISE)
    torch._foreach_add_(ps, drift)


def precond_flat_step(p, g, c, v):
    v_new = ALPHA * v + (1 - ALPHA) * g * g
    precond = 1.0 / (v_new.sqrt() + EPS)
    return p - LR * precond * (g + LAM * (p - c)) + NOISE * precond.sqrt() * torch.randn_like(p), v_new


def bf16_eager_step(p, g, c):
    bench_sgld.eager_step(p, g.float(), c)


def bf16_foreach_step(ps, gs, cs):
    bench_sgld.foreach_step(ps, [g.float() for g in gs], cs)


def bf16_flat_step(p, g, c):
    return bench_sgld.flat_step(p, g.float(), c)


def sgld_row(name, sizes, variant, device, compiled):
    total = sum(sizes)
    gdtype = torch.bfloat16 if variant == "bf16" else torch.float32
    flat_p, flat_c = torch.randn(total, device=device), torch.randn(total, device=device)
    flat_g = torch.randn(total, device=device).to(gdtype)
    flat_v = torch.rand(total, device=device) if variant == "precond" else None
    split = lambda t: [x.clone() for x in t.split(sizes)]  # noqa: E731
    ps, gs, cs = split(flat_p), split(flat_g), split(flat_c)
    vs = split(flat_v) if flat_v is not None else None
    is_list = len(sizes) > 1
    counter = iter(range(10**9))

    def fused():
        p, g, c, v = (ps, gs, cs, vs) if is_list else (flat_p, flat_g, flat_c, flat_v)
        lift_ext.sgld_step(p, g, lr=LR, temperature=TEMP, prior_mean=c, prior_precision=LAM,
                           square_avg=v, alpha=ALPHA, eps=EPS, seed=0, offset=next(counter))

    if variant == "precond":
        eager, foreach = precond_eager_step, precond_foreach_step
        flat_fn = precond_flat_step
        per_tensor = lambda: [eager(*a) for a in zip(ps, gs, cs, vs)]  # noqa: E731
        foreach_call = lambda: foreach(ps, gs, cs, vs)  # noqa: E731

        def flat_eager():
            p, v = flat_fn(flat_p, flat_g, flat_c, flat_v)
            flat_p.copy_(p), flat_v.copy_(v)

        def flat_compile():
            p, v = compiled["precond"](flat_p, flat_g, flat_c, flat_v)
            flat_p.copy_(p), flat_v.copy_(v)
        bytes_per = 24
    else:
        eager, foreach, flat_fn, key = ((bf16_eager_step, bf16_foreach_step, bf16_flat_step, "bf16")
                                        if variant == "bf16" else
                                        (bench_sgld.eager_step, bench_sgld.foreach_step,
                                         bench_sgld.flat_step, "plain"))
        per_tensor = lambda: [eager(*a) for a in zip(ps, gs, cs)]  # noqa: E731
        foreach_call = lambda: foreach(ps, gs, cs)  # noqa: E731
        flat_eager = lambda: flat_p.copy_(flat_fn(flat_p, flat_g, flat_c))  # noqa: E731
        flat_compile = lambda: flat_p.copy_(compiled[key](flat_p, flat_g, flat_c))  # noqa: E731
        bytes_per = 14 if variant == "bf16" else 16

    timings = {"fused": median_ms(fused, device)}
    if device.type == "cuda" and is_list and variant == "plain":
        rng_state = torch.tensor([0, 0], dtype=torch.int64, device=device)
        try:
            timings["fused graph"] = graph_replay_ms(
                lambda: lift_ext.sgld_step(ps, gs, lr=LR, temperature=TEMP, prior_mean=cs, prior_precision=LAM,
                                           rng_state=rng_state), device)
        except RuntimeError as exc:  # report and go on: the eager columns still stand
            print(f"  {name}: CUDA graph replay failed: {exc}", file=sys.stderr, flush=True)
    if is_list:
        timings["per-tensor"] = median_ms(per_tensor, device)
        timings["foreach"] = median_ms(foreach_call, device)
    else:
        timings["per-tensor"] = median_ms(lambda: eager(*(t for t in (flat_p, flat_g, flat_c, flat_v)
                                                         if t is not None)), device)
    timings["flat eager"] = median_ms(flat_eager, device)
    timings["flat compile"] = median_ms(flat_compile, device)
    return {"op": f"sgld {variant}", "case": f"{name}, {variant}", "numel": total,
            "tensors": len(sizes), "bytes": bytes_per * total, "ms": timings}


# ---- phi step ---------------------------------------------------------------------------

def phi_eager(phi, s, mu0):
    n, sig2, beta2 = PHI["num_tasks"], PHI["sigma"] ** 2, PHI["beta"] ** 2
    drift = (phi - mu0) / sig2 - (s - n * phi) / beta2
    return phi - PHI["lr"] * drift + math.sqrt(2 * PHI["lr"] * PHI["temperature"]) * torch.randn_like(phi)


def phi_row(numel, device, compiled):
    phi, s, mu0 = (torch.randn(numel, device=device) for _ in range(3))
    counter = iter(range(10**9))

    def fused():
        ops.phi_step_(phi, s, mu0, gibbs=False, seed=0, offset=next(counter), **PHI)

    timings = {"fused": median_ms(fused, device),
               "flat eager": median_ms(lambda: phi.copy_(phi_eager(phi, s, mu0)), device),
               "flat compile": median_ms(lambda: phi.copy_(compiled["phi"](phi, s, mu0)), device)}
    return {"op": "phi step", "case": f"phi 2^{int(math.log2(numel))}", "numel": numel,
            "tensors": 1, "bytes": 16 * numel, "ms": timings}


# ---- GMM E + M --------------------------------------------------------------------------

def gmm_row(k, d, b, device, compiled):
    timings = {}
    for label, fn in (("fused", bench_gmm.fused_update), ("flat eager", bench_gmm.eager_update),
                      ("flat compile", compiled["gmm"])):
        state = bench_gmm.make_state(k, d, b, device)
        timings[label] = median_ms(lambda: fn(*state), device, repeats=7, min_seconds=0.1)
        del state
    return {"op": f"gmm E+M B={b}", "case": f"gmm K={k} D=2^{int(math.log2(d))} B={b}", "numel": d,
            "tensors": 1, "bytes": 4 * b * d + 24 * k * d, "ms": timings}


def gmm_cases(quick):
    if quick:
        return [(8, 1 << 20, 1), (8, 1 << 20, 16)]
    return [(8, 1 << 20, 1), (8, 1 << 20, 16), (8, 1 << 23, 1), (8, 1 << 23, 16)]


# ---- table, JSON, plot ------------------------------------------------------------------

def finish_row(row, bandwidth):
    gb = row["bytes"] / 1e9
    row["floor_ms"] = gb / bandwidth * 1e3
    row["GBps"] = {k: gb / (v * 1e-3) for k, v in row["ms"].items()}
    row["ratio"] = {k: v / row["ms"]["fused"] for k, v in row["ms"].items()}
    row["fused_pct_copy"] = 100 * row["GBps"]["fused"] / bandwidth
    return row


def format_table(rows):
    head = (f"{'case':<30} {'fused ms':>9} {'GB/s':>7} {'%copy':>6} {'floor ms':>9} "
            + " ".join(f"{a + ' ms':>15} {'x':>6}" for a in ALTS))
    lines = [head, "-" * len(head)]
    for r in rows:
        t = r["ms"]
        cells = [f"{t[a]:>15.3f} {r['ratio'][a]:>6.1f}" if a in t else f"{'-':>15} {'-':>6}" for a in ALTS]
        lines.append(f"{r['case']:<30} {t['fused']:>9.3f} {r['GBps']['fused']:>7.1f} "
                     f"{r['fused_pct_copy']:>5.0f}% {r['floor_ms']:>9.3f} " + " ".join(cells))
    lines.append("x = alternative ms / fused ms (higher is better for the fused op); "
                 "floor = minimal bytes / measured copy bandwidth; %copy = fused GB/s / copy GB/s")
    graphs = [r for r in rows if "fused graph" in r["ms"]]
    if graphs:
        lines.append("CUDA graph replay of the fused step (graph-safe form, no Python or launch cost):")
        lines += [f"  {r['case']:<28} {r['ms']['fused graph']:.4f} ms  ({r['GBps']['fused graph']:.0f} GB/s)"
                  for r in graphs]
    return "\n".join(lines)


def print_progress(row):
    """One finished row as it lands, so a run cut short still reports what it measured."""
    times = ", ".join(f"{k} {v:.4f}" for k, v in row["ms"].items())
    print(f"  {row['case']}: ms {times}; fused {row['fused_pct_copy']:.0f}% of copy", flush=True)


def plot(rows, bandwidth, device_label, path):
    """Achieved GB/s against bytes per call: single tensors left, tensor lists right (where the
    fixed cost of a call with hundreds of tensors shows; dotted: the CUDA-graph replay)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    colors = plt.get_cmap("tab10").colors
    ops = sorted({r["op"] for r in rows})
    for ax, lists in zip(axes, (False, True)):
        for index, op in enumerate(ops):
            color = colors[index % len(colors)]  # one colour per op: fused solid, PyTorch dashed
            sel = sorted((r for r in rows if r["op"] == op and (r["tensors"] > 1) == lists),
                         key=lambda r: r["bytes"])
            if not sel:
                continue
            x = [r["bytes"] for r in sel]
            ax.plot(x, [r["GBps"]["fused"] for r in sel], "o-", color=color, label=f"{op} fused")
            graph = [r["GBps"].get("fused graph") for r in sel]
            if all(g is not None for g in graph):
                ax.plot(x, graph, "s:", color=color, label=f"{op} fused, graph replay")
            best = [max(v for k, v in r["GBps"].items() if k not in ("fused", "fused graph")) for r in sel]
            ax.plot(x, best, "x--", color=color, alpha=0.6, label=f"{op} best PyTorch")
        ax.axhline(bandwidth, color="k", lw=1, ls=":", label="copy bandwidth")
        ax.set_xscale("log")
        ax.set_xlabel("minimal bytes moved per call")
        ax.set_title("tensor lists (72, 128, 448 tensors)" if lists else "one tensor", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
    axes[0].set_ylabel("achieved GB/s (minimal bytes / time)")
    fig.suptitle(f"lift_ext achieved bandwidth, {device_label}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compiled_fns():
    return {"plain": torch.compile(bench_sgld.flat_step), "bf16": torch.compile(bf16_flat_step),
            "precond": torch.compile(precond_flat_step), "phi": torch.compile(phi_eager),
            "gmm": torch.compile(bench_gmm.eager_update)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small cases only (CPU smoke run)")
    parser.add_argument("--json", default=None, help="results file (default benchmarks/out/bench_<device>.json)")
    parser.add_argument("--plot", default=None, help="PNG file (default next to the JSON)")
    parser.add_argument("--only", choices=["sgld", "phi", "gmm"], action="append", help="op families to run")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (torch.set_num_threads); 1 resists contention on a shared machine")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    families = set(args.only or ["sgld", "phi", "gmm"])
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
    json_path = args.json or os.path.join(out_dir, f"bench_{device.type}.json")
    plot_path = args.plot or os.path.splitext(json_path)[0] + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)

    bandwidth = copy_bandwidth_gbs(device, 1 << (26 if device.type == "cuda" else 24))
    label = device_name(device)
    print(f"device: {label}; torch {torch.__version__}; copy bandwidth {bandwidth:.1f} GB/s; "
          f"commit {short_commit()}", flush=True)
    compiled = compiled_fns()
    rows = []
    if "sgld" in families:
        for name, sizes, variant in sgld_cases(device, args.quick):
            rows.append(finish_row(sgld_row(name, sizes, variant, device, compiled), bandwidth))
            print_progress(rows[-1])
    if "phi" in families:
        for numel in ([1 << 20] if args.quick else [1 << 20, 1 << 24]):
            rows.append(finish_row(phi_row(numel, device, compiled), bandwidth))
            print_progress(rows[-1])
    if "gmm" in families:
        for k, d, b in gmm_cases(args.quick):
            rows.append(finish_row(gmm_row(k, d, b, device, compiled), bandwidth))
            print_progress(rows[-1])
    print(format_table(rows))
    meta = {"device": label, "cpu_isa": lift_ext.cpu_isa(), "torch": torch.__version__, "commit": short_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "threads": torch.get_num_threads(), "copy_GBps": bandwidth, "quick": args.quick}
    with open(json_path + ".tmp", "w") as fh:
        json.dump({**meta, "rows": rows}, fh, indent=1)
    os.replace(json_path + ".tmp", json_path)
    plot(rows, bandwidth, label, plot_path)
    print(f"wrote {json_path} and {plot_path}")


if __name__ == "__main__":
    main()
