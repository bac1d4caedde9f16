"""`FlatParams`: the trainable (adapter) tensors of a module packed into ONE contiguous
float32 vector, so a task's whole adapter is one vector of length D and one kernel launch
updates it.

The module's selected float32 parameters become views into `FlatParams.vector` (their `.data`
is re-pointed; the Parameter objects stay). Parameters of any other floating dtype (bfloat16,
float16, float64) do NOT: a view cannot change dtype, so they keep their own storage, the vector
holds a float32 copy of them, and writing the vector (a sampler step on `vector`) leaves them
as they were until `load_(theta)` casts theta's slices into them. Evaluating the model at any other flat vector theta
goes through `torch.func.functional_call` with views of theta: the frozen backbone is never
copied, and the gradient comes back as one flat vector. Samplers and `adapt` work on such
vectors and never touch the module; `load_(theta)` writes one into the module's own adapter
tensors (for its forward, `state_dict` or peft's `save_pretrained`).
"""
from typing import Any, Callable, Dict, Iterable, List, Tuple, Union

import torch
from torch.func import functional_call

from lift_ext import validate

Selector = Union[None, Iterable[str], Callable[[str, torch.nn.Parameter], bool]]


class FlatParams:
    """Packs `module`'s selected parameters (default: those with requires_grad, e.g. the LoRA
    tensors of a peft model whose backbone is frozen) in named_parameters order. float32 ones
    become views of `vector`; others (bfloat16, float16, float64) are copied into it and
    updated only by `load_` (module docstring)."""

    def __init__(self, module: torch.nn.Module, select: Selector = None):
        named = list(module.named_parameters())
        if select is None:
            chosen = [(n, p) for n, p in named if p.requires_grad]
        elif callable(select):
            chosen = [(n, p) for n, p in named if select(n, p)]
        else:
            wanted = list(select)
            by_name = dict(named)
            unknown = [n for n in wanted if n not in by_name]
            if unknown:
                raise ValueError(f"select names parameters the module does not have: {unknown[:5]}")
            chosen = [(n, by_name[n]) for n in wanted]
        if not chosen:
            raise ValueError("no parameters selected: mark the adapter parameters requires_grad=True "
                             "(peft does) or pass select=")
        for name, p in chosen:
            if not p.dtype.is_floating_point:
                raise ValueError(f"parameter {name} is {p.dtype}; only floating-point parameters can be packed")
        self.module = module
        self._params: List[torch.nn.Parameter] = [p for _, p in chosen]
        self.names: List[str] = [n for n, _ in chosen]
        self.shapes: List[torch.Size] = [p.shape for _, p in chosen]
        self.dtypes: List[torch.dtype] = [p.dtype for _, p in chosen]
        sizes = [p.numel() for _, p in chosen]
        self.offsets: List[int] = [sum(sizes[:i]) for i in range(len(sizes))]
        self.numels: List[int] = sizes
        device = chosen[0][1].device
        self.vector = torch.cat([p.detach().reshape(-1).to(device, torch.float32) for _, p in chosen])
        for (name, p), view in zip(chosen, self._split(self.vector)):
            if p.dtype == torch.float32:
                p.data = view.view(p.shape)

    @property
    def dim(self) -> int:
        """D, the length of the flat vector."""
        return self.vector.numel()

    def _split(self, flat: torch.Tensor) -> List[torch.Tensor]:
        return [flat[o:o + n] for o, n in zip(self.offsets, self.numels)]

    def views(self, flat: torch.Tensor) -> Dict[str, torch.Tensor]:
        """{parameter name: view of `flat` in that parameter's shape and dtype}."""
        if not isinstance(flat, torch.Tensor):
            raise TypeError(f"flat vector must be a Tensor [{self.dim}], got {type(flat).__name__}")
        if flat.shape != (self.dim,):
            raise ValueError(f"flat vector must have shape [{self.dim}], got {tuple(flat.shape)}")
        return {name: part.view(shape).to(dtype) for name, part, shape, dtype in
                zip(self.names, self._split(flat), self.shapes, self.dtypes)}

    def load_(self, theta: torch.Tensor) -> None:
        """Write theta [D] (any float dtype and device; finite) into the module's adapter tensors,
        so that the module itself computes at theta: afterwards `self.vector` equals theta and
        every selected parameter holds its slice (cast to the parameter's dtype where that is not
        float32). A refused theta (shape, NaN / Inf) raises ValueError and changes nothing."""
        value = validate.vector("theta", theta, self.dim, self.vector.device)
        self.vector.copy_(value)
        with torch.no_grad():
            for param, part, shape in zip(self._params, self._split(self.vector), self.shapes):
                if param.data_ptr() != part.data_ptr():  # not a view of the vector (not float32)
                    param.copy_(part.view(shape))

    def call(self, flat: torch.Tensor) -> Callable[..., Any]:
        """A function running the module's forward with the packed parameters set to `flat`."""
        params = self.views(flat)
        return lambda *args, **kwargs: functional_call(self.module, params, args, kwargs)

    def loss_and_grad(self, flat: torch.Tensor, loss_fn: Callable[[Callable[..., Any]], torch.Tensor]
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(loss, d loss / d flat) with loss = loss_fn(self.call(theta)) at theta = flat.
        The gradient is a new flat float32 vector; the backbone gets no gradient."""
        theta = flat.detach().requires_grad_(True)
        loss = loss_fn(self.call(theta))
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        (grad,) = torch.autograd.grad(loss, theta)
        return loss.detach(), grad
