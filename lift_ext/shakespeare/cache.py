"""Where the application caches the parsed corpus and the pre-trained backbone."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

ENV = "LIFT_EXT_CACHE"


class CacheError(OSError):
    """The cache directory cannot be created or written (the message names it and the knob
    that chose it)."""


def cache_dir(path: str | os.PathLike | None = None, knob: str = "cache_dir=") -> Path:
    """The user cache directory: ``path`` if given, else ``$LIFT_EXT_CACHE``, else
    ``$XDG_CACHE_HOME/lift_ext`` (default ``~/.cache/lift_ext``). Created if missing and
    checked to be writable (a file is created and removed in it); otherwise CacheError names
    the directory and what chose it: ``knob`` (how the caller passed ``path``, e.g. the
    command line's ``--cache``) or the environment variable."""
    if path is not None:
        origin, fix = knob, knob
    elif os.environ.get(ENV):
        path, origin, fix = os.environ[ENV], f"the environment variable {ENV}", ENV
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = Path(xdg or Path.home() / ".cache") / "lift_ext"
        origin = "the default ($XDG_CACHE_HOME/lift_ext)" if xdg else "the default (~/.cache/lift_ext)"
        fix = f"{ENV} or {knob}"
    d = Path(path).expanduser()
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=d):
            pass
    except OSError as e:
        problem = "is not a directory" if d.exists() and not d.is_dir() else \
            f"cannot be created or written ({e.strerror or e})"
        raise CacheError(f"cache directory {str(d)!r} (set by {origin}) {problem}: point {fix} at a "
                         "writable directory") from None
    return d
