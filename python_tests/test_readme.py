"""The README's "LiFT on your own model" example runs as written."""
import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
if not README.exists():
    pytest.skip("README.md is not beside this test", allow_module_level=True)
pytest.importorskip("peft")
pytest.importorskip("transformers")


def _section_code(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(title):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_lift_on_your_own_model_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(_section_code("## LiFT on your own model"), "README.md", "exec"), namespace)
    lift, adapted = namespace["lift"], namespace["adapted"]
    assert adapted.stop_reason in ("no_improvement", "max_steps")
    assert lift.meta_test_prior().n_components == 3
    assert os.path.exists("my_adapter/adapter_config.json") and os.path.exists("lift.pt")
