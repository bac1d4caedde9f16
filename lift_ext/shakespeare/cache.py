"""Where the application caches the parsed corpus and the pre-trained backbone."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The user cache directory: ``path`` if given, else ``$LIFT_EXT_CACHE``, else
    ``$XDG_CACHE_HOME/lift_ext`` (default ``~/.cache/lift_ext``). Created if missing."""
    if path is None:
        path = os.environ.get("LIFT_EXT_CACHE") or (
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lift_ext")
    d = Path(path).expanduser()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cache directory {str(d)!r} cannot be created ({e}); pass cache_dir= "
                      "or set LIFT_EXT_CACHE to a writable directory") from e
    return d
