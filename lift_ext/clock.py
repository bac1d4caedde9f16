"""Wall and CPU seconds per named lap: the timings of every benchmark suite (the Shakespeare
stages, the harness's stages)."""
from __future__ import annotations

import time
from typing import Dict

from lift_ext.workers import cpu_seconds


class Clock:
    """Wall and CPU seconds per named lap, the CPU seconds this process's and its finished
    worker processes' (lift_ext.workers.cpu_seconds). With one torch thread in one process the
    CPU seconds are about what the wall time would be on an idle machine, so a run on a shared
    machine can still be compared with the time budget."""

    def __init__(self):
        self.laps: Dict[str, dict] = {}
        self._start = self._mark = (time.perf_counter(), cpu_seconds())

    def lap(self, name: str) -> dict:
        now = (time.perf_counter(), cpu_seconds())
        self.laps[name] = {"wall": now[0] - self._mark[0], "cpu": now[1] - self._mark[1]}
        self._mark = now
        return self.laps[name]

    def total(self) -> dict:
        return {"wall": time.perf_counter() - self._start[0], "cpu": cpu_seconds() - self._start[1]}


__all__ = ["Clock"]
