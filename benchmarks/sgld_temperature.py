"""lift_sgld's sampling temperature chosen on the meta-val tasks of the vision or text suite.

For each seed (0 and 1) LiFT's chain is trained once (the suite's default settings); on every
meta-val task MAP LiFT, LiFT with temperature scaling and lift_sgld at each temperature of
``--temperatures`` are scored (accuracy %, ECE %, NLL nats). lift_sgld samples the support
posterior tempered to T / n (lift_ext.lift.SamplingConfig): T = 1 is the Bayesian posterior of
the n support examples under LiFT's prior, T -> 0 the MAP adapter. Rule, fixed before the run:
the T with the lowest mean ECE among those whose accuracy is at least MAP LiFT's minus 1 pp
(the issue's accuracy bound); the chain's temperature when none is.

    PYTHONPATH=. python benchmarks/sgld_temperature.py --suite vision [--temperatures 0.01,0.1,1]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch
from harness_suites import load_default, write_sweep

from lift_ext.harness import methods as hm
from lift_ext.harness import report, stats


def sweep(bench, s: hm.MethodSettings, temperatures) -> dict:
    """{row: {metric: {(seed, task): value}}} on the meta-val tasks (module docstring)."""
    rows = {name: {m: {} for m in ("acc", "ece", "nll")}
            for name in ["lift", "lift_ts"] + [f"lift_sgld T={t:g}" for t in temperatures]}
    for seed in s.seeds:
        prior = hm.meta_train("lift", bench, s, seed)
        done = hm.Adaptations()
        for task in bench.splits["val"]:
            runs = {"lift": ("lift", s), "lift_ts": ("lift_ts", s)}
            runs.update({f"lift_sgld T={t:g}": ("lift_sgld", dataclasses.replace(s, sampling_temperature=t))
                         for t in temperatures})
            for name, (method, settings) in runs.items():
                scores = hm.method_scores(method, bench, task, prior, settings, seed, done)
                for metric in rows[name]:
                    rows[name][metric][(seed, task.name)] = scores[metric]
        print(f"seed {seed} done", flush=True)
    return rows


def table(rows: dict) -> str:
    lines = ["| meta-val (2 seeds) | accuracy (%) | minus MAP LiFT (pp) | ECE (%) | minus MAP LiFT | NLL | minus MAP LiFT |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, per in rows.items():
        cells = []
        for metric, digits in (("acc", 2), ("ece", 2), ("nll", 3)):
            mean, se = stats.mean_se(list(per[metric].values()))
            cells.append(f"{mean:.{digits}f} ± {se:.{digits}f}")
            if name == "lift":
                cells.append("")
            else:
                d, dse, _ = stats.paired(per[metric], rows["lift"][metric])
                cells.append(f"{d:+.{digits}f} ± {dse:.{digits}f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def choose(rows: dict, temperatures, default: float) -> float:
    """The module docstring's rule."""
    acc = stats.mean_se(list(rows["lift"]["acc"].values()))[0]
    ok = [t for t in temperatures if stats.mean_se(list(rows[f"lift_sgld T={t:g}"]["acc"].values()))[0] >= acc - 1.0]
    if not ok:
        return default
    return min(ok, key=lambda t: stats.mean_se(list(rows[f"lift_sgld T={t:g}"]["ece"].values()))[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=("vision", "text"), required=True)
    parser.add_argument("--temperatures", default="0.01,0.1,1", help="comma-separated sampling temperatures")
    parser.add_argument("--out", default=None, help="JSON file (default results/sgld_temperature_SUITE.json)")
    args = parser.parse_args(argv)
    try:
        temperatures = [float(t) for t in args.temperatures.split(",")]
    except ValueError:
        parser.error(f"--temperatures must be comma-separated numbers, got {args.temperatures!r}")
    if any(t <= 0 for t in temperatures):
        parser.error(f"--temperatures must be > 0, got {args.temperatures!r}")
    torch.set_num_threads(1)
    stages = {}
    bench, s = report.timed(stages, "load", lambda: load_default(args.suite))
    rows = report.timed(stages, "sweep", lambda: sweep(bench, s, temperatures))
    chosen = choose(rows, temperatures, s.lift.temperature)
    write_sweep("sgld_temperature", args.suite, table(rows), chosen, stages, rows, args.out, temperatures=temperatures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
