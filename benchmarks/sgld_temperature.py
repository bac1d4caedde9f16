"""lift_sgld's sampling temperature chosen on the meta-val tasks of the vision or text suite.

For each seed (0 and 1) LiFT's chain is trained once (the suite's default settings); on every
meta-val task MAP LiFT, LiFT with temperature scaling and lift_sgld at each temperature of
``--temperatures`` are scored (accuracy %, ECE %, NLL nats). lift_sgld samples the support
posterior tempered to T / n (lift_ext.lift.SamplingConfig): T = 1 is the Bayesian posterior of
the n support examples under LiFT's prior, T -> 0 the MAP adapter. Rule, fixed before the run:
the T with the lowest mean ECE among those whose accuracy is at least MAP LiFT's minus 1 pp
(the issue's accuracy bound); the chain's temperature when none is.

A control row is reported beside them, not chosen by: ``lift 2x steps``, MAP LiFT adapted for
lift_sgld's step count (2 x the MAP adaptation's step limit, the same stopping rule), so that
what averaging the samples adds is told apart from what the longer adaptation adds.

``--split test`` scores the same rows on the meta-test tasks over seeds 0, 1, 2 (a report
beside the default run's ranking: nothing is chosen on meta-test).

    PYTHONPATH=. python benchmarks/sgld_temperature.py --suite vision [--temperatures 0.01,0.1,1]
        [--split val|test]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch
from harness_suites import load_default, write_sweep

from lift_ext.harness import methods as hm
from lift_ext.harness import report, stats


CONTROL = "lift 2x steps"  # MAP LiFT at lift_sgld's step count (module docstring)


def sweep(bench, s: hm.MethodSettings, temperatures, split: str = "val") -> dict:
    """{row: {metric: {(seed, task): value}}} on the tasks of ``split`` (module docstring)."""
    rows = {name: {m: {} for m in ("acc", "ece", "nll")}
            for name in ["lift", "lift_ts", CONTROL] + [f"lift_sgld T={t:g}" for t in temperatures]}
    longer = dataclasses.replace(s, adapt=dataclasses.replace(s.adapt, steps=hm.sampling_config(s).steps))
    for seed in s.seeds:
        prior = hm.meta_train("lift", bench, s, seed)
        done = hm.Adaptations()
        for task in bench.splits[split]:
            runs = {"lift": ("lift", s), "lift_ts": ("lift_ts", s), CONTROL: ("lift", longer)}
            runs.update({f"lift_sgld T={t:g}": ("lift_sgld", dataclasses.replace(s, sampling_temperature=t))
                         for t in temperatures})
            for name, (method, settings) in runs.items():
                scores = hm.method_scores(method, bench, task, prior, settings, seed, done)
                for metric in rows[name]:
                    rows[name][metric][(seed, task.name)] = scores[metric]
        print(f"seed {seed} done", flush=True)
    return rows


def table(rows: dict, split: str = "val", seeds: int = 2) -> str:
    lines = [f"| meta-{split} ({seeds} seeds) | accuracy (%) | minus MAP LiFT (pp) | ECE (%) | minus MAP LiFT | NLL | minus MAP LiFT |",
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
    parser.add_argument("--split", choices=("val", "test"), default="val",
                        help="val: choose T (default); test: the same rows on meta-test, seeds 0-2, nothing chosen")
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
    seeds = (0, 1) if args.split == "val" else (0, 1, 2)
    bench, s = report.timed(stages, "load", lambda: load_default(args.suite, seeds))
    rows = report.timed(stages, "sweep", lambda: sweep(bench, s, temperatures, args.split))
    chosen = choose(rows, temperatures, s.lift.temperature) if args.split == "val" else "nothing (meta-test report)"
    name = "sgld_temperature" + ("" if args.split == "val" else "_test")
    write_sweep(name, args.suite, table(rows, args.split, len(seeds)), chosen, stages, rows, args.out,
                temperatures=temperatures, split=args.split)
    return 0


if __name__ == "__main__":
    sys.exit(main())
