"""The benchmark's configuration: one JSON-serialisable dataclass, validated on construction.

Budgets are counted in gradient evaluations of one minibatch of ``batch_size`` windows
(windows are ``seq_len + 1`` characters), so every meta-training method gets the same
``meta_steps`` and every method adapts to a test role with the same ``adapt_steps``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from lift_ext.shakespeare.backbone import BackboneConfig

METHODS = ("lift", "lift_k1", "independent", "multitask", "reptile", "fomaml", "retrieval", "mbc")


class ConfigError(ValueError):
    """A configuration value or file is invalid (the message names it)."""


@dataclass
class BenchConfig:
    """Everything that determines a benchmark run (see docs/benchmark.md for each field).

    Data: ``min_lines``, ``n_support`` / ``n_query`` windows per role, at most ``max_train``
    meta-train, ``max_val`` meta-val and ``max_test`` meta-test roles (0 = all; the first ones
    in the split's key order). Adapter: LoRA rank ``lora_r``, scale ``lora_alpha``.
    LiFT: ``sigma``, ``beta`` (prior and task scales, adapter-weight units), ``temperature``,
    ``lift_lr`` (with ``lift_preconditioned`` an RMSprop step size of the pSGLD theta steps,
    else per example in mean-loss units), ``n_components`` (K), ``burn_in`` as a fraction
    of ``meta_steps``, ``thin``. Baselines: ``meta_lr`` (RMSprop step of multitask, of
    Reptile's and FO-MAML's inner loops and of FO-MAML's outer step), ``inner_steps``,
    ``outer_lr`` (Reptile's interpolation factor), ``mbc_clusters``. Adaptation: ``adapt_steps``
    RMSprop-preconditioned steps with the learning rate picked per method from ``adapt_lrs``
    on the meta-val roles. ``seeds``: every seed repeats meta-training and adaptation.
    Backbone: ``backbone`` (BackboneConfig fields) pre-trained on the text outside every
    benchmark role (minor roles, text outside roles, poems), plus the meta-train roles when
    ``pretrain_train_roles`` (then meta-training sees no text the backbone has not seen)."""
    methods: list = field(default_factory=lambda: list(METHODS))
    seeds: list = field(default_factory=lambda: [0])
    device: str = "cpu"
    # data
    min_lines: int = 150
    n_support: int = 8
    n_query: int = 16
    max_train: int = 0
    max_val: int = 8
    max_test: int = 40
    # backbone and adapter
    backbone: dict = field(default_factory=dict)
    pretrain_train_roles: bool = False
    lora_r: int = 8
    lora_alpha: float = 16.0
    # meta-training (shared budget)
    batch_size: int = 8
    meta_steps: int = 1500
    # LiFT
    sigma: float = 0.1
    beta: float = 0.05
    temperature: float = 0.01
    lift_lr: float = 3e-2
    lift_preconditioned: bool = True
    n_components: int = 4
    burn_in: float = 0.5
    thin: int = 5
    # baselines
    meta_lr: float = 1e-3
    inner_steps: int = 5
    outer_lr: float = 0.5
    mbc_clusters: int = 4
    # adaptation
    adapt_steps: int = 15
    adapt_lrs: list = field(default_factory=lambda: [3e-5, 1e-4])

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods or not isinstance(self.methods, list):
            raise ConfigError(f"methods: unknown method name(s) {unknown} (known: {', '.join(METHODS)})")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods: duplicates in {self.methods}")
        if not self.seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in self.seeds):
            raise ConfigError(f"seeds must be a non-empty list of ints >= 0, got {self.seeds!r}")
        ints = {"min_lines": 0, "n_support": 1, "n_query": 1, "max_train": 0, "max_val": 0, "max_test": 0,
                "lora_r": 1, "batch_size": 1, "meta_steps": 1, "n_components": 1, "thin": 1,
                "inner_steps": 1, "mbc_clusters": 1, "adapt_steps": 0}
        for name, low in ints.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f"{name} must be an int >= {low}, got {v!r}")
        for name in ("lora_alpha", "sigma", "beta", "temperature", "lift_lr", "meta_lr", "outer_lr"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0 \
                    or (v == 0 and name != "temperature"):
                raise ConfigError(f"{name} must be a finite number > 0 (temperature >= 0), got {v!r}")
        if not (isinstance(self.burn_in, (int, float)) and 0 <= self.burn_in < 1):
            raise ConfigError(f"burn_in is a fraction of meta_steps in [0, 1), got {self.burn_in!r}")
        if not self.adapt_lrs or any(not isinstance(v, (int, float)) or not v > 0 for v in self.adapt_lrs):
            raise ConfigError(f"adapt_lrs must be a non-empty list of numbers > 0, got {self.adapt_lrs!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"device must be a string such as 'cpu' or 'cuda', got {self.device!r}")
        for name in ("pretrain_train_roles", "lift_preconditioned"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.backbone, dict):
            raise ConfigError("backbone must be an object of BackboneConfig fields")
        try:
            BackboneConfig(**self.backbone)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"backbone: {exc}") from None
        if self.n_components > 1 and self.lift_samples() < 4 * self.n_components:
            raise ConfigError(f"LiFT keeps {self.lift_samples()} phi samples ((1 - burn_in) * meta_steps / "
                              f"thin) but n_components={self.n_components} needs at least "
                              f"{4 * self.n_components} to initialise its mixture")

    def lift_samples(self) -> int:
        """Number of phi samples LiFT feeds its mixture."""
        return (self.meta_steps - int(self.burn_in * self.meta_steps)) // self.thin

    def backbone_config(self) -> BackboneConfig:
        return BackboneConfig(**self.backbone)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self, stage: str) -> str:
        """SHA-256 (16 hex digits) of the fields that determine the output of ``stage``
        ("meta-train" or "adapt"): a saved stage is reused only with an equal fingerprint."""
        d = self.to_dict()
        d.pop("device")
        if stage == "meta-train":
            for k in ("adapt_steps", "adapt_lrs", "max_test", "max_val"):
                d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict) -> "BenchConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known: {', '.join(sorted(names))}")
        return cls(**d)

    @classmethod
    def load(cls, path) -> "BenchConfig":
        """Read a JSON config file (any subset of the fields; the rest keep their defaults)."""
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {str(p)!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {str(p)!r} cannot be read: {exc}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid JSON: {exc}") from None
        return cls.from_dict(d)


def quick_config() -> dict:
    """Overrides for ``--quick`` (a smoke run in about 2 minutes on 2 CPU cores): a tiny
    backbone, few roles, tiny budgets."""
    return dict(max_train=16, max_val=3, max_test=6, meta_steps=120, n_components=2, burn_in=0.5, thin=5,
                mbc_clusters=2, adapt_steps=5, adapt_lrs=[1e-4], inner_steps=3,
                backbone=dict(n_layer=1, n_embd=64, n_head=2, steps=150, batch_size=16))
