"""Every ```python snippet of the README runs as written, in a fresh namespace (the CUDA-graph
one only where a GPU and the CUDA kernels are), and the examples produce what they say."""
import os
import re
from pathlib import Path

import pytest
import torch

import lift_ext

README = Path(__file__).resolve().parents[1] / "README.md"
if not README.exists():
    pytest.skip("README.md is not beside this test", allow_module_level=True)


def snippets():
    """(section title, code) of every python block, in order."""
    text = README.read_text(encoding="utf-8")
    found, title = [], None
    for match in re.finditer(r"^(#+ [^\n]*)$|```python\n(.*?)```", text, re.S | re.M):
        if match.group(1):
            title = match.group(1).lstrip("# ").strip()
        else:
            found.append((title, match.group(2)))
    return found


def _run(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_the_readme_has_the_snippets_these_tests_cover():
    titles = [title for title, _ in snippets()]
    assert titles.count("Using `sgld_step` in your own training loop") == 2  # the loop and the CUDA graph
    assert titles.count("Using `lift_ext.optim.SGLD`") == 3
    assert titles.count("LiFT on your own model") == 2  # GPT-2 and timm ViT


@pytest.mark.parametrize("index", range(len(snippets())))
def test_snippet_runs_as_written(index, tmp_path, monkeypatch):
    title, code = snippets()[index]
    for package in ("peft", "transformers", "timm"):
        if f"from {package}" in code or f"import {package}" in code:
            pytest.importorskip(package)
    if "cuda" in code and not (torch.cuda.is_available() and lift_ext.cuda_kernels_built()):
        pytest.skip("a CUDA snippet: needs a GPU and the CUDA kernels")
    if "cuda" in code:  # the CUDA-graph snippet continues the training loop's
        code = snippets()[index - 1][1].replace("torch.nn.Linear(784, 10)", "torch.nn.Linear(784, 10).cuda()") \
            .replace("torch.randn(32, 784)", "torch.randn(32, 784, device='cuda')") \
            .replace("torch.randint(10, (32,))", "torch.randint(10, (32,), device='cuda')") + code.replace("...", "")
    namespace = _run(code, tmp_path, monkeypatch)
    if "lift" in namespace and "adapted" in namespace:
        adapted = namespace["adapted"]
        assert adapted.stop_reason in ("no_improvement", "max_steps")
        assert namespace["lift"].meta_test_prior().n_components in (2, 3)
    if "export_peft" in code:
        assert os.path.exists("my_adapter/adapter_config.json") and os.path.exists("lift.pt")


def test_the_optim_example_samples_the_regression_posterior(tmp_path, monkeypatch):
    """The optim.SGLD snippet's samples: mean within 5 % (relative norm) of the exact posterior
    mean of its Bayesian linear regression."""
    (code,) = [code for title, code in snippets() if title == "Using `lift_ext.optim.SGLD`" and "Linear(20" in code]
    ns = _run(code, tmp_path, monkeypatch)
    x, y = ns["x"].double(), ns["y"].double()
    precision = x.T @ x / 0.25 + torch.eye(20, dtype=torch.float64)
    exact = torch.linalg.solve(precision, x.T @ y / 0.25)
    got = ns["posterior_mean"].double().reshape(-1)
    assert float((got - exact).norm() / exact.norm()) < 0.05
