"""Wall and process CPU seconds per named lap (the benchmark's timings)."""
from __future__ import annotations

import time
from typing import Dict


class Clock:
    """Wall and process CPU seconds per named lap. With one torch thread the CPU seconds are
    about what the wall time would be on an idle machine, so a run on a shared machine can
    still be compared with the time budget."""

    def __init__(self):
        self.laps: Dict[str, dict] = {}
        self._start = self._mark = (time.perf_counter(), time.process_time())

    def lap(self, name: str) -> dict:
        now = (time.perf_counter(), time.process_time())
        self.laps[name] = {"wall": now[0] - self._mark[0], "cpu": now[1] - self._mark[1]}
        self._mark = now
        return self.laps[name]

    def total(self) -> dict:
        return {"wall": time.perf_counter() - self._start[0], "cpu": time.process_time() - self._start[1]}


__all__ = ["Clock"]
