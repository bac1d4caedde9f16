"""The vision and text suites at their default settings, and the record of a meta-val sweep,
for benchmarks/sgld_temperature.py and benchmarks/peer_select.py."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lift_ext.files import atomic_open
from lift_ext.harness import report, stats


def load_default(suite_name: str, seeds=(0, 1)):
    """(BenchSuite, MethodSettings) of ``suite_name`` ("vision" or "text") at its default
    settings, on ``seeds``."""
    if suite_name == "vision":
        from lift_ext.vision import bench
        suite = bench.Suite(bench.Settings())
        return suite.bench(), dataclasses.replace(suite.settings.methods(), seeds=tuple(seeds))
    if suite_name != "text":
        raise ValueError(f"suite_name must be 'vision' or 'text', got {suite_name!r}")
    from lift_ext.text import demo
    from lift_ext.text.suite import load_suite
    s = dataclasses.replace(demo.Settings().methods, seeds=tuple(seeds))
    return load_suite(0).bench(s.lift.batch * s.lift.tasks_per_step), s


def meta_val_table(rows: dict) -> str:
    """A sweep's rows {row: {(seed, task): meta-val accuracy %}} as a markdown table: each row's
    mean ± s.e. and its paired difference from the "independent" row."""
    lines = ["| meta-val (2 seeds) | accuracy (%) ± s.e. | minus independent (pp) ± paired s.e. |", "|---|---:|---:|"]
    for name, per in rows.items():
        mean, se = stats.mean_se(list(per.values()))
        d, dse, _ = stats.paired(per, rows["independent"])
        lines.append(f"| {name} | {mean:.2f} ± {se:.2f} | " + ("" if name == "independent" else f"{d:+.2f} ± {dse:.2f}")
                     + " |")
    return "\n".join(lines)


def write_sweep(name: str, suite_name: str, table: str, chosen, stages: dict, rows: dict, out=None, **extra) -> None:
    """Print ``table`` with what was chosen, the machine and the sweep's CPU seconds, and write
    it as JSON (``out``, default results/<name>_<suite>.json) with ``rows`` {row: {metric or
    (seed, task): ...}} ((seed, task) keys written "seed/task") and ``extra``."""
    machine = report.machine()
    text = f"{table}\n\nchosen: {chosen}; {report.describe(machine)}, {stages['sweep']['cpu_seconds']:.0f} CPU s"
    print(text)

    def keyed(per):
        return {f"{k[0]}/{k[1]}" if isinstance(k, tuple) else k: keyed(v) if isinstance(v, dict) else v
                for k, v in per.items()}

    path = Path(out or f"results/{name}_{suite_name}.json")
    with atomic_open(path, "w") as fh:
        fh.write(json.dumps({"suite": suite_name, "chosen": chosen, "machine": machine, "stages": stages,
                             "table": text, "rows": keyed(rows), **extra}, indent=1))
    print(f"wrote {path}")
