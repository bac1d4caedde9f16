"""The play parser: one Gutenberg text -> a :class:`~lift_ext.shakespeare.plays.Play`.

A speaker label stands alone on a line (``Ham.``, ``HAMLET.``, ``Lady Capulet.``, ``LYSANDER``,
``1 Clown.``, optionally followed by a bracketed direction such as ``PERICLES. [Aside.]``); the
speech runs until the blank line. Dropped, and counted per reason (keys of
:data:`~lift_ext.shakespeare.plays.SKIP_REASONS`): front matter (title, cast list) before the
first ACT / PROLOGUE / INDUCTION heading, act/scene headings, stage directions (bracketed
blocks, inline ``[Aside]``, paragraphs opening with Enter / Exit / Exeunt / Re-enter ...),
joint speeches (``Alb. and Corn.``), text with no current speaker, Gutenberg header/footer.
Obvious aliases are merged (same letters up to case and periods; or an abbreviation whose
words are prefixes of a unique longer label, e.g. ``Ham.`` -> ``HAMLET``, provided the two
never answer each other, since a speaker never replies to himself).
"""
from __future__ import annotations

import re
from collections import Counter

from lift_ext.shakespeare.plays import Play, Role


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
