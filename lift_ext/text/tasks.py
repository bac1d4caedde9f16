"""The text suite's tasks: few-shot sentence classification built from the Shakespeare plays.

Five kinds, the tasks of a kind sharing one structure (lift_ext.text.sentences gives the
sentences, their final mark removed):

    play      which of two plays a sentence comes from (a pair of plays)
    speaker   which of two speakers of one play says it (a pair of speakers of one play)
    genre     the genre of its play: comedy / history / tragedy (one play of each genre)
    question  question or statement ("?" against ".", one play)
    exclaim   exclamation or statement ("!" against ".", one play)

Labels: ``classes`` names them in label order (2 classes, 3 for genre). Every task has
``support`` = 32 labelled sentences (balanced: 16 / 16, or 11 / 11 / 10), as in CrossFit's
few-shot sets, and a disjoint ``query`` set of 160 (80 / 80, or 54 / 53 / 53). A text that
occurs in two classes of one task is left out of that task; texts are distinct within a task.

Split by PLAY: the plays of each genre are shuffled with the seed and dealt to meta-val
(``VAL_PLAYS``), meta-test (``TEST_PLAYS``) and meta-train (the rest), and every task of a
split is built from that split's plays only, so no sentence, play pair, speaker or play is
shared by two splits (a text that occurs in plays of two splits, e.g. "My lord", is left
out everywhere). Per kind and split up to ``COUNTS`` tasks are drawn (fewer where the
split's plays do not allow more; a kind with none in a split is an error).

The task list is deterministic for (seed, corpus) and cached as JSON in the user cache
directory (lift_ext.shakespeare.cache), keyed by a SHA-256 of the format, the corpus key,
the seed and the sizes.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from lift_ext.files import atomic_open
from lift_ext.shakespeare.cache import cache_dir
from lift_ext.shakespeare.corpus import load_corpus
from lift_ext.text.sentences import GENRE_OF, GENRES, Sentence, play_sentences

KINDS = ("play", "speaker", "genre", "question", "exclaim")
SPLITS = ("train", "val", "test")
SUPPORT, QUERY = 32, 160
COUNTS = {"train": 12, "val": 3, "test": 4}
VAL_PLAYS = {"comedy": 2, "history": 2, "tragedy": 2}
TEST_PLAYS = {"comedy": 4, "history": 3, "tragedy": 3}
_FORMAT = "lift_ext.text_tasks v2"


@dataclass(frozen=True)
class TextTask:
    """One classification task: ``name`` (unique), ``kind`` (of KINDS), ``split`` (of SPLITS),
    ``classes`` (label names), the support and query sentences and their labels (ints in
    [0, len(classes)))."""
    name: str
    kind: str
    split: str
    classes: Tuple[str, ...]
    support: Tuple[str, ...]
    support_labels: Tuple[int, ...]
    query: Tuple[str, ...]
    query_labels: Tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def split_plays(seed: int) -> Dict[str, List[str]]:
    """{split: sorted play ids}: per genre the plays are shuffled with ``seed``, the first
    VAL_PLAYS go to val, the next TEST_PLAYS to test, the rest to train."""
    rng = random.Random(f"plays/{seed}")
    out: Dict[str, List[str]] = {s: [] for s in SPLITS}
    for genre in GENRES:
        plays = sorted(p for p, g in GENRE_OF.items() if g == genre)
        rng.shuffle(plays)
        nv, nt = VAL_PLAYS[genre], TEST_PLAYS[genre]
        out["val"] += plays[:nv]
        out["test"] += plays[nv:nv + nt]
        out["train"] += plays[nv + nt:]
    return {s: sorted(p) for s, p in out.items()}


def _per_class(n: int, k: int) -> List[int]:
    """n examples dealt to k classes as evenly as possible (the first classes get the extra)."""
    return [n // k + (1 if c < n % k else 0) for c in range(k)]


def _draw(sources: Sequence[Sequence[Sentence]], rng: random.Random) -> Optional[tuple]:
    """(support, support labels, query, query labels) from one sentence list per class, or None
    when a class has too few distinct texts. Texts in two classes are dropped."""
    texts = [sorted({s.text for s in src}) for src in sources]
    counts: Dict[str, int] = {}
    for group in texts:
        for t in group:
            counts[t] = counts.get(t, 0) + 1
    texts = [[t for t in group if counts[t] == 1] for group in texts]
    k = len(sources)
    need_s, need_q = _per_class(SUPPORT, k), _per_class(QUERY, k)
    if any(len(g) < s + q for g, s, q in zip(texts, need_s, need_q)):
        return None
    support, query = [], []
    for label, (group, s, q) in enumerate(zip(texts, need_s, need_q)):
        picked = rng.sample(group, s + q)
        support += [(t, label) for t in picked[:s]]
        query += [(t, label) for t in picked[s:]]
    rng.shuffle(support)
    rng.shuffle(query)
    return (tuple(t for t, _ in support), tuple(y for _, y in support),
            tuple(t for t, _ in query), tuple(y for _, y in query))


def _candidates(kind: str, plays: List[str], sents: Dict[str, List[Sentence]], rng: random.Random):
    """Shuffled (name, class names, per-class sentence lists) candidates of ``kind`` over ``plays``."""
    out = []
    if kind == "play":
        for a, b in itertools.combinations(plays, 2):
            out.append((f"play:{a}|{b}", (a, b), (sents[a], sents[b])))
    elif kind == "genre":
        by_genre = [[p for p in plays if GENRE_OF[p] == g] for g in GENRES]
        for triple in itertools.product(*by_genre):
            out.append((f"genre:{'|'.join(triple)}", GENRES, tuple(sents[p] for p in triple)))
    elif kind == "speaker":
        for p in plays:
            speakers: Dict[str, List[Sentence]] = {}
            for s in sents[p]:
                speakers.setdefault(s.speaker, []).append(s)
            ranked = sorted(speakers, key=lambda k: (-len(speakers[k]), k))
            for a, b in zip(ranked[0::2], ranked[1::2]):  # disjoint pairs: no speaker in two tasks
                out.append((f"speaker:{a}|{b}", (a, b), (speakers[a], speakers[b])))
    else:
        mark = "?" if kind == "question" else "!"
        for p in plays:
            out.append((f"{kind}:{p}", ("statement", kind),
                        ([s for s in sents[p] if s.mark == "."], [s for s in sents[p] if s.mark == mark])))
    rng.shuffle(out)
    return out


def build_tasks(seed: int = 0, corpus=None) -> List[TextTask]:
    """Every task of the suite for ``seed`` (not cached; see load_tasks), in (split, kind) order."""
    corpus = load_corpus() if corpus is None else corpus
    sents = play_sentences(corpus)
    splits = split_plays(seed)
    where: Dict[str, set] = {}
    for split, plays in splits.items():
        for p in plays:
            for s in sents[p]:
                where.setdefault(s.text, set()).add(split)
    sents = {p: [s for s in ss if len(where[s.text]) == 1] for p, ss in sents.items()}
    tasks = []
    for split, plays in splits.items():
        for kind in KINDS:
            rng = random.Random(f"{kind}/{split}/{seed}")
            made = 0
            for name, classes, sources in _candidates(kind, plays, sents, rng):
                if made == COUNTS[split]:
                    break
                drawn = _draw(sources, rng)
                if drawn is not None:
                    tasks.append(TextTask(name, kind, split, tuple(classes), *drawn))
                    made += 1
            if made == 0:
                raise ValueError(f"seed {seed}: no {kind} task can be built from the {split} plays {plays}")
    return tasks


def _key(seed: int, corpus_key: str) -> str:
    blob = json.dumps([_FORMAT, corpus_key, seed, SUPPORT, QUERY, COUNTS, VAL_PLAYS, TEST_PLAYS], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_tasks(seed: int = 0, cache=None) -> List[TextTask]:
    """build_tasks(seed), cached as JSON under cache_dir(cache) by a content key (the corpus
    key, seed, sizes); an unreadable cache file is rebuilt."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    corpus = load_corpus(cache=cache)
    path = cache_dir(cache) / f"text_tasks_{_key(seed, corpus.key)[:16]}.json"
    if path.exists():
        try:
            return [TextTask(**{k: tuple(v) if isinstance(v, list) else v for k, v in t.items()})
                    for t in json.loads(path.read_text(encoding="utf-8"))]
        except (ValueError, TypeError, OSError):
            pass
    tasks = build_tasks(seed, corpus)
    with atomic_open(path, "w") as fh:
        json.dump([asdict(t) for t in tasks], fh)
    return tasks


__all__ = ["TextTask", "KINDS", "SPLITS", "SUPPORT", "QUERY", "COUNTS", "split_plays", "build_tasks", "load_tasks"]
