"""The benchmark's commands of the `lift-ext` command line (lift_ext.cli dispatches to them).

    lift-ext demo [--quick] [--output DIR] [--device cuda] [--methods a,b] [--config cfg.json]
    lift-ext meta-train --config cfg.json [--output DIR]
    lift-ext adapt      --config cfg.json [--output DIR]
    lift-ext evaluate   --config cfg.json [--output DIR]

Errors a user can cause (bad config, unknown method, missing data package, unwritable output,
stage files from another config) print one line `lift-ext: error: ...` and exit with 2.
"""
import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Optional

CONFIG_KEYS = """\
config file: a JSON object with any subset of these keys (others keep their suite's defaults):
  suite         "families" (targets through each role's family permutation) or "roles" (plain)
  methods       list of: lift, lift_k1, lift_paper, lift_sgld, independent, multitask, reptile,
                fomaml, retrieval, mbc, oracle (families only), backbone
  seeds         list of ints; each repeats meta-training and adaptation
  device        "cpu" or "cuda"
  families, family_seed, family_swaps, within_family   F families; their seed; letter pairs each
                non-identity family swaps; rare pairs each role swaps on top (0 = none)
  min_lines, n_support, n_query      roles kept and windows per role
  max_train, max_val, max_test       roles used per split (0 = all)
  eval_split    "test", or "val" to score meta-val roles (for choosing hyper-parameters)
  backbone      BackboneConfig fields (n_layer, n_embd, n_head, steps, batch_size, lr, ...)
  pretrain_train_roles               also pre-train the backbone on meta-train roles
  lora_r, lora_alpha                 LoRA rank and scale on attention
  batch_size, meta_steps             minibatch windows; meta-training steps per method
  lift_prior    "mixture" (K adapters in the hierarchy) or "paper" (online EM over phi samples)
  sigma, beta, temperature           LiFT prior / task scales, chain temperature
  lift_lr, lift_preconditioned       LiFT theta step (pSGLD: RMSprop step size)
  n_components, tasks_per_step, lift_warmup   K; tasks per chain step; mixture warm-up fraction
  burn_in, thin                      paper prior: burn-in fraction of steps; thinning
  meta_lr, inner_steps, outer_lr, mbc_clusters                             baselines
  adapt_steps, adapt_lrs             most adaptation steps; RMSprop lrs tried on meta-val
  adapt_tol, adapt_patience, adapt_eval_every   stopping rule on the support objective
"""


TRAILER = """\
Stages write into --output: meta_state.pt, adapted.pt, results.json, results.md, results.png.
Larger runs on a GPU, e.g.:  lift-ext demo --device cuda --config big.json  with
  {"max_val": 0, "meta_steps": 20000, "adapt_steps": 100,
   "backbone": {"n_layer": 6, "n_embd": 256, "n_head": 8, "steps": 10000}}
The backbone and parsed corpus are cached in $LIFT_EXT_CACHE (default ~/.cache/lift_ext).
"""
CONFIG_HELP = CONFIG_KEYS + TRAILER


def config_help() -> str:
    """The config keys and each suite's defaults (the epilog of the stage commands)."""
    from lift_ext.shakespeare.config import BenchConfig
    lines = [CONFIG_KEYS]
    for suite in ("families", "roles"):
        d = BenchConfig.from_dict({"suite": suite}).to_dict()
        shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in d.items() if k not in ("suite", "backbone"))
        lines.append(f"defaults of suite {suite!r}: {shown}\n")
    return "\n".join(lines + [TRAILER])


EXTRA_MODULES = ("transformers", "peft", "matplotlib")


def add_commands(sub) -> None:
    """Add the benchmark's subcommands to `sub` (an argparse subparsers object)."""
    def stage(name: str, help_: str, config_required: bool) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=config_help(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", required=config_required, metavar="FILE",
                       help="JSON config (see below)" + ("" if config_required else "; overrides the defaults"))
        p.add_argument("--output", default="results/demo", metavar="DIR",
                       help="directory for stage files and results (default: results/demo)")
        p.add_argument("--cache", default=None, metavar="DIR",
                       help="cache for the parsed corpus and backbone (default: $LIFT_EXT_CACHE or "
                            "~/.cache/lift_ext)")
        p.add_argument("--suite", default=None, choices=("families", "roles"),
                       help="families (default: each role's targets pass through its family's letter "
                            "permutation) or roles (plain next-character prediction, the earlier benchmark)")
        p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (overrides the config)")
        p.add_argument("--threads", type=int, default=1, metavar="N",
                       help="CPU threads for torch (default 1: the models are tiny, and on a busy "
                            "2-core machine 2 threads oversubscribe it and run ~10x slower)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        return p

    demo = stage("demo", "run the Shakespeare benchmark end to end (meta-train, adapt, evaluate): "
                         "about 15 minutes of CPU time on a 2-core machine, backbone pre-training included", False)
    demo.add_argument("--quick", action="store_true",
                      help="a ~2-minute smoke run: tiny backbone, few roles, tiny budgets")
    demo.add_argument("--methods", default=None, metavar="A,B",
                      help="comma-separated subset of methods (default: all)")
    stage("meta-train", "stage 1: pre-train/load the backbone and meta-train every method "
                        "(writes meta_state.pt)", True)
    stage("adapt", "stage 2: pick each method's adaptation lr on meta-val roles and adapt to "
                   "every meta-test role (reads meta_state.pt, writes adapted.pt)", True)
    stage("evaluate", "stage 3: query accuracy of the adapted vectors (reads adapted.pt, writes "
                      "results.json, results.md, results.png)", True)


def _config(args):
    from lift_ext.shakespeare.config import BenchConfig, read_json
    given = read_json(args.config) if args.config else {}
    if args.suite:
        given["suite"] = args.suite
    if getattr(args, "methods", None):
        given["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.device:
        given["device"] = args.device
    return BenchConfig.from_dict(given, quick=getattr(args, "quick", False))


def _check_device(device: str) -> None:
    import torch
    from lift_ext.shakespeare.config import ConfigError
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!r} is not a torch device (use cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine")


def _run(args) -> int:
    from lift_ext.shakespeare import runner
    from lift_ext.shakespeare.report import markdown_table, write_results

    import torch
    from lift_ext.shakespeare.config import ConfigError

    cfg = _config(args)
    _check_device(cfg.device)
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    output = runner.check_output(Path(args.output))
    progress = not args.no_progress
    setups: dict = {}  # the stages of one command share the loaded data and models
    common = dict(cache=args.cache, setups=setups)
    clock = runner.Clock()
    for stage, run_stage in (("meta-train", runner.run_meta_train), ("adapt", runner.run_adapt)):
        if args.command in ("demo", stage):
            path = run_stage(cfg, output, progress=progress, **common)
            clock.lap(stage.replace("-", "_"))
            if args.command == stage:
                print(f"wrote {path}")
                return 0
    import platform
    results = runner.run_evaluate(cfg, output, extra={
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "torch_threads": args.threads}}, **common)
    clock.lap("evaluate")
    results["seconds"] = round(clock.total()["wall"], 1)
    results["timing"] = clock.laps
    paths = write_results(results, output)
    print(markdown_table(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked installation counts as missing
        return False


def missing_extra() -> Optional[str]:
    """A one-line instruction when a package of the `shakespeare` extra is missing, else None."""
    missing = [m for m in EXTRA_MODULES if not _installed(m)]
    if not missing:
        return None
    return (f"`lift-ext demo` and the stage commands need the optional extra 'shakespeare' "
            f"({', '.join(missing)} not installed): pip install \"lift_ext[shakespeare]\"")


def run(args) -> int:
    """Run a parsed benchmark command; user errors print one line and return 2."""
    from lift_ext.shakespeare.config import ConfigError
    from lift_ext.shakespeare.runner import StageError
    message = missing_extra()
    if message:
        print(f"lift-ext: error: {message}", file=sys.stderr)
        return 2
    try:
        return _run(args)
    except (ConfigError, StageError, ModuleNotFoundError, FileNotFoundError, PermissionError) as exc:
        print(f"lift-ext: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lift-ext: interrupted", file=sys.stderr)
        return 130
