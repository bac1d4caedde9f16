"""Where a result was produced, for every results file and benchmark record: the commit of the
code lift_ext runs from, and the CPU's model name (beside lift_ext.cpu_isa(), the instruction-set
path of the CPU kernels, which moves CPU timings by up to 10x between machines)."""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

CHECKOUT = Path(__file__).resolve().parents[1]  # the source tree lift_ext runs from, if it is a git checkout


@functools.lru_cache(maxsize=None)
def source_commit() -> Optional[str]:
    """The commit of the checkout lift_ext runs from, with "+dirty" when tracked files have local
    changes; the environment variable LIFT_EXT_COMMIT for a copy of the tree without its git
    history; None otherwise (an installed package). Read once per process, so a run that lasts
    while the checkout moves on keeps the label of the code it loaded."""
    if (CHECKOUT / ".git").exists():
        try:
            run = dict(cwd=CHECKOUT, capture_output=True, text=True, timeout=10, check=True)
            commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
            return commit + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return os.environ.get("LIFT_EXT_COMMIT") or None


def short_commit() -> str:
    """source_commit() with the hash cut to 7 characters, "unknown" when there is none (for
    printed tables)."""
    commit = source_commit()
    if commit is None:
        return "unknown"
    full, dirty, _ = commit.partition("+dirty")
    return full[:7] + ("+dirty" if dirty else "")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


__all__ = ["source_commit", "short_commit", "cpu_model"]
