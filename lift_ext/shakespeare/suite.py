"""The data one benchmark run sees: meta-train pools and few-shot val / test roles as
(inputs, targets) pairs, for the family suite (targets through the role's family permutation,
docs/design.md section 11) or the roles suite (targets = the next characters, unchanged).

Every window of L + 1 characters becomes inputs [L] = its first L characters and targets [L]
= the role's target map applied to its last L; a minibatch is the tuple (inputs, targets).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from lift_ext.shakespeare.config import ConfigError
from lift_ext.shakespeare.families import FamilySet, build_families, remap_targets

SUITES = ("families", "roles")
Pair = Tuple[torch.Tensor, torch.Tensor]


@dataclass
class FewShotRole:
    """A meta-val or meta-test role: ``support`` and ``query`` (inputs, targets) pairs of
    [n, L] int64; ``remapped`` bool [n_query, L]: the query positions whose target the family
    permutation changes (none in the roles suite or in family 0)."""
    key: str
    family: int
    support: Pair
    query: Pair
    remapped: torch.Tensor

    def to(self, device) -> "FewShotRole":
        return FewShotRole(self.key, self.family, tuple(t.to(device) for t in self.support),
                           tuple(t.to(device) for t in self.query), self.remapped.to(device))


@dataclass
class SuiteData:
    """Meta-train ``pools`` (one (inputs, targets) pair per role) with their ``pool_families``,
    the ``val`` and ``test`` roles, and the ``family_set`` (None for the roles suite)."""
    pools: List[Pair]
    pool_families: List[int]
    val: List[FewShotRole]
    test: List[FewShotRole]
    family_set: Optional[FamilySet]


def letter_counts(bench) -> torch.Tensor:
    """Occurrences of every vocabulary id in the meta-train roles' text [V] int64."""
    ids = bench.vocab.encode(" ".join(r.text for r in bench.roles["train"]))
    return torch.bincount(ids, minlength=len(bench.vocab))


def _limit(items: list, n: int) -> list:
    return items if n == 0 else items[:n]


def build_suite(bench, cfg, device) -> SuiteData:
    """The suite of ``cfg`` (a BenchConfig) over a loaded ShakespeareBenchmark ``bench``: at most
    ``max_train`` / ``max_val`` / ``max_test`` roles of each split (0 = all), tensors on
    ``device``."""
    size = len(bench.vocab)
    family_set = None
    if cfg.suite == "families":
        try:
            family_set = build_families(bench.vocab.chars, letter_counts(bench), families=cfg.families,
                                        family_seed=cfg.family_seed, family_swaps=cfg.family_swaps,
                                        within_family=cfg.within_family)
        except ValueError as exc:  # its message names the three config keys
            raise ConfigError(f"{exc}: lower families, family_swaps or within_family in the config") from None

    def family(key: str) -> int:
        return 0 if family_set is None else family_set.family(key)

    def target_map(key: str) -> torch.Tensor:
        return torch.arange(size) if family_set is None else family_set.target_map(key)

    def few_shot(role) -> FewShotRole:
        fam, tmap = family(role.key), target_map(role.key)
        support = remap_targets(role.support, tmap)
        query = remap_targets(role.query, tmap)
        family_map = torch.arange(size) if family_set is None else family_set.perms[fam]
        remapped = family_map[role.query[:, 1:]] != role.query[:, 1:]
        return FewShotRole(role.key, fam, support, query, remapped).to(device)

    train = _limit(bench.tasks["train"], cfg.max_train)
    pools = [tuple(t.to(device) for t in remap_targets(r.pool, target_map(r.key))) for r in train]
    return SuiteData(pools=pools, pool_families=[family(r.key) for r in train],
                     val=[few_shot(r) for r in _limit(bench.tasks["val"], cfg.max_val)],
                     test=[few_shot(r) for r in _limit(bench.tasks["test"], cfg.max_test)],
                     family_set=family_set)


__all__ = ["SUITES", "FewShotRole", "SuiteData", "build_suite", "letter_counts"]
