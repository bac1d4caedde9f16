"""`lift_ext.TensorTable`: the tensors of an SGLD step checked once, so that each step costs
the same few microseconds of host time for one tensor or ten thousand.

    table = lift_ext.TensorTable(params, grads, prior_means=means)
    for step in range(n):
        ...                                        # refill the grads in place
        lift_ext.sgld_step(table, lr=1e-3, seed=0, offset=step)

A list call (`lift_ext.sgld_step(params, grads, ...)`) converts, checks and tabulates every
tensor on every call (~0.2 us per tensor on a CPU, more than the CUDA kernel of a 448-tensor
step). A table does that once: it checks the lists exactly as the list op does (dtypes,
devices, shapes, layout, no tensor the step writes overlapping another) and builds the kernel's
pointer table, on the device for CUDA tensors (one upload; a launch passes only its address).
A step through a table is the list step, bitwise, with O(1) host work besides one version-counter
bump per tensor it writes (~5 ns each: autograd sees the update, as for the list op).

Autograd: each step bumps the version of every tensor it writes (params, accums, square_avgs), so
a backward that saved one raises; under grad mode a step is refused when one of them required
grad (or was an inference tensor) when the table was built: torch's error for a leaf, as for
the list op. Step tables of Parameters under torch.no_grad(), as `lift_ext.optim.SGLD` does.

A table is bound to the tensors it was built from and keeps them, and their memory, alive. It
does not follow replacements: after `p.grad = None` (or `zero_grad(set_to_none=True)`) and a
backward pass, `p.grad` is a new tensor and the table still holds the old one; after
`p.data = ...` or `model.to(...)` a parameter lives in new memory while the table steps the
old. Noticing that costs per-tensor work (10-30 ns per tensor when the tensors' metadata is
out of cache), so a step does not check: call `is_current()` (or rebuild) after such changes.
`lift_ext.optim.SGLD` does, at every step. Reallocating a held storage in place (`resize_`
beyond its size, `untyped_storage().resize_()`, `share_memory_()`) frees memory the table
writes: `is_current()` notices it, a step does not, so never step a table after it.

CUDA graphs: a table step is capturable (nothing is allocated or copied per step, the
pointer table stays where it was uploaded); with `rng_state` the offset advances on the device,
so every replay draws fresh noise. Build the table before capturing (building during capture
is refused), and keep it alive while the graph may replay: the graph reads its pointer table.
The table may be stepped on any stream (one other than its build's first waits for the
upload). torch.compile: the table
op hides the tensors it writes from the tracer, so a traced `sgld_step(table, ...)` runs the
list op on the table's lists (same results, the list call's host cost).
"""
from typing import List, Optional, Sequence, Tuple

import torch

from lift_ext import _loader  # noqa: F401  - registers torch.classes.lift_ext.TensorTable
from lift_ext.types import TensorOrList


def as_tensor_list(value: Optional[TensorOrList], name: str, structure: Optional[int]) -> List[torch.Tensor]:
    """Normalise a Tensor / list argument; `structure` is None for the single-tensor form."""
    if value is None:
        return []
    if structure is None:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a Tensor like params, got {type(value).__name__}")
        return [value]
    if isinstance(value, torch.Tensor) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of Tensors like params, got {type(value).__name__}")
    if len(value) != structure:
        raise ValueError(f"{name} must have one tensor per param ({structure}), got {len(value)}")
    return list(value)


def check_elements(lists) -> None:
    """Raise a TypeError naming the first list element that is not a Tensor."""
    for name, value in lists:
        for i, t in enumerate(value):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}[{i}] must be a Tensor, got {type(t).__name__}")


_PLAIN = (torch.Tensor, torch.nn.Parameter)  # what a table holds: no Tensor subclass


class TensorTable:
    """The tensors of an SGLD step, checked once (see the module docstring).

    params: a list of float32 contiguous tensors on one device (CPU or CUDA), at least one;
    grads: one per param, same shape, float32, bfloat16 or float16 (one dtype for all);
    prior_means, accums, square_avgs: None or one float32 tensor per param (square_avgs
    switches on RMSprop preconditioning). Plain tensors and Parameters only (no subclass).
    Bad input raises, naming the argument, before anything is built.

    `lift_ext.sgld_step(table, lr=..., ...)` steps it. The lists are kept as tuples:
    `params`, `grads`, `prior_means`, `accums`, `square_avgs` (empty when absent).
    """

    __slots__ = ("handle", "params", "grads", "prior_means", "accums", "square_avgs")

    def __init__(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], *,
                 prior_means: Optional[Sequence[torch.Tensor]] = None,
                 accums: Optional[Sequence[torch.Tensor]] = None,
                 square_avgs: Optional[Sequence[torch.Tensor]] = None):
        if isinstance(params, torch.Tensor) or not isinstance(params, (list, tuple)):
            raise TypeError(f"params must be a list of Tensors, got {type(params).__name__}")
        if grads is None:
            raise TypeError("grads must be a list of Tensors like params, got None")
        lists = [list(params)] + [as_tensor_list(value, name, len(params)) for name, value in
                                  (("grads", grads), ("prior_means", prior_means), ("accums", accums),
                                   ("square_avgs", square_avgs))]
        named = list(zip(("params", "grads", "prior_means", "accums", "square_avgs"), lists))
        check_elements(named)
        for name, value in named:
            if any(type(t) not in _PLAIN for t in value):
                raise TypeError(f"{name} must be a list of torch.Tensor or torch.nn.Parameter (a "
                                "TensorTable holds plain tensors, no subclass)")
        self.handle = torch.classes.lift_ext.TensorTable(*lists)
        self.params, self.grads, self.prior_means, self.accums, self.square_avgs = (tuple(x) for x in lists)

    def __len__(self) -> int:
        return len(self.params)

    def __repr__(self) -> str:
        present = [name for name in ("prior_means", "accums", "square_avgs") if getattr(self, name)]
        return (f"TensorTable({len(self)} params on {self.device}, grads {self.grads[0].dtype}"
                + "".join(f", {name}" for name in present) + ")")

    def __reduce__(self):
        return _rebuild, self.lists

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    @property
    def preconditioned(self) -> bool:
        """True when the table holds square averages (RMSprop preconditioning)."""
        return bool(self.square_avgs)

    @property
    def lists(self) -> Tuple[Tuple[torch.Tensor, ...], ...]:
        """(params, grads, prior_means, accums, square_avgs), as the list op takes them."""
        return self.params, self.grads, self.prior_means, self.accums, self.square_avgs

    def is_current(self, group: Optional[Sequence[torch.Tensor]] = None) -> bool:
        """True when a step would still update what the lists say: every tensor of the table is
        still on the memory, dtype, size and layout it had at build (no `p.data = ...`,
        `.to()`, `set_`, `resize_`, storage reallocation), and every grad that was its
        param's `.grad` at build still is. (`torch.utils.swap_tensors` refuses a tensor a
        table holds.)

        group: also require that the tensors of `group` (e.g. an optimizer's parameter group)
        that have a `.grad` are exactly the table's params, in order, with those grads.
        Cost: a few ns per tensor (C++), no allocation."""
        if group is not None and not isinstance(group, (list, tuple)):
            group = list(group)
        return self.handle.is_current(group)


def _rebuild(params, grads, prior_means, accums, square_avgs) -> TensorTable:
    """Unpickling / deepcopy: a new table over the (copied) tensors."""
    return TensorTable(list(params), list(grads), prior_means=list(prior_means) or None,
                       accums=list(accums) or None, square_avgs=list(square_avgs) or None)
