"""Task gradients for `SGLDGibbs` over a model's flat adapter, B tasks in one batched call.

For task i at theta_i [D] the gradient is g_i = n_i * d/dtheta loss_fn(call_theta, batch_i)
(`loss_fn` returns the MEAN loss of a minibatch, n_i scales it to the summed units SGLDGibbs
expects). `TaskGradients(i, theta)` computes one; `TaskGradients.many(tasks, thetas [B, D])`
computes B of them in one forward/backward where it can (SGLDGibbs calls `many` for its B > 1
tasks of a step when its grad_fn has it), by the first of these batched passes that works:

  * "multi-adapter" (`lift_ext.lift.multi_adapter`): the B minibatches concatenated and run
    once through the model, every adapter Linear (LoRA's A and B) computing each task's rows
    with that task's adapter as a batched matrix product, the frozen backbone shared; for
    adapters made of Linear layers only, on models that treat every row on their own;
  * "vmap": `torch.func.vmap` over `grad(loss_fn o functional_call)`, the B adapters and the
    B minibatches stacked (the frozen backbone shared, never copied); for minibatches of one
    structure and shape and models whose operations have batching rules (no data-dependent
    Python control flow, no .item()).

The first call of each pass is checked against B sequential calls on the same inputs (1e-6 of
the largest gradient entry, relative): a pass that raises or disagrees is dropped with one
warning and the next one tried, then B sequential calls; minibatches that a pass cannot take
go the sequential way for that call only. `batched` says where this stands: None (a pass not
checked yet), True (a pass checked and in use) or False (B sequential calls); `passes` lists
the passes still to try, the one in use first. On a CPU, auto (batched=None) gives the
multi-adapter pass up after its first call, without a warning, when a task sent more than
CPU_ROWS_PER_TASK rows through an adapter layer: there B passes measured faster.

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
from lift_ext.lift.multi_adapter import MultiAdapterPass, NotBatchable
from lift_ext.types import GradFn, LossFn

# The agreement the first batched call must show with the sequential gradients: max |diff|
# <= RTOL * max |sequential| (vmap's batched matmuls may round differently from single ones).
RTOL = 1e-6

# The batched passes, in the order they are tried.
MULTI_ADAPTER, VMAP = "multi-adapter", "vmap"

# On a CPU, auto (batched=None) keeps the multi-adapter pass only while each task sends at most
# this many rows through an adapter layer: one pass over B tasks saves B - 1 calls' fixed cost
# but holds B tasks' activations at once, which costs more than it saves once one task's pass
# keeps the core busy. Measured (CPU time, Shakespeare backbone, B = 8, one thread, Intel Xeon
# AVX-512): B passes / one multi-adapter pass = 1.52x at 80 rows a task (1 window), 1.09x at
# 160, 0.92x at 320, 0.87x at 640.
CPU_ROWS_PER_TASK = 256


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
    and step, by any path); scales[i] = n_i. `batched`: True tries the multi-adapter pass, then
    vmap; False never batches; None (auto) tries the multi-adapter pass on any device (on a CPU
    for tasks of at most CPU_ROWS_PER_TASK rows) and vmap on a GPU only: on a CPU core vmap
    measured slower than B passes at 8 windows a task (0.62-0.74x, docs/distributed.md section
    7), while the multi-adapter pass, a plain forward over the B tasks' rows, is 1.5x faster at
    1 window a task (benchmarks/RESULTS.md, bench_chain.py)."""

    def __init__(self, flat: FlatParams, loss_fn: LossFn, batch_of: Callable[[int], Any],
                 scales: Sequence[float], batched: Optional[bool] = None):
        self.flat, self.loss_fn, self.batch_of = flat, loss_fn, batch_of
        self.scales = scales
        self.multi_adapter = MultiAdapterPass(flat)
        self._vmapped = vmap(grad(self._loss))
        self.choose(batched)

    def choose(self, batched: Optional[bool]) -> None:
        """Set the paths: True (the multi-adapter pass, then vmap), False (B passes), None (auto:
        the multi-adapter pass, and vmap on a GPU only; on a CPU the multi-adapter pass is given
        up after its first call when a task sent more than CPU_ROWS_PER_TASK rows through an
        adapter layer); the multi-adapter pass only where `multi_adapter.unsupported` is None
        (adapter tensors all in Linear layers). `passes` lists the batched passes still
        to try, in order; `batched` reads None while one is tried, True once one was checked,
        False for B passes."""
        if batched is not None and not isinstance(batched, bool):
            raise ValueError(f"batched_grads must be True, False or None (auto), got {batched!r}")
        vmapped = batched or (batched is None and self.flat.vector.device.type == "cuda")
        self._row_limit = CPU_ROWS_PER_TASK if batched is None and self.flat.vector.device.type == "cpu" else None
        multi = batched is not False and self.multi_adapter.unsupported is None
        self.passes: List[str] = ([MULTI_ADAPTER] if multi else []) + ([VMAP] if vmapped else [])
        self.batched: Optional[bool] = None if self.passes else False

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

    def _batched_pass(self, path: str, thetas: torch.Tensor, batches: Sequence[Any]) -> Optional[torch.Tensor]:
        """The B gradients of the mean losses by `path`, or None when these minibatches cannot take it."""
        if path == MULTI_ADAPTER:
            return self.multi_adapter.gradients(self.loss_fn, batches, thetas)
        stacked = stack_batches(batches)
        if stacked is None:
            return None
        with warnings.catch_warnings():  # vmap's notice that an op runs as a loop inside it
            warnings.filterwarnings("ignore", "There is a performance drop", UserWarning)
            return self._vmapped(thetas.detach(), stacked)

    def many(self, tasks: Sequence[int], thetas: torch.Tensor) -> torch.Tensor:
        """[g_tasks[b] at thetas[b]] as a [B, D] tensor: one batched forward/backward when the
        model and minibatches allow it, else B sequential ones (module docstring)."""
        batches = [self.batch_of(task) for task in tasks]
        sequential = None  # computed at most once a call: the reference, or the fallback
        while self.passes:
            path = self.passes[0]
            try:
                out = self._batched_pass(path, thetas, batches)
            except Exception as exc:  # noqa: BLE001 - any failure of a batched pass means: not batchable here
                if self.batched and not isinstance(exc, NotBatchable):
                    raise  # it worked before: this is a real error of the model or loss
                if sequential is None:
                    sequential = self._sequential(tasks, thetas, batches)  # raises the error if it is real
                self._give_up(f"{path} failed ({type(exc).__name__}: {str(exc)[:200]})")
                continue
            if out is None:
                break
            if path == MULTI_ADAPTER and self._row_limit is not None \
                    and self.multi_adapter.rows_per_task > self._row_limit:
                self.passes.pop(0)  # slower than B passes here (CPU_ROWS_PER_TASK): no warning
                self.batched = None if self.passes else False
                continue
            out = out * torch.tensor([float(self.scales[task]) for task in tasks], dtype=out.dtype,
                                     device=out.device)[:, None]
            if self.batched is None:
                if sequential is None:
                    sequential = self._sequential(tasks, thetas, batches)
                worst = float((out - sequential).abs().max())
                if not worst <= RTOL * float(sequential.abs().max()):
                    self._give_up(f"{path}'s gradients differ from the sequential ones by {worst:.3g}")
                    continue
                self.batched = True
            return out
        return self._sequential(tasks, thetas, batches) if sequential is None else sequential

    def _give_up(self, why: str) -> None:
        """Drop the batched pass tried first (`why` it failed), with one warning."""
        dropped = self.passes.pop(0)
        then = self.passes[0] if self.passes else "one forward/backward per task"
        self.batched = None if self.passes else False
        warnings.warn(f"batched task gradients ({dropped}) are off for this model: {why}; using {then}",
                      RuntimeWarning, stacklevel=3)


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
