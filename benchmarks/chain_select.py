"""One setting of LiFT's chain (a field of lift_ext.harness.LiftSettings: lr, temperature,
warmup, ...) chosen on the meta-val tasks of the vision or text suite.

For seeds 0 and 1 (the suites' sweeps): independent fine-tuning once, then LiFT (MAP adaptation
from the best component, the suite's default settings but ``field``) at every value of
``values``. The rule, fixed before any run: the value of highest mean meta-val accuracy; the
suite's default on a tie. Printed and written: each value's mean ± s.e. and paired difference
from independent fine-tuning (meta_val_table), and each value's paired difference from the
default's. The ranking's worker processes run the seeds side by side (the same scores for any
number).

    PYTHONPATH=. python benchmarks/chain_select.py --suite vision --field lr --values 1e-3,3e-3,1e-2
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch
from harness_suites import load_default, meta_val_table, write_sweep

from lift_ext.harness import LiftSettings, report, stats
from lift_ext.harness import methods as hm

FIELDS = {f.name: f.type for f in dataclasses.fields(LiftSettings)}


def parse_values(field: str, text: str) -> list:
    """The comma-separated ``text`` as values of LiftSettings.``field`` (int or float)."""
    if field not in FIELDS:
        raise ValueError(f"--field must be one of {', '.join(FIELDS)}, got {field!r}")
    kind = int if FIELDS[field] in (int, "int") else float
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError as error:
        raise ValueError(f"--values must be {kind.__name__}s separated by commas, got {text!r}") from error
    if len(values) < 2 or len(set(values)) != len(values):
        raise ValueError(f"--values must hold at least two distinct values, got {text!r}")
    return values


def label(field: str, value) -> str:
    return f"lift, {field} = {value:g}"


def sweep(bench, s: hm.MethodSettings, field: str, values: list, workers: int) -> dict:
    """{row: {(seed, task): meta-val accuracy %}}: "independent", then LiFT at each value."""

    def scores(method: str, settings: hm.MethodSettings) -> dict:
        ranked = hm.ranking(bench, dataclasses.replace(settings, methods=(method,)), split="val", workers=workers)
        return stats.flatten(ranked["acc"][method])

    rows = {"independent": scores("independent", s)}
    for value in values:
        rows[label(field, value)] = scores("lift", dataclasses.replace(s, lift=dataclasses.replace(s.lift,
                                                                                                   **{field: value})))
        print(f"{label(field, value)}: {stats.mean_se(list(rows[label(field, value)].values()))[0]:.2f}", flush=True)
    return rows


def choose(rows: dict, field: str, values: list, default):
    """The value of highest mean meta-val accuracy; ``default`` on a tie with it."""
    mean = {v: stats.mean_se(list(rows[label(field, v)].values()))[0] for v in values}
    best = max(values, key=lambda v: mean[v])
    return default if default in mean and mean[default] == mean[best] else best


def table(rows: dict, field: str, values: list, default) -> str:
    """meta_val_table and each value's paired difference from the default's row."""
    lines = [meta_val_table(rows)]
    if default in values:
        base = rows[label(field, default)]
        for value in values:
            if value != default:
                d, se, n = stats.paired(rows[label(field, value)], base)
                lines.append(f"{label(field, value)} minus {field} = {default:g}: {d:+.2f} ± {se:.2f} pp "
                             f"(paired over {n} (seed, task) pairs)")
    return "\n\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=("vision", "text"), required=True)
    parser.add_argument("--field", required=True, help=f"the LiftSettings field: {', '.join(FIELDS)}")
    parser.add_argument("--values", required=True, help="the values tried, comma-separated")
    parser.add_argument("--workers", type=int, default=0, help="ranking processes (default 0: one per CPU)")
    parser.add_argument("--out", default=None, help="JSON file (default results/chain_select_SUITE.json)")
    args = parser.parse_args(argv)
    try:
        values = parse_values(args.field, args.values)
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(1)
    stages = {}
    bench, s = report.timed(stages, "load", lambda: load_default(args.suite))
    default = getattr(s.lift, args.field)
    rows = report.timed(stages, "sweep", lambda: sweep(bench, s, args.field, values, args.workers))
    chosen = {args.field: choose(rows, args.field, values, default), "default": default}
    write_sweep("chain_select", args.suite, table(rows, args.field, values, default), chosen, stages, rows,
                args.out, field=args.field, values=values)
    return 0


if __name__ == "__main__":
    sys.exit(main())
