"""The device-check scripts run on the CPU kernels too, so they cannot rot between GPU runs:
benchmarks/sanitizer_driver.py (every kernel, odd sizes), benchmarks/bench_sampler.py and
benchmarks/bench_sampler_work.py (small sizes); and
the CPU noise benchmark benchmarks/bench_noise.py (small sizes); the LoRA ViT benchmark
benchmarks/lora_vit_sgld.py (--quick); the Shakespeare chain benchmark benchmarks/bench_chain.py
(--quick, where the application's extra and texts are installed); and the meta-val sweeps'
helpers (benchmarks/harness_suites.py's table, benchmarks/head_select.py's twins and table,
benchmarks/chain_select.py's parsing, choice and table)."""
import os
import runpy
import sys

import pytest

import lift_ext
from conftest import requires_cuda, skip_module_without_the_application

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _run_script(name, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [name] + argv)
    monkeypatch.syspath_prepend(BENCHMARKS)
    runpy.run_path(os.path.join(BENCHMARKS, name), run_name="__main__")


def test_sanitizer_driver_runs_every_kernel_on_cpu(monkeypatch, capsys):
    _run_script("sanitizer_driver.py", ["--device", "cpu"], monkeypatch)
    assert "all kernels ran on cpu" in capsys.readouterr().out


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_bench_sampler_reports_step_and_kernels(device, monkeypatch, capsys):
    _run_script("bench_sampler.py", ["--device", device, "--dim", "4099", "--tasks", "3"], monkeypatch)
    out = capsys.readouterr().out
    assert "SGLDGibbs.step()" in out and "overhead ratio" in out


def test_bench_sampler_work_reports_every_prior(monkeypatch, capsys):
    _run_script("bench_sampler_work.py", ["--tasks", "12", "--dim", "257", "--components", "3",
                                          "--tasks-per-step", "4", "--repeats", "1"], monkeypatch)
    out = capsys.readouterr().out
    assert f"normals path {lift_ext.cpu_isa()}" in out
    assert all(f"{case} " in out for case in ("paper", "mixture", "mixture, shift_lr > 0", "mixture, shift, by lik."))


def test_bench_noise_reports_the_cpu_path_and_ratios(monkeypatch, capsys):
    _run_script("bench_noise.py", ["--quick", "--repeats", "1"], monkeypatch)
    out = capsys.readouterr().out
    assert f"normals path {lift_ext.cpu_isa()}" in out
    assert "normal_/philox" in out and "eager/T=1" in out and "T=1/T=0" in out


def test_lora_vit_benchmark_runs_every_method(monkeypatch, capsys, tmp_path):
    pytest.importorskip("timm")
    pytest.importorskip("peft")
    pytest.importorskip("sklearn")
    _run_script("lora_vit_sgld.py", ["--quick", "--out", str(tmp_path / "vit.json")], monkeypatch)
    out = capsys.readouterr().out
    for method in ("psgld_t0", "psgld_t1", "psgld_t1_averaged", "kernel_rule_t1", "defaults_t1", "adamw"):
        assert f"`{method}`" in out
    assert (tmp_path / "vit.json").exists()


def test_bench_chain_reports_every_row_and_the_ratio(monkeypatch, capsys):
    skip_module_without_the_application("transformers", "peft")
    _run_script("bench_chain.py", ["--quick"], monkeypatch)
    out = capsys.readouterr().out
    assert f"normals path {lift_ext.cpu_isa()}" in out
    for row in ("lift, grads one task at a time", "lift, grads vmapped", "lift, multi-adapter pass", "multitask",
                "sampler only", "B task grads, one at a time", "B task grads, vmapped", "B task grads, multi-adapter",
                "one grad of B x batch windows"):
        assert f"{row} " in out
    assert "ratio lift / multitask: " in out
    assert "multi-adapter rows: TaskGradients.batched = True, passes ['multi-adapter']" in out


def test_head_select_twins_every_component_with_the_initial_head(monkeypatch):
    """benchmarks/head_select.py's fresh-head twins: 2K components, the first K the prior's
    own, the twins equal to them but on the head coordinates (the initial adapter's there),
    the weights halved (still summing to 1), beta kept."""
    import importlib

    import torch
    from lift_ext.lift import MixturePrior

    monkeypatch.syspath_prepend(BENCHMARKS)
    head_select = importlib.import_module("head_select")
    gen = torch.Generator().manual_seed(0)
    prior = MixturePrior(torch.randn(3, 6, generator=gen), torch.rand(3, 6, generator=gen),
                         torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), 0.3)
    head = torch.tensor([False, False, False, False, True, True])
    init = torch.randn(6, generator=gen)
    twins = head_select.fresh_head_twins(prior, head, init)
    assert twins.n_components == 6 and twins.beta == prior.beta
    assert torch.equal(twins.means[:3], prior.means) and torch.equal(twins.variances[3:], prior.variances)
    assert torch.equal(twins.means[3:, ~head], prior.means[:, ~head])
    assert torch.equal(twins.means[3:, head], init[head].expand(3, 2))
    assert torch.allclose(twins.weights, torch.cat([prior.weights, prior.weights]) / 2)
    assert float(twins.weights.sum()) == pytest.approx(1.0)


def test_sweep_tables_pair_every_row_with_independent(monkeypatch):
    """harness_suites.meta_val_table (peer_select's and head_select's table): each row's mean ±
    s.e. and, but for independent's own row, its paired difference from independent."""
    import importlib

    monkeypatch.syspath_prepend(BENCHMARKS)
    suites = importlib.import_module("harness_suites")
    head_select = importlib.import_module("head_select")
    rows = {"independent": {(0, "a"): 50.0, (0, "b"): 60.0}, "multitask, head reset": {(0, "a"): 52.0, (0, "b"): 61.0},
            "multitask, head kept": {(0, "a"): 55.0, (0, "b"): 60.0}, "lift": {(0, "a"): 54.0, (0, "b"): 64.0},
            "lift, fresh-head twins": {(0, "a"): 53.0, (0, "b"): 64.0}}
    lines = suites.meta_val_table(rows).splitlines()
    assert lines[2] == "| independent | 55.00 ± 5.00 |  |"
    assert lines[3] == "| multitask, head reset | 56.50 ± 4.50 | +1.50 ± 0.50 |"
    text = head_select.table(rows)
    assert text.startswith(suites.meta_val_table(rows))
    assert "multitask kept minus reset: +1.00 ± 2.00 pp; LiFT with twins minus LiFT: -0.50 ± 0.50 pp" in text


def test_chain_select_parses_chooses_and_pairs_with_the_default(monkeypatch):
    """benchmarks/chain_select.py: values parsed as the LiftSettings field's type, bad fields and
    grids refused; the value of highest meta-val mean chosen, the default on a tie; the table
    pairs every other value with the default's row."""
    import importlib

    monkeypatch.syspath_prepend(BENCHMARKS)
    chain_select = importlib.import_module("chain_select")
    assert chain_select.parse_values("lr", "1e-3, 3e-3") == [1e-3, 3e-3]
    assert chain_select.parse_values("steps", "150,600") == [150, 600]
    for field, text in (("nope", "1,2"), ("lr", "1e-3"), ("lr", "1e-3,1e-3"), ("steps", "1.5,2")):
        with pytest.raises(ValueError, match="--field|--values"):
            chain_select.parse_values(field, text)
    rows = {"independent": {(0, "a"): 50.0, (0, "b"): 60.0},
            "lift, lr = 0.001": {(0, "a"): 52.0, (0, "b"): 62.0},
            "lift, lr = 0.003": {(0, "a"): 53.0, (0, "b"): 61.0},
            "lift, lr = 0.01": {(0, "a"): 55.0, (0, "b"): 61.0}}
    assert chain_select.choose(rows, "lr", [1e-3, 3e-3, 1e-2], 1e-3) == 1e-2
    rows["lift, lr = 0.01"] = {(0, "a"): 50.0, (0, "b"): 64.0}  # ties the default (57.0)
    assert chain_select.choose(rows, "lr", [1e-3, 3e-3, 1e-2], 1e-3) == 1e-3
    text = chain_select.table(rows, "lr", [1e-3, 3e-3, 1e-2], 1e-3)
    assert "| lift, lr = 0.003 | 57.00 ± 4.00 | +2.00 ± 1.00 |" in text
    assert "lift, lr = 0.003 minus lr = 0.001: +0.00 ± 1.00 pp (paired over 2 (seed, task) pairs)" in text
