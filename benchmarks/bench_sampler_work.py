"""The sampler's own work per SGLDGibbs.step(): everything but the gradients.

grad_fn returns a stored gradient per task and its `losses` a stored [K] (StoredGradients, no
model), so the time is the theta step, the z draws, the S_k updates, the phi_k draws, the pi
draw and the shift (docs/design.md sections 3, 10 and 12). Rows: prior="paper",
prior="mixture", the mixture with the shift move (shift_lr > 0), and that with
z_update="likelihood", at N tasks, dimension D, K components, B tasks a step, the cases timed
in turn. The floor to compare with:
reading and writing the B stepped rows and the K phi_k and S_k once, plus with the shift all
N rows once (every member of a shifted component moves).

    python benchmarks/bench_sampler_work.py [--tasks 128] [--dim 18432] [--components 4]
                                            [--tasks-per-step 8] [--threads 1] [--device cpu]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lift_ext.lift import ChainStart, LangevinConfig, MixtureHierarchy, PaperHierarchy, SGLDGibbs  # noqa: E402
from timing import device_name, median_ms  # noqa: E402

CASES = (("paper", dict(hierarchy=PaperHierarchy, phi_update="langevin", lr_phi=1e-5)),
         ("mixture", dict(hierarchy=MixtureHierarchy)),
         ("mixture, shift_lr > 0", dict(hierarchy=MixtureHierarchy, shift_lr=1e-4)),
         ("mixture, shift, by lik.", dict(hierarchy=MixtureHierarchy, shift_lr=1e-4, z_update="likelihood")))


class StoredGradients:
    """grad_fn returning a stored gradient per task, and `losses` a stored [K] per task (no
    model): 0 for the component given by `prefer`, 10^3 for the others, so that the
    likelihood draw keeps the tasks where they are, as a chain past its burn-in mostly does."""

    def __init__(self, grads: torch.Tensor, components: int):
        self.grads, self.nll = grads, torch.zeros(grads.shape[0], components, device=grads.device)

    def prefer(self, assignments: torch.Tensor) -> None:
        self.nll.fill_(1e3).scatter_(1, assignments[:, None].to(self.nll.device), 0.0)

    def __call__(self, task: int, theta: torch.Tensor) -> torch.Tensor:
        return self.grads[task]

    def losses(self, task: int, candidates: torch.Tensor) -> torch.Tensor:
        return self.nll[task]


def sampler(case: dict, tasks: int, dim: int, components: int, per_step: int, device: torch.device) -> SGLDGibbs:
    """A sampler of `case` with StoredGradients (small gradients), its thetas spread around K
    centres (so that the z draws see distinct components)."""
    gen = torch.Generator().manual_seed(0)
    grads = (1e-3 * torch.randn(tasks, dim, generator=gen)).to(device)
    centres = torch.randn(components, dim, generator=gen)
    start = (centres[torch.arange(tasks) % components] * 0.1 + 0.01 * torch.randn(tasks, dim, generator=gen))
    grad_fn = StoredGradients(grads, components)
    settings = dict(case)
    kind = settings.pop("hierarchy")
    count = {"components": components} if kind is MixtureHierarchy else {"gmm_components": components}
    chain = SGLDGibbs(tasks, dim, grad_fn, langevin=LangevinConfig(lr=1e-4, tasks_per_step=per_step),
                      hierarchy=kind(sigma=1.0, beta=0.1, **count, **settings),
                      start=ChainStart(thetas=start.to(device), prior_mean=torch.zeros(dim, device=device)))
    grad_fn.prefer(chain.assignments)
    return chain


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tasks", type=int, default=128)
    parser.add_argument("--dim", type=int, default=18432)
    parser.add_argument("--components", type=int, default=4)
    parser.add_argument("--tasks-per-step", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="medians of this many timings per case")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    samplers = [(name, sampler(case, args.tasks, args.dim, args.components, args.tasks_per_step, device))
                for name, case in CASES]
    rounds = {name: [] for name, _ in samplers}
    for _ in range(args.repeats):  # interleaved, so that load from other jobs hits every case alike
        for name, chain in samplers:
            rounds[name].append(median_ms(chain.step, device))
    print(f"device: {device_name(device)}")
    print(f"N = {args.tasks}, D = {args.dim}, K = {args.components}, B = {args.tasks_per_step}")
    for name, times in rounds.items():
        print(f"{name:<24} {sorted(times)[len(times) // 2]:8.3f} ms / step")


if __name__ == "__main__":
    main()
