"""`lift-ext meta-train` / `demo` under a launcher (lift_ext.shakespeare.launch): two gloo ranks
on the CPU, each a `python -m lift_ext.cli` process given torchrun's environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), and `demo` under torchrun itself. A 2-rank
meta-train equals the one-process run with lift_shards = 2 bitwise (the LiFT meta-test prior
and the library); rank 0 alone writes; a config error stops every rank with one line and exit
code 2, and an error of rank 0 before the chains stops the other rank too (no hang)."""
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import skip_module_without_the_application  # noqa: E402

skip_module_without_the_application("transformers", "peft")

from lift_ext.checkpoint import _verified_payload  # noqa: E402
from lift_ext.shakespeare import launch, stages  # noqa: E402
from lift_ext.shakespeare.lift_methods import check_launch  # noqa: E402
from lift_ext.shakespeare.config import BenchConfig, ConfigError  # noqa: E402
from lift_ext.shakespeare.stages import StageError  # noqa: E402

# --quick shrunk further: 8 meta-train roles, a 1-layer 32-wide backbone, 12 chain steps of 4
# tasks (2 per shard), the mixture prior with its shift and a k-means warm-up (the gathered
# thetas), and two methods of rank 0 alone: a baseline and retrieval (its per-role library).
TINY = {"methods": ["lift", "multitask", "retrieval"], "max_train": 8, "max_val": 2, "max_test": 2,
        "meta_steps": 12, "tasks_per_step": 4, "n_components": 2, "adapt_steps": 2,
        "backbone": {"n_layer": 1, "n_embd": 32, "n_head": 2, "steps": 20, "batch_size": 8}}
TIMEOUT = 150  # seconds for a whole launch (a hang fails the test instead of blocking it)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _config(tmp_path, **extra) -> str:
    path = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}.json"
    path.write_text(json.dumps({**TINY, **extra}))
    return str(path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(cache, **extra) -> dict:
    env = dict(os.environ, LIFT_EXT_CACHE=str(cache), **extra)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in extra:
            env.pop(name, None)
    return env


def _launch(cache, args_of_rank, world=2):
    """Run `python -m lift_ext.cli <args_of_rank(r)>` as rank r of `world`; [(code, stdout, stderr)]."""
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "lift_ext.cli", *args_of_rank(r)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir(),
                              env=_env(cache, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world),
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in range(world)]
    out = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
            out.append((proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


def _one_process(cache, *args):
    proc = subprocess.run([sys.executable, "-m", "lift_ext.cli", *args], capture_output=True, text=True,
                          cwd=tempfile.gettempdir(), env=_env(cache), timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _stage_file(path: Path) -> dict:
    return torch.load(io.BytesIO(_verified_payload(str(path))), weights_only=False)


def _error_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if line.strip()]


def test_two_ranks_equal_one_process_with_two_shards_and_only_rank0_writes(tmp_path, cache):
    cfg = _config(tmp_path)
    outputs = [tmp_path / "rank0", tmp_path / "rank1"]  # each rank its own --output: rank 1 writes nothing
    runs = _launch(cache, lambda r: ["meta-train", "--quick", "--no-progress", "--config", cfg,
                                     "--output", str(outputs[r])])
    for code, _, stderr in runs:
        assert code == 0, stderr[-3000:]
    assert "wrote" in runs[0][1] and runs[1][1] == ""
    assert sorted(p.name for p in outputs[0].iterdir()) == ["meta_state.pt"] and not outputs[1].exists()

    _one_process(cache, "meta-train", "--quick", "--no-progress", "--config", _config(tmp_path, lift_shards=2),
                 "--output", str(tmp_path / "one"))
    two, one = _stage_file(outputs[0] / "meta_state.pt"), _stage_file(tmp_path / "one" / "meta_state.pt")
    assert two["fingerprint"] == one["fingerprint"] and two["config"]["lift_shards"] == 2
    assert two["stages"]["meta_train"]["world"] == {"world_size": 2, "backend": "gloo"}
    assert one["stages"]["meta_train"]["world"] == {"world_size": 1, "backend": None}
    a, b = two["seeds"][0]["state"], one["seeds"][0]["state"]
    for key in ("means", "variances", "weights"):  # bitwise: two partials sum as in one process
        assert torch.equal(a["priors"]["lift"][key], b["priors"]["lift"][key]), key
    assert torch.equal(a["library"], b["library"]) and torch.equal(a["keys"], b["keys"])
    assert torch.equal(a["starts"]["multitask"], b["starts"]["multitask"])
    assert a["info"]["lift"]["shards"] == 2 and a["info"]["lift"]["ranks"] == 2
    assert b["info"]["lift"]["ranks"] == 1
    # the 2-rank stage file is another chain than the one-process lift_shards 0 run: refused, naming the key
    with pytest.raises(StageError, match=r"it differs in lift_shards \(file 2, this config 0\)"):
        stages.load("meta", BenchConfig.from_dict(dict(TINY), quick=True), outputs[0])
    assert stages.load("meta", BenchConfig.from_dict(dict(TINY, lift_shards=2), quick=True), outputs[0])


def test_demo_under_torchrun(tmp_path, cache):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "lift_ext.cli", "demo", "--quick", "--no-progress", "--config", _config(tmp_path),
                           "--output", str(out)], capture_output=True, text=True, cwd=tempfile.gettempdir(),
                          env=_env(cache), timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["stages"]["meta_train"]["world"] == {"world_size": 2, "backend": "gloo"}
    assert results["config"]["lift_shards"] == 2 and set(results["methods"]) == set(TINY["methods"])
    assert proc.stdout.count("wrote ") == 3  # meta_state.pt, adapted.pt, the results: rank 0 only


@pytest.mark.parametrize("extra, words", [
    ({"lift_z_update": "likelihood"}, "lift_z_update 'likelihood' does not run sharded"),
    ({"tasks_per_step": 3}, "tasks_per_step (3) must be a multiple of the number of LiFT shards (2"),
    ({"lift_shards": 3, "tasks_per_step": 6}, "lift_shards (3) must be a multiple of the number of ranks (2)"),
])
def test_a_config_error_is_one_line_and_exit_2_on_every_rank(tmp_path, cache, extra, words):
    cfg = _config(tmp_path, **extra)
    runs = _launch(cache, lambda r: ["meta-train", "--quick", "--config", cfg, "--output", str(tmp_path / "o")])
    for code, _, stderr in runs:
        assert code == 2 and _error_lines(stderr) == [_error_lines(stderr)[0]], stderr[-3000:]
        assert stderr.startswith("lift-ext: error: ") and words in stderr
    assert not (tmp_path / "o").exists()


def test_an_error_of_rank0_before_the_chains_stops_the_other_rank(tmp_path, cache):
    # 12 tasks per step from 8 roles: found by rank 0 once the data is loaded
    cfg = _config(tmp_path, tasks_per_step=12)
    runs = _launch(cache, lambda r: ["meta-train", "--quick", "--config", cfg, "--output", str(tmp_path / "o")])
    (code0, _, err0), (code1, _, err1) = runs
    assert code0 == 2 and "tasks_per_step (12) exceeds the number of meta-train roles (8)" in err0, err0[-3000:]
    assert code1 == 2 and _error_lines(err1) == ["lift-ext: error: rank 0 stopped before the chains (its error is "
                                                 "above); rank 1 stops too"], err1[-3000:]
    assert not (tmp_path / "o").exists()


def test_launch_config_checks_and_the_fingerprint():
    quick = BenchConfig.from_dict(dict(TINY), quick=True)
    world = launch.World(rank=0, size=2)
    assert check_launch(quick, launch.ONE) is quick  # one process, lift_shards 0: as before
    assert check_launch(quick, world).lift_shards == 2
    assert quick.fingerprint("meta-train") != check_launch(quick, world).fingerprint("meta-train")
    no_lift = BenchConfig.from_dict(dict(TINY, methods=["multitask"], tasks_per_step=1), quick=True)
    assert check_launch(no_lift, world) is no_lift  # no chain: nothing to shard
    with pytest.raises(ConfigError, match="lift_shards=2"):
        check_launch(BenchConfig.from_dict(dict(TINY, lift_shards=2, lift_z_update="likelihood"), quick=True),
                     launch.ONE)
    with pytest.raises(ConfigError, match=r"tasks_per_step \(4\) must be a multiple of lift_shards \(3\)"):
        BenchConfig.from_dict(dict(TINY, lift_shards=3), quick=True)


@pytest.mark.parametrize("env, words", [({"WORLD_SIZE": "two"}, "WORLD_SIZE='two'"),
                                        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 must be below WORLD_SIZE=2")])
def test_a_bad_launch_environment_is_named(monkeypatch, env, words):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=words):
        launch.from_environment()


def test_a_launch_environment_without_its_rendezvous_is_named(monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = BenchConfig.from_dict(dict(TINY), quick=True)
    with pytest.raises(ConfigError, match="MASTER_ADDR.*launch with torchrun, or unset WORLD_SIZE"):
        launch.join(cfg, launch.World(rank=0, size=2))
