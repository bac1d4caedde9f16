"""Tasks as the LiFT layer sees them: a number of examples and a way to draw minibatches."""
from typing import Any, Protocol, Tuple

import torch


class Task(Protocol):
    """One task's data. `num_examples` is n_i (the likelihood is a sum over n_i examples);
    `batch(generator)` returns a minibatch for the loss function; `full()` all examples."""

    num_examples: int

    def batch(self, generator: torch.Generator) -> Any: ...

    def full(self) -> Any: ...


class TensorTask:
    """A task whose examples are rows of tensors sharing the leading dimension n.
    `batch` draws `batch_size` distinct rows (all of them when n <= batch_size)."""

    def __init__(self, *tensors: torch.Tensor, batch_size: int = 16):
        if not tensors:
            raise ValueError("TensorTask needs at least one tensor")
        n = tensors[0].shape[0]
        if n < 1 or any(t.shape[0] != n for t in tensors):
            raise ValueError(f"all tensors need the same leading size >= 1, got {[t.shape[0] for t in tensors]}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.tensors: Tuple[torch.Tensor, ...] = tensors
        self.num_examples = int(n)
        self.batch_size = batch_size

    def batch(self, generator: torch.Generator) -> Tuple[torch.Tensor, ...]:
        if self.num_examples <= self.batch_size:
            return self.tensors
        index = torch.randperm(self.num_examples, generator=generator)[: self.batch_size]
        return tuple(t[index.to(t.device)] for t in self.tensors)

    def full(self) -> Tuple[torch.Tensor, ...]:
        return self.tensors
