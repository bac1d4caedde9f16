"""Independent pieces of work in forked worker processes: the wall time of a run on a machine
with several cores, for the same results.

`with forked_map(fn, items, workers) as results:` calls fn(item) for every item, in ``workers``
processes forked from this one, and ``results`` yields them as they finish. The workers are forked (multiprocessing's
"fork" start method) so that they inherit everything fn reaches (a loaded suite, its backbone,
the pieces of a resumed run) without pickling it; only the items and the results are pickled.
Forked workers need this process to run torch with one thread, and run one thread each:
OpenMP's thread pool does not survive a fork, and a forked process that enters a parallel
region of more than one thread after its parent did hangs. A piece of work that is a function
of its inputs alone (every random draw seeded from them, as the harness's pieces are) gives in
a worker bitwise what it gives here. Fork is used on Linux only: elsewhere (macOS, where a
forked process can crash once the system frameworks are in use; Windows, which cannot fork)
the work runs in this process.

CPU time: a worker's CPU seconds are not this process's `time.process_time`; `cpu_seconds()`
adds those of the finished workers (os.times' children), which a finished `forked_map` has
waited for.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Optional

import torch

# The function the forked workers call: set by forked_map just before it forks, so that the
# workers inherit it (a closure over the loaded suite) instead of receiving it pickled.
_WORK: Optional[Callable[[Any], Any]] = None


def can_fork() -> bool:
    """Whether worker processes can be forked here (Linux)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_workers(workers: int) -> int:
    """The number of processes ``workers`` asks for: 0 = one per usable CPU where workers can be
    forked and torch runs one thread (else 1); 1 = this process alone; N > 1 = N forked workers
    (ValueError where forking is not available, or while torch runs more than one thread, or
    for a negative or non-int value)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0 (0: one per CPU), got {workers!r}")
    threads = torch.get_num_threads()
    if workers == 0:
        return usable_cpus() if can_fork() and threads == 1 else 1
    if workers > 1 and not can_fork():
        raise ValueError(f"workers = {workers} needs forked worker processes, which run on Linux only; "
                         f"use workers = 1 (or 0) on {sys.platform}")
    if workers > 1 and threads > 1:
        raise ValueError(f"workers = {workers} needs torch at one thread (it runs {threads}): forked workers run "
                         "one thread each, as OpenMP's threads do not survive a fork; set the threads to 1 "
                         "(torch.set_num_threads(1), --threads 1) or use workers = 1")
    return workers


def _call(item: Any) -> Any:
    return _WORK(item)


def _init_worker() -> None:
    """A worker: one torch thread; Ctrl-C (SIGINT to the terminal's process group) left to the
    parent, which stops the workers (Pool.terminate) when it leaves forked_map."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def forked_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Iterator[Any]]:
    """A context giving an iterator over fn(item) for every item, each yielded as it finishes
    (in any order), by ``workers`` forked processes (resolve_workers), or in this process, in
    order, when that is 1 or there is at most one item. The workers are forked on entering, so
    enter before opening a progress bar: tqdm's monitor thread, alive while a bar is, takes a
    lock that a fork would leave held in the workers. An exception in a worker is raised by the
    iterator; leaving the context, finished or not (an exception, Ctrl-C), stops the workers."""
    global _WORK
    items = list(items)
    workers = min(resolve_workers(workers), len(items))
    if workers <= 1:
        yield map(fn, items)
        return
    if _WORK is not None:
        raise RuntimeError("forked_map does not nest: a worker cannot fork workers of its own")
    _WORK = fn
    try:
        with multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
            yield _joined(pool, items)
    finally:
        _WORK = None


def _joined(pool, items: list) -> Iterator[Any]:
    yield from pool.imap_unordered(_call, items)
    pool.close()
    pool.join()  # the workers' CPU seconds now count in os.times' children


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its child processes that have finished
    and been waited for (the workers of a finished forked_map among them)."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


__all__ = ["forked_map", "resolve_workers", "can_fork", "usable_cpus", "cpu_seconds"]
