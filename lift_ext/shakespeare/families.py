"""Task families over the role tasks (docs/design.md section 11): each role's prediction
TARGETS pass through one of F fixed permutations of the character vocabulary, its inputs stay
plain, so a method can tell a role's family only from the targets of its support set.

* Family of a role: ``int(SHA-256(f"family:{family_seed}:{key}")) mod F`` (a function of the
  key alone, so it never changes when other roles are added or dropped).
* Family permutations: family 0 is the identity. The 2 s (F - 1) most frequent lowercase
  letters of the meta-train text (s = ``family_swaps``) are shuffled by a generator seeded
  with ``family_seed`` and dealt out in consecutive pairs, s pairs to each of the families
  1..F-1; a family swaps the two letters of each of its pairs in the targets. The families'
  letters are disjoint, so every pair of families differs on 2 s or 4 s frequent letters.
* Within-family variation (``within_family`` = w >= 0): each role additionally swaps w pairs of
  the rarer lowercase letters (those no family uses), drawn from its own seeded hash, so the
  roles of one family are not quite the same task; w = 0: none.

A target id y of a role in family f becomes R_role[P_f[y]] (P_f the family's permutation,
R_role the role's own swaps; both involutions on disjoint letters, so they commute).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch

from lift_ext import validate

Pair = Tuple[str, str]


def _hash(*parts) -> int:
    return int(hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest(), 16)


def family_of(key: str, families: int, family_seed: int) -> int:
    """The family (0..families-1) of the role with this key."""
    return _hash("family", family_seed, key) % families


def letter_ranking(chars: str, counts: torch.Tensor) -> List[str]:
    """The lowercase letters among ``chars`` (vocabulary id i + 1 is chars[i]) from the most to
    the least frequent by ``counts`` [len(chars) + 1] (occurrences per id; ties by letter)."""
    letters = [(c, int(counts[i + 1])) for i, c in enumerate(chars) if "a" <= c <= "z"]
    return [c for c, _ in sorted(letters, key=lambda cn: (-cn[1], cn[0]))]


def _swap_map(index: Dict[str, int], size: int, pairs: Sequence[Pair]) -> torch.Tensor:
    perm = torch.arange(size)
    for a, b in pairs:
        perm[index[a]], perm[index[b]] = index[b], index[a]
    return perm


@dataclass(frozen=True)
class FamilySet:
    """F target permutations over a vocabulary of ``size`` ids and the per-role variation.

    ``family_pairs[f]``: the letter pairs family f swaps (family 0: none); ``rare``: the
    letters left for within-family swaps; ``perms`` [F, size] int64: P_f as id maps."""
    chars: str
    family_pairs: Tuple[Tuple[Pair, ...], ...]
    rare: Tuple[str, ...]
    family_seed: int
    within_family: int

    @property
    def size(self) -> int:
        return len(self.chars) + 1

    @property
    def families(self) -> int:
        return len(self.family_pairs)

    def _index(self) -> Dict[str, int]:
        return {c: i + 1 for i, c in enumerate(self.chars)}

    @property
    def perms(self) -> torch.Tensor:
        index = self._index()
        return torch.stack([_swap_map(index, self.size, pairs) for pairs in self.family_pairs])

    def family(self, key: str) -> int:
        return family_of(key, self.families, self.family_seed)

    def role_pairs(self, key: str) -> Tuple[Pair, ...]:
        """The role's own extra swaps (``within_family`` pairs of rare letters)."""
        if self.within_family == 0:
            return ()
        gen = torch.Generator().manual_seed(_hash("role", self.family_seed, key) % (2**63 - 1))
        order = torch.randperm(len(self.rare), generator=gen).tolist()[: 2 * self.within_family]
        letters = [self.rare[i] for i in order]
        return tuple((letters[2 * j], letters[2 * j + 1]) for j in range(self.within_family))

    def target_map(self, key: str) -> torch.Tensor:
        """The role's map of target ids [size] int64: R_role o P_family (module docstring)."""
        index = self._index()
        return _swap_map(index, self.size, self.family_pairs[self.family(key)] + self.role_pairs(key))


def build_families(chars: str, counts: torch.Tensor, *, families: int, family_seed: int,
                   family_swaps: int, within_family: int) -> FamilySet:
    """The FamilySet for a vocabulary (``chars``, letter ``counts`` per id: see
    `letter_ranking`); the module docstring gives the construction. ValueError (naming the
    key) when the vocabulary has too few lowercase letters for the requested swaps."""
    families = validate.integer("families", families, 1)
    family_seed = validate.integer("family_seed", family_seed)
    family_swaps = validate.integer("family_swaps", family_swaps, 1)
    within_family = validate.integer("within_family", within_family)
    ranked = letter_ranking(chars, counts)
    n_family = 2 * family_swaps * (families - 1)
    if n_family + 2 * within_family > len(ranked):
        raise ValueError(f"families={families}, family_swaps={family_swaps} and within_family={within_family} "
                         f"need {n_family + 2 * within_family} distinct lowercase letters, the vocabulary "
                         f"has {len(ranked)}")
    gen = torch.Generator().manual_seed(family_seed)
    frequent = [ranked[i] for i in torch.randperm(n_family, generator=gen).tolist()]
    pairs = [tuple((frequent[j], frequent[j + 1]) for j in range(start, start + 2 * family_swaps, 2))
             for start in range(0, n_family, 2 * family_swaps)]
    return FamilySet(chars=chars, family_pairs=((),) + tuple(pairs), rare=tuple(ranked[n_family:]),
                     family_seed=family_seed, within_family=within_family)


def remap_targets(windows: torch.Tensor, target_map: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of windows [n, L + 1]: inputs = windows[:, :-1] unchanged, targets =
    target_map[windows[:, 1:]] (each [n, L] int64)."""
    return windows[:, :-1], target_map[windows[:, 1:]]


__all__ = ["FamilySet", "build_families", "family_of", "letter_ranking", "remap_targets"]
