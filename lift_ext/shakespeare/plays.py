"""The parsed Shakespeare corpus as data: roles, plays, the whole corpus and its JSON cache form.

A role's text is its speeches in play order, each speech's lines joined by one space, speeches
joined by one space (whitespace collapsed). :mod:`lift_ext.shakespeare.parser` builds these
from the Gutenberg texts; :mod:`lift_ext.shakespeare.corpus` loads and caches them.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

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
