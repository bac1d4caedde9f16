"""The benchmark's commands of the `lift-ext` command line (lift_ext.cli dispatches to them).

    lift-ext demo [--quick] [--fresh] [--output DIR] [--device cuda] [--methods a,b] [--config cfg.json]
    lift-ext meta-train [--quick] [--config cfg.json] [--output DIR]
    lift-ext adapt      [--quick] [--config cfg.json] [--output DIR]
    lift-ext evaluate   [--quick] [--config cfg.json] [--output DIR]

Under torchrun (`torchrun --nproc-per-node P -m lift_ext.cli meta-train ...`, or `demo`) LiFT's
chains run sharded over the P ranks (lift_ext.shakespeare.launch); rank 0 writes every file.

`demo` reuses a stage file in --output that is intact and made with the same config (and says
so); --fresh recomputes every stage. Errors a user can cause (bad config, unknown method,
missing data package, unwritable output or cache, stage files from another config or damaged,
a diverging chain) print one line `lift-ext: error: ...` naming the config key, flag or
environment variable to change, and exit with 2, before any heavy work where the check allows;
a failed run leaves no empty output directory behind.
"""
import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Optional

CONFIG_KEYS = """\
config file: a JSON object with any subset of these keys (others keep their suite's defaults):
  suite         "families" (targets through each role's family permutation) or "roles" (plain)
  methods       list of: lift, lift_k1, lift_paper, lift_sgld, lift_ts, independent, multitask,
                reptile, fomaml, retrieval, mbc, oracle (families only), backbone
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
  lift_shift_lr, lift_z_update       mixture chain: shift step (0 = off); "distance" or "likelihood"
  lift_shards   S > 0: LiFT's chains sharded in S shards (tasks_per_step / S tasks each per step);
                0: one per rank under torchrun, the unsharded chain in one process
  burn_in, thin                      paper prior: burn-in fraction of steps; thinning
  meta_lr, inner_steps, outer_lr                                           baselines
  mbc_clusters, retrieval_k          lists of MBC's C and retrieval's k, chosen on meta-val
  adapt_steps, adapt_lrs             most adaptation steps; RMSprop lrs tried on meta-val
  adapt_tol, adapt_patience, adapt_eval_every   stopping rule on the support objective
"""


TRAILER = """\
Stages write into --output: meta_state.pt, adapted.pt, results.json, results.md, ranking.png,
reliability.png.
Larger runs on a GPU, e.g.:  lift-ext demo --device cuda --config big.json  with
  {"max_val": 0, "meta_steps": 20000, "adapt_steps": 100,
   "backbone": {"n_layer": 6, "n_embd": 256, "n_head": 8, "steps": 10000}}
Sharded over P processes (LiFT's chains; rank 0 writes the files):
  torchrun --nproc-per-node P -m lift_ext.cli meta-train --config cfg.json   (gloo; NCCL with --device cuda)
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
    def stage(name: str, help_: str, suites: tuple = ("families", "roles")) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=config_help(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", metavar="FILE",
                       help="JSON config (see below); its keys override the defaults (default: the built-in config)")
        p.add_argument("--quick", action="store_true",
                       help="a smoke run: tiny backbone, few roles, tiny budgets (give it to every stage of a run)")
        p.add_argument("--show-config", action="store_true",
                       help="print the config this command would run with (the suite's defaults, --quick, "
                            "--config, --methods and --suite applied) as a JSON object for --config, and exit")
        p.add_argument("--output", default="results/demo", metavar="DIR",
                       help="directory for stage files and results (default: results/demo)")
        p.add_argument("--cache", default=None, metavar="DIR",
                       help="cache for the parsed corpus and backbone (default: $LIFT_EXT_CACHE or "
                            "~/.cache/lift_ext)")
        p.add_argument("--suite", default=None, choices=suites,
                       help="families (default: each role's targets pass through its family's letter "
                            "permutation) or roles (plain next-character prediction, the earlier benchmark)"
                            + ("; vision or text: the suites of lift_ext.harness (--device does not apply; "
                               "--config lays a JSON object over the suite's Settings; default: the suite a "
                               "--config file names)" if "vision" in suites else ""))
        p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (overrides the config)")
        p.add_argument("--threads", type=int, default=1, metavar="N",
                       help="CPU threads for torch (default 1: the models are tiny, and on a busy "
                            "2-core machine 2 threads oversubscribe it and run ~10x slower)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("--workers", type=int, default=None, metavar="N",
                       help="processes the seeds (Shakespeare suites: of every stage) or the ranking "
                            "(vision / text) run in, one torch thread each (default 0: one per CPU this process "
                            "may use, on Linux, when --threads is 1; 1: this process alone); every score is the "
                            "same to the bit for any N, the wall time shorter")
        return p

    demo = stage("demo", "run a benchmark suite end to end: the Shakespeare suites (meta-train, adapt, "
                         "evaluate, reusing the stage files of an earlier run of the same config in --output) "
                         "or the vision / text suite", suites=("families", "roles", "vision", "text"))
    demo.add_argument("--fresh", action="store_true",
                      help="recompute every stage even where --output holds a matching stage file "
                           "(vision / text: start over instead of resuming from OUTPUT/results.state.pt)")
    demo.add_argument("--methods", default=None, metavar="A,B",
                      help="comma-separated subset of methods (default: all)")
    stage("meta-train", "stage 1: pre-train/load the backbone and meta-train every method "
                        "(writes meta_state.pt)")
    stage("adapt", "stage 2: pick each method's adaptation lr on meta-val roles (when adapt_lrs has "
                   "several) and adapt to every meta-test role (reads meta_state.pt, writes adapted.pt)")
    stage("evaluate", "stage 3: query accuracy of the adapted vectors (reads adapted.pt, writes "
                      "results.json, results.md, ranking.png, reliability.png)")


def _config(args):
    from lift_ext.shakespeare.config import BenchConfig, read_json
    given = read_json(args.config) if args.config else {}
    if args.suite:
        given["suite"] = args.suite
    if getattr(args, "methods", None):
        given["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.device:
        given["device"] = args.device
    return BenchConfig.from_dict(given, quick=args.quick)


def _check_device(device: str) -> None:
    import torch
    from lift_ext.shakespeare.config import ConfigError
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!r} is not a torch device (use cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine")


def _stages(args, cfg, output: Path, common: dict, gate) -> None:
    """Run the meta-train and adapt stages the command asks for; `demo` reuses an intact stage
    file of this config (unless --fresh) and recomputes every stage after one it recomputes.
    Under a launch this is rank 0: it opens `gate` (lift_ext.shakespeare.launch.Gate) for the
    other ranks, at once when it reuses meta_state.pt, else once meta-train has loaded the first
    seed's data and backbone."""
    from lift_ext.shakespeare import runner, stages
    recompute = getattr(args, "fresh", False)
    for kind, run_stage in (("meta", runner.run_meta_train), ("adapt", runner.run_adapt)):
        command = stages.PRODUCER[kind]
        if args.command not in ("demo", command):
            continue
        path = output / stages.FILES[kind]
        if args.command == "demo" and not recompute:
            found = stages.reusable(kind, cfg, output)
            if found["reuse"]:
                rec = found["record"]
                print(f"reusing {path}: {command} of this config, finished {rec.get('finished', '?')} "
                      f"in {rec.get('seconds', '?')} s (--fresh recomputes it)", flush=True)
                gate.open(False)
                continue
            if found["why"]:
                print(f"not reusing it: {found['why']}; running {command} now", flush=True)
        recompute = True  # every later stage depends on this one
        launched = {"world": gate.world, "gate": gate} if kind == "meta" else {}
        print(f"wrote {run_stage(cfg, output, **common, **launched)}", flush=True)


def _user_errors() -> tuple:
    """The errors a user can cause: one line and exit code 2."""
    from lift_ext.shakespeare.cache import CacheError
    from lift_ext.shakespeare.config import ConfigError
    from lift_ext.shakespeare.stages import StageError
    return ConfigError, StageError, CacheError, ModuleNotFoundError, FileNotFoundError, PermissionError


def _run(args) -> int:
    import torch
    from lift_ext import provenance
    from lift_ext.shakespeare import launch, lift_methods, runner
    from lift_ext.shakespeare.cache import cache_dir
    from lift_ext.shakespeare.config import ConfigError

    provenance.source_commit()  # the code this process loaded, before the checkout can change
    world = launch.from_environment()
    cfg = lift_methods.check_launch(_config(args), world)  # on every rank, before any collective
    _check_device(cfg.device)
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    cache = cache_dir(args.cache, knob="--cache")
    torch.set_num_threads(args.threads)
    common = dict(cache=cache, setups={}, progress=not args.no_progress,  # stages share data and models
                  processes=runner.seed_processes(cfg, world, 0 if args.workers is None else args.workers))
    if args.command not in ("demo", "meta-train"):  # adapt / evaluate: rank 0 alone
        if not world.main:
            return 0
        world = launch.ONE
    world = launch.join(cfg, world)
    try:
        gate = launch.Gate(world, torch.device(cfg.device))
        if not world.main:  # the other ranks: the chains of meta-train, no files
            if gate.wait():
                runner.run_meta_train(cfg, Path(args.output), world=world, **common)
            return 0
        try:
            return _lead(args, cfg, Path(args.output), common, gate)
        except BaseException as exc:
            gate.fail(exc, _user_errors())
            raise
    finally:
        launch.leave(world)


def _lead(args, cfg, output: Path, common: dict, gate) -> int:
    """The stages of the command in this process (rank 0 under a launch)."""
    from lift_ext.shakespeare import runner, stages
    from lift_ext.shakespeare.report import markdown_table, write_results
    with runner.new_output(output):
        _stages(args, cfg, output, common, gate)
        if args.command not in ("demo", "evaluate"):
            return 0
        clock = runner.Clock()
        results = runner.run_evaluate(cfg, output, cache=common["cache"], setups=common["setups"],
                                      processes=common["processes"])
        spent = clock.total()
        results["stages"]["evaluate"] = {**stages.stage_record(spent["wall"], spent["cpu"], cfg.device),
                                         "processes": common["processes"]}
        results["seconds"] = round(sum(r["seconds"] for r in results["stages"].values()), 1)
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
    """Run a parsed benchmark command; user errors print one line and return 2 (under a launch
    on every rank; a rank that stops because another one failed prints one line too)."""
    message = missing_extra()
    if message:
        print(f"lift-ext: error: {message}", file=sys.stderr)
        return 2
    from lift_ext.lift.collective import RankFailure
    from lift_ext.shakespeare.launch import RankStopped
    try:
        if args.show_config:
            from lift_ext.config_file import config_dict
            print(json.dumps(config_dict(_config(args)), indent=1))
            return 0
        return _run(args)
    except _user_errors() as exc:
        print(f"lift-ext: error: {exc}", file=sys.stderr)
        return 2
    except RankStopped as exc:
        print(f"lift-ext: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except RankFailure as exc:
        print(f"lift-ext: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lift-ext: interrupted", file=sys.stderr)
        return 130
