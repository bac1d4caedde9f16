"""Means, standard errors and paired differences of per-task scores (accuracy in %)."""
from __future__ import annotations

import math
from typing import Dict, Hashable, Mapping, Sequence, Tuple


def mean_se(values: Sequence[float]) -> Tuple[float, float]:
    """(mean, standard error of the mean = sample sd / sqrt(n)); s.e. 0 for one value."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_se needs at least one value")
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def paired(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> Tuple[float, float, int]:
    """(mean, s.e., n) of a[key] - b[key] over the n keys both have (task names, or (seed,
    task) pairs): the paired difference."""
    keys = [k for k in a if k in b]
    if not keys:
        raise ValueError("paired: the two score sets share no key")
    return mean_se([a[k] - b[k] for k in keys]) + (len(keys),)


def flatten(per_seed: Mapping[int, Mapping[str, float]]) -> Dict[Tuple[int, str], float]:
    """{(seed, task): score} of {seed: {task: score}}."""
    return {(seed, name): v for seed, scores in per_seed.items() for name, v in scores.items()}


def group_means(scores: Mapping[str, float], group_of: Mapping[str, str], groups: Sequence[str]) -> Dict[str, float]:
    """Mean score per group of {task name: score} (groups without a task left out), plus
    "overall", the mean over tasks."""
    means = {}
    for group in groups:
        values = [v for name, v in scores.items() if group_of[name] == group]
        if values:
            means[group] = sum(values) / len(values)
    means["overall"] = sum(scores.values()) / len(scores)
    return means


def task_means(per_seed: Mapping[int, Mapping[str, float]]) -> Dict[str, float]:
    """{task: mean score over the seeds}."""
    by_task: Dict[str, list] = {}
    for scores in per_seed.values():
        for name, v in scores.items():
            by_task.setdefault(name, []).append(v)
    return {name: sum(v) / len(v) for name, v in by_task.items()}
