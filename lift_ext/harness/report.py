"""The harness's tables (markdown: accuracy, calibration) and the record of where a run happened."""
from __future__ import annotations

import platform
import time
from typing import Dict, Mapping, Optional, Sequence

import torch

from lift_ext import calibration, cpu_isa, provenance
from lift_ext.clock import Clock
from lift_ext.harness import stats
from lift_ext.harness.scoring import pooled_bins


def machine() -> dict:
    """CPU model and the CPU kernels' instruction-set path, cores, torch threads, versions, the
    commit of the code lift_ext runs from (lift_ext.provenance) and the date."""
    return {"cpu": provenance.cpu_model(), "cpu_isa": cpu_isa(), "cores": torch.multiprocessing.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "commit": provenance.short_commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def describe(record: dict) -> str:
    """A machine record in one phrase: "<CPU model> (<ISA>), <n> torch thread(s), commit <hash>"."""
    return (f"{record['cpu']} ({record['cpu_isa']}), {record['torch_threads']} torch thread(s), "
            f"commit {record['commit']}")


def timed(record: Dict[str, dict], name: str, fn):
    """fn(), with its wall and CPU seconds (lift_ext.clock.Clock: this process and the worker
    processes it waited for) stored in record[name]."""
    clock = Clock()
    out = fn()
    lap = clock.lap(name)
    record[name] = {"wall_seconds": lap["wall"], "cpu_seconds": lap["cpu"]}
    return out


def by_seed_name(scores: Mapping[str, Mapping[int, Mapping[str, object]]]) -> Dict[str, Dict[str, Mapping]]:
    """{method: {str(seed): {task: value}}} (JSON keys are strings)."""
    return {m: {str(seed): v for seed, v in per.items()} for m, per in scores.items()}


def default_reference(methods: Sequence[str], preferred: str) -> str:
    """``preferred`` when it was ranked, else the first ranked method (a run of a subset)."""
    return preferred if preferred in methods else methods[0]


def ranking_table(rank: Mapping[str, Mapping[int, Mapping[str, float]]], group_of: Mapping[str, str],
                  groups: Sequence[str], labels: Mapping[str, str], split: str, reference: Optional[str] = None) -> str:
    """One row per method: accuracy per group and overall (mean ± s.e. over (seed, task)), and
    the paired difference from ``reference`` (same task, same seed; default independent
    fine-tuning, or the first method when it was not ranked) with its s.e. and their ratio; the
    last row the reference's seed-to-seed noise floor (second seed - first, paired by task)."""
    reference = default_reference(list(rank), "independent") if reference is None else reference
    seeds = sorted(rank[reference])
    lines = [f"| method (meta-{split}, {len(seeds)} seeds) | " + " | ".join(groups) +
             f" | overall (%) ± s.e. | minus {reference} (pp) ± paired s.e. | in s.e. |",
             "|---|" + "---:|" * (len(groups) + 3)]
    base = stats.flatten(rank[reference])
    for method, per_seed in rank.items():
        flat = stats.flatten(per_seed)
        means = stats.group_means(stats.task_means(per_seed), group_of, groups)
        cells = " | ".join(f"{means[g]:.1f}" if g in means else "" for g in groups)
        mean, se = stats.mean_se(list(flat.values()))
        if method == reference:
            diff = " | "
        else:
            d, dse, _ = stats.paired(flat, base)
            diff = f"{d:+.2f} ± {dse:.2f} | " + (f"{d / dse:+.1f}" if dse > 0 else "")
        lines.append(f"| {labels.get(method, method)} | {cells} | {mean:.2f} ± {se:.2f} | {diff} |")
    if len(seeds) > 1:
        d, dse, n = stats.paired(rank[reference][seeds[1]], rank[reference][seeds[0]])
        lines.append(f"| noise floor: {reference} seed {seeds[1]} - seed {seeds[0]}, paired over {n} tasks |"
                     + " |" * len(groups) + f" | {d:+.2f} ± {dse:.2f} | |")
    return "\n".join(lines)


CALIBRATION_METRICS = (("ece", "ECE (%)", 2), ("nll", "NLL (nats)", 3), ("brier", "Brier", 3))  # key, header, decimals


def calibration_table(scores: Mapping[str, Mapping[str, Mapping[int, Mapping[str, float]]]], labels: Mapping[str, str],
                      split: str, reference: Optional[str] = None) -> str:
    """One row per method of ``scores`` ({metric: {method: {seed: {task: value}}}}, as
    lift_ext.harness.ranking gives): accuracy, then ECE, NLL and Brier score, each the mean ±
    s.e. over (seed, task) and the paired difference from ``reference`` (same task, same seed;
    default MAP LiFT, or the first method when it was not ranked) ± its s.e. (negative: better
    calibrated than the reference), and the ECE of the reliability bins pooled over every
    (seed, task)."""
    methods = list(scores["acc"])
    reference = default_reference(methods, "lift") if reference is None else reference
    if reference not in methods:
        raise ValueError(f"reference {reference!r} is not among the scored methods {methods}")
    seeds = sorted(scores["acc"][reference])
    head = " | ".join(f"{name} ± s.e. | minus {reference} ± paired s.e." for _, name, _ in CALIBRATION_METRICS)
    lines = [f"| method (meta-{split}, {len(seeds)} seeds) | accuracy (%) | {head} | pooled ECE (%) |",
             "|---|" + "---:|" * (2 + 2 * len(CALIBRATION_METRICS))]
    for method in methods:
        mean, se = stats.mean_se(list(stats.flatten(scores["acc"][method]).values()))
        cells = [f"{mean:.2f} ± {se:.2f}"]
        for key, _, dec in CALIBRATION_METRICS:
            flat = stats.flatten(scores[key][method])
            mean, se = stats.mean_se(list(flat.values()))
            cells.append(f"{mean:.{dec}f} ± {se:.{dec}f}")
            if method == reference:
                cells.append("")
            else:
                d, dse, _ = stats.paired(flat, stats.flatten(scores[key][reference]))
                cells.append(f"{d:+.{dec}f} ± {dse:.{dec}f}")
        pooled = calibration.ece_of_bins(pooled_bins(list(stats.flatten(scores["bins"][method]).values())))
        lines.append(f"| {labels.get(method, method)} | " + " | ".join(cells) + f" | {pooled:.2f} |")
    return "\n".join(lines)
