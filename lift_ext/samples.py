"""`PosteriorSamples`: the samples of an SGLD run over a model's parameters, kept and used.

An SGLD chain (`lift_ext.optim.SGLD` at temperature 1) visits parameter values theta_t whose
distribution approaches the posterior p(theta | D). After a burn-in, every `thin`-th visit is
a sample, and the Bayesian model average of a prediction f is the sample mean

    E[f(x, theta) | D] ~ (1/S) sum_s f(x, theta_s),

with the spread of f over the samples, Var_s f(x, theta_s), its epistemic variance. In the
manner of `torch.optim.swa_utils.AveragedModel`: call `collect()` after each optimizer step;
`average(fn)` runs `fn(model)` at every kept sample and averages, leaving the model as it was.

Storage ("memory": beside the parameters, e.g. on the GPU; "cpu"; or a directory on disk, one
atomically written file per sample) holds at most `max_samples`: when the cap is reached every
other sample is dropped and `thin` doubles, so the kept samples stay evenly spread over the
whole run. Which parameters: those with requires_grad (a peft model's adapter, or every
trainable weight), or the names given.
"""
import os
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import torch

from lift_ext import validate
from lift_ext.files import atomic_open

Storage = Union[str, os.PathLike]
_IN_MEMORY = ("memory", "cpu")


class PosteriorSamples:
    """Thinned parameter samples of `model` during an SGLD run (module docstring).

    burn_in: collect() calls (steps) skipped first; thin: keep every thin-th after them;
    max_samples: the cap (None: no cap; >= 2 otherwise); storage: "memory", "cpu" or a
    directory path (created if missing; it must hold no samples already); names: the
    parameters to keep (default: those with requires_grad)."""

    def __init__(self, model: torch.nn.Module, *, burn_in: int = 0, thin: int = 1,
                 max_samples: Optional[int] = None, storage: Storage = "cpu",
                 names: Optional[Iterable[str]] = None):
        self.burn_in = validate.integer("burn_in", burn_in)
        self.thin = validate.integer("thin", thin, low=1)
        self.max_samples = None if max_samples is None else validate.integer("max_samples", max_samples, low=2)
        named = dict(model.named_parameters())
        if names is None:
            chosen = [n for n, p in named.items() if p.requires_grad]
        else:
            chosen = list(names)
            unknown = [n for n in chosen if n not in named]
            if unknown:
                raise ValueError(f"names lists parameters the model does not have: {unknown[:5]}")
        if not chosen:
            raise ValueError("no parameters to sample: none requires grad; pass names=")
        if not isinstance(storage, (str, os.PathLike)):
            raise TypeError(f"storage must be 'memory', 'cpu' or a directory path, got {type(storage).__name__}")
        self.directory = None if storage in _IN_MEMORY else os.fspath(storage)
        if self.directory is not None:
            os.makedirs(self.directory, exist_ok=True)
            if any(f.startswith("sample_") for f in os.listdir(self.directory)):
                raise ValueError(f"storage directory {self.directory!r} already holds samples: give an empty one")
        self.to_cpu = storage == "cpu"
        self.model = model
        self.params: Dict[str, torch.nn.Parameter] = {n: named[n] for n in chosen}
        self.steps = 0  # collect() calls so far
        self._kept: List[Union[Dict[str, torch.Tensor], str]] = []  # tensors, or file paths
        self._written = 0  # files written so far (names stay unique after drops)

    def __len__(self) -> int:
        return len(self._kept)

    def collect(self) -> bool:
        """Count one step; keep the parameters' current values if this step is a sample
        (steps past burn_in, every thin-th). Returns whether it kept one."""
        since = self.steps + 1 - self.burn_in
        if since <= 0 or since % self.thin:
            self.steps += 1
            return False
        values = {n: p.detach().to("cpu" if self.to_cpu or self.directory else p.device, copy=True)
                  for n, p in self.params.items()}
        if self.directory is None:
            self._kept.append(values)
        else:
            path = os.path.join(self.directory, f"sample_{self._written:08d}.pt")
            with atomic_open(path, "wb") as fh:
                torch.save(values, fh)
            self._written += 1
            self._kept.append(path)
        if self.max_samples is not None and len(self._kept) > self.max_samples:
            self._halve()
        self.steps += 1  # last: a collect() interrupted before here counts nothing
        return True

    def _halve(self) -> None:
        """Drop every other sample (the earlier of each pair) and double thin: the kept ones
        stay every thin-th step after burn_in."""
        dropped, self._kept = self._kept[0::2], self._kept[1::2]
        for entry in dropped:
            if isinstance(entry, str):
                os.remove(entry)
        self.thin *= 2

    def samples(self) -> Iterator[Dict[str, torch.Tensor]]:
        """The kept samples, oldest first, as {parameter name: tensor} (loaded one at a time
        from disk)."""
        for entry in self._kept:
            yield torch.load(entry, weights_only=True) if isinstance(entry, str) else entry

    def average(self, fn: Callable[[torch.nn.Module], torch.Tensor],
                with_variance: bool = False) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Mean over the kept samples of fn(model) computed at each sample (no grad), and with
        `with_variance` also their variance (over samples, divisor S: the epistemic variance).
        The model's parameters are restored afterwards, also when fn raises."""
        if not self._kept:
            raise RuntimeError(f"no sample kept yet: {self.steps} collect() calls, burn_in={self.burn_in}, "
                               f"thin={self.thin}")
        current = {n: p.detach().clone() for n, p in self.params.items()}
        total = total_sq = None
        try:
            with torch.no_grad():
                for sample in self.samples():
                    self._load(sample)
                    out = fn(self.model).detach().double()
                    total = out.clone() if total is None else total.add_(out)
                    if with_variance:
                        total_sq = out * out if total_sq is None else total_sq.add_(out * out)
        finally:
            self._load(current)
        mean = total / len(self._kept)
        if not with_variance:
            return mean
        return mean, (total_sq / len(self._kept) - mean * mean).clamp_min_(0.0)

    def _load(self, values: Dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(values[name])


__all__ = ["PosteriorSamples"]
