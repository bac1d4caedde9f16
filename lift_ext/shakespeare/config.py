"""The benchmark's configuration: one JSON-serialisable dataclass, validated on construction.

Two suites share roles, splits and backbone: "families" (the default; each role's targets pass
through its family's permutation, docs/design.md section 11) and "roles" (plain next-character
prediction, the earlier benchmark; `ROLES_DEFAULTS` restores its settings). Budgets are counted
in gradient evaluations of one minibatch of ``batch_size`` windows (windows are ``seq_len + 1``
characters), so every meta-training method gets the same ``meta_steps`` and every method
adapts to a test role with the same ``adapt_steps``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from lift_ext import validate
from lift_ext.config_file import ConfigError, read_json
from lift_ext.shakespeare.backbone import BackboneConfig

METHODS = ("lift", "lift_k1", "lift_paper", "lift_sgld", "lift_ts", "independent", "multitask", "reptile",
           "fomaml", "retrieval", "mbc", "oracle", "backbone")
# The library-based peers (lift_ext.shakespeare.peers): the option each chooses on meta-val,
# as (its symbol, the config key listing the values tried).
PEER_OPTIONS = {"mbc": ("C", "mbc_clusters"), "retrieval": ("k", "retrieval_k")}
SUITES = ("families", "roles")
EVAL_SPLITS = ("test", "val")
LIFT_PRIORS = ("mixture", "paper")
# The calibration pair is in the defaults: lift_sgld (SGLD adaptation, predictions averaged) and
# lift_ts (lift's MAP adapters with a temperature fitted on each support set, the non-Bayesian
# reference; it costs no adaptation of its own); so are the published library-based peers mbc
# and retrieval (lift_ext.shakespeare.peers).
FAMILY_METHODS = ("lift", "lift_k1", "lift_paper", "lift_sgld", "lift_ts", "independent", "multitask", "reptile",
                  "fomaml", "retrieval", "mbc", "oracle", "backbone")
ROLES_METHODS = ("lift", "lift_k1", "lift_sgld", "lift_ts", "independent", "multitask", "reptile", "fomaml",
                 "retrieval", "mbc")
# The roles suite is the benchmark of docs/benchmark.md's roles section, unchanged: these
# values replace the family suite's defaults when "suite" is "roles".
ROLES_DEFAULTS = dict(methods=list(ROLES_METHODS), seeds=[0], lift_prior="paper", meta_steps=1500, sigma=0.1,
                      beta=0.05, lift_lr=3e-2, tasks_per_step=1, adapt_steps=15, adapt_lrs=[3e-5, 1e-4],
                      adapt_eval_every=0)


# sigma and beta (adapter-weight units) outside this range overflow float32 in the chain's
# precisions and variances (1 / scale^2, scale^2 times the task count).
SCALE_RANGE = (1e-6, 1e6)


def _check(check, *args, **kwargs):
    """Run a lift_ext.validate check, turning its error (which names the key) into ConfigError."""
    try:
        return check(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None


@dataclass
class BenchConfig:
    """Everything that determines a benchmark run (docs/benchmark.md describes each field).

    Suite: ``suite`` ("families" or "roles"); families: ``families`` (F), ``family_seed``,
    ``family_swaps`` (letter pairs each non-identity family swaps), ``within_family`` (rare pairs
    each role swaps on top, 0 = none). Data: ``min_lines``, ``n_support`` / ``n_query`` windows
    per role, at most ``max_train`` meta-train, ``max_val`` meta-val and ``max_test`` meta-test
    roles (0 = all; the first ones in the split's key order); ``eval_split`` "val" scores the
    meta-val roles instead of the meta-test ones (for choosing hyper-parameters). Adapter:
    LoRA rank ``lora_r``, scale ``lora_alpha``. LiFT: ``lift_prior`` ("mixture": K shared
    adapters in the hierarchy; "paper": one phi and an online-EM mixture over its samples),
    ``sigma``, ``beta`` (prior and task scales, adapter-weight units), ``temperature``,
    ``lift_lr`` (with ``lift_preconditioned`` an RMSprop step size of the pSGLD theta steps,
    else per example in mean-loss units), ``n_components`` (K), ``burn_in`` as a fraction of
    ``meta_steps``, ``thin``. Baselines: ``meta_lr`` (RMSprop step of multitask, of the oracle's
    family adapters, of Reptile's and FO-MAML's inner loops and of FO-MAML's outer step),
    ``inner_steps``, ``outer_lr`` (Reptile's interpolation factor); the library-based peers
    (lift_ext.shakespeare.peers): ``mbc_clusters``, the numbers of clusters C MBC trains
    adapters for, and ``retrieval_k``, the numbers k of library adapters retrieval merges; each
    method's C or k is chosen per seed on the meta-val roles together with its adaptation lr.
    LiFT's chains take ``tasks_per_step`` tasks per step (each on batch_size // tasks_per_step
    windows); ``lift_shards`` S > 0 makes them `ShardedLiFT` chains of S shards (tasks_per_step / S
    tasks per shard and step; under torchrun the shards are spread over the ranks, and 0 means one
    per rank; in one process 0 is the unsharded `LiFT` chain); the mixture prior's first
    ``lift_warmup`` fraction of steps is one-phi warm-up; its non-centred moves (docs/design.md
    section 12): ``lift_shift_lr`` (step of the shift of each component with its members,
    0 = off) and ``lift_z_update`` ("likelihood": z also redrawn by how well each component fits
    the task's minibatch; "distance": by distance only).
    Adaptation: at most ``adapt_steps`` RMSprop-preconditioned steps with the learning rate
    picked per method from ``adapt_lrs`` on the meta-val roles, stopped when the support
    objective, checked every ``adapt_eval_every`` steps (0: at the end only), has improved by
    at most ``adapt_tol`` over ``adapt_patience`` checks; the best iterate is kept.
    ``seeds``: every seed repeats meta-training and adaptation. Backbone: ``backbone``
    (BackboneConfig fields) pre-trained on the text outside every benchmark role (minor
    roles, text outside roles, poems), plus the meta-train roles when ``pretrain_train_roles``."""
    suite: str = "families"
    methods: list = field(default_factory=lambda: list(FAMILY_METHODS))
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    device: str = "cpu"
    # families
    families: int = 4
    family_seed: int = 0
    family_swaps: int = 3
    within_family: int = 0
    # data
    min_lines: int = 150
    n_support: int = 8
    n_query: int = 16
    max_train: int = 0
    max_val: int = 8
    max_test: int = 40
    eval_split: str = "test"
    # backbone and adapter
    backbone: dict = field(default_factory=dict)
    pretrain_train_roles: bool = False
    lora_r: int = 8
    lora_alpha: float = 16.0
    # meta-training (shared budget)
    batch_size: int = 8
    meta_steps: int = 400
    # LiFT
    lift_prior: str = "mixture"
    sigma: float = 0.2
    beta: float = 0.1
    temperature: float = 0.01
    lift_lr: float = 3e-3
    lift_preconditioned: bool = True
    n_components: int = 4
    tasks_per_step: int = 8
    lift_shards: int = 0
    lift_warmup: float = 0.25
    lift_shift_lr: float = 3e-3
    lift_z_update: str = "distance"
    burn_in: float = 0.5
    thin: int = 5
    # baselines
    meta_lr: float = 1e-3
    inner_steps: int = 5
    outer_lr: float = 0.5
    mbc_clusters: list = field(default_factory=lambda: [2, 4, 8])
    retrieval_k: list = field(default_factory=lambda: [1, 4, 16])
    # adaptation
    adapt_steps: int = 5
    adapt_lrs: list = field(default_factory=lambda: [1e-3])
    adapt_tol: float = 0.0
    adapt_patience: int = 1
    adapt_eval_every: int = 5

    def __post_init__(self):
        _check(validate.one_of, "suite", self.suite, SUITES)
        _check(validate.one_of, "eval_split", self.eval_split, EVAL_SPLITS)
        _check(validate.one_of, "lift_prior", self.lift_prior, LIFT_PRIORS)
        _check(validate.one_of, "lift_z_update", self.lift_z_update, ("distance", "likelihood"))
        if not isinstance(self.methods, list) or not self.methods:
            raise ConfigError(f"methods must be a non-empty list of method names, got {self.methods!r}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"methods: unknown method name(s) {unknown} (known: {', '.join(METHODS)})")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods: duplicates in {self.methods}")
        if self.suite == "roles" and "oracle" in self.methods:
            raise ConfigError("methods: 'oracle' (the true family's adapter) needs suite 'families'")
        if not isinstance(self.seeds, list) or not self.seeds:
            raise ConfigError(f"seeds must be a non-empty list of ints >= 0, got {self.seeds!r}")
        for seed in self.seeds:
            _check(validate.integer, "seeds", seed)
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: duplicates in {self.seeds} (a repeated seed repeats the same run and "
                              "would count its roles twice)")
        ints = {"families": 1, "family_seed": 0, "family_swaps": 1, "within_family": 0, "min_lines": 0,
                "n_support": 1, "n_query": 1, "max_train": 0, "max_val": 0, "max_test": 0, "lora_r": 1,
                "batch_size": 1, "meta_steps": 1, "n_components": 1, "tasks_per_step": 1, "thin": 1,
                "lift_shards": 0, "inner_steps": 1, "adapt_steps": 0, "adapt_patience": 1,
                "adapt_eval_every": 0}
        for name, low in ints.items():
            _check(validate.integer, name, getattr(self, name), low)
        for _, name in PEER_OPTIONS.values():
            values = getattr(self, name)
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{name} must be a non-empty list of ints >= 1, got {values!r}")
            for value in values:
                _check(validate.integer, name, value, 1)
            if len(set(values)) != len(values):
                raise ConfigError(f"{name}: duplicates in {values}")
        for name in ("lora_alpha", "lift_lr", "meta_lr", "outer_lr"):
            _check(validate.number, name, getattr(self, name))
        for name in ("sigma", "beta"):  # the chain's float32 precisions 1 / scale^2 must stay finite
            _check(validate.number, name, getattr(self, name), low=SCALE_RANGE[0], inclusive=True,
                   high=SCALE_RANGE[1], high_inclusive=True)
        _check(validate.number, "temperature", self.temperature, inclusive=True)
        _check(validate.number, "burn_in", self.burn_in, inclusive=True, high=1.0)
        _check(validate.number, "lift_warmup", self.lift_warmup, inclusive=True, high=1.0)
        _check(validate.number, "adapt_tol", self.adapt_tol, inclusive=True)
        _check(validate.number, "lift_shift_lr", self.lift_shift_lr, inclusive=True)
        if not isinstance(self.adapt_lrs, list) or not self.adapt_lrs:
            raise ConfigError(f"adapt_lrs must be a non-empty list of numbers > 0, got {self.adapt_lrs!r}")
        for lr in self.adapt_lrs:
            _check(validate.number, "adapt_lrs", lr)
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"device must be a string such as 'cpu' or 'cuda', got {self.device!r}")
        for name in ("pretrain_train_roles", "lift_preconditioned"):
            _check(validate.boolean, name, getattr(self, name))
        backbone_keys = [f.name for f in dataclasses.fields(BackboneConfig)]
        if not isinstance(self.backbone, dict):
            raise ConfigError(f"backbone must be a JSON object with keys among {', '.join(backbone_keys)}")
        unknown = sorted(set(self.backbone) - set(backbone_keys))
        if unknown:
            raise ConfigError(f"backbone: unknown key(s) {unknown}; known: {', '.join(backbone_keys)}")
        try:
            BackboneConfig(**self.backbone)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"backbone: {exc}") from None
        if self.lift_shards and self.tasks_per_step % self.lift_shards:
            raise ConfigError(f"tasks_per_step ({self.tasks_per_step}) must be a multiple of lift_shards "
                              f"({self.lift_shards}): each shard steps tasks_per_step / lift_shards tasks")
        paper_k = "lift_paper" in self.methods or (self.lift_prior == "paper" and "lift" in self.methods)
        if paper_k and self.n_components > 1 and self.lift_samples() < 4 * self.n_components:
            raise ConfigError(f"LiFT keeps {self.lift_samples()} phi samples ((1 - burn_in) * meta_steps / "
                              f"thin) but n_components={self.n_components} needs at least "
                              f"{4 * self.n_components} to initialise its mixture")

    def lift_samples(self) -> int:
        """Number of phi samples the paper prior's mixture is fitted to."""
        return (self.meta_steps - int(self.burn_in * self.meta_steps)) // self.thin

    def backbone_config(self) -> BackboneConfig:
        return BackboneConfig(**self.backbone)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self, stage: str) -> str:
        """SHA-256 (16 hex digits) of the fields that determine the output of ``stage``
        ("meta-train" or "adapt"): a saved stage is reused only with an equal fingerprint."""
        return hashlib.sha256(json.dumps(self.fingerprinted(stage), sort_keys=True).encode()).hexdigest()[:16]

    def fingerprinted(self, stage: str) -> dict:
        """The fields (and values) that ``fingerprint(stage)`` hashes."""
        d = self.to_dict()
        d.pop("device")
        if not d["lift_shards"]:  # 0, the unsharded chain: the fingerprint of a config without the key
            d.pop("lift_shards")
        if stage == "meta-train":
            for k in ("adapt_steps", "adapt_lrs", "adapt_tol", "adapt_patience", "adapt_eval_every", "max_test",
                      "max_val", "eval_split", "retrieval_k"):
                d.pop(k)
        return d

    @classmethod
    def from_dict(cls, d: dict, quick: bool = False) -> "BenchConfig":
        """The config of a JSON object: its keys over the defaults of its suite ("suite",
        default "families"; `ROLES_DEFAULTS` for "roles"), over `quick_config` with ``quick``."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known: {', '.join(sorted(names))}")
        _refuse_nulls(d)
        suite = _check(validate.one_of, "suite", d.get("suite", "families"), SUITES)
        base = dict(ROLES_DEFAULTS) if suite == "roles" else {}
        if quick:
            base.update(quick_config(suite))
        return cls(**{**base, **d})

    @classmethod
    def load(cls, path, quick: bool = False) -> "BenchConfig":
        """Read a JSON config file (any subset of the fields; the rest keep their defaults)."""
        return cls.from_dict(read_json(path), quick)


def candidates(cfg: BenchConfig, method: str) -> list:
    """The (option, lr) pairs ``method`` chooses from on meta-val: MBC's numbers of clusters
    (``mbc_clusters``) or retrieval's numbers of adapters (``retrieval_k``) with every lr of
    ``adapt_lrs``, other methods' lrs with option None ("backbone": none to choose)."""
    if method == "backbone":
        return [(None, cfg.adapt_lrs[0])]
    options = getattr(cfg, PEER_OPTIONS[method][1]) if method in PEER_OPTIONS else [None]
    return [(option, lr) for option in options for lr in cfg.adapt_lrs]


def candidate_name(method: str, option, lr: float) -> str:
    """The key of an (option, lr) pair in val_scores: "0.001", or "C=4, lr=0.001" for MBC."""
    return str(lr) if option is None else f"{PEER_OPTIONS[method][0]}={option}, lr={lr}"


def _refuse_nulls(d: dict) -> None:
    """ConfigError naming the first key (``backbone.<field>`` for nested ones) whose value is
    JSON null: leaving a key out keeps its default, null is no value."""
    defaults = {**BenchConfig().to_dict(), **(ROLES_DEFAULTS if d.get("suite") == "roles" else {})}
    nested = d.get("backbone") if isinstance(d.get("backbone"), dict) else {}
    items = [(k, v, defaults.get(k)) for k, v in d.items()] + \
        [(f"backbone.{k}", v, getattr(BackboneConfig(), k, None)) for k, v in nested.items()]
    for key, value, default in items:
        if value is None:
            raise ConfigError(f"{key} is null: give a value, or leave the key out to keep the default "
                              f"({json.dumps(default)})")


def quick_config(suite: str = "families") -> dict:
    """Overrides for ``--quick`` (a smoke run of 15-30 s on 2 CPU cores): a tiny
    backbone, few roles, tiny budgets. LiFT's theta step is smaller than in the full runs: its
    phi averages the task vectors of only 16 roles here (128 in a full run), so the random walk
    each task vector takes at a large step survives the average and breaks the tiny model
    (lift_lr 3e-2: LiFT at 8 % against 29 % for the other methods)."""
    quick = dict(max_train=16, max_val=3, max_test=6, seeds=[0], meta_steps=120, n_components=2, burn_in=0.5,
                 thin=3, mbc_clusters=[2, 4], retrieval_k=[1, 4], adapt_steps=5, adapt_lrs=[1e-4], inner_steps=3,
                 lift_lr=3e-3,
                 backbone=dict(n_layer=1, n_embd=64, n_head=2, steps=150, batch_size=16))
    if suite == "families":
        quick.update(n_components=4)
    return quick
