"""ShardedSGLDGibbs in one process: the shard layout and schedule, one shard against
SGLDGibbs, a step that grad_fn interrupts, and checkpoint sets (exact resume, damaged or mixed
sets refused, a save killed half-way leaves the previous set loadable). The multi-process runs
are in test_distributed_spawn.py."""
import dataclasses
import os

import pytest
import torch

from lift_ext.checkpoint import CheckpointError
from lift_ext.lift import ChainStart, LangevinConfig, MixtureHierarchy, PaperHierarchy, SGLDGibbs, Sharding
from lift_ext.lift import shard_checkpoint
from lift_ext.lift.distributed import ShardedSGLDGibbs
from lift_ext.lift.shards import ShardedOrder, held_shards, local_task_ids, shard_bounds
from lift_ext.lift.task_order import TaskOrder
from conftest import chain_state

N, D = 10, 13


@pytest.fixture(scope="module")
def problem():
    gen = torch.Generator().manual_seed(0)
    targets = torch.randn(N, D, generator=gen)
    targets[: N // 2] += 3.0  # two groups of tasks
    mu0 = torch.randn(D, generator=gen)

    def grad_fn(i, theta):  # non-linear, so that a wrong theta shows in the result
        return 3.0 * (theta - targets[i]) + 0.1 * theta**3

    return dict(targets=targets, mu0=mu0, grad_fn=grad_fn)


CASES = {
    "paper-B2-precond": dict(
        langevin=LangevinConfig(lr=3e-3, tasks_per_step=2, preconditioned=True),
        hierarchy=PaperHierarchy(sigma=1.3, beta=0.4, phi_update="langevin", burn_in=3, thin=2, gmm_components=2)),
    "mixture-B2": dict(langevin=LangevinConfig(lr=3e-3, tasks_per_step=2),
                       hierarchy=MixtureHierarchy(components=3, sigma=1.3, beta=0.4)),
    "mixture-warmup": dict(langevin=LangevinConfig(lr=3e-3),
                           hierarchy=MixtureHierarchy(components=2, sigma=1.3, beta=0.4, warmup_steps=6)),
    "mixture-shift": dict(langevin=LangevinConfig(lr=3e-3, tasks_per_step=2, preconditioned=True),
                          hierarchy=MixtureHierarchy(components=3, sigma=1.3, beta=0.4, shift_lr=1e-2)),
}


def options(problem, case):
    """The case's configs, with the problem's start and the seed."""
    return dict(CASES[case], seed=5, start=ChainStart(thetas=0.5 * problem["targets"], prior_mean=problem["mu0"]))


def test_layout_is_contiguous_balanced_and_divided_among_ranks():
    assert shard_bounds(10, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert list(held_shards(4, 2, 1)) == [2, 3] and local_task_ids(10, 4, 2, 1) == range(5, 10)
    with pytest.raises(ValueError, match="world size .3. must divide num_shards .4."):
        held_shards(4, 3, 0)


def test_one_shard_is_the_task_order_and_more_shards_visit_each_of_theirs():
    one, plain = ShardedOrder(7, N, 1), TaskOrder(7, N)
    for _ in range(12):
        (tasks,), epochs, positions = one.peek(3)
        want, epoch, position = plain.peek(3)
        assert tasks == want
        one.advance(epochs, positions)
        plain.advance(epoch, position)
    order, seen = ShardedOrder(7, N, 2), [[], []]
    for _ in range(5):  # 5 steps of 1 task per shard: one epoch of each 5-task shard
        plan, epochs, positions = order.peek(1)
        for s, tasks in enumerate(plan):
            seen[s] += tasks
        order.advance(epochs, positions)
    assert sorted(seen[0]) == [0, 1, 2, 3, 4] and sorted(seen[1]) == [5, 6, 7, 8, 9]
    assert seen[1] != [t + 5 for t in seen[0]]  # the shards' orders are not copies of each other


def test_one_shard_one_task_per_step_is_sgldgibbs_bitwise(problem):
    for case in ("paper-B2-precond", "mixture-B2", "mixture-shift"):
        kw = options(problem, case)
        kw["langevin"] = dataclasses.replace(kw["langevin"], tasks_per_step=1)
        plain, sharded = SGLDGibbs(N, D, problem["grad_fn"], **kw), ShardedSGLDGibbs(N, D, problem["grad_fn"], **kw)
        for _ in range(25):
            assert plain.step() == sharded.step()
        assert sharded.task_ids == range(N) and sharded.config()["num_shards"] == 1
        if case.startswith("paper"):  # z moves are summed per step by the sharded chain
            for a, b in zip(chain_state(plain), chain_state(sharded)):
                assert torch.equal(a, b)


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_shard_follows_sgldgibbs_up_to_the_order_of_the_sums(problem, case):
    kw = options(problem, case)
    plain, sharded = SGLDGibbs(N, D, problem["grad_fn"], **kw), ShardedSGLDGibbs(N, D, problem["grad_fn"], **kw)
    for _ in range(25):
        assert plain.step() == sharded.step()
    assert torch.equal(plain.assignments, sharded.assignments)
    for a, b in zip(chain_state(plain), chain_state(sharded)):
        assert torch.allclose(a.double(), b.double(), rtol=0, atol=1e-6 * float(a.abs().max()))


def test_shards_step_b_tasks_each_and_tasks_per_step_must_fit_a_shard(problem):
    sampler = ShardedSGLDGibbs(N, D, problem["grad_fn"], sharding=Sharding(num_shards=2),
                               **options(problem, "mixture-B2"))
    tasks = sampler.step()
    assert len(tasks) == 4 and all(t < 5 for t in tasks[:2]) and all(t >= 5 for t in tasks[2:])
    hierarchy = PaperHierarchy(sigma=1.0, beta=1.0, phi_update="langevin")
    with pytest.raises(ValueError, match="tasks_per_step must be an int in .1, 3."):
        ShardedSGLDGibbs(N, D, problem["grad_fn"], sharding=Sharding(num_shards=3),
                         langevin=LangevinConfig(lr=1e-3, tasks_per_step=4), hierarchy=hierarchy)
    with pytest.raises(ValueError, match="num_shards"):
        ShardedSGLDGibbs(N, D, problem["grad_fn"], sharding=Sharding(num_shards=N + 1),
                         langevin=LangevinConfig(lr=1e-3), hierarchy=hierarchy)


def test_a_grad_fn_that_raises_leaves_the_chain_as_it_was(problem):
    calls = []

    def flaky(i, theta):
        calls.append(i)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return problem["grad_fn"](i, theta)

    kw = options(problem, "mixture-B2")
    sampler = ShardedSGLDGibbs(N, D, flaky, sharding=Sharding(num_shards=2), **kw)
    sampler.step()
    before = [x.clone() for x in chain_state(sampler)]
    with pytest.raises(KeyboardInterrupt):
        sampler.step()
    assert sampler.step_count == 1 and all(torch.equal(a, b) for a, b in zip(before, chain_state(sampler)))
    reference = ShardedSGLDGibbs(N, D, problem["grad_fn"], sharding=Sharding(num_shards=2), **kw)
    for _ in range(3):
        reference.step()
    sampler.step()
    sampler.step()
    assert all(torch.equal(a, b) for a, b in zip(chain_state(reference), chain_state(sampler)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_checkpoint_set_resumes_the_exact_chain(problem, tmp_path, case):
    kw = options(problem, case)
    straight = ShardedSGLDGibbs(N, D, problem["grad_fn"], sharding=Sharding(num_shards=2), **kw)
    first = ShardedSGLDGibbs(N, D, problem["grad_fn"], sharding=Sharding(num_shards=2), **kw)
    for _ in range(9):
        straight.step()
        first.step()
    first.save(str(tmp_path))
    for _ in range(2):  # a later set replaces the earlier one's files
        first.step()
    first.save(str(tmp_path))
    assert len(os.listdir(tmp_path)) == 4  # MANIFEST, shared, 2 shards
    resumed = ShardedSGLDGibbs.load(str(tmp_path), problem["grad_fn"])
    assert resumed.config() == first.config() and resumed.step_count == 11
    for _ in range(11, 20):
        resumed.step()
    for _ in range(9, 20):
        straight.step()
    for a, b in zip(chain_state(straight), chain_state(resumed)):
        assert torch.equal(a, b)


def test_damaged_or_mixed_sets_are_refused(problem, tmp_path):
    sampler = ShardedSGLDGibbs(N, D, problem["grad_fn"], sharding=Sharding(num_shards=2),
                               **options(problem, "mixture-B2"))
    older, newer = str(tmp_path / "older"), str(tmp_path / "newer")
    sampler.save(older)
    sampler.step()
    sampler.save(newer)
    shard = [n for n in os.listdir(newer) if n.startswith("shard-1-")][0]
    os.replace(os.path.join(older, [n for n in os.listdir(older) if n.startswith("shard-1-")][0]),
               os.path.join(newer, shard))  # a file of another save under this set's name
    with pytest.raises(CheckpointError, match="belongs to another save"):
        ShardedSGLDGibbs.load(newer, problem["grad_fn"])
    with open(os.path.join(older, shard_checkpoint.MANIFEST), "r+b") as fh:
        fh.seek(120)
        fh.write(b"\x00")
    with pytest.raises(CheckpointError, match="corrupt"):
        ShardedSGLDGibbs.load(older, problem["grad_fn"])
    with pytest.raises(CheckpointError, match="does not exist"):
        ShardedSGLDGibbs.load(str(tmp_path / "none"), problem["grad_fn"])


def test_a_save_killed_half_way_leaves_the_previous_set(problem, tmp_path, monkeypatch):
    kw = options(problem, "paper-B2-precond")
    sampler = ShardedSGLDGibbs(N, D, problem["grad_fn"], sharding=Sharding(num_shards=2), **kw)
    for _ in range(4):
        sampler.step()
    sampler.save(str(tmp_path))
    saved = [x.clone() for x in chain_state(sampler)]
    sampler.step()
    real, written = shard_checkpoint.save_atomic, []

    def dies_after_one_file(state, path):
        if written:
            raise SystemExit("killed")
        written.append(path)
        real(state, path)

    monkeypatch.setattr(shard_checkpoint, "save_atomic", dies_after_one_file)
    with pytest.raises(SystemExit):
        sampler.save(str(tmp_path))
    monkeypatch.setattr(shard_checkpoint, "save_atomic", real)
    assert os.path.exists(written[0])  # the new set's first file is there, but no manifest names it
    loaded = ShardedSGLDGibbs.load(str(tmp_path), problem["grad_fn"])
    assert loaded.step_count == 4
    assert all(torch.equal(a, b) for a, b in zip(saved, chain_state(loaded)))
    loaded.step()
    loaded.save(str(tmp_path))  # the orphan of the killed save is cleaned up with the older set
    assert not os.path.exists(written[0]) and len(os.listdir(tmp_path)) == 4


def test_sharded_lift_on_a_peft_model_resumes_and_matches_lift(tmp_path):
    from test_batched_grad import VOCAB, SEQ, lora_model, next_token_loss
    from lift_ext.lift import LiFT, TensorTask
    from lift_ext.lift.sharded_trainer import ShardedLiFT
    gen = torch.Generator().manual_seed(3)
    tasks = [TensorTask(torch.randint(VOCAB, (5, SEQ + 1), generator=gen), batch_size=3, examples_per_row=SEQ)
             for _ in range(4)]
    kw = dict(langevin=LangevinConfig(lr=1e-2, tasks_per_step=2), hierarchy=PaperHierarchy(sigma=0.1, beta=0.05),
              seed=4)
    plain = LiFT(lora_model(), tasks, next_token_loss, **kw).run(4, progress=False)
    sharded = ShardedLiFT(lora_model(), tasks, next_token_loss, **kw).run(2, progress=False)
    sharded.save(str(tmp_path))
    resumed = ShardedLiFT.load(str(tmp_path), lora_model(), tasks, next_token_loss).run(2, progress=False)
    assert resumed.sampler.step_count == 4 and resumed.reference_size == plain.reference_size
    for a, b in ((plain.thetas, resumed.thetas), (plain.phi, resumed.phi)):
        assert torch.allclose(a, b, rtol=0, atol=1e-6 * float(a.abs().max()))
    with pytest.raises(ValueError, match="missing"):
        ShardedLiFT(lora_model(), [tasks[0], None, None, None], next_token_loss, **kw)
    with pytest.raises((TypeError, ValueError), match="tasks"):  # a mapping of this rank's tasks says nothing of N
        ShardedLiFT(lora_model(), {0: tasks[0], 1: tasks[1]}, next_token_loss, **kw)


def test_bench_distributed_runs_on_one_rank(monkeypatch, capsys):
    import runpy
    import sys
    benchmarks = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    monkeypatch.setattr(sys, "argv", ["bench_distributed.py", "--ranks", "1", "--tasks", "2", "--batch", "2",
                                      "--steps", "1", "--repeats", "1"])
    runpy.run_path(os.path.join(benchmarks, "bench_distributed.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "[1] batched task gradients, B = 2 " in out and out.count("batched used: True") == 2
    assert "multi-adapter D = 18432: " in out and "vmap          D = 18432: " in out
    assert "task-steps/s" in out


def test_the_assignment_draw_by_likelihood_is_refused_by_name(problem):
    with pytest.raises(ValueError, match="z_update='likelihood'"):
        ShardedSGLDGibbs(N, D, problem["grad_fn"], **dict(
            options(problem, "mixture-B2"),
            hierarchy=MixtureHierarchy(components=3, sigma=1.3, beta=0.4, z_update="likelihood")))


def test_two_shards_shift_every_member_on_both_halves(problem):
    """With the shift, a step moves the rows of the tasks it did not visit exactly when their
    component had a visited member (on both shards)."""
    sampler = ShardedSGLDGibbs(N, D, problem["grad_fn"], sharding=Sharding(num_shards=2),
                               **options(problem, "mixture-shift"))
    before = sampler.thetas.clone()
    visited = sampler.step()
    z = sampler.assignments
    shifted = {int(z[i]) for i in visited}
    moved = {i: not torch.equal(sampler.thetas[i], before[i]) for i in range(N) if i not in visited}
    assert moved == {i: int(z[i]) in shifted for i in moved}
    assert any(moved[i] for i in moved if i < 5) and any(moved[i] for i in moved if i >= 5)
