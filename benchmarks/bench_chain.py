"""CPU time per meta-training step: LiFT's chain step against a multitask step at equal window
gradients, on the Shakespeare family suite's default backbone and adapter (docs/benchmark.md,
"Time"; docs/architecture.md).

The chain is the one `lift_methods` builds for the ``lift`` method of the default config
(mixture prior, K components, tasks_per_step B tasks of batch_size // B windows each, the shift
and z moves as configured); a multitask step is one `train_multitask` step on batch_size
windows, so both see the same windows per step. Rows, timed in turn within each repeat (CPU
seconds of this process, one torch thread, median over repeats of the mean over --steps):

    lift, grads one task at a time   the chain with batched_grads=False (B passes a step)
    lift, grads vmapped              the same chain with `TaskGradients.many` batched by vmap
    lift, multi-adapter pass         the same chain as meta-training runs it (batched_grads
                                     auto: the multi-adapter pass, lift_ext.lift.multi_adapter)
    multitask                        train_multitask's step
    sampler only                     the chain with a grad_fn returning stored gradients
    B task grads, one at a time      TaskGradients.many on B tasks of a step, sequential
    B task grads, vmapped            the same B gradients in one vmapped pass
    B task grads, multi-adapter      the same B gradients in one multi-adapter pass
    one task's grad                  one task's gradient of a chain step (batch_size // B windows)
    one grad of B x batch windows    the gradient a multitask step takes (no optimiser)

The chains are first moved past their warm-up with stored gradients (cheap), so every timed
step is one of the mixture steps that make up (1 - lift_warmup) of a run.

    python benchmarks/bench_chain.py [--steps 10] [--repeats 5] [--quick]
"""
import argparse
import dataclasses
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lift_ext.shakespeare import launch  # noqa: E402
from lift_ext.shakespeare import methods as M  # noqa: E402
from lift_ext.shakespeare.config import BenchConfig  # noqa: E402
from lift_ext.shakespeare.episodes import pool_tasks  # noqa: E402
from lift_ext.lift import MixtureHierarchy  # noqa: E402
from lift_ext.lift.batched_grad import VMAP  # noqa: E402
from lift_ext.shakespeare.lift_methods import build_chain, lift_batch  # noqa: E402
from lift_ext.shakespeare.loading import setup  # noqa: E402
from timing import device_name  # noqa: E402

SEED = 0


class StoredGradients:
    """A grad_fn returning a stored gradient per task (no model): the sampler's own work."""

    def __init__(self, grads: torch.Tensor):
        self.grads = grads

    def __call__(self, task: int, theta: torch.Tensor) -> torch.Tensor:
        return self.grads[task]


def lift_chain(su, cfg, tasks):
    """The ``lift`` method's chain of `lift_methods` over `tasks`."""
    return build_chain(su.model, tasks, cfg, launch.ONE, prior=cfg.lift_prior, n_components=cfg.n_components,
                       seed=SEED)


def past_warmup(chain, stored: StoredGradients) -> None:
    """Run `chain`'s warm-up steps with `stored` as its grad_fn, then give its own back."""
    own = chain.sampler.grad_fn
    chain.sampler.grad_fn = stored
    warmup = chain.hierarchy.warmup_steps if isinstance(chain.hierarchy, MixtureHierarchy) else 0
    chain.sampler.run(warmup, progress=False)
    chain.sampler.grad_fn = own


def cpu_ms_per_call(fn, calls: int) -> float:
    """CPU milliseconds of this process per fn() call, over `calls` calls."""
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) * 1e3 / calls


def build(cfg):
    """({row name: fn}, the setup, {batched row: its chain's TaskGradients}): each fn one
    meta-training step's worth of work."""
    su = setup(cfg, SEED, progress=False)
    stride = su.bench.config["pool_stride"]
    tasks = pool_tasks(su.data.pools, lift_batch(cfg), stride)
    window_tasks = pool_tasks(su.data.pools, cfg.batch_size, stride)
    sequential, vmapped, multi, sampler_only = (lift_chain(su, cfg, tasks) for _ in range(4))
    sequential.batched_grads = False
    vmapped.batched_grads = True
    vmapped.grads.passes = [VMAP]  # vmap alone (checked once against the sequential pass)
    init = sequential.init_vector
    stored = StoredGradients(torch.stack([sequential.grads(i, init) for i in range(len(tasks))]))
    for chain in (sequential, vmapped, multi, sampler_only):
        past_warmup(chain, stored)
    sampler_only.sampler.grad_fn = stored
    step_tasks = list(range(cfg.tasks_per_step))
    thetas = init.expand(len(step_tasks), -1).clone()
    batch = window_tasks[0].batch(torch.Generator().manual_seed(SEED))

    def multitask():
        M.train_multitask(su.flat, window_tasks, init, steps=1, lr=cfg.meta_lr, seed=SEED, progress=False)

    def grads_of(chain):
        return lambda: chain.grads.many(step_tasks, thetas)

    return {"lift, grads one task at a time": sequential.sampler.step,
            "lift, grads vmapped": vmapped.sampler.step,
            "lift, multi-adapter pass": multi.sampler.step,
            "multitask": multitask,
            "sampler only": sampler_only.sampler.step,
            "B task grads, one at a time": grads_of(sequential),
            "B task grads, vmapped": grads_of(vmapped),
            "B task grads, multi-adapter": grads_of(multi),
            "one task's grad": lambda: sequential.grads(0, init),
            "one grad of B x batch windows": lambda: su.flat.loss_and_grad(
                init, lambda call: M.window_loss(call, batch))}, su, {"vmapped": vmapped.grads, "multi-adapter": multi.grads}


def measure(rows: dict, steps: int, repeats: int) -> dict:
    """{row: CPU ms per call (mean of `steps` calls) of each of `repeats` rounds}, the rows
    timed in turn within each round after one untimed call each."""
    for fn in rows.values():
        fn()
    times = {name: [] for name in rows}
    for _ in range(repeats):
        for name, fn in rows.items():
            times[name].append(cpu_ms_per_call(fn, steps))
    return times


def round_ratios(times: dict, row: str) -> str:
    """Median (min-max) over the rounds of `row` / multitask timed in the same round."""
    ratios = [a / b for a, b in zip(times[row], times["multitask"])]
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def report(cfg, su, times: dict) -> None:
    """Print the device, the setting, the table (median and range over the rounds), the
    ratios and the split of a LiFT step."""
    print(f"device: {device_name(torch.device('cpu'))}")
    print(f"N = {len(su.data.pools)} meta-train roles, D = {su.flat.dim}, K = {cfg.n_components}, B = {cfg.tasks_per_step} "
          f"tasks x {lift_batch(cfg)} windows (LiFT) vs {cfg.batch_size} windows (multitask), "
          f"prior {cfg.lift_prior}, shift_lr {cfg.lift_shift_lr}, z_update {cfg.lift_z_update}")
    medians = {name: statistics.median(values) for name, values in times.items()}
    rounds = len(next(iter(times.values())))
    print(f"CPU ms per call (a step, or a gradient), median (min-max) over {rounds} rounds")
    for name, ms in medians.items():
        print(f"{name:<32} {ms:9.2f} ({min(times[name]):.2f}-{max(times[name]):.2f})")
    lift, multitask = medians["lift, grads one task at a time"], medians["multitask"]
    print(f"ratio lift / multitask: {lift / multitask:.2f} (vmapped grads: "
          f"{medians['lift, grads vmapped'] / multitask:.2f}, multi-adapter pass: "
          f"{medians['lift, multi-adapter pass'] / multitask:.2f}); within each round: "
          f"{round_ratios(times, 'lift, grads one task at a time')}, vmapped {round_ratios(times, 'lift, grads vmapped')}"
          f", multi-adapter {round_ratios(times, 'lift, multi-adapter pass')}")
    rest = lift - medians["B task grads, one at a time"] - medians["sampler only"]
    predicted = medians["one grad of B x batch windows"] + medians["sampler only"] + rest
    print(f"lift step = B task grads {medians['B task grads, one at a time']:.2f} + sampler {medians['sampler only']:.2f}"
          f" + rest {rest:.2f} ms; with one batch-of-B pass for the B tasks: about {predicted:.2f} ms, "
          f"ratio {predicted / multitask:.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=5, help="medians over this many timings per row")
    parser.add_argument("--quick", action="store_true", help="the quick config's tiny backbone, 2 steps, 1 repeat")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = BenchConfig.from_dict({}, quick=args.quick)
    cfg = dataclasses.replace(cfg, device="cpu")
    steps, repeats = (2, 1) if args.quick else (args.steps, args.repeats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a vmap fallback is seen in its row's time
        rows, su, grads = build(cfg)
        times = measure(rows, steps, repeats)
    report(cfg, su, times)
    for name, task_grads in grads.items():
        print(f"{name} rows: TaskGradients.batched = {task_grads.batched}, passes {task_grads.passes} "
              "(False, []: fell back to one task at a time)")


if __name__ == "__main__":
    main()
