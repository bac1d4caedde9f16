"""The settings of LiFT's chains and of meta-test adaptation, as frozen, self-checking configs.

    LangevinConfig     the theta step of a chain: lr, temperature, pSGLD (preconditioned,
                       alpha, eps) and tasks_per_step
    PaperHierarchy     the paper's hierarchy: one shared prior phi ~ N(mu0, sigma^2 I), theta_i |
                       phi ~ N(phi, beta^2 I), and the online-EM mixture over phi samples that is
                       its meta-test prior (gmm_components, burn_in, thin)
    MixtureHierarchy   the mixture of hierarchies: K = components shared adapters phi_k, z_i, pi
                       (docs/design.md sections 10 and 12: warm-up, Dirichlet, shift, z update)
    MapConfig          meta-test adaptation to the MAP by (preconditioned) descent, stopping rule
    SamplingConfig     meta-test adaptation by pSGLD sampling, the samples kept for averaging

Each is validated on construction (a ValueError or TypeError naming the field, as the samplers
always raised), compares by value, and has a JSON round trip: `to_dict()` / `from_dict()`
(with its "type", so `config_from_dict` rebuilds any of them) and `to_json()` / `from_json()`.
An option of one mode is a field of that mode's config only: a mixture's `warmup_steps` cannot
be given to the paper's hierarchy, nor `tol` to sampling.

Units: `lr` of LangevinConfig is in the units of the gradient the chain is given (SGLDGibbs:
the summed gradient of -log p(D_i | theta); LiFT: the mean loss, see lift_ext.lift.trainer).
"""
import dataclasses
import json
from typing import Any, Dict, Optional, Type, Union

from lift_ext import validate
from lift_ext.lift.mixture import MAX_COMPONENTS


class _Config:
    """JSON round trip of a frozen dataclass config (its fields are plain numbers, strings,
    booleans or None)."""

    def to_dict(self) -> Dict[str, Any]:
        """{"type": the class name, field: value, ...}."""
        return {"type": type(self).__name__, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]):
        """The config `to_dict` gave (its "type" must be this class's, where present)."""
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict needs a dict, got {type(data).__name__}")
        fields = dict(data)
        kind = fields.pop("type", cls.__name__)
        if kind != cls.__name__:
            raise ValueError(f"a {kind} config cannot be read as a {cls.__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise TypeError(f"{cls.__name__} has no field(s) {unknown}; its fields are {sorted(known)}")
        return cls(**fields)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

@dataclasses.dataclass(frozen=True)
class LangevinConfig(_Config):
    """The theta step: theta <- theta - lr (g + (theta - c)/beta^2) + sqrt(2 lr T) xi, or its
    RMSprop-preconditioned form (pSGLD: square average v <- alpha v + (1 - alpha) g^2, step
    scaled by 1/(sqrt(v) + eps'), docs/design.md section 3), over `tasks_per_step` tasks at a
    time (per shard in a sharded chain). lr > 0 (half the paper's eta), temperature T >= 0."""

    lr: float
    temperature: float = 1.0
    preconditioned: bool = False
    alpha: float = 0.99
    eps: float = 1e-8
    tasks_per_step: int = 1

    def __post_init__(self):
        _set(self, "lr", validate.number("lr", self.lr))
        _set(self, "temperature", validate.number("temperature", self.temperature, inclusive=True))
        validate.boolean("preconditioned", self.preconditioned)
        _set(self, "alpha", validate.number("alpha", self.alpha, inclusive=True, high=1.0))
        _set(self, "eps", validate.number("eps", self.eps))
        _set(self, "tasks_per_step", validate.integer("tasks_per_step", self.tasks_per_step, 1))

@dataclasses.dataclass(frozen=True)
class PaperHierarchy(_Config):
    """phi ~ N(mu0, sigma^2 I), theta_i | phi ~ N(phi, beta^2 I) (sigma, beta > 0, units of
    theta). phi is drawn exactly from its conditional ("gibbs") or by a Langevin step of size
    `lr_phi` ("langevin", the paper's eq. 9; lr_phi None = the chain's lr). After `burn_in`
    steps every `thin`-th phi feeds an online-EM mixture of `gmm_components` components, the
    meta-test prior."""

    sigma: float = 0.01
    beta: float = 0.01
    phi_update: str = "gibbs"
    lr_phi: Optional[float] = None
    burn_in: int = 0
    thin: int = 1
    gmm_components: int = 1

    def __post_init__(self):
        _check_scales(self)
        validate.one_of("phi_update", self.phi_update, ("gibbs", "langevin"))
        if self.lr_phi is not None:
            if self.phi_update != "langevin":
                raise ValueError(f"lr_phi applies to phi_update='langevin' only, got lr_phi={self.lr_phi!r} "
                                 "with phi_update='gibbs' (the exact draw has no step size)")
            _set(self, "lr_phi", validate.number("lr_phi", self.lr_phi))
        _set(self, "burn_in", validate.integer("burn_in", self.burn_in))
        _set(self, "thin", validate.integer("thin", self.thin, 1))
        _set(self, "gmm_components", validate.integer("gmm_components", self.gmm_components, 1))

Z_UPDATES = ("distance", "likelihood")

@dataclasses.dataclass(frozen=True)
class MixtureHierarchy(_Config):
    """pi ~ Dir(dirichlet_alpha 1_K), phi_k ~ N(mu0, sigma^2 I), z_i ~ Cat(pi), theta_i | z_i = k
    ~ N(phi_k, beta^2 I), K = `components`, each phi_k, z_i and pi drawn exactly. `warmup_steps`
    one-phi steps come before k-means sets z; `shift_lr` > 0 adds the non-centred shift of each
    component with its members (docs/design.md section 12); `z_update` "likelihood" redraws z_i
    given the task's likelihood at each phi_k (needs a grad_fn with `losses`). `sigma` and
    `beta` are in adapter-weight units; the components stay apart only while beta is small
    against the spread of the task adapters: with beta well above it every component explains
    every task about as well, the z draws follow the weights and the components merge
    (docs/benchmark.md, "Vision suite")."""

    components: int = 1
    sigma: float = 0.01
    beta: float = 0.01
    dirichlet_alpha: float = 1.0
    warmup_steps: int = 0
    shift_lr: float = 0.0
    z_update: str = "distance"

    def __post_init__(self):
        _set(self, "components", validate.integer("components", self.components, 1, MAX_COMPONENTS))
        _check_scales(self)
        _set(self, "dirichlet_alpha", validate.number("dirichlet_alpha", self.dirichlet_alpha))
        _set(self, "warmup_steps", validate.integer("warmup_steps", self.warmup_steps))
        _set(self, "shift_lr", validate.number("shift_lr", self.shift_lr, inclusive=True))
        validate.one_of("z_update", self.z_update, Z_UPDATES)

Hierarchy = Union[PaperHierarchy, MixtureHierarchy]

@dataclasses.dataclass(frozen=True)
class MapConfig(_Config):
    """Meta-test adaptation to the MAP of J (lift_ext.lift.adapt): at most `steps` steps of
    size lr (per example, mean-loss units; with `preconditioned` an RMSprop step size), J on
    the whole support set every `eval_every` steps; stop when the best J improved by at most
    `tol` (J's units: the loss per example) over the last `patience` evaluations."""

    steps: int = 200
    lr: float = 1e-3
    preconditioned: bool = True
    tol: float = 1e-3
    patience: int = 3
    eval_every: int = 10

    def __post_init__(self):
        _check_adaptation(self)
        _set(self, "tol", validate.number("tol", self.tol, inclusive=True))
        _set(self, "patience", validate.integer("patience", self.patience, low=1))
        _set(self, "eval_every", validate.integer("eval_every", self.eval_every, low=1))

@dataclasses.dataclass(frozen=True)
class SamplingConfig(_Config):
    """Meta-test adaptation by pSGLD sampling of the tempered posterior (temperature T / n):
    exactly `steps` steps of size lr (as MapConfig's); after `burn_in` steps (None: steps // 2)
    every `thin`-th iterate is kept."""

    steps: int = 200
    lr: float = 1e-3
    preconditioned: bool = True
    temperature: float = 1.0
    burn_in: Optional[int] = None
    thin: int = 1

    def __post_init__(self):
        _check_adaptation(self)
        _set(self, "temperature", validate.number("temperature", self.temperature, inclusive=True))
        if self.burn_in is not None:
            _set(self, "burn_in", validate.integer("burn_in", self.burn_in))
        _set(self, "thin", validate.integer("thin", self.thin, low=1))

    @property
    def kept_after(self) -> int:
        """The burn-in in steps (burn_in, or steps // 2 when it is None)."""
        return self.steps // 2 if self.burn_in is None else self.burn_in

AdaptConfig = Union[MapConfig, SamplingConfig]
_CONFIGS: Dict[str, Type[_Config]] = {cls.__name__: cls for cls in (
    LangevinConfig, PaperHierarchy, MixtureHierarchy, MapConfig, SamplingConfig)}

def config_from_dict(data: Dict[str, Any]) -> _Config:
    """Any config of this module from its `to_dict()` (chosen by its "type")."""
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in _CONFIGS:
        raise ValueError(f"not a lift_ext config: its type {kind!r} is not one of {sorted(_CONFIGS)}")
    return _CONFIGS[kind].from_dict(data)

def check_type(name: str, value: Any, *types: type) -> Any:
    """`value` if it is an instance of one of `types`, else a TypeError naming `name`."""
    if not isinstance(value, types):
        wanted = " or ".join(t.__name__ for t in types)
        raise TypeError(f"{name} must be a {wanted}, got {type(value).__name__}")
    return value

def _set(config, name: str, value: Any) -> None:
    """Store the checked (normalised) value of a frozen config's field."""
    object.__setattr__(config, name, value)

def _check_scales(config) -> None:
    _set(config, "sigma", validate.scale("sigma", config.sigma))
    _set(config, "beta", validate.scale("beta", config.beta))

def _check_adaptation(config) -> None:
    _set(config, "steps", validate.integer("steps", config.steps))
    _set(config, "lr", validate.number("lr", config.lr))
    validate.boolean("preconditioned", config.preconditioned)

__all__ = ["LangevinConfig", "PaperHierarchy", "MixtureHierarchy", "Hierarchy", "MapConfig", "SamplingConfig",
           "AdaptConfig", "config_from_dict", "check_type", "MAX_COMPONENTS"]
