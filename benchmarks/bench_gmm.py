"""Times one online-EM update (E-step + M-step) of a K-component diagonal mixture over
vectors of length D: the fused lift_ext ops against the eager PyTorch formulation a user would
write (matmul E-step, elementwise / matmul M-step), in the same run on the same device.

    python benchmarks/bench_gmm.py [--device cpu|cuda] [--repeats N]

Data: samples drawn near one component, so the responsibilities are one-hot, as they are for
well-separated posterior samples in millions of dimensions; the fused M-step then skips the
components with zero batch weight. The "fused, dense q" column forces q = 1/K for every
sample (every component updated): the fused kernels' worst case.
"""
import argparse
import math
import os
import sys

import torch

import lift_ext  # noqa: F401
from lift_ext import ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import median_ms  # noqa: E402

CASES = [(8, 2**20, 1), (8, 2**22, 16), (8, 2**23, 1)]
REG = 1e-6


def make_state(k, d, b, device):
    g = torch.Generator().manual_seed(0)
    means = torch.randn(k, d, generator=g)
    counts = torch.full((k,), 100.0, dtype=torch.float64)
    m2 = (torch.rand(k, d, generator=g) + 0.5) * 100.0
    x = means[k // 2] + torch.randn(b, d, generator=g)
    return [t.to(device) for t in (means, m2, counts, x)]


def fused_update(means, m2, counts, x):
    _, resp = ops.gmm_estep(x, means, m2, counts, reg=REG)
    ops.gmm_mstep_(means, m2, counts, x, resp)


def fused_update_dense(means, m2, counts, x):
    ops.gmm_estep(x, means, m2, counts, reg=REG)
    k = means.shape[0]
    resp = torch.full((x.shape[0], k), 1.0 / k, dtype=torch.float64, device=x.device)
    ops.gmm_mstep_(means, m2, counts, x, resp)


def eager_update(means, m2, counts, x):
    """The same mini-batch online-EM update in plain PyTorch."""
    d = x.shape[1]
    var = m2 / counts.float()[:, None] + REG
    prec = var.reciprocal()
    log_det = var.log().sum(1, dtype=torch.float64)
    quad = (x * x) @ prec.T - 2.0 * (x @ (means * prec).T) + (means * means * prec).sum(1)
    loglik = (counts / counts.sum()).log() - 0.5 * (quad.double() + log_det + d * math.log(2 * math.pi))
    q = torch.softmax(loglik, dim=1)
    w = q.sum(0)
    n_new = counts + w
    qf, wf = q.float(), w.float()[:, None]
    batch_mean = (qf.T @ x) / wf
    batch_m2 = qf.T @ (x * x) - wf * batch_mean * batch_mean
    delta = batch_mean - means
    means.add_(delta * (w / n_new).float()[:, None])
    m2.add_(batch_m2 + delta * delta * (counts * w / n_new).float()[:, None])
    counts.copy_(n_new)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    header = f"{'K':>3} {'D':>9} {'B':>3} | {'eager ms':>10} {'fused ms':>10} {'ratio':>7} | {'fused, dense q ms':>18} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for k, d, b in CASES:
        times = {}
        for label, fn in (("eager", eager_update), ("fused", fused_update), ("dense", fused_update_dense)):
            state = make_state(k, d, b, device)
            times[label] = median_ms(lambda: fn(*state), device, warmup=1, repeats=args.repeats, min_seconds=0.0)
            del state
        print(f"{k:>3} {d:>9} {b:>3} | {times['eager']:>10.2f} {times['fused']:>10.2f} "
              f"{times['eager'] / times['fused']:>6.1f}x | {times['dense']:>18.2f} "
              f"{times['eager'] / times['dense']:>6.1f}x")


if __name__ == "__main__":
    main()
