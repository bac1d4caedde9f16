"""Headroom, then a first ranking, on the text suite (lift_ext.text; docs/text_suite.md).

    PYTHONPATH=. python benchmarks/text_headroom.py            # default run
    PYTHONPATH=. python benchmarks/text_headroom.py --quick    # smoke run, fewer tasks and steps

1. Headroom on the meta-val and meta-test tasks: the head at its initialisation (uniform
   probabilities: the share of the first class), the unadapted backbone (nearest class centroid
   of its pooled states), independent fine-tuning on the 32 support sentences, the per-kind
   oracle (a multitask adapter per kind, the task's own kind adapted: a ceiling), and the noise
   floor (independent fine-tuning under seed 0 minus seed 1, paired by task).
2. Ranking on meta-test over the seeds: independent, multitask, LiFT with K = the number of
   kinds and K = 1, each adapted with the same MapConfig; accuracy per kind and overall, the
   paired difference from independent with its standard error over (task, seed).

Every setting below was chosen on the meta-val tasks (docs/text_suite.md lists what was tried).
Prints the markdown tables and writes them with every score to a JSON file (``--output``).
Accuracies are in %, differences in percentage points, times in CPU seconds
(time.process_time, the process's user + system time over all its threads).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from lift_ext.lift import MapConfig
from lift_ext.text.backbone import accuracy, initial_vector
from lift_ext.text.methods import LiftSettings, evaluate, meta_train, prototype_accuracy
from lift_ext.text.suite import kind_names, load_suite
from lift_ext.text.tasks import KINDS

DEFAULT = dict(seeds=[0, 1, 2], limit=None, meta_steps=300, meta_lr=1e-3,
               adapt=MapConfig(steps=20, lr=1e-3, eval_every=5, patience=2), lift=LiftSettings())
QUICK = dict(seeds=[0, 1], limit={"train": 2, "val": 1, "test": 1}, meta_steps=30, meta_lr=1e-3,
             adapt=MapConfig(steps=5, lr=1e-3, eval_every=5, patience=2), lift=LiftSettings(steps=30))
RANKED = ("independent", "multitask", "lift", "lift_k1")


def mean_se(values: Sequence[float]) -> Dict[str, float]:
    """Mean and standard error (sample sd / sqrt(n); 0 for one value) of ``values``."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "se": math.sqrt(var / n), "n": n}


def by_kind(scores: Sequence[float], kinds: Sequence[str]) -> Dict[str, float]:
    """{kind: mean score, "overall": mean} in %."""
    out = {k: 100 * sum(s for s, q in zip(scores, kinds) if q == k) / kinds.count(k) for k in KINDS if k in kinds}
    out["overall"] = 100 * sum(scores) / len(scores)
    return out


def machine() -> dict:
    """Where the run happened: CPU, threads, torch, Python and the git commit of the checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    return {"cpu": cpu, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "commit": commit}


def headroom(suite, cfg, clock: Dict[str, float]) -> dict:
    """The headroom scores {split: {row: [score per task]}} on val and test (seed 0 and 1)."""
    flat, out = suite.flat, {}
    init0, init1 = initial_vector(flat, 0), initial_vector(flat, 1)
    train = suite.splits["train"]
    start = time.process_time()
    oracle = meta_train("oracle", flat, train, init0, kinds=len(KINDS), meta_steps=cfg["meta_steps"],
                        meta_lr=cfg["meta_lr"], lift=cfg["lift"], seed=0)
    for split in ("val", "test"):
        tasks = suite.splits[split]
        out[split] = {
            "head at init": [accuracy(flat, init0, t.query) for t in tasks],
            "unadapted backbone (prototype)": [prototype_accuracy(flat, t) for t in tasks],
            "independent, seed 0": evaluate(flat, {"start": init0}, tasks, cfg["adapt"], 0),
            "independent, seed 1": evaluate(flat, {"start": init1}, tasks, cfg["adapt"], 1),
            "oracle (per-kind multitask)": evaluate(flat, oracle, tasks, cfg["adapt"], 0)}
    clock["headroom"] = time.process_time() - start
    return out


def ranking(suite, cfg, clock: Dict[str, float], reuse: Dict[str, List[float]]) -> Dict[str, Dict[int, List[float]]]:
    """{method: {seed: [score per test task]}}; independent at seeds 0 and 1 is taken from ``reuse``."""
    flat, train, test = suite.flat, suite.splits["train"], suite.splits["test"]
    out: Dict[str, Dict[int, List[float]]] = {m: {} for m in RANKED}
    for seed in cfg["seeds"]:
        init = initial_vector(flat, seed)
        for method in RANKED:
            start = time.process_time()
            if method == "independent" and f"independent, seed {seed}" in reuse:
                out[method][seed] = reuse[f"independent, seed {seed}"]
                continue
            state = meta_train(method, flat, train, init, kinds=len(KINDS), meta_steps=cfg["meta_steps"],
                               meta_lr=cfg["meta_lr"], lift=cfg["lift"], seed=seed)
            out[method][seed] = evaluate(flat, state, test, cfg["adapt"], seed)
            clock[f"ranking {method}"] = clock.get(f"ranking {method}", 0.0) + time.process_time() - start
    return out


def headroom_table(scores: dict, suite) -> str:
    lines = ["| model | split | " + " | ".join(KINDS) + " | overall |", "|---|---|" + "---:|" * (len(KINDS) + 1)]
    for split, rows in scores.items():
        kinds = kind_names(suite.splits[split])
        for row, values in rows.items():
            acc = by_kind(values, kinds)
            lines.append(f"| {row} | {split} | " + " | ".join(f"{acc[k]:.1f}" for k in KINDS) +
                         f" | {acc['overall']:.2f} |")
        a, b = rows["independent, seed 0"], rows["independent, seed 1"]
        floor = mean_se([100 * (x - y) for x, y in zip(a, b)])
        lines.append(f"| noise floor: independent seed 0 - seed 1, paired by task | {split} |" + " |" * len(KINDS) +
                     f" {floor['mean']:+.2f} ± {floor['se']:.2f} pp |")
    return "\n".join(lines)


def ranking_table(scores: dict, suite) -> str:
    kinds = kind_names(suite.splits["test"])
    lines = ["| method | " + " | ".join(KINDS) + " | overall | vs independent (pp) | in paired s.e. |",
             "|---|" + "---:|" * (len(KINDS) + 3)]
    base = [v for seed in sorted(scores["independent"]) for v in scores["independent"][seed]]
    for method, per_seed in scores.items():
        flat_scores = [v for seed in sorted(per_seed) for v in per_seed[seed]]
        acc = by_kind(flat_scores, kinds * len(per_seed))
        overall = mean_se([100 * v for v in flat_scores])
        diff = mean_se([100 * (x - y) for x, y in zip(flat_scores, base)])
        ratio = f"{diff['mean'] / diff['se']:+.1f}" if diff["se"] > 0 else "-"
        lines.append(f"| {method} | " + " | ".join(f"{acc[k]:.1f}" for k in KINDS) +
                     f" | {overall['mean']:.2f} ± {overall['se']:.2f} | {diff['mean']:+.2f} ± {diff['se']:.2f} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 val / 1 test / 2 train tasks per kind")
    parser.add_argument("--output", default=None, help="JSON file (default results/text_headroom[_quick].json)")
    parser.add_argument("--cache", default=None, help="cache directory (default $LIFT_EXT_CACHE or ~/.cache/lift_ext)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # on a shared 2-core machine one thread costs the fewest CPU seconds
    cfg = QUICK if args.quick else DEFAULT
    output = Path(args.output or f"results/text_headroom{'_quick' if args.quick else ''}.json")
    clock: Dict[str, float] = {}
    start = time.process_time()
    suite = load_suite(0, cache=args.cache, limit=cfg["limit"])
    clock["features (computed this run)"] = suite.feature_cpu_seconds
    clock["load"] = time.process_time() - start - suite.feature_cpu_seconds
    head = headroom(suite, cfg, clock)
    ranks = ranking(suite, cfg, clock, head["test"])
    clock["total excluding features"] = time.process_time() - start - suite.feature_cpu_seconds
    sizes = {s: len(t) for s, t in suite.splits.items()}
    text = (f"### Headroom (seed 0; {sizes['val']} meta-val, {sizes['test']} meta-test tasks; accuracy %)\n\n"
            f"{headroom_table(head, suite)}\n\n"
            f"### First ranking on meta-test (seeds {cfg['seeds']}; accuracy %, mean ± s.e. over (task, seed))\n\n"
            f"{ranking_table(ranks, suite)}\n\n"
            "CPU seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in clock.items()))
    print(text)
    output.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (v.to_dict() if hasattr(v, "to_dict") else v.__dict__ if hasattr(v, "__dict__") else v)
                for k, v in cfg.items()}
    output.write_text(json.dumps({
        "settings": settings, "tasks": {s: [t.name for t in ts] for s, ts in suite.texts.items()},
        "headroom": head, "ranking": {m: {str(s): v for s, v in d.items()} for m, d in ranks.items()},
        "cpu_seconds": clock, "machine": machine(), "markdown": text}, indent=1))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
