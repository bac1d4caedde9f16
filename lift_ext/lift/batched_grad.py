"""Task gradients for `SGLDGibbs` over a model's flat adapter, B tasks in one batched call.

For task i at theta_i [D] the gradient is g_i = n_i * d/dtheta loss_fn(call_theta, batch_i)
(`loss_fn` returns the MEAN loss of a minibatch, n_i scales it to the summed units SGLDGibbs
expects). `TaskGradients(i, theta)` computes one; `TaskGradients.many(tasks, thetas [B, D])`
computes B of them as `torch.func.vmap` over `grad(loss_fn o functional_call)`: the B adapters
and the B minibatches are stacked and go through the model in one batched forward/backward
(the frozen backbone is shared, never copied). SGLDGibbs calls `many` for its B > 1 tasks
of a step when its grad_fn has it.

vmap needs minibatches of one structure and shape (stacked leaf by leaf) and a model whose
operations have batching rules (no data-dependent Python control flow, no .item()). The
first batched call is checked against B sequential calls on the same inputs (1e-6 of the
largest gradient entry, relative): if vmap raises or disagrees, `many` warns once and uses
B sequential calls from then on; minibatches that cannot be stacked take the sequential
path for that call only. `batched` says which: None (not tried yet), True or False.

`checked_gradients` is how SGLDGibbs calls any grad_fn: the results checked (shape, device,
finite) and a grad_fn that writes into the theta rows it was given caught.
"""
import math
import warnings
from typing import Any, Callable, List, Optional, Sequence

import torch
from torch.func import grad, vmap
from torch.utils import _pytree

from lift_ext.lift.flat import FlatParams
from lift_ext.types import GradFn, LossFn

# The agreement the first batched call must show with the sequential gradients: max |diff|
# <= RTOL * max |sequential| (vmap's batched matmuls may round differently from single ones).
RTOL = 1e-6


def stack_batches(batches: Sequence[Any]) -> Optional[Any]:
    """The minibatches stacked leaf by leaf along a new leading dimension, or None when they
    differ in structure, in a leaf's shape or dtype, or have a leaf that is not a Tensor."""
    flat = [_pytree.tree_flatten(batch) for batch in batches]
    leaves0, spec0 = flat[0]
    for leaves, spec in flat:
        if spec != spec0 or any(not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor)
                                or x.shape != y.shape or x.dtype != y.dtype for x, y in zip(leaves, leaves0)):
            return None
    stacked = [torch.stack([leaves[j] for leaves, _ in flat]) for j in range(len(leaves0))]
    return _pytree.tree_unflatten(stacked, spec0)


class TaskGradients:
    """A grad_fn for SGLDGibbs over `flat` (module docstring).

    batch_of(i) returns task i's minibatch for the current step (it is called once per task
    and step, by either path); scales[i] = n_i. `batched`: True tries vmap, False never does,
    None (auto) tries it when the adapter lives on a GPU only: on a CPU core one task's
    minibatch already keeps the core busy, and stacking B of them measured slower (B = 8 on
    the Shakespeare backbone, one thread: 0.7-0.95x, and 1.5x the memory, docs/distributed.md)."""

    def __init__(self, flat: FlatParams, loss_fn: LossFn, batch_of: Callable[[int], Any],
                 scales: Sequence[float], batched: Optional[bool] = None):
        self.flat, self.loss_fn, self.batch_of = flat, loss_fn, batch_of
        self.scales = scales
        self.choose(batched)
        self._vmapped = vmap(grad(self._loss))

    def choose(self, batched: Optional[bool]) -> None:
        """Set the path: True (vmap, tried first), False (B passes), None (auto: vmap tried on a GPU only).
        `batched` then reads None while vmap is tried, True once it worked, False for B passes."""
        if batched is not None and not isinstance(batched, bool):
            raise ValueError(f"batched_grads must be True, False or None (auto), got {batched!r}")
        if batched is None:
            batched = self.flat.vector.device.type == "cuda"
        self.batched: Optional[bool] = None if batched else False

    def _loss(self, theta: torch.Tensor, batch: Any) -> torch.Tensor:
        loss = self.loss_fn(self.flat.call(theta), batch)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        return loss

    def _one(self, task: int, theta: torch.Tensor, batch: Any) -> torch.Tensor:
        _, g = self.flat.loss_and_grad(theta, lambda call: self.loss_fn(call, batch))
        return g * self.scales[task]

    def __call__(self, task: int, theta: torch.Tensor) -> torch.Tensor:
        """g_task at theta [D]."""
        return self._one(task, theta, self.batch_of(task))

    def losses(self, task: int, candidates: torch.Tensor) -> torch.Tensor:
        """n_task times the mean loss of the task's minibatch of the step at each row of
        candidates [M, D]: an estimate of -log p(D_task | candidate) [M] (no gradients)."""
        batch = self.batch_of(task)
        with torch.no_grad():
            return torch.stack([self._loss(theta, batch) for theta in candidates]) * self.scales[task]

    def _sequential(self, tasks: Sequence[int], thetas: torch.Tensor, batches: Sequence[Any]) -> torch.Tensor:
        return torch.stack([self._one(task, theta, batch) for task, theta, batch in zip(tasks, thetas, batches)])

    def many(self, tasks: Sequence[int], thetas: torch.Tensor) -> torch.Tensor:
        """[g_tasks[b] at thetas[b]] as a [B, D] tensor: one vmapped forward/backward when the
        model and minibatches allow it, else B sequential ones (module docstring)."""
        batches = [self.batch_of(task) for task in tasks]
        stacked = None if self.batched is False else stack_batches(batches)
        if stacked is None:
            return self._sequential(tasks, thetas, batches)
        scales = torch.tensor([float(self.scales[task]) for task in tasks], dtype=thetas.dtype,
                              device=thetas.device)
        try:
            with warnings.catch_warnings():  # vmap's notice that an op runs as a loop inside it
                warnings.filterwarnings("ignore", "There is a performance drop", UserWarning)
                out = self._vmapped(thetas.detach(), stacked) * scales[:, None]
        except Exception as exc:  # noqa: BLE001 - any failure of vmap means: not batchable here
            if self.batched:
                raise  # it worked before: this is a real error of the model or loss
            sequential = self._sequential(tasks, thetas, batches)  # raises the error if it is real
            self._give_up(f"torch.func.vmap failed ({type(exc).__name__}: {str(exc)[:200]})")
            return sequential
        if self.batched is None:
            sequential = self._sequential(tasks, thetas, batches)
            worst = float((out - sequential).abs().max())
            if not worst <= RTOL * float(sequential.abs().max()):
                self._give_up(f"its gradients differ from the sequential ones by {worst:.3g}")
                return sequential
            self.batched = True
        return out

    def _give_up(self, why: str) -> None:
        self.batched = False
        warnings.warn(f"batched task gradients are off for this model: {why}; using one "
                      "forward/backward per task", RuntimeWarning, stacklevel=3)


def mean_loss_grad(grad_of_mean_loss: GradFn, task_sizes) -> GradFn:
    """Wrap a gradient of a task's MEAN loss into the summed units SGLDGibbs expects:
    g_sum(i, theta) = n_i * g_mean(i, theta), n_i = task_sizes[i] examples."""
    sizes = [int(n) for n in task_sizes]
    if any(n < 1 for n in sizes):
        raise ValueError("task_sizes must all be >= 1")
    return lambda i, theta: grad_of_mean_loss(i, theta) * sizes[i]


def gradients_of(grad_fn: Callable, tasks: List[int], rows: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """grad_fn at each (task, row): one `grad_fn.many(tasks, rows stacked)` call when grad_fn
    has that method and there is more than one task, else one grad_fn(task, row) per task.
    The results are not checked here (`checked_gradients` checks them)."""
    many = getattr(grad_fn, "many", None)
    if many is None or len(tasks) < 2:
        return [grad_fn(task, row) for task, row in zip(tasks, rows)]
    out = many(list(tasks), torch.stack(list(rows)))
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(tasks):
        raise ValueError(f"grad_fn.many(tasks, thetas) must return a Tensor [{len(tasks)}, D], got "
                         f"{getattr(out, 'shape', type(out).__name__)}")
    return list(out.unbind(0))


def checked_gradients(grad_fn: Callable, tasks: List[int], rows: Sequence[torch.Tensor], thetas: torch.Tensor, *,
                      step: int) -> List[torch.Tensor]:
    """`gradients_of` for SGLDGibbs's step `step`, where `rows` are views of the state `thetas`
    [n, D], each gradient checked: a Tensor [D] on thetas' device (ValueError), finite
    (FloatingPointError). A grad_fn that writes into a row bumps thetas' version counter (one
    integer comparison; a write through `.data` is not seen): ValueError (the caller puts its
    rows back). Every check runs before the caller changes anything."""
    dim, device = thetas.shape[1], thetas.device
    version = thetas._version
    grads = gradients_of(grad_fn, tasks, rows)
    if thetas._version != version:
        raise ValueError(f"grad_fn edited theta in place at step {step} (theta is a view of the sampler's "
                         "state: clone it before changing it); the step did not happen")
    for task, gradient in zip(tasks, grads):
        if not isinstance(gradient, torch.Tensor) or gradient.shape != (dim,):
            raise ValueError(f"grad_fn({task}, theta) must return a Tensor of shape [{dim}], got "
                             f"{getattr(gradient, 'shape', type(gradient).__name__)}")
        if gradient.device != device:
            raise ValueError(f"grad_fn({task}, theta) returned a tensor on {gradient.device}, but the sampler's "
                             f"state is on {device} (pass device=, or ChainStart tensors on the right device)")
    # A float32 sum is finite only if every entry is (one pass, a fifth of isfinite's time, and
    # one host read); a sum that is not finite is confirmed entry by entry (finite entries can
    # overflow a sum).
    if not math.isfinite(float(torch.stack([gradient.detach().sum(dtype=torch.float32) for gradient in grads]).sum())):
        for task, gradient in zip(tasks, grads):
            if not bool(torch.isfinite(gradient).all()):
                raise FloatingPointError(f"grad_fn({task}, theta) returned NaN or Inf at step {step}: a diverging "
                                         "chain (lower lr) or a bad gradient; the step did not happen")
    return [gradient.detach() for gradient in grads]
