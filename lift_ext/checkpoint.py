"""Checkpoint files: written atomically, read back with their format and contents checked.

A checkpoint is a dict of tensors, numbers and strings saved with `torch.save`, tagged with
`format` (what wrote it) and `version`. `save_atomic` writes a temporary file beside the target
and renames it, so a crash never leaves a half-written checkpoint under the real name.
`load_checked` refuses, with a ValueError naming the file, anything that is not a complete
checkpoint of the expected format and version.
"""
import os
from typing import Any, Dict, Iterable

import torch

from lift_ext.files import atomic_open


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, of another format or incomplete."""


def save_atomic(state: Dict[str, Any], path: str) -> None:
    """torch.save(state) to `path` via a temporary file in the same directory + os.replace."""
    with atomic_open(path, "wb") as fh:
        torch.save(state, fh)


def load_checked(path: str, *, fmt: str, version: int, required: Iterable[str],
                 map_location=None) -> Dict[str, Any]:
    """Load a checkpoint written by `save_atomic` and check format, version and keys."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure here means a damaged file
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != fmt:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path!r} is not a {fmt} checkpoint (format: {found!r})")
    if state.get("version") != version:
        raise CheckpointError(f"checkpoint {path!r} has format version {state.get('version')!r}; "
                              f"this lift_ext reads version {version}")
    missing = sorted(set(required) - set(state))
    if missing:
        raise CheckpointError(f"checkpoint {path!r} is incomplete: missing {', '.join(missing)}")
    return state
