"""Checkpoint files: written atomically, verified and checked when read back.

A checkpoint is a dict of tensors, numbers and strings, tagged with `format` (what wrote it) and
`version`, serialised with `torch.save`. On disk the file is one header line followed by that
payload (docs/design.md section 8):

    b"lift_ext checkpoint sha256 " + <64 hex digits of SHA-256(payload)> + b"\\n" + payload

`save_atomic` writes it through `lift_ext.files.atomic_open` (temporary file, fsync, rename,
directory fsync), so a crash never leaves a half-written checkpoint under the real name.
`load_checked` refuses with a `CheckpointError` naming the file anything that is not a complete,
verified checkpoint of the expected format and version: a flipped bit anywhere fails the
checksum, and only tensors, numbers, strings and containers of them are unpickled.
"""
import hashlib
import io
import os
import pickle
from typing import Any, Dict, Iterable

import torch

from lift_ext.files import atomic_open

_MAGIC = b"lift_ext checkpoint sha256 "
_HEADER_LEN = len(_MAGIC) + 64 + 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, of another format or incomplete."""


def save_atomic(state: Dict[str, Any], path: str) -> None:
    """Write `state` to `path` as a checksummed checkpoint (header + torch.save payload),
    atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    with atomic_open(path, "wb") as fh:
        fh.write(_MAGIC + hashlib.sha256(payload).hexdigest().encode("ascii") + b"\n")
        fh.write(payload)


def _verified_payload(path: str) -> bytes:
    """The payload of the checkpoint at `path` after its SHA-256 has been checked."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    with open(path, "rb") as fh:
        data = fh.read()
    header, payload = data[:_HEADER_LEN], data[_HEADER_LEN:]
    if not header.startswith(_MAGIC) or not header.endswith(b"\n"):
        raise CheckpointError(f"checkpoint {path!r} is not a lift_ext checkpoint (no checksum header: "
                              "written by something else, or its first bytes are damaged)")
    expected = header[len(_MAGIC):-1]
    if hashlib.sha256(payload).hexdigest().encode("ascii") != expected:
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt: its checksum does not match "
                              f"its contents ({len(payload)} bytes after the header)")
    return payload


def load_checked(path: str, *, fmt: str, version: int, required: Iterable[str],
                 map_location=None) -> Dict[str, Any]:
    """Load a checkpoint written by `save_atomic`: verify its checksum, then check format,
    version and that the `required` keys are present."""
    payload = _verified_payload(path)
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a verified file that does not load was written wrong
        reason = "it holds objects other than tensors, numbers and strings" \
            if isinstance(exc, pickle.UnpicklingError) else type(exc).__name__
        raise CheckpointError(f"checkpoint {path!r} cannot be read: {reason} (refused)") from None
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
