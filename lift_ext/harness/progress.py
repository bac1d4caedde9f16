"""A harness run's finished pieces on disk, so that a stopped run resumes where it stopped.

``RunState`` keeps {key: value} (values: tensors, numbers, strings and containers of them) in
one checksummed file written atomically after every finished piece (lift_ext.checkpoint), so a
killed run loses at most the piece in progress: the headroom, one (seed, method) of the
ranking, one LiFT chain. The file carries the run's fingerprint, a SHA-256 of its settings, its
task names and the code's commit; opening a file with another fingerprint raises RunStateError
naming the file, unless ``fresh`` (then the file is started over). Without a path the state
lives in memory only.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from lift_ext.checkpoint import CheckpointError, load_checked, save_atomic

_FORMAT = "lift_ext.harness.run_state"
_VERSION = 1


class RunStateError(RuntimeError):
    """The state file cannot be resumed (the message says why and what to do)."""


def fingerprint(**parts: Any) -> str:
    """SHA-256 (hex) of ``parts`` as sorted JSON (non-JSON values by their str)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class RunState:
    """The finished pieces of one run (module docstring). ``path`` None: in memory only;
    ``resumed``: how many pieces were read from the file."""

    def __init__(self, path: Optional[Path], run_fingerprint: str, fresh: bool = False):
        self.path, self.fingerprint = (None if path is None else Path(path)), run_fingerprint
        self._pieces: Dict[str, Any] = {}
        self.resumed = 0
        if self.path is None or fresh or not self.path.exists():
            return
        try:
            state = load_checked(str(self.path), fmt=_FORMAT, version=_VERSION, required=("fingerprint", "pieces"))
        except CheckpointError as exc:
            raise RunStateError(f"{exc}; pass --fresh to start the run over or use another --output") from None
        if state["fingerprint"] != run_fingerprint:
            raise RunStateError(f"{self.path} holds another run's pieces (other settings, tasks or code): pass "
                                f"--fresh to start this run over there, or use another --output")
        self._pieces = dict(state["pieces"])
        self.resumed = len(self._pieces)  # how many pieces were read from the file

    def describe(self) -> str:
        """One line on what was resumed ("" when nothing was)."""
        if not self.resumed:
            return ""
        return (f"resumed {self.resumed} finished pieces from {self.path} (their CPU seconds are what they cost "
                "then; --fresh starts over)")

    def __contains__(self, key: str) -> bool:
        return key in self._pieces

    def keys(self):
        return self._pieces.keys()

    def __getitem__(self, key: str) -> Any:
        return self._pieces[key]

    def put(self, key: str, value: Any) -> None:
        """Keep ``value`` under ``key`` and rewrite the file; when writing raises (a full disk,
        KeyboardInterrupt) neither the file nor the pieces in memory change."""
        pieces = {**self._pieces, key: value}
        if self.path is not None:
            save_atomic({"format": _FORMAT, "version": _VERSION, "fingerprint": self.fingerprint,
                         "pieces": pieces}, str(self.path))
        self._pieces = pieces

    def get_or_run(self, key: str, compute: Callable[[], Any]) -> Any:
        """The value kept under ``key``, or compute() kept under it."""
        if key not in self._pieces:
            self.put(key, compute())
        return self._pieces[key]


def progress_state(output: Optional[Path], fresh: bool, **run: Any) -> RunState:
    """The RunState of a demo writing ``output`` (a results file; None: in memory only), kept
    beside it as ``<stem>.state.pt``, fingerprinted by ``run`` (settings, task names, ...), the
    lift_ext version and the commit of its checkout."""
    from lift_ext import __version__
    from lift_ext.harness.report import machine
    path = None if output is None else Path(output).with_name(Path(output).stem + ".state.pt")
    return RunState(path, fingerprint(lift_ext=__version__, commit=machine()["commit"], **run), fresh=fresh)


__all__ = ["RunState", "RunStateError", "fingerprint", "progress_state"]
