"""lift_ext.workers and the ranking in worker processes: the same scores to the bit as
in one process, the units of work (what shares a chain or a library runs together), resume,
errors, and the workers' CPU seconds counted."""
import os
import time
from dataclasses import replace

import pytest
import torch

from lift_ext.harness import methods as hm
from lift_ext import workers
from lift_ext.harness.progress import RunState

from test_harness import SETTINGS, suite  # noqa: F401  (the tiny synthetic suite fixture)

needs_fork = pytest.mark.skipif(not workers.can_fork(), reason="forked workers run on Linux only")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Forked workers need torch at one thread (lift_ext.workers); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _square(x):
    return x * x


def _burn(seconds):
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
    return os.getpid(), time.process_time() - start


def _fail_on_three(x):
    if x == 3:
        raise ValueError("item three is bad")
    return x


def _all(fn, items, count):
    with workers.forked_map(fn, items, count) as results:
        return list(results)


def test_one_worker_runs_in_this_process_in_order():
    assert _all(lambda x: (x, os.getpid()), [3, 1, 2], 1) == [(3, os.getpid()), (1, os.getpid()), (2, os.getpid())]


@needs_fork
def test_forked_workers_give_every_result_and_raise_a_workers_error_here():
    assert sorted(_all(_square, range(7), 2)) == [x * x for x in range(7)]
    assert set(_all(lambda _: torch.get_num_threads(), range(4), 2)) == {1}
    captured = torch.arange(5.0)  # a closure over this process's objects: inherited, not pickled
    assert sorted(_all(lambda i: float(captured[i]), range(5), 2)) == [0.0, 1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="item three is bad"):
        _all(_fail_on_three, range(6), 2)
    assert workers._WORK is None  # left clean for the next map


@needs_fork
def test_the_workers_cpu_seconds_are_counted_here():
    before = workers.cpu_seconds()
    results = _all(_burn, [0.3, 0.3, 0.3], 2)
    assert len({pid for pid, _ in results}) == 2 and os.getpid() not in {pid for pid, _ in results}
    assert workers.cpu_seconds() - before >= 0.95 * sum(seconds for _, seconds in results)


@needs_fork
def test_the_workers_fork_at_the_call_and_stopping_early_stops_them():
    import multiprocessing
    with pytest.raises(KeyboardInterrupt):  # as Ctrl-C in the parent (the workers ignore SIGINT)
        with workers.forked_map(_burn, [0.05] * 8, 2) as results:
            assert len(multiprocessing.active_children()) == 2  # before a progress bar opens (its thread, its lock)
            next(results)
            raise KeyboardInterrupt
    assert multiprocessing.active_children() == [] and workers._WORK is None


@needs_fork
def test_a_worker_cannot_fork_workers_of_its_own():
    def nested(x):
        return _all(_square, [x, x + 1], 2)

    with pytest.raises(RuntimeError, match="does not nest"):
        _all(nested, [1, 2], 2)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_a_bad_worker_count_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="workers must be an int >= 0"):
        workers.resolve_workers(bad)


def test_zero_workers_means_one_per_usable_cpu_where_workers_can_fork_at_one_torch_thread(monkeypatch):
    assert workers.resolve_workers(1) == 1
    assert workers.resolve_workers(0) == (workers.usable_cpus() if workers.can_fork() else 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # OpenMP's threads do not survive a fork
    assert workers.resolve_workers(0) == 1
    if workers.can_fork():
        with pytest.raises(ValueError, match="workers = 2 needs torch at one thread.*--threads 1"):
            workers.resolve_workers(2)
    monkeypatch.undo()
    monkeypatch.setattr(workers, "can_fork", lambda: False)
    assert workers.resolve_workers(0) == 1
    with pytest.raises(ValueError, match="workers = 2 needs forked worker processes.*use workers = 1"):
        workers.resolve_workers(2)


def test_work_units_keep_what_shares_a_chain_or_the_library_together():
    s = replace(SETTINGS, seeds=(0, 1))
    pending = [(seed, m) for seed in s.seeds for m in s.methods]
    units = hm.work_units(pending, s)
    assert sorted((seed, m) for seed, ms in units for m in ms) == sorted(pending)
    assert units[:6] == [(0, ("lift", "lift_sgld", "lift_ts")), (0, ("lift_k1",)), (0, ("mbc", "retrieval")),
                         (1, ("lift", "lift_sgld", "lift_ts")), (1, ("lift_k1",)), (1, ("mbc", "retrieval"))]
    assert all(len(ms) == 1 for _, ms in units[6:])
    one = replace(s, lift=replace(s.lift, components=1))
    assert (0, ("lift", "lift_k1", "lift_sgld", "lift_ts")) in hm.work_units(pending, one)  # K = 1: one chain
    assert hm.work_units([(1, "lift_ts"), (0, "reptile")], s) == [(1, ("lift_ts",)), (0, ("reptile",))]


@needs_fork
def test_the_ranking_in_workers_scores_to_the_bit_as_in_one_process_and_resumes(suite, tmp_path):  # noqa: F811
    s = replace(SETTINGS, seeds=(0, 1))
    serial_seconds, forked_seconds = {}, {}
    serial = hm.ranking(suite, s, cpu_seconds=serial_seconds)
    path = tmp_path / "results.state.pt"
    forked = hm.ranking(suite, s, cpu_seconds=forked_seconds, state=RunState(path, "run"), workers=2)
    assert forked == serial
    assert list(forked_seconds) == list(serial_seconds) and all(v > 0 for v in forked_seconds.values())
    state = RunState(path, "run")  # every piece the workers finished was written here
    assert {f"ranking/test/{seed}/{m}" for seed in s.seeds for m in s.methods} | {
        f"chain/{seed}/{k}" for seed in s.seeds for k in (1, 2)} | {"library/0", "library/1"} == set(state.keys())
    assert hm.ranking(suite, s, state=state, workers=2) == serial  # all resumed, nothing forked


@needs_fork
def test_a_forked_ranking_stopped_keeps_whole_pieces_only_and_resumes_to_the_same_scores(suite, tmp_path,  # noqa: F811
                                                                                         monkeypatch):
    import multiprocessing
    s = replace(SETTINGS, seeds=(0,), methods=("independent", "multitask", "lift", "lift_ts"))
    whole = hm.ranking(suite, s)
    path = tmp_path / "results.state.pt"
    real_put, puts = RunState.put, []

    def stopped_at_the_third_piece(self, key, value):
        if key.startswith("ranking/") and sum(k.startswith("ranking/") for k in puts) == 2:
            raise KeyboardInterrupt  # as Ctrl-C while the parent writes a finished unit
        real_put(self, key, value)
        puts.append(key)

    monkeypatch.setattr(RunState, "put", stopped_at_the_third_piece)
    with pytest.raises(KeyboardInterrupt):
        hm.ranking(suite, s, state=RunState(path, "run"), workers=2)
    assert multiprocessing.active_children() == []  # the workers stopped with the run
    monkeypatch.setattr(RunState, "put", real_put)
    kept = RunState(path, "run")  # the file holds exactly the pieces written before the stop
    assert set(kept.keys()) == set(puts) and sum(k.startswith("ranking/") for k in kept.keys()) == 2
    assert hm.ranking(suite, s, state=kept, workers=2) == whole
