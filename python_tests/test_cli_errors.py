"""`lift-ext` failures a user can cause: each is one line `lift-ext: error: ...` with exit code 2
naming the user's own knob (config key, flag, environment variable), refused before the
backbone loads where the check allows, and leaving no empty output directory behind."""
import json

import pytest
import torch

from conftest import skip_module_without_the_application  # noqa: E402

skip_module_without_the_application("transformers", "peft", "matplotlib")

from lift_ext.checkpoint import save_atomic  # noqa: E402
from lift_ext.cli import main  # noqa: E402
from lift_ext.shakespeare import backbone, stages  # noqa: E402
from lift_ext.shakespeare.config import BenchConfig  # noqa: E402


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the module: the corpus is parsed (and the quick backbone trained) once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def env(shared_cache, monkeypatch):
    monkeypatch.setenv("LIFT_EXT_CACHE", str(shared_cache))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the command sets torch's threads for this process


@pytest.fixture
def no_backbone(monkeypatch):
    """Loading or training the backbone fails the test: the error must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the backbone was loaded before the error")
    monkeypatch.setattr(backbone, "load_or_pretrain", refuse)


def _fails(capsys, args, *words, absent=()):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("lift-ext: error: "), err
    for word in words:
        assert word in err, (word, err)
    for word in absent:
        assert word not in err, (word, err)
    return err


def _with_config(tmp_path, config: dict, *extra):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config))
    return ["demo", "--quick", "--no-progress", "--config", str(path), "--output", str(tmp_path / "out"), *extra]


@pytest.mark.parametrize("config,words", [
    ({"seeds": [0, 0]}, ("seeds", "duplicates")),
    ({"methods": []}, ("methods", "non-empty")),
    ({"temperature": None}, ("temperature is null", "leave the key out", "0.01")),
    ({"backbone": {"n_layer": None}}, ("backbone.n_layer is null",)),
    ({"backbone": {"n_layers": 2}}, ("n_layers", "n_layer, n_embd, n_head")),
    ({"beta": 1e30}, ("beta", "[1e-06, 1e+06]")),
])
def test_bad_config_is_one_line_before_any_work(config, words, tmp_path, capsys, env, no_backbone):
    _fails(capsys, _with_config(tmp_path, config), *words, absent=("None",) if None in config.values() else ())
    assert not (tmp_path / "out").exists()


def test_empty_split_is_refused_before_the_backbone(tmp_path, capsys, env, no_backbone):
    _fails(capsys, _with_config(tmp_path, {"min_lines": 10 ** 6}), "meta-train", "min_lines")
    assert not (tmp_path / "out").exists(), "the failed run left its output directory behind"


@pytest.mark.parametrize("config,words", [
    ({"max_train": 1, "methods": ["lift", "mbc"]}, ("tasks_per_step (8)", "meta-train roles (1)", "max_train")),
    ({"tasks_per_step": 100, "methods": ["lift"]}, ("tasks_per_step (100)", "meta-train roles (16)")),
    ({"n_components": 50, "methods": ["lift"]}, ("n_components (50)", "meta-train roles (16;")),
    ({"families": 100}, ("families=100", "lower families, family_swaps or within_family")),
])
def test_settings_too_large_for_the_data_are_refused_before_the_backbone(config, words, tmp_path, capsys, env,
                                                                          no_backbone):
    _fails(capsys, _with_config(tmp_path, config), *words)
    assert not (tmp_path / "out").exists()


def test_cache_env_var_pointing_at_a_file(tmp_path, capsys, monkeypatch, no_backbone):
    blocker = tmp_path / "cache-file"
    blocker.write_text("")
    monkeypatch.setenv("LIFT_EXT_CACHE", str(blocker))
    _fails(capsys, ["demo", "--quick", "--output", str(tmp_path / "out")], "LIFT_EXT_CACHE", str(blocker),
           "not a directory", absent=("cache_dir=",))
    assert not (tmp_path / "out").exists()


def test_unwritable_cache_flag_names_the_directory(tmp_path, capsys, no_backbone):
    # /proc/self is a directory no one (root included) can create files in
    _fails(capsys, ["demo", "--quick", "--cache", "/proc/self", "--output", str(tmp_path / "out")],
           "'/proc/self'", "--cache", absent=("cache_dir=", "tmp"))


def test_diverging_chain_names_the_lr_key(tmp_path, capsys, env):
    _fails(capsys, _with_config(tmp_path, {"methods": ["lift_k1"], "lift_lr": 1e4, "meta_steps": 20}),
           "diverged", "lift_lr", "10000")
    assert not (tmp_path / "out").exists()


def _crafted(path, cfg, seeds):
    save_atomic({"format": "lift_ext.shakespeare.meta_state", "version": stages._VERSION,
                 "fingerprint": cfg.fingerprint("meta-train"), "config": cfg.to_dict(), "seeds": seeds,
                 "stages": {}}, str(path))


@pytest.mark.parametrize("seeds,words", [({}, ("its seeds: missing 0",)),
                                         ({0: {"state": {}, "backbone": {}, "timing": {}}}, ("init",)),
                                         ({0: "junk"}, ("seed 0: missing state",))])
def test_crafted_meta_state_is_one_line(seeds, words, tmp_path, capsys, env, no_backbone):
    out = tmp_path / "out"
    out.mkdir()
    _crafted(out / stages.META_FILE, BenchConfig.from_dict({}, quick=True), seeds)
    _fails(capsys, ["adapt", "--quick", "--no-progress", "--output", str(out)], "meta_state.pt",
           "not a valid", "lift-ext meta-train", *words, absent=("KeyError",))


def test_damaged_meta_state_is_one_line(tmp_path, capsys, env, no_backbone):
    out = tmp_path / "out"
    out.mkdir()
    (out / stages.META_FILE).write_bytes(b"not a checkpoint")
    _fails(capsys, ["adapt", "--quick", "--output", str(out)], "meta_state.pt", "lift-ext meta-train")


def test_adding_lora_raises_no_third_party_warning():
    import warnings
    tiny = backbone.BackboneConfig(n_layer=1, n_embd=8, n_head=2, n_positions=16, seq_len=8)
    model = backbone.build_model(12, tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone.add_lora(model, r=2)
