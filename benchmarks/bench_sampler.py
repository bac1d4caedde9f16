"""Cost of one SGLDGibbs.step() against the fused kernels it launches, called directly.

D = 2^20 by default, N tasks, a trivial gradient (a fixed buffer), the mixture fed every
step. `kernels` runs exactly the ops of one step (theta step with the running sum, phi step,
GMM E-step + M-step) on the same tensors; `step` is the sampler's step(). Their ratio is the
loop's overhead (target: <= 2x on CPU, <= 1.5x on GPU). Peak memory is compared with the
minimum the state needs: thetas (N x D float32) + phi, S (+ mu0) + the mixture's 2 K x D.

    python benchmarks/bench_sampler.py [--device cuda] [--dim 1048576] [--tasks 16]
"""
import argparse
import os
import resource
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lift_ext import ops  # noqa: E402
from lift_ext.lift import ChainStart, LangevinConfig, PaperHierarchy, SGLDGibbs  # noqa: E402
from timing import device_name, median_ms  # noqa: E402


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dim", type=int, default=1 << 20)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--components", type=int, default=2)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dim, tasks = args.dim, args.tasks
    base_memory = peak_bytes(device)
    grad = torch.randn(dim, device=device) * 1e-3
    sampler = SGLDGibbs(tasks, dim, lambda i, theta: grad, langevin=LangevinConfig(lr=1e-4),
                        hierarchy=PaperHierarchy(sigma=1.0, beta=0.1, phi_update="langevin",
                                                 gmm_components=args.components),
                        start=ChainStart(thetas=torch.randn(dim, device=device) * 0.01,
                                         prior_mean=torch.zeros(dim, device=device)))
    for _ in range(4 * args.components + 2):  # past the mixture's warm-up buffer
        sampler.step()
    step_ms = median_ms(sampler.step, device)

    gmm = sampler.gmm
    theta, phi, total, mu0 = sampler.thetas[0], sampler.phi, sampler.task_sum, sampler.prior_mean

    def kernels():
        ops.sgld_step_(theta, grad, phi, total, None, lr=1e-4, temperature=1.0, prior_precision=100.0,
                       alpha=0.99, eps=1e-8, seed=0, offset=0)
        ops.phi_step_(phi, total, mu0, lr=1e-4, temperature=1.0, sigma=1.0, beta=0.1, num_tasks=tasks,
                      gibbs=False, seed=0, offset=1)
        _, resp = ops.gmm_estep(phi.reshape(1, -1), gmm._means, gmm._m2, gmm._counts, reg=gmm.reg_covar)
        ops.gmm_mstep_(gmm._means, gmm._m2, gmm._counts, phi.reshape(1, -1), resp)

    kernel_ms = median_ms(kernels, device)
    state_bytes = 4 * dim * (tasks + 3 + 2 * args.components)
    peak = peak_bytes(device) - base_memory
    print(f"device: {device_name(device)}; D = {dim}, N = {tasks}, K = {args.components}")
    print(f"{'SGLDGibbs.step()':<24} {step_ms:8.3f} ms")
    print(f"{'its kernels, direct':<24} {kernel_ms:8.3f} ms")
    print(f"{'overhead ratio':<24} {step_ms / kernel_ms:8.2f} x")
    print(f"{'state (minimum)':<24} {state_bytes / 2**20:8.1f} MiB")
    label = "peak GPU memory growth" if device.type == "cuda" else "peak RSS growth"
    print(f"{label:<24} {peak / 2**20:8.1f} MiB")


if __name__ == "__main__":
    main()
