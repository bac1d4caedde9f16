"""B tasks' gradients from one forward/backward: every row of the batch through its own task's adapter.

For B tasks with adapters theta_1..theta_B (the rows of thetas [B, D], in `FlatParams` order)
and minibatches x_1..x_B that the loss function turns into model calls of one shape (b rows
each), `MultiAdapterPass.gradients` runs the model ONCE on the concatenated call (B * b rows,
task-major), with every adapter layer computing each task's rows with that task's weights:

    y_i = x_i W_i^T (+ c_i)      for the rows x_i [b, ..., in] of task i,

W_i, c_i the slices of theta_i holding the layer's weight and bias, as one batched matrix product
over the task dimension (`torch.bmm` on the rows viewed [B, b * ..., in]); the frozen layers
run once over all B * b rows. The adapter layers are the `torch.nn.Linear` modules that own
adapter tensors: for a peft LoRA model lora_A (A_i [r, in]) and lora_B (B_i [out, r]), so every
LoRA layer computes base(x) + scaling * x A_i^T B_i^T on task i's rows, the batched low-rank
product of multi-LoRA serving. The output is cut back into the B tasks' parts, `loss_fn` scores
each (L_i, as it would after a call on x_i alone) and one backward of sum_i L_i gives

    grad_i = d(sum_j L_j) / d theta_i = d L_i / d theta_i     [B, D],

since L_j does not depend on theta_i for j != i when the model treats every row on its own.
Units: those of `loss_fn` (a mean minibatch loss gives the gradient of the mean; the caller
scales by n_i). The values are those of B separate passes up to float rounding: the frozen
layers' matrix products sum in another order over B * b rows than over b.

What can be batched (anything else: `unsupported` says why, or `gradients` raises
`NotBatchable`; the caller falls back to another path):
  * every adapter tensor is the weight or bias of a plain `torch.nn.Linear` (not DoRA's
    magnitude, an embedding's or a convolution's LoRA, a LayerNorm in modules_to_save), and the
    model calls those layers through their forward on inputs whose first dimension is the
    call's B * b rows;
  * no row depends on another row or on random numbers: no dropout with p > 0 and no batch
    norm in training mode;
  * `loss_fn(call, batch)` calls the model exactly once, deterministically (it is run once up
    to that call to read its arguments, then again on its task's part of the shared output);
  * the B calls have one structure: equal non-Tensor arguments, Tensor arguments of one shape
    and dtype with the same first dimension b (per call: otherwise `gradients` returns None);
  * every Tensor of the output has B * b rows (not a loss the model computed over the batch).
"""
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils import _pytree

from lift_ext.lift.flat import FlatParams
from lift_ext.types import LossFn


class NotBatchable(Exception):
    """The model or loss function does something the multi-adapter pass cannot batch."""


class _Called(BaseException):
    """Stops loss_fn at its model call once the call's arguments are read (a BaseException, so
    that a loss function catching Exception does not swallow it)."""

    def __init__(self, args: tuple, kwargs: dict):
        super().__init__()
        self.args_kwargs = (args, kwargs)


def model_call_of(loss_fn: LossFn, batch: Any) -> tuple[tuple, dict]:
    """(args, kwargs) of the model call that loss_fn(call, batch) makes (loss_fn runs up to it)."""
    def call(*args, **kwargs):
        raise _Called(args, kwargs)

    try:
        loss_fn(call, batch)
    except _Called as called:
        return called.args_kwargs
    raise NotBatchable("loss_fn returned without calling the model")


def concatenated(calls: Sequence[tuple[tuple, dict]]) -> tuple[tuple, dict, int] | None:
    """(args, kwargs, b): the B calls' Tensor arguments concatenated along dim 0, b the rows of
    one call; None when the calls differ in structure, in a non-Tensor argument, in a Tensor's
    shape or dtype, or their Tensors do not share one first dimension."""
    flat = [_pytree.tree_flatten(call) for call in calls]
    leaves0, spec0 = flat[0]
    tensors0 = [leaf for leaf in leaves0 if isinstance(leaf, torch.Tensor)]
    if not tensors0 or any(t.dim() == 0 or t.shape[0] != tensors0[0].shape[0] for t in tensors0):
        return None
    for leaves, spec in flat[1:]:
        if spec != spec0:
            return None
        for leaf, leaf0 in zip(leaves, leaves0):
            if isinstance(leaf0, torch.Tensor):
                if not isinstance(leaf, torch.Tensor) or leaf.shape != leaf0.shape or leaf.dtype != leaf0.dtype:
                    return None
            elif isinstance(leaf, torch.Tensor) or leaf is not leaf0 and leaf != leaf0:
                return None
    joined = [torch.cat([leaves[j] for leaves, _ in flat]) if isinstance(leaf0, torch.Tensor) else leaf0
              for j, leaf0 in enumerate(leaves0)]
    args, kwargs = _pytree.tree_unflatten(joined, spec0)
    return args, kwargs, tensors0[0].shape[0]


def split_output(output: Any, tasks: int, rows: int) -> list[Any]:
    """The model output of a call on tasks * rows rows cut into the tasks' parts along dim 0
    (non-Tensor leaves shared); NotBatchable for a Tensor without tasks * rows rows."""
    leaves, spec = _pytree.tree_flatten(output)
    parts = []
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            parts.append([leaf] * tasks)
        elif leaf.dim() == 0 or leaf.shape[0] != tasks * rows:
            raise NotBatchable(f"the model returned a Tensor of shape {tuple(leaf.shape)}, not one row per input "
                               "row (a loss over the batch?)")
        else:
            parts.append(list(leaf.chunk(tasks)))
    return [_pytree.tree_unflatten([part[i] for part in parts], spec) for i in range(tasks)]


def _replay(output: Any) -> Callable[..., Any]:
    """A model call that returns `output` once (a second call cannot be batched)."""
    left = [output]

    def call(*args, **kwargs):
        if not left:
            raise NotBatchable("loss_fn calls the model more than once")
        return left.pop()
    return call


class MultiAdapterPass:
    """The multi-adapter forward/backward over `flat`'s module (module docstring).

    `unsupported`: None when the model's adapter can be batched, else why not (a string).
    `rows_per_task`: the most rows one task sent through an adapter layer in the last pass (b
    times the positions of a sequence model; 0 before the first pass)."""

    def __init__(self, flat: FlatParams):
        self.flat = flat
        named = dict(flat.module.named_parameters())
        index = {id(named[name]): j for j, name in enumerate(flat.names)}
        # module -> {"weight"/"bias": index of its adapter tensor in flat}
        self.layers: dict[torch.nn.Module, dict[str, int]] = {}
        owners = {j: 0 for j in range(len(flat.names))}
        self.unsupported: str | None = None
        self.rows_per_task = 0
        for name, module in flat.module.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                j = index.get(id(p))
                if j is None:
                    continue
                owners[j] += 1
                if type(module) is not torch.nn.Linear or pname not in ("weight", "bias"):
                    self.unsupported = (f"adapter tensor {flat.names[j]} is {name}.{pname} of a "
                                        f"{type(module).__name__}; only torch.nn.Linear adapter layers are batched")
                self.layers.setdefault(module, {})[pname] = j
        if self.unsupported is None and not all(owners.values()):
            self.unsupported = "an adapter tensor belongs to no module of the model"
        self.row_mixers = [m for m in flat.module.modules()
                           if isinstance(m, (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm))]

    def _check_rows_independent(self) -> None:
        """NotBatchable when a dropout (p > 0) or batch norm module is in training mode: the
        batched pass would draw other random numbers, or mix the B tasks' rows."""
        for m in self.row_mixers:
            if m.training and (isinstance(m, torch.nn.modules.batchnorm._BatchNorm) or m.p > 0):
                raise NotBatchable(f"the model has a {type(m).__name__} in training mode (random or mixing rows)")

    @contextlib.contextmanager
    def _per_task_layers(self, leaves: list[torch.Tensor], rows: int):
        """Every adapter Linear computing each task's rows with that task's weight and bias
        (`leaves[j]` [B, *shape_j]) while inside."""
        tasks = leaves[0].shape[0]
        saved = []
        try:
            for module, owned in self.layers.items():
                weight = leaves[owned["weight"]].to(self.flat.dtypes[owned["weight"]]) if "weight" in owned else None
                bias = leaves[owned["bias"]].to(self.flat.dtypes[owned["bias"]]) if "bias" in owned else None
                saved.append((module, module.__dict__.get("forward")))
                module.forward = self._linear(module, weight, bias, tasks, rows)
            yield
        finally:
            for module, forward in saved:
                if forward is None:
                    del module.forward
                else:
                    module.forward = forward

    def _linear(self, module: torch.nn.Linear, weight: torch.Tensor | None, bias: torch.Tensor | None,
                tasks: int, rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """x [tasks * rows, ..., in] -> [tasks * rows, ..., out], task i's rows through weight[i]
        and bias[i] (the module's own tensor where the adapter holds none)."""
        def forward(x: torch.Tensor) -> torch.Tensor:
            if x.dim() < 2 or x.shape[0] != tasks * rows:
                raise NotBatchable(f"an adapter layer saw an input of shape {tuple(x.shape)}, whose first dimension "
                                   f"is not the {tasks} x {rows} rows of the call")
            x3 = x.reshape(tasks, -1, x.shape[-1])
            self.rows_per_task = max(self.rows_per_task, x3.shape[1])
            y = torch.bmm(x3, weight.transpose(1, 2)) if weight is not None else x3 @ module.weight.t()
            if bias is not None:
                y = y + bias[:, None, :]
            elif module.bias is not None:
                y = y + module.bias
            return y.reshape(*x.shape[:-1], y.shape[-1])
        return forward

    def gradients(self, loss_fn: LossFn, batches: Sequence[Any], thetas: torch.Tensor) -> torch.Tensor | None:
        """[d loss_fn(call at thetas[i], batches[i]) / d thetas[i] for each i] as [B, D] float32
        (module docstring), or None when these minibatches' calls cannot be concatenated.
        NotBatchable when the model or loss_fn cannot take this pass at all."""
        if self.unsupported is not None:
            raise NotBatchable(self.unsupported)
        self._check_rows_independent()
        joined = concatenated([model_call_of(loss_fn, batch) for batch in batches])
        if joined is None:
            return None
        args, kwargs, rows = joined
        tasks, self.rows_per_task = thetas.shape[0], 0
        leaves = [part.reshape(tasks, *shape).detach().requires_grad_(True) for part, shape in
                  zip(thetas.detach().split(self.flat.numels, dim=1), self.flat.shapes)]
        with self._per_task_layers(leaves, rows):
            output = self.flat.module(*args, **kwargs)
        losses = [loss_fn(_replay(part), batch) for part, batch in zip(split_output(output, tasks, rows), batches)]
        for loss in losses:
            if loss.dim() != 0:
                raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        grads = torch.autograd.grad(torch.stack(losses).sum(), leaves, allow_unused=True)
        return torch.cat([(torch.zeros_like(leaf) if g is None else g).reshape(tasks, -1).float()
                          for g, leaf in zip(grads, leaves)], dim=1)
