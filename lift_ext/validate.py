"""Argument checks shared by the Python API: each raises ValueError (TypeError for a wrong
kind of object) with a message that names the argument, what was expected and what was given,
and returns the value in the form the caller stores (int, float). Checks run before any state
is touched, so a refused call leaves everything as it was."""
import math
from typing import Any, Iterable, Optional

import torch

# float32's largest finite value: a hyper-parameter beyond it overflows inside the kernels.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
# float32's smallest normal value: a nonzero hyper-parameter below it rounds to 0 or a subnormal.
FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)


def integer(name: str, value: Any, low: int = 0, high: Optional[int] = None) -> int:
    """`value` as an int in [low, high] (bools are refused: True is not a count)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")
    return int(value)


def number(name: str, value: Any, *, low: float = 0.0, inclusive: bool = False,
           high: Optional[float] = None, high_inclusive: bool = False) -> float:
    """`value` as a finite float > low (>= low with inclusive=True), optionally < high
    (<= high with high_inclusive=True), and representable in float32 (the kernels compute in
    float32): |value| <= FLOAT32_MAX, and 0 or |value| >= FLOAT32_TINY (a smaller one rounds
    to 0 or loses its precision)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= low if inclusive else value > low)
    if ok and high is not None:
        ok = value <= high if high_inclusive else value < high
    if not ok:
        bound = f"{'>=' if inclusive else '>'} {low:g}"
        if high is not None:
            bound = f"in {'[' if inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    if abs(value) > FLOAT32_MAX or 0 < abs(value) < FLOAT32_TINY:
        raise ValueError(f"{name} must be within float32's range (0 or {FLOAT32_TINY:g} <= |value| <= "
                         f"{FLOAT32_MAX:g}), got {value!r}")
    return float(value)


def scale(name: str, value: Any) -> float:
    """`value` as a positive float32 standard deviation whose precision 1 / value^2 (which the
    kernels compute in float32) is also within float32's range: value >= ~5.4e-20."""
    value = number(name, value)
    if 1.0 / (value * value) > FLOAT32_MAX:
        raise ValueError(f"{name} must be >= {FLOAT32_MAX ** -0.5:g} (1 / {name}^2 must be within "
                         f"float32's range), got {value!r}")
    return value


def one_of(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """`value` if it is one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def boolean(name: str, value: Any) -> bool:
    """`value` if it is a bool (1 and 0 are refused: a flag is spelled True or False)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def vector(name: str, value: Any, dim: int, device: torch.device) -> torch.Tensor:
    """A Tensor of shape [dim], returned as a new float32 contiguous copy on `device`, checked
    finite after the conversion (a float64 1e300 becomes inf in float32)."""
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != (dim,):
        raise ValueError(f"{name} must be a Tensor of shape [{dim}], got "
                         f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
    out = value.detach().to(device, torch.float32).clone().contiguous()
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} must be finite in float32 (its value overflows or is NaN / Inf)")
    return out
