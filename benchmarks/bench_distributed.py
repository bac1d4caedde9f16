"""Sharded LiFT on the CPU: batched task gradients, and task-steps per second on P gloo ranks.

Model: the Shakespeare benchmark's backbone, `build_model` with the BackboneConfig defaults (a
3-layer, 128-wide, 4-head char GPT-2; not pre-trained: the timing does not depend on the
weights) wrapped by `add_lora` with its defaults (r = 8 on attn.c_attn and attn.c_proj, D =
18,432 adapter weights); a task's minibatch is 8 windows of 81 characters (vocabulary 65).
Every process runs with one thread.

1. batched: B tasks' gradients by TaskGradients.many in one batched forward/backward, the
   multi-adapter pass and vmap in turn, against B sequential forward/backward passes (median of
   --repeats), and their largest difference.
2. sharded: ShardedLiFT (paper prior; mixture with --components K > 1; batched gradients as
   --batched-grads says, default auto = the multi-adapter pass, no vmap on the CPU) over --tasks N tasks,
   --batch B tasks per rank and step, on P = --ranks spawned gloo ranks (FileStore): task-steps
   per second (P B per step), each rank's CPU time over wall time while stepping (below 1:
   the rank waited for a core or for the others), bytes each rank passes to all-reduces per
   step (measured by the sampler's Collective), the bytes of the thetas each rank holds (their
   storage) and each rank's peak RSS (the whole process: torch, the model, activations).
   Every P runs in freshly spawned processes.

    python benchmarks/bench_distributed.py [--ranks 1 2] [--tasks 32] [--batch 8] [--steps 5]
"""
import argparse
import datetime
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time

import torch

VOCAB, WINDOWS, WIDTH = 65, 8, 81


def lora_backbone():
    from lift_ext.shakespeare.backbone import add_lora, build_model
    return add_lora(build_model(VOCAB))


def task_windows(task: int) -> torch.Tensor:
    """Task `task`'s 8 windows [8, 81] (random characters: the timing does not depend on them)."""
    return torch.randint(VOCAB, (WINDOWS, WIDTH), generator=torch.Generator().manual_seed(1000 + task))


def window_loss(call, batch):
    from lift_ext.shakespeare.backbone import lm_loss
    return lm_loss(call, batch[0])


def bench_batched(batch: int, repeats: int, path: str) -> dict:
    """Part 1: one batched pass by `path` ("multi-adapter" or "vmap") over `batch` tasks against
    `batch` sequential passes."""
    from lift_ext.lift.batched_grad import TaskGradients
    from lift_ext.lift.flat import FlatParams
    flat = FlatParams(lora_backbone())
    batches = [(task_windows(i),) for i in range(batch)]
    thetas = flat.vector + 0.01 * torch.randn(batch, flat.dim, generator=torch.Generator().manual_seed(0))
    grads = TaskGradients(flat, window_loss, lambda i: batches[i], [1.0] * batch, batched=True)
    grads.passes = [path]
    tasks = list(range(batch))
    times = {"batched": [], "sequential": []}
    out = grads.many(tasks, thetas)  # the first call checks itself against the sequential path
    for _ in range(repeats):
        for name, fn in (("batched", lambda: grads.many(tasks, thetas)),
                         ("sequential", lambda: torch.stack([grads(i, thetas[i]) for i in tasks]))):
            start = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - start)
    worst = float((out - result).abs().max() / result.abs().max())
    return {"dim": flat.dim, "batched_on": grads.batched, "worst_rel": worst,
            **{name: statistics.median(t) for name, t in times.items()}}


def peak_rss_bytes() -> int:
    """This process's peak resident set: VmHWM of /proc/self/status on Linux (ru_maxrss would
    include the peak of the parent a spawned process was forked from), else ru_maxrss."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rank_main(rank: int, world: int, store: str, args: argparse.Namespace, out: str) -> None:
    """Part 2 on one rank: build ShardedLiFT over this rank's tasks, time `steps` steps."""
    import torch.distributed as dist
    from lift_ext.lift import LangevinConfig, MixtureHierarchy, PaperHierarchy, Sharding, TensorTask
    from lift_ext.lift.sharded_trainer import ShardedLiFT
    torch.set_num_threads(1)
    group = None
    if world > 1:
        dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=600))
        group = dist.group.WORLD
    sharding = Sharding(process_group=group)
    ids = set(ShardedLiFT.local_task_ids(args.tasks, sharding))
    tasks = [TensorTask(task_windows(i), batch_size=WINDOWS, examples_per_row=WIDTH - 1) if i in ids else None
             for i in range(args.tasks)]
    hierarchy = MixtureHierarchy(components=args.components, sigma=0.1, beta=0.05) if args.components > 1 else \
        PaperHierarchy(sigma=0.1, beta=0.05)
    lift = ShardedLiFT(lora_backbone(), tasks, window_loss, langevin=LangevinConfig(lr=1e-3, tasks_per_step=args.batch),
                       hierarchy=hierarchy, sharding=sharding, seed=0)
    lift.batched_grads = {"auto": None, "on": True, "off": False}[args.batched_grads]
    sampler = lift.sampler
    for _ in range(2):  # warm-up (the first step also checks the batched gradients)
        sampler.step()
    sent = sampler.comm.bytes_reduced
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        sampler.step()
    seconds = time.perf_counter() - start
    torch.save({"seconds": seconds, "cpu_share": (time.process_time() - cpu) / seconds,
                "bytes_per_step": (sampler.comm.bytes_reduced - sent) / args.steps,
                "theta_bytes": sampler.thetas.untyped_storage().nbytes(), "rows": len(sampler.task_ids),
                "dim": sampler.dim, "k": sampler.phis.shape[0], "batched": lift.grads.batched,
                "peak_rss": peak_rss_bytes()},
               os.path.join(out, f"rank{rank}.pt"))


def bench_sharded(world: int, args: argparse.Namespace) -> list:
    """Part 2 on `world` spawned ranks (a process group only when world > 1)."""
    with tempfile.TemporaryDirectory() as out:
        context = multiprocessing.get_context("spawn")
        procs = [context.Process(target=rank_main, args=(r, world, os.path.join(out, "store"), args, out))
                 for r in range(world)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        if any(proc.exitcode != 0 for proc in procs):
            raise SystemExit(f"a rank failed: exit codes {[proc.exitcode for proc in procs]}")
        return [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(world)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--components", type=int, default=1)
    parser.add_argument("--batched-grads", choices=["auto", "on", "off"], default="auto",
                        help="the sharded part's LiFT batched_grads (auto: off on the CPU)")
    parser.add_argument("--skip-batched", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, CPU, one thread per process; a shared machine: numbers are noisy")
    if not args.skip_batched:
        print(f"\n[1] batched task gradients, B = {args.batch} (median of {args.repeats})")
        for path in ("multi-adapter", "vmap"):
            r = bench_batched(args.batch, args.repeats, path)
            print(f"    {path:<13} D = {r['dim']}: sequential {r['sequential'] * 1e3:8.1f} ms   batched "
                  f"{r['batched'] * 1e3:8.1f} ms   speedup {r['sequential'] / r['batched']:.2f}x   batched used: "
                  f"{r['batched_on']}   max |diff| / max |g| = {r['worst_rel']:.1e}")
    print(f"\n[2] sharded chain: N = {args.tasks} tasks, B = {args.batch} per rank, {args.steps} timed steps, "
          f"batched gradients {args.batched_grads}")
    print("    P  task-steps/s  speedup  CPU/wall per rank  bytes all-reduced/step/rank  (K x D x 4)"
          "  thetas bytes/rank  (N/P x D x 4)  peak RSS/rank MB")
    base = None
    for world in args.ranks:
        ranks = bench_sharded(world, args)
        rate = world * args.batch * args.steps / max(r["seconds"] for r in ranks)
        base = base or rate
        first = ranks[0]
        shares = "/".join(f"{r['cpu_share']:.2f}" for r in ranks)
        print(f"   {world:2d}  {rate:12.1f}  {rate / base:6.2f}x  {shares:>17}  {first['bytes_per_step']:27,.0f}  "
              f"{first['k'] * first['dim'] * 4:11,d}  {max(r['theta_bytes'] for r in ranks):17,d}  "
              f"{args.tasks // world * first['dim'] * 4:14,d}  "
              f"{max(r['peak_rss'] for r in ranks) / 2**20:16.0f}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
