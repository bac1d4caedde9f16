"""The role benchmark: splits by role, the character vocabulary, next-character windows and
the few-shot task of each role (docs/design.md section 11)."""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass

import torch

from lift_ext import validate
from lift_ext.shakespeare.corpus import load_corpus
from lift_ext.shakespeare.plays import PARSER_VERSION, Corpus, Role


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
        validate.integer(name, v, lo)
    pool_stride = validate.integer("pool_stride", seq_len // 2 if pool_stride is None else pool_stride, 1)
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
