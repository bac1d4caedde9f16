"""lift_ext.config_file: a JSON object laid over a frozen settings dataclass (nested
dataclasses, lists to tuples, the kind of each value checked, the dataclass's own checks), every
refusal naming the key; and read_json's refusals naming the file."""
import json
from dataclasses import dataclass, field
from typing import Optional

import pytest

from lift_ext.config_file import ConfigError, overridden, read_json


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    steps: int = 10
    preconditioned: bool = True

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@dataclass(frozen=True)
class Outer:
    inner: Inner = Inner()
    seeds: tuple = (0, 1)
    split: str = "test"
    limit: Optional[dict] = None
    names: tuple = field(default=("a", "b"))


def test_keys_over_the_defaults_nested_and_converted():
    got = overridden(Outer(), {"inner": {"lr": 3, "preconditioned": False}, "seeds": [0, 1, 2], "limit": {"test": 1}})
    assert got == Outer(inner=Inner(lr=3.0, steps=10, preconditioned=False), seeds=(0, 1, 2), limit={"test": 1})
    assert isinstance(got.inner.lr, float) and isinstance(got.seeds, tuple)
    assert overridden(Outer(), {}) == Outer()


@pytest.mark.parametrize("overrides, message", [
    ({"nope": 1}, r"unknown config key\(s\) \['nope'\]; known under the top level: inner, seeds"),
    ({"inner": {"lrr": 1}}, r"unknown config key\(s\) \['inner.lrr'\]; known under inner: lr, steps"),
    ({"inner": None}, r"inner is null: give a value, or leave the key out"),
    ({"inner": 3}, r"inner must be a JSON object, got int"),
    ({"inner": {"steps": 2.5}}, r"inner.steps must be an integer, got 2.5"),
    ({"inner": {"steps": True}}, r"inner.steps must be an integer, got true"),
    ({"inner": {"lr": "fast"}}, r'inner.lr must be a number, got "fast"'),
    ({"inner": {"preconditioned": 1}}, r"inner.preconditioned must be true or false, got 1"),
    ({"seeds": 3}, r"seeds must be a list, got 3"),
    ({"split": 1}, r"split must be a string, got 1"),
    ({"inner": {"steps": 0}}, r"inner: steps must be >= 1, got 0"),
])
def test_refusals_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        overridden(Outer(), overrides)


def test_read_json_refusals_name_the_file(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"seeds": [0]}))
    assert read_json(good) == {"seeds": [0]}
    for name, text, message in (("missing.json", None, "does not exist"), ("bad.json", "{", "is not valid JSON"),
                                ("list.json", "[1]", "must be a JSON object, got list")):
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(ConfigError, match=f"config file '{path}'.*{message}"):
            read_json(path)


def test_config_dict_gives_the_settings_back():
    """config_dict: nested objects, lists for tuples, None-valued fields left out; laid over the
    defaults it yields the settings it was made of."""
    from lift_ext.config_file import config_dict
    settings = Outer(inner=Inner(lr=0.5), seeds=(3, 4), limit={"test": 2})
    shown = config_dict(settings)
    assert shown["inner"] == {"lr": 0.5, "steps": 10, "preconditioned": True} and shown["seeds"] == [3, 4]
    assert "limit" not in config_dict(Outer())
    assert overridden(Outer(), json.loads(json.dumps(shown))) == settings
