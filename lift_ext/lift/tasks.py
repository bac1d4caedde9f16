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
    """A task whose examples are rows of tensors sharing the leading dimension (rows).
    `batch` draws `batch_size` distinct rows (all of them when rows <= batch_size).

    `examples_per_row` is how many likelihood terms one row stands for when the loss
    function averages over them, e.g. the predicted characters of a text window (or the
    window stride when windows overlap): num_examples = rows * examples_per_row, so that
    num_examples * (mean loss) is the task's summed negative log-likelihood."""

    def __init__(self, *tensors: torch.Tensor, batch_size: int = 16, examples_per_row: int = 1):
        if not tensors:
            raise ValueError("TensorTask needs at least one tensor")
        n = tensors[0].shape[0]
        if n < 1 or any(t.shape[0] != n for t in tensors):
            raise ValueError(f"all tensors need the same leading size >= 1, got {[t.shape[0] for t in tensors]}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not isinstance(examples_per_row, int) or isinstance(examples_per_row, bool) or examples_per_row < 1:
            raise ValueError(f"examples_per_row must be an int >= 1, got {examples_per_row!r}")
        self.tensors: Tuple[torch.Tensor, ...] = tensors
        self.num_rows = int(n)
        self.num_examples = int(n) * examples_per_row
        self.batch_size = batch_size

    def batch(self, generator: torch.Generator) -> Tuple[torch.Tensor, ...]:
        if self.num_rows <= self.batch_size:
            return self.tensors
        index = torch.randperm(self.num_rows, generator=generator)[: self.batch_size]
        return tuple(t[index.to(t.device)] for t in self.tensors)

    def full(self) -> Tuple[torch.Tensor, ...]:
        return self.tensors
