"""Run configs as JSON files: reading one (``read_json``), laying a JSON object over a frozen
settings dataclass (``overridden``), with errors that name the file or the key, and the JSON
object that gives a settings dataclass back (``config_dict``, what ``--show-config`` prints).

The Shakespeare suites read their config with ``read_json`` (lift_ext.shakespeare.config); the
vision and text suites lay it over their Settings with ``overridden`` (``lift-ext demo --suite
vision|text --config FILE``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path


class ConfigError(ValueError):
    """A configuration value or file is invalid (the message names it)."""


def read_json(path) -> dict:
    """The JSON object in the config file ``path`` (ConfigError naming the file otherwise)."""
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid JSON: {exc}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"config file {str(p)!r}: a config must be a JSON object, got {type(d).__name__}")
    return d


def overridden(defaults, overrides: dict, where: str = ""):
    """``defaults`` (a dataclass instance) with the keys of ``overrides`` (a JSON object) laid
    over it: a field holding a dataclass takes a nested object (its keys over that dataclass),
    a tuple field a list, a bool field a bool, an int field an int, a float field a number, a
    str field a string; a field whose default is None or a dict takes the value as given (the
    settings check it). Unknown keys, nulls and values of the wrong kind raise ConfigError
    naming the key (``where``: the path of ``defaults`` itself, e.g. "lift."); so do the
    dataclass's own checks of the result. Keys left out keep their defaults."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where.rstrip('.') or 'a config'} must be a JSON object, got {type(overrides).__name__}")
    names = [f.name for f in dataclasses.fields(defaults)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ConfigError(f"unknown config key(s) {[where + k for k in unknown]}; known under "
                          f"{where.rstrip('.') or 'the top level'}: {', '.join(names)}")
    changes = {name: _value(getattr(defaults, name), value, where + name) for name, value in overrides.items()}
    try:
        return dataclasses.replace(defaults, **changes)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where.rstrip('.') or 'config'}: {exc}") from None


def config_dict(settings) -> dict:
    """The JSON object a config file holds to give ``settings`` (a dataclass instance) through
    ``overridden``: its fields, nested dataclasses as objects, tuples as lists, and the fields
    whose value is None left out (a config file has no null: a left-out key keeps its default)."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(settings))


def _value(default, value, key: str):
    """``value`` as the config's value of ``key``, whose default is ``default`` (overridden)."""
    if value is None:
        raise ConfigError(f"{key} is null: give a value, or leave the key out to keep the default "
                          f"({json.dumps(default, default=str)})")
    if dataclasses.is_dataclass(default):
        return overridden(default, value, key + ".")
    if isinstance(default, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {json.dumps(value)}")
        return tuple(value)
    kinds = ((bool, "true or false", (bool,)), (int, "an integer", (int,)), (float, "a number", (int, float)),
             (str, "a string", (str,)))
    for kind, said, accepted in kinds:
        if isinstance(default, kind):
            if isinstance(value, bool) != (kind is bool) or not isinstance(value, accepted):
                raise ConfigError(f"{key} must be {said}, got {json.dumps(value)}")
            return float(value) if kind is float else value
    return value


__all__ = ["ConfigError", "read_json", "overridden", "config_dict"]
