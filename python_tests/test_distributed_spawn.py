"""ShardedSGLDGibbs and ShardedLiFT on two gloo ranks, spawned from pytest (a FileStore in
tmp_path, one thread per rank): a 2-rank run equals the one-process run of the same two
shards bitwise (thetas, phis, S, z, pi, v, the OnlineGMM; and LiFT's thetas and phi, each
rank holding only its tasks' data); checkpoint sets move 2 -> 1 and
1 -> 2 ranks and continue the exact chain; a grad_fn that raises on one rank stops both with
the step undone; a killed rank makes the other stop at once with an error naming it, and the
last complete set still loads."""
import datetime
import multiprocessing
import os
import time
import traceback

import pytest
import torch
import torch.distributed as dist

from lift_ext.lift import ChainStart, LangevinConfig, MixtureHierarchy, PaperHierarchy
from lift_ext.lift.collective import RankFailure
from lift_ext.lift.distributed import ShardedSGLDGibbs, Sharding

N, D, STEPS, SPLIT = 10, 13, 16, 7
CASES = {
    "paper": dict(langevin=LangevinConfig(lr=3e-3, tasks_per_step=2, preconditioned=True),
                  hierarchy=PaperHierarchy(sigma=1.3, beta=0.4, phi_update="langevin", burn_in=3, thin=2,
                                           gmm_components=2)),
    "mixture": dict(langevin=LangevinConfig(lr=3e-3, tasks_per_step=2),
                    hierarchy=MixtureHierarchy(components=3, sigma=1.3, beta=0.4, warmup_steps=4, shift_lr=1e-2)),
}
WORLD_TIMEOUT = 30  # seconds: the gloo timeout of every collective (a bound on any hang)


def problem():
    gen = torch.Generator().manual_seed(0)
    targets = torch.randn(N, D, generator=gen)
    targets[: N // 2] += 3.0
    mu0 = torch.randn(D, generator=gen)
    return targets, mu0


def make_grad_fn(fail_at=None, rank=None, kill=False):
    """grad_fn of the test problem; on rank `rank` it raises (or exits, with kill) at step
    `fail_at`'s first call."""
    targets, _ = problem()
    state = {"calls": 0}

    def grad_fn(i, theta):
        state["calls"] += 1
        if fail_at is not None and dist.is_initialized() and dist.get_rank() == rank \
                and state["calls"] == 2 * fail_at + 1:  # 2 calls per step on each rank
            if kill:
                os._exit(9)
            raise ValueError("bad minibatch")
        return 3.0 * (theta - targets[i]) + 0.1 * theta**3

    return grad_fn


def options(case):
    """The case's configs, with the problem's start and the seed."""
    targets, mu0 = problem()
    return dict(CASES[case], seed=5, start=ChainStart(thetas=0.5 * targets, prior_mean=mu0))


def chain_state(sampler):
    out = {"phis": sampler.phis, "sums": sampler.task_sums, "z": sampler.assignments, "pi": sampler.weights}
    if sampler.square_avg is not None:
        out["v"] = sampler.square_avg
    if sampler.gmm is not None:
        out["gmm_means"], out["gmm_counts"] = sampler.gmm.means, sampler.gmm.counts
    return {k: v.clone() for k, v in out.items()}


# ---- jobs run on each rank ---------------------------------------------------------------------
def job_chains(rank, out):
    """Both cases: a fresh 2-rank run saved at SPLIT, and a run resumed from a set written by one
    process (1 -> 2); then a grad_fn that raises on rank 1."""
    result = {}
    for case in CASES:
        sampler = ShardedSGLDGibbs(N, D, make_grad_fn(), sharding=Sharding(dist.group.WORLD), **options(case))
        for t in range(STEPS):
            if t == SPLIT:
                sampler.save(os.path.join(out, f"{case}-two"))
            sampler.step()
        resumed = ShardedSGLDGibbs.load(os.path.join(out, f"{case}-one"), make_grad_fn(),
                                        sharding=Sharding(dist.group.WORLD))
        while resumed.step_count < STEPS:
            resumed.step()
        result[case] = dict(chain_state(sampler), thetas=sampler.thetas.clone(),
                            resumed_thetas=resumed.thetas.clone(), resumed=chain_state(resumed))
    sampler = ShardedSGLDGibbs(N, D, make_grad_fn(fail_at=3, rank=1), sharding=Sharding(dist.group.WORLD),
                               **options("mixture"))
    for _ in range(3):
        sampler.step()
    before = dict(chain_state(sampler), thetas=sampler.thetas.clone())
    try:
        sampler.step()
        raised = None
    except (ValueError, RankFailure) as exc:
        raised = (type(exc).__name__, str(exc), getattr(exc, "ranks", None))
    after = dict(chain_state(sampler), thetas=sampler.thetas.clone())
    result["raise"] = dict(raised=raised, unchanged=all(torch.equal(before[k], after[k]) for k in before),
                           step=sampler.step_count)
    sampler.run(3, progress=True, report_every=1)  # the group still works; diagnostics are a collective
    result["diagnostics"] = sampler.diagnostics()
    result["lift"] = run_lift(dist.group.WORLD)
    return result


def run_lift(process_group):
    """ShardedLiFT over a low-rank adapter on a frozen layer, each rank given only its tasks."""
    from lift_ext.lift.sharded_trainer import ShardedLiFT
    tasks = lift_tasks()
    sharding = Sharding(process_group, num_shards=2)
    mine = ShardedLiFT.local_task_ids(len(tasks), sharding)
    lift = ShardedLiFT(LowRank(), [task if i in mine else None for i, task in enumerate(tasks)], mse,
                       sharding=sharding, **LIFT_KW)
    lift.batched_grads = True
    lift.run(4, progress=False)
    return dict(thetas=lift.thetas.clone(), phi=lift.phi.clone(), ids=list(mine), batched=lift.batched_grads)


class LowRank(torch.nn.Module):
    """y = W x + b + B A x with W, b frozen and the adapter (A, B) trainable."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.base = torch.nn.Linear(6, 4).requires_grad_(False)
        self.a = torch.nn.Parameter(0.3 * torch.randn(2, 6))
        self.b = torch.nn.Parameter(torch.zeros(4, 2))

    def forward(self, x):
        return self.base(x) + x @ self.a.T @ self.b.T


def mse(call, batch):
    x, y = batch
    return ((call(x) - y) ** 2).mean()


def lift_tasks():
    from lift_ext.lift import TensorTask
    gen = torch.Generator().manual_seed(3)
    return [TensorTask(torch.randn(7, 6, generator=gen), torch.randn(7, 4, generator=gen) + k, batch_size=3)
            for k in range(6)]


LIFT_KW = dict(langevin=LangevinConfig(lr=1e-2, tasks_per_step=2), hierarchy=PaperHierarchy(sigma=0.5, beta=0.2),
               seed=4)


def job_killed(rank, out):
    """Rank 1 exits inside grad_fn at step 3, after a set was saved at step 2."""
    sampler = ShardedSGLDGibbs(N, D, make_grad_fn(fail_at=3, rank=1, kill=True),
                               sharding=Sharding(dist.group.WORLD, fault_grace=1.0), **options("paper"))
    for _ in range(2):
        sampler.step()
    sampler.save(os.path.join(out, "killed"))
    sampler.step()
    start = time.monotonic()
    try:
        sampler.step()
        return {"error": None}
    except RankFailure as exc:
        return {"error": str(exc), "ranks": exc.ranks, "seconds": time.monotonic() - start}


def _worker(rank, world, store, job, out):
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=WORLD_TIMEOUT))
        torch.save(globals()[job](rank, out), os.path.join(out, f"{job}-{rank}.pt"))
    except BaseException:
        traceback.print_exc()
        raise


def spawn(tmp_path, job, world=2, timeout=240):
    """Run `job` on `world` spawned ranks; returns (exit codes, results by rank or None)."""
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_worker, args=(rank, world, str(tmp_path / f"store-{job}"), job, str(tmp_path)))
             for rank in range(world)]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()
    results = [torch.load(tmp_path / f"{job}-{r}.pt", weights_only=False) if (tmp_path / f"{job}-{r}.pt").exists()
               else None for r in range(world)]
    return [proc.exitcode for proc in procs], results


# ---- tests -------------------------------------------------------------------------------------
def test_two_ranks_equal_one_process_and_sets_move_between_world_sizes(tmp_path):
    one_process = {}
    for case in CASES:
        sampler = ShardedSGLDGibbs(N, D, make_grad_fn(), sharding=Sharding(num_shards=2), **options(case))
        for t in range(STEPS):
            if t == SPLIT:
                sampler.save(str(tmp_path / f"{case}-one"))  # resumed on 2 ranks by the job
            sampler.step()
        one_process[case] = sampler
    codes, results = spawn(tmp_path, "job_chains")
    assert codes == [0, 0], "a rank failed (its traceback is above)"
    for case, sampler in one_process.items():
        want = dict(chain_state(sampler), thetas=sampler.thetas)
        for rank in (0, 1):
            got = results[rank][case]
            for key, value in chain_state(sampler).items():  # replicated: equal on both ranks
                assert torch.equal(got[key], value), (case, rank, key)
                assert torch.equal(got["resumed"][key], value), (case, rank, "1 -> 2", key)
        thetas = torch.cat([results[0][case]["thetas"], results[1][case]["thetas"]])
        assert torch.equal(thetas, want["thetas"]), case
        resumed = torch.cat([results[0][case]["resumed_thetas"], results[1][case]["resumed_thetas"]])
        assert torch.equal(resumed, want["thetas"]), (case, "1 -> 2")
        two_to_one = ShardedSGLDGibbs.load(str(tmp_path / f"{case}-two"), make_grad_fn())
        assert two_to_one.step_count == SPLIT and two_to_one.task_ids == range(N)
        while two_to_one.step_count < STEPS:
            two_to_one.step()
        assert torch.equal(two_to_one.thetas, sampler.thetas), (case, "2 -> 1")
        assert all(torch.equal(a, b) for a, b in zip(chain_state(two_to_one).values(), chain_state(sampler).values()))
    raised = [results[rank]["raise"] for rank in (0, 1)]
    assert raised[1]["raised"][:2] == ("ValueError", "bad minibatch")
    assert raised[0]["raised"][0] == "RankFailure" and raised[0]["raised"][2] == [1]
    assert "rank 1 raised during step 3" in raised[0]["raised"][1]
    assert all(r["unchanged"] and r["step"] == 3 for r in raised)
    assert results[0]["diagnostics"] == results[1]["diagnostics"]
    lift, one = [results[rank]["lift"] for rank in (0, 1)], run_lift(None)
    assert lift[0]["ids"] == [0, 1, 2] and lift[1]["ids"] == [3, 4, 5] and lift[0]["batched"] is True
    assert torch.equal(torch.cat([lift[0]["thetas"], lift[1]["thetas"]]), one["thetas"])
    assert torch.equal(lift[0]["phi"], one["phi"]) and torch.equal(lift[1]["phi"], one["phi"])


def test_a_killed_rank_stops_the_other_with_its_name_and_the_last_set_loads(tmp_path):
    codes, results = spawn(tmp_path, "job_killed")
    assert codes == [0, 9]
    report = results[0]
    assert report["error"] is not None and report["ranks"] == [1], report
    assert "rank 1 stopped responding during step 3" in report["error"]
    assert report["seconds"] < WORLD_TIMEOUT / 2  # the closed connection is seen at once, plus fault_grace
    loaded = ShardedSGLDGibbs.load(str(tmp_path / "killed"), make_grad_fn())
    reference = ShardedSGLDGibbs(N, D, make_grad_fn(), sharding=Sharding(num_shards=2), **options("paper"))
    for _ in range(2):
        reference.step()
    assert loaded.step_count == 2 and torch.equal(loaded.thetas, reference.thetas)
    for _ in range(3):
        assert loaded.step() == reference.step()
    assert torch.equal(loaded.thetas, reference.thetas)


@pytest.mark.parametrize("bad", ["no group", "world 3"])
def test_a_group_that_cannot_hold_the_shards_is_refused(bad):
    if bad == "no group":
        with pytest.raises(ValueError, match="init_process_group"):
            ShardedSGLDGibbs(N, D, make_grad_fn(), sharding=Sharding(process_group=object()),
                             langevin=LangevinConfig(lr=1e-3),
                             hierarchy=PaperHierarchy(sigma=1.0, beta=1.0, phi_update="langevin"))
    else:
        from lift_ext.lift.shards import held_shards
        with pytest.raises(ValueError, match="must divide"):
            held_shards(2, 3, 0)
