"""MBC's number of clusters C and LoRA-Retriever's k chosen on the meta-val tasks of the vision
or text suite (lift_ext.harness.peers).

For seeds 0 and 1 the library of meta-train adapters is trained once (the suite's default
budget); for every C of ``--clusters`` MBC's cluster adapters are trained and every meta-val
task adapted from its routed cluster, and for every k of ``--k`` from its retrieved merge.
The value of highest mean meta-val accuracy is kept (the suites' settings hold it).

    PYTHONPATH=. python benchmarks/peer_select.py --suite vision --clusters 3,7,14 --k 1,3,5
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch
from harness_suites import load_default, meta_val_table, write_sweep

from lift_ext.harness import methods as hm
from lift_ext.harness import peers as harness_peers
from lift_ext.harness import report, stats


def sweep(bench, s: hm.MethodSettings, clusters, ks) -> dict:
    """{row: {(seed, task): meta-val accuracy %}} for independent, mbc C=... and retrieval k=..."""
    rows = {"independent": {}, **{f"mbc C={c}": {} for c in clusters}, **{f"retrieval k={k}": {} for k in ks}}
    for seed in s.seeds:
        library = harness_peers.train_library(bench, s, seed)
        learned = {"independent": bench.initial(seed)}
        for c in clusters:
            learned[f"mbc C={c}"] = harness_peers.train("mbc", bench, dataclasses.replace(s, mbc_clusters=c), seed, library)
        for k in ks:
            learned[f"retrieval k={k}"] = harness_peers.train("retrieval", bench, dataclasses.replace(s, retrieval_k=k),
                                                              seed, library)
        for task in bench.splits["val"]:
            for name, start in learned.items():
                method = name.split(" ")[0]
                rows[name][(seed, task.name)] = hm.method_scores(method, bench, task, start, s, seed)["acc"]
        print(f"seed {seed} done", flush=True)
    return rows


def best(rows: dict, prefix: str, values) -> int:
    """The value of highest mean meta-val accuracy among the rows ``prefix``=value (the first on a tie)."""
    return max(values, key=lambda v: stats.mean_se(list(rows[f"{prefix}={v}"].values()))[0])


def _ints(text: str, name: str, parser) -> list:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        parser.error(f"{name} must be comma-separated integers, got {text!r}")
    if any(v < 1 for v in values):
        parser.error(f"{name} must be >= 1, got {text!r}")
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=("vision", "text"), required=True)
    parser.add_argument("--clusters", default="3,7,14", help="MBC's C values (comma-separated)")
    parser.add_argument("--k", default="1,3,5", help="retrieval's k values (comma-separated)")
    parser.add_argument("--out", default=None, help="JSON file (default results/peer_select_SUITE.json)")
    args = parser.parse_args(argv)
    clusters, ks = _ints(args.clusters, "--clusters", parser), _ints(args.k, "--k", parser)
    torch.set_num_threads(1)
    stages = {}
    bench, s = report.timed(stages, "load", lambda: load_default(args.suite))
    rows = report.timed(stages, "sweep", lambda: sweep(bench, s, clusters, ks))
    chosen = {"mbc_clusters": best(rows, "mbc C", clusters), "retrieval_k": best(rows, "retrieval k", ks)}
    write_sweep("peer_select", args.suite, meta_val_table(rows), chosen, stages, rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
