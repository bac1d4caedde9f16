"""The vision suite (lift_ext.vision): headroom, then the ranking of every method
(lift_ext.vision.demo, as ``lift-ext demo --suite vision``), or with ``--select`` the staged
meta-val sweep the defaults were chosen by, or with ``--starts SPLIT`` where LiFT's adaptation
starts on the tasks of SPLIT (a diagnostic: nothing is chosen by it).

Usage: python benchmarks/vision_headroom.py [--quick] [--pool-ceiling] [--val-headroom]
       [--select | --starts val|test]
       [--out FILE] [--cache DIR] [--threads N] [--workers N]
"""
import argparse
import dataclasses
import json
from pathlib import Path

import torch

from lift_ext.files import atomic_open
from lift_ext.harness import methods as hm
from lift_ext.harness import report, stats
from lift_ext.vision import bench, demo
from lift_ext.vision import tasks as vt


LR_GRID = (3e-4, 1e-3, 3e-3)  # a first sweep also had 1e-2: 20.0 % against 58.7 % at 1e-3
BETA_GRID = (0.1, 0.3, 1.0)
STEPS_GRID = (150, 600)


def _val_scores(suite: bench.Suite, settings: bench.Settings, method: str, workers: int) -> dict:
    """{(seed, task): meta-val accuracy %} of ``method`` under ``settings``."""
    suite.settings = settings
    return stats.flatten(bench.ranking(suite, (method,), workers=workers)["acc"][method])


def _val_mean(suite: bench.Suite, settings: bench.Settings, method: str, workers: int) -> float:
    value = stats.mean_se(list(_val_scores(suite, settings, method, workers).values()))[0]
    print(f"meta-val {method}: {value:.2f} at {_changed(settings)}", flush=True)
    return value


def _changed(settings: bench.Settings) -> str:
    default = bench.Settings()
    keys = ("adapt_lr", "reset_head")
    out = [f"{k}={getattr(settings, k)}" for k in keys if getattr(settings, k) != getattr(default, k)]
    out += [f"lift.{k}={getattr(settings.lift, k)}" for k in ("components", "beta", "adapt_beta", "steps", "warmup")
            if getattr(settings.lift, k) != getattr(default.lift, k)]
    return ", ".join(out) or "the defaults"


def components_grid(suite: bench.Suite) -> tuple:
    """LiFT's K tried: the groups, the label sets of the meta-train tasks, one per meta-train task."""
    train = [suite.tasks[i].spec for i in suite.split["train"]]
    return len(vt.GROUPS), len({spec.label_set for spec in train}), len(train)


def select(suite: bench.Suite, workers: int = 1) -> dict:
    """The staged meta-val sweep (seeds 0 and 1) the defaults were chosen by: adaptation lr
    by independent fine-tuning; whether a learned start's head is reset, by multitask; then
    LiFT's components K at beta 0.1, its beta at that K, then its chain length at that beta
    (reported, not chosen: the longer chain costs 4x the CPU budget of a default run), with one
    beta for the chain and the meta-test prior (adapt_beta None), as when it chose. The later
    stages (warm-up, lr, sigma, and the chain's beta under the meta-test prior's adapt_beta 1.0)
    are benchmarks/chain_select.py runs at the settings this sweep kept. ``workers``: the
    ranking's processes (the same values for any number).
    Returns {setting: meta-val mean accuracy (%)}."""
    base = dataclasses.replace(suite.settings, eval_split="val", seeds=(0, 1),
                               lift=dataclasses.replace(suite.settings.lift, adapt_beta=None))
    tried = {}

    def run(method, **changes):
        lift = {k[5:]: changes.pop(k) for k in list(changes) if k.startswith("lift_")}
        settings = dataclasses.replace(base, **changes, lift=dataclasses.replace(base.lift, **lift))
        tried[f"{method}: {_changed(settings)}"] = value = _val_mean(suite, settings, method, workers)
        return value

    lr = max(LR_GRID, key=lambda v: run("independent", adapt_lr=v))
    reset = max((False, True), key=lambda v: run("multitask", adapt_lr=lr, reset_head=v))
    k = max(components_grid(suite), key=lambda v: run("lift", adapt_lr=lr, reset_head=reset, lift_components=v,
                                                              lift_beta=0.1))
    beta = max(BETA_GRID, key=lambda v: run("lift", adapt_lr=lr, reset_head=reset, lift_components=k, lift_beta=v))
    for steps in STEPS_GRID:
        run("lift", adapt_lr=lr, reset_head=reset, lift_components=k, lift_beta=beta, lift_steps=steps)
    return tried


def starts(suite: bench.Suite, split: str, seed: int = 0) -> list:
    """Per task of ``split`` under ``seed``: the component LiFT's adaptation starts from (the
    best support score), the meta-train tasks the chain assigned to it, whether one of them
    shares the task's label set (a sibling) and where the siblings' components rank by that
    score; the query accuracy (%) of LiFT and of independent fine-tuning. One chain of the
    default settings."""
    settings = dataclasses.replace(suite.settings, eval_split=split)
    suite.settings = settings
    b, s = suite.bench(), settings.lift
    lift = hm.lift_chain(b, s.components, s, seed)
    prior, config = lift.meta_test_prior(), settings.map_config()
    labels = {t.spec.name: t.spec.label_set for t in suite.tasks}
    train = [t.name for t in b.splits["train"]]
    component_of = dict(zip(train, lift.sampler.assignments.tolist()))
    rows, done = [], hm.Adaptations()
    for task in b.splits[split]:
        out = done.adapt(b, task, prior, config, seed)
        order = torch.argsort(out.scores, descending=True).tolist()
        siblings = [n for n in train if labels[n] == labels[task.name]]
        rows.append({"task": task.name, "component": out.component,
                     "holds": [n for n in train if component_of[n] == out.component],
                     "sibling_in_component": any(component_of[n] == out.component for n in siblings),
                     "sibling_component_ranks": sorted(order.index(component_of[n]) for n in siblings),
                     "lift": hm.adapted_scores(b, task, prior, config, seed, adaptations=done)["acc"],
                     "independent": hm.adapted_scores(b, task, b.initial(seed), config, seed)["acc"]})
        r = rows[-1]
        print(f"| {r['task']} | {r['component']}: {', '.join(r['holds'])} | {'yes' if r['sibling_in_component'] else 'no'} "
              f"| {r['sibling_component_ranks']} | {r['lift']:.1f} | {r['independent']:.1f} |", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 + 3 tasks, 2 seeds, short loops (a smoke run)")
    p.add_argument("--select", action="store_true", help="run the meta-val sweep of the defaults instead")
    p.add_argument("--starts", choices=("val", "test"), help="where LiFT's adaptation starts on that split, seed 0")
    p.add_argument("--pool-ceiling", action="store_true",
                   help="add the whole-pool ceiling to the headroom (about 4 CPU s a task; not in the default run)")
    p.add_argument("--val-headroom", action="store_true",
                   help="the headroom on the meta-val tasks too (about 40 CPU s more; not in the default run)")
    p.add_argument("--out", default="results/vision_headroom.json", help="JSON output file")
    p.add_argument("--cache", default=None, help="cache directory (default $LIFT_EXT_CACHE or ~/.cache/lift_ext)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes the ranking runs in, the default run's and --select's (default 0: one per CPU; "
                        "the same scores for any number)")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    if args.select and args.starts:
        p.error("--select and --starts are different runs: give one")
    settings = dataclasses.replace(bench.QUICK if args.quick else bench.Settings(), pool_ceiling=args.pool_ceiling,
                                   val_headroom=args.val_headroom)
    if not (args.select or args.starts):
        demo.run(settings, Path(args.out), cache=args.cache, workers=args.workers)
        return 0
    stages = {}
    suite = bench.Suite(settings, cache=args.cache, progress=True)
    if args.select:
        record = {"select": report.timed(stages, "select", lambda: select(suite, args.workers))}
        print("\n".join(f"| {k} | {v:.2f} |" for k, v in record["select"].items()))
    else:
        print("| task | start: component and its meta-train tasks | a sibling in it | siblings' components' ranks "
              "| LiFT (%) | independent (%) |\n|---|---|---|---|---:|---:|")
        record = {"starts": report.timed(stages, "starts", lambda: starts(suite, args.starts)), "split": args.starts}
    with atomic_open(Path(args.out)) as fh:
        fh.write(json.dumps({**record, "stages": stages, "machine": report.machine()}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
