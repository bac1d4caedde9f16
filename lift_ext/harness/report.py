"""The harness's tables (markdown) and the record of where a run happened."""
from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path
from typing import Dict, Mapping, Sequence

import torch

from lift_ext.harness import stats


def machine() -> dict:
    """CPU model, cores, torch threads, versions and the git commit of the working directory."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"cpu": cpu, "cores": torch.multiprocessing.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def timed(record: Dict[str, dict], name: str, fn):
    """fn(), with its wall and CPU seconds (this process) stored in record[name]."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    record[name] = {"wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
    return out


def ranking_table(rank: Mapping[str, Mapping[int, Mapping[str, float]]], group_of: Mapping[str, str],
                  groups: Sequence[str], labels: Mapping[str, str], split: str, reference: str = "independent") -> str:
    """One row per method: accuracy per group and overall (mean ± s.e. over (seed, task)), and
    the paired difference from ``reference`` (same task, same seed) with its s.e. and their
    ratio; the last row the reference's seed-to-seed noise floor (second seed - first, paired
    by task)."""
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
