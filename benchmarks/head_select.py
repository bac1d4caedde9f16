"""Whether the learned starts (multitask, Reptile, FO-MAML) keep their heads, chosen by multitask
on the meta-val tasks of the vision or text suite (``reset_head`` of the suites' settings); and,
as a report that chooses nothing, LiFT with a fresh-head twin of every prior component.

A start trained across tasks has a head fitted to the meta-train tasks' label sets. Kept, it
helps a new task whose labels mean what they meant there (the text suite's question and exclaim
kinds, the vision suite's label-set siblings) and hurts one whose labels mean something else
(which of two plays). For seeds 0 and 1: independent fine-tuning, multitask with its head reset
to zero and kept; the value of higher mean meta-val accuracy is kept. The LiFT rows: its
default prior, and the same prior with K more components, each a twin of one component with
the initial adapter's head (the same LoRA mean and variances, the component's weight split in
half), so that the best-component start can choose "this component's labels" or "labels of the
task's own" by support evidence.

    PYTHONPATH=. python benchmarks/head_select.py --suite text
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch
from harness_suites import load_default, meta_val_table, write_sweep

from lift_ext.harness import methods as hm
from lift_ext.harness import report, stats
from lift_ext.lift import MixturePrior


def fresh_head_twins(prior: MixturePrior, head: torch.Tensor, init: torch.Tensor) -> MixturePrior:
    """``prior`` with a twin of each component whose mean's ``head`` coordinates are ``init``'s,
    every weight halved: 2K components."""
    fresh = prior.means.clone()
    fresh[:, head] = init[head].to(fresh.dtype)
    return MixturePrior(torch.cat([prior.means, fresh]), torch.cat([prior.variances, prior.variances]),
                        torch.cat([prior.weights, prior.weights]) / 2, prior.beta)


def sweep(bench, s: hm.MethodSettings) -> dict:
    """{row: {(seed, task): meta-val accuracy %}}."""
    rows = {"independent": {}, "multitask, head reset": {}, "multitask, head kept": {}, "lift": {},
            "lift, fresh-head twins": {}}
    for seed in s.seeds:
        init = bench.initial(seed)
        multitask = hm.meta_train("multitask", bench, dataclasses.replace(s, reset_head=False), seed)
        prior = hm.meta_train("lift", bench, s, seed)
        learned = {"independent": init, "multitask, head reset": bench.without_head(multitask),
                   "multitask, head kept": multitask, "lift": prior,
                   "lift, fresh-head twins": fresh_head_twins(prior, bench.head, init)}
        for task in bench.splits["val"]:
            for name, start in learned.items():
                rows[name][(seed, task.name)] = hm.adapted_scores(bench, task, start, s.adapt, seed)["acc"]
        print(f"seed {seed} done", flush=True)
    return rows


def table(rows: dict) -> str:
    """meta_val_table with the two paired comparisons the choice and the report rest on."""
    kept = stats.paired(rows["multitask, head kept"], rows["multitask, head reset"])
    twins = stats.paired(rows["lift, fresh-head twins"], rows["lift"])
    return (f"{meta_val_table(rows)}\n\nmultitask kept minus reset: {kept[0]:+.2f} ± {kept[1]:.2f} pp; LiFT with "
            f"twins minus LiFT: {twins[0]:+.2f} ± {twins[1]:.2f} pp (paired over {kept[2]} (seed, task) pairs)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=("vision", "text"), required=True)
    parser.add_argument("--out", default=None, help="JSON file (default results/head_select_SUITE.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    stages = {}
    bench, s = report.timed(stages, "load", lambda: load_default(args.suite))
    rows = report.timed(stages, "sweep", lambda: sweep(bench, s))
    mean = {name: stats.mean_se(list(rows[name].values()))[0]
            for name in ("multitask, head reset", "multitask, head kept")}
    chosen = {"reset_head": mean["multitask, head reset"] > mean["multitask, head kept"]}  # kept on a tie
    write_sweep("head_select", args.suite, table(rows), chosen, stages, rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
