"""Soak test of the sharded sampler: a long two-rank gloo chain under torchrun, on a loaded
machine, repeated; every repetition must exit 0 on both ranks.

Each repetition starts `--load` busy processes (a Python loop each, stopped when the
repetition ends, whatever happens), then runs

    python -m torch.distributed.run --standalone --nproc-per-node 2 tools/soak_distributed.py --worker ...

with a wall-clock limit (`--limit` seconds; the launcher's process group is killed past it).
Each rank runs `ShardedSGLDGibbs` for `--steps` steps (two shards, two tasks per shard and
step, preconditioned; the paper prior with its OnlineGMM on even repetitions, the mixture
prior with the shift on odd ones), rank 0 drawing the progress bar (its diagnostics are a
collective every steps / 20 steps), then checks that the replicated state is the same bits on
both ranks and that S = the sum of all thetas, saves a checkpoint set, and destroys its
process group (`--keep-group`: leaves that to the interpreter's exit). The report gives, per
repetition: the exit status, the wall time, the steps per second and, for a failure, the
signal and the tail of the output.

    python tools/soak_distributed.py [--steps 20000] [--repeats 3] [--load 3] [--limit 600]
"""
import argparse
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import time

N_TASKS, DIM = 8, 64


def worker(args) -> None:
    """One rank: the chain, its checks, a checkpoint set, a clean shutdown."""
    import torch
    import torch.distributed as dist

    from lift_ext.lift import LangevinConfig, MixtureHierarchy, PaperHierarchy, Sharding
    from lift_ext.lift.distributed import ShardedSGLDGibbs

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.gloo_timeout))
    rank = dist.get_rank()
    targets = torch.randn(N_TASKS, DIM, generator=torch.Generator().manual_seed(0))

    def grad_fn(task, theta):
        return 4.0 * (theta - targets[task]) + 0.1 * theta ** 3

    hierarchy = (PaperHierarchy(sigma=1.0, beta=0.3, phi_update="langevin", gmm_components=2, burn_in=100, thin=5)
                 if args.repeat % 2 == 0 else
                 MixtureHierarchy(components=2, sigma=1.0, beta=0.3, warmup_steps=20, shift_lr=1e-3))
    sampler = ShardedSGLDGibbs(N_TASKS, DIM, grad_fn,
                               langevin=LangevinConfig(lr=1e-3, preconditioned=True, tasks_per_step=2),
                               hierarchy=hierarchy, seed=args.repeat,
                               sharding=Sharding(dist.group.WORLD, num_shards=2, fault_grace=args.fault_grace))
    start = time.monotonic()
    sampler.run(args.steps, progress=True)
    seconds = time.monotonic() - start
    state = torch.cat([sampler.phis.reshape(-1), sampler.task_sums.reshape(-1), sampler.square_avg])
    copies = [torch.empty_like(state) for _ in range(2)]
    dist.all_gather(copies, state)
    if not torch.equal(copies[0], copies[1]):
        raise RuntimeError("the replicated state differs between the ranks")
    thetas, z = sampler.all_thetas(), sampler.assignments
    for k in range(sampler.task_sums.shape[0]):
        torch.testing.assert_close(sampler.task_sums[k], thetas[z == k].sum(0), rtol=1e-4, atol=1e-3)
    sampler.save(args.checkpoint)
    if not args.keep_group:
        dist.destroy_process_group()
    sys.stdout.write(f"rank {rank}: {args.steps} steps in {seconds:.1f} s, state checked, checkpoint saved\n")
    sys.stdout.flush()  # one write: the two ranks share the launcher's output


def busy_processes(count: int):
    """`count` processes spinning a Python loop (the artificial load)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop(processes) -> None:
    for proc in processes:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def repetition(args, repeat: int) -> dict:
    """One torchrun launch under load; its exit status, time and output tail."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(here), os.environ.get("PYTHONPATH", "")]))
    load = busy_processes(args.load)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   os.path.abspath(__file__), "--worker", "--steps", str(args.steps), "--repeat", str(repeat),
                   "--gloo-timeout", str(args.gloo_timeout), "--fault-grace", str(args.fault_grace),
                   "--checkpoint", os.path.join(tmp, "ckpt")] + (["--keep-group"] if args.keep_group else [])
        launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True)
        try:
            output, _ = launcher.communicate(timeout=args.limit)
            status = launcher.returncode
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)  # the launcher's session: it and its two ranks
            output, _ = launcher.communicate()
            status = "timeout"
        finally:
            stop(load)
    seconds = time.monotonic() - start
    aborted = "SIGABRT" in output or "Signal 6" in output or "exitcode  : -6" in output
    return {"repeat": repeat, "status": status, "aborted": aborted, "seconds": seconds,
            "steps_per_s": args.steps / seconds, "tail": output[-3000:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", type=int, default=3, help="busy processes during each repetition")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds a repetition may take")
    parser.add_argument("--gloo-timeout", type=float, default=60.0, help="the process group's timeout, seconds")
    parser.add_argument("--fault-grace", type=float, default=2.0)
    parser.add_argument("--keep-group", action="store_true",
                        help="exit without destroy_process_group (the interpreter's exit tears gloo down)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    failures = 0
    for repeat in range(args.repeats):
        result = repetition(args, repeat)
        ok = result["status"] == 0
        failures += not ok
        print(f"repeat {repeat}: status {result['status']}{' (SIGABRT)' if result['aborted'] else ''}, "
              f"{args.steps} steps in {result['seconds']:.0f} s ({result['steps_per_s']:.0f} steps/s) "
              f"with {args.load} busy processes", flush=True)
        print(result["tail"] if not ok else "\n".join(line for line in result["tail"].splitlines()
                                                    if line.startswith("rank ")), flush=True)
    print(f"{args.repeats - failures} of {args.repeats} repetitions passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
