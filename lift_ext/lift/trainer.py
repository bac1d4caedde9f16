"""`LiFT`: meta-training of a shared adapter prior over many tasks with SGLD-Gibbs, and the
way back from its result to a usable model.

Takes a model whose trainable parameters are the adapter (e.g. peft LoRA over a frozen
backbone), a list of tasks and a loss function, and runs `SGLDGibbs` on the flat adapter
vectors (`FlatParams`). Units: `loss_fn(call, batch)` returns the MEAN loss of a minibatch,
so the gradient of -log p(D_i | theta) (a sum over n_i examples) is n_i times its gradient;
`lr` is given per example (mean-loss units, half the paper's eta) and the sampler runs with
lr / n_ref, n_ref = the mean task size, which makes its steps match a mean-loss step of size lr.
With ``preconditioned=True`` the theta steps are pSGLD (a shared RMSprop average, see
`SGLDGibbs`) and ``lr`` is passed unchanged: the preconditioned step is scale-free, so lr is
an RMSprop step size (about the change of each weight per step), as for the baselines.
``lr_phi`` (Langevin phi only) stays per example. ``shift_lr`` (the non-centred shift,
docs/design.md section 12) is treated like lr: divided by n_ref without preconditioning, an
RMSprop step size with it. Other `SGLDGibbs` options (e.g. its prior model, alpha, eps,
z_update) pass through as keyword arguments. With tasks_per_step = B > 1 the B task
gradients of a step can come from one vmapped forward/backward (`batched_grads`: True, False,
or None = on for an adapter on a GPU, off on the CPU where it measured slower; see
lift_ext.lift.batched_grad, which falls back to B passes where the model does not allow it).

Defaults (documented choices the paper leaves open): theta_i start at the adapter's
initialisation (the PEFT init: LoRA A random, B zero, never all-zero) or at given per-task
adapters; phi starts at their mean; mu0 = the initialisation vector; phi is drawn exactly from
its Gaussian conditional ("gibbs"), because at the paper's sigma = beta = 0.01 a Langevin phi
step is only stable for tiny lr_phi.

Using the result: `meta_test_prior()` is the learned prior over a new task's adapter;
`adapt(task)` adapts to a support set under it; `apply(theta)` writes an adapter into the
model's own tensors; `export_peft(path, theta)` writes a standard peft adapter directory;
`save(path)` / `LiFT.load(path, model, tasks, loss_fn)` checkpoint and resume the chain.
"""
import inspect
from typing import List, Optional, Sequence, Union

import torch

from lift_ext import validate
from lift_ext.gmm import OnlineGMM
from lift_ext.lift.adapt import Adapted, adapt
from lift_ext.lift.batched_grad import TaskGradients
from lift_ext.lift.flat import FlatParams, Selector
from lift_ext.lift.prior import MixturePrior
from lift_ext.lift.sampler import SGLDGibbs
from lift_ext.lift.tasks import Task
from lift_ext.types import LossFn
from lift_ext.warn import warn_user

AdapterLike = Union[None, torch.Tensor, Adapted]

# SGLDGibbs arguments that LiFT derives itself (from the model, the tasks and its own options).
_DERIVED = ("num_tasks", "dim", "grad_fn", "prior_mean", "theta_init", "device")


def _task_sizes(tasks: Sequence[Task]) -> List[int]:
    if len(tasks) < 1:
        raise ValueError("tasks must hold at least one task")
    sizes = []
    for i, task in enumerate(tasks):
        n = getattr(task, "num_examples", None)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1 or not callable(getattr(task, "batch", None)):
            raise TypeError(f"tasks[{i}] must have num_examples (int >= 1) and batch(generator)")
        sizes.append(n)
    return sizes


def _check_sampler_options(options: dict, sampler_class: type) -> None:
    """Refuse keyword arguments the sampler class (SGLDGibbs or a subclass) does not take, or
    that LiFT sets itself."""
    accepted = {name for cls in (SGLDGibbs, sampler_class)
                for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.kind != p.VAR_KEYWORD} - {"self"}
    derived = sorted(set(options) & set(_DERIVED))
    if derived:
        raise TypeError(f"LiFT sets {derived} itself (from the model, tasks, prior_mean and task_adapters)")
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(f"unknown LiFT/SGLDGibbs option(s) {unknown}; SGLDGibbs takes "
                        f"{sorted(accepted - set(_DERIVED))}")


class LiFT:
    """LiFT meta-training over `tasks` for the adapter of `model` (see the module docstring).

    Attributes: model, tasks, loss_fn, flat (the adapter as a FlatParams), init_vector (the
    adapter as it was when this LiFT was built, a copy), sampler (the SGLDGibbs chain)."""

    def __init__(self, model: torch.nn.Module, tasks: Sequence[Task], loss_fn: LossFn, *,
                 sigma: float = 0.01, beta: float = 0.01, lr: float = 1e-3,
                 lr_phi: Optional[float] = None, temperature: float = 1.0,
                 phi_update: str = "gibbs", burn_in: int = 0, thin: int = 1, n_components: int = 1,
                 seed: int = 0, preconditioned: bool = False, select: Selector = None,
                 task_adapters: Optional[torch.Tensor] = None,
                 prior_mean: Union[str, torch.Tensor] = "init", batched_grads: Optional[bool] = None,
                 **sampler_options):
        _check_sampler_options(sampler_options, self._new_sampler)
        lr = validate.number("lr", lr)
        lr_phi = None if lr_phi is None else validate.number("lr_phi", lr_phi)
        if isinstance(prior_mean, str) and prior_mean not in ("init", "zero"):
            raise ValueError(f"prior_mean must be 'init', 'zero' or a Tensor, got {prior_mean!r}")
        self._bind(model, tasks, loss_fn, select, seed, batched_grads)
        if not preconditioned and isinstance(sampler_options.get("shift_lr"), (int, float)):
            sampler_options["shift_lr"] = sampler_options["shift_lr"] / self.reference_size
        mu0 = prior_mean if not isinstance(prior_mean, str) else \
            (self.init_vector if prior_mean == "init" else None)
        self.sampler = self._new_sampler(
            self.num_tasks, self.flat.dim, self.grads, sigma=sigma, beta=beta,
            lr=lr if preconditioned else lr / self.reference_size,
            lr_phi=(lr if lr_phi is None else lr_phi) / self.reference_size,
            temperature=temperature, phi_update=phi_update, prior_mean=mu0,
            theta_init=self.init_vector if task_adapters is None else task_adapters,
            burn_in=burn_in, thin=thin, n_components=n_components, seed=seed,
            preconditioned=preconditioned, device=self.flat.vector.device, **sampler_options)

    _new_sampler = SGLDGibbs  # the chain's class (lift_ext.lift.sharded_trainer shards it)

    def _bind(self, model: torch.nn.Module, tasks: Sequence[Task], loss_fn: LossFn, select: Selector,
              seed: int, batched_grads: Optional[bool]) -> None:
        """Everything but the sampler: the task sizes, the model's adapter as a flat vector and
        the task gradients."""
        self._sizes = _task_sizes(tasks)
        self.num_tasks, self.reference_size = len(self._sizes), sum(self._sizes) / len(self._sizes)
        self._attach(model, list(tasks), loss_fn, select, seed, batched_grads)

    def _attach(self, model: torch.nn.Module, tasks, loss_fn: LossFn, select: Selector, seed: int,
                batched_grads: Optional[bool]) -> None:
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(model_call, batch) -> mean loss")
        self.model, self.tasks, self.loss_fn, self.seed = model, tasks, loss_fn, seed
        self.flat = FlatParams(model, select)
        if select is None and not hasattr(model, "peft_config"):
            warn_user(f"LiFT packs every trainable parameter of the {type(model).__name__} ({self.flat.dim:,} "
                      f"weights in {len(self.flat.names)} tensors) as the adapter: it is not a peft model and "
                      "select= was not given. Wrap the backbone with peft (get_peft_model), freeze what is not "
                      "the adapter (requires_grad_(False)) or pass select= (names or a predicate)")
        self.init_vector = self.flat.vector.detach().clone()
        # n_i * d(mean minibatch loss)/d theta, the B tasks of a step in one vmapped pass
        self.grads = TaskGradients(self.flat, loss_fn, self._batch_of, self._sizes, batched=batched_grads)

    def _batch_of(self, task: int):
        """Task `task`'s minibatch of the current step: a function of (seed, step)."""
        step = self.sampler.step_count
        gen = torch.Generator().manual_seed((self.seed * 7_919 + step) % (2**63 - 1))
        return self.tasks[task].batch(gen)

    def run(self, num_steps: int, progress: bool = True) -> "LiFT":
        """Run `num_steps` SGLD-Gibbs steps; minibatches depend only on (seed, step), so a run is
        reproducible and resumable."""
        self.sampler.run(num_steps, progress=progress)
        return self

    @property
    def gmm(self) -> OnlineGMM:
        """The mixture over phi samples (the paper's meta-test prior, without beta)."""
        return self.sampler.gmm

    @property
    def phi(self) -> torch.Tensor:
        return self.sampler.phi

    @property
    def thetas(self) -> torch.Tensor:
        return self.sampler.thetas

    # ---- the learned prior and adaptation ---------------------------------------------------
    def meta_test_prior(self) -> MixturePrior:
        """The meta-learned prior over a new task's adapter (`SGLDGibbs.meta_test_prior`).
        RuntimeError, naming burn_in / thin / the steps still needed, while the chain has not
        produced one yet."""
        return self.sampler.meta_test_prior()

    def adapt(self, task: Task, **options) -> Adapted:
        """`lift_ext.lift.adapt(self.flat, task, self.loss_fn, **options)` with prior defaulting
        to `meta_test_prior()` and init_vector to `init_vector`. The model is not changed:
        `apply(result)` writes the adapted adapter into it."""
        if "prior" not in options:
            options["prior"] = self.meta_test_prior()
        options.setdefault("init_vector", self.init_vector)
        return adapt(self.flat, task, self.loss_fn, **options)

    # ---- writing an adapter into the model ---------------------------------------------------
    def _adapter(self, theta: AdapterLike) -> torch.Tensor:
        """theta as a vector [D]: None = the mean of the meta-test prior's heaviest component
        (for one component, the meta-learned prior mean); an Adapted gives its theta."""
        if theta is None:
            prior = self.meta_test_prior()
            return prior.means[int(prior.weights.argmax())]
        if isinstance(theta, Adapted):
            return theta.theta
        if not isinstance(theta, torch.Tensor):
            raise TypeError(f"theta must be None, a Tensor [{self.flat.dim}] or an Adapted, "
                            f"got {type(theta).__name__}")
        return theta

    def apply(self, theta: AdapterLike = None) -> torch.nn.Module:
        """Write an adapter into the model's own adapter tensors (`FlatParams.load_`) and return
        the model, which then computes with it (forward, state_dict, save_pretrained).
        theta: a vector [D], an `Adapted` (from `adapt`), or None for the meta-learned prior
        mean (the heaviest component's mean). The chain is not affected."""
        self.flat.load_(self._adapter(theta))
        return self.model

    def export_peft(self, path: str, theta: AdapterLike = None) -> None:
        """Write `theta` (as in `apply`) as a standard peft adapter directory with the model's
        `save_pretrained(path)`, loadable by `peft.PeftModel.from_pretrained(base_model, path)`.
        The model's adapter is left as it was."""
        save = getattr(self.model, "save_pretrained", None)
        if not callable(save):
            raise TypeError(f"export_peft needs a peft model (one with save_pretrained); the model is "
                            f"a {type(self.model).__name__}")
        vector = self._adapter(theta)
        previous = self.flat.vector.clone()
        self.flat.load_(vector)
        try:
            save(path)
        finally:
            self.flat.load_(previous)

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write the chain's state to one file, atomically (the sampler's checkpoint; the model,
        tasks and loss function are the caller's to rebuild). Read it with `LiFT.load`."""
        self.sampler.save(path)

    @classmethod
    def load(cls, path: str, model: torch.nn.Module, tasks: Sequence[Task], loss_fn: LossFn, *,
             select: Selector = None, batched_grads: Optional[bool] = None) -> "LiFT":
        """A LiFT continuing the chain saved by `save` at `path`, over `model`'s adapter (the
        same architecture and selection), the same `tasks` (in order) and loss function; its
        hyper-parameters come from the file. `init_vector` is `model`'s adapter as passed in.
        A foreign or damaged file raises lift_ext.checkpoint.CheckpointError; a mismatch with
        the model or tasks a ValueError."""
        return cls._resume(path, model, tasks, loss_fn, select, batched_grads, {})

    @classmethod
    def _resume(cls, path: str, model: torch.nn.Module, tasks, loss_fn: LossFn, select: Selector,
                batched_grads: Optional[bool], preset: dict, **load_options) -> "LiFT":
        """`load` with `preset` attributes set before binding and `load_options` for the
        sampler class's own load."""
        trainer = cls.__new__(cls)
        trainer.__dict__.update(preset)
        trainer._bind(model, tasks, loss_fn, select, 0, batched_grads)
        sampler = cls._new_sampler.load(path, trainer.grads, device=trainer.flat.vector.device, **load_options)
        if sampler.dim != trainer.flat.dim or sampler.num_tasks != trainer.num_tasks:
            raise ValueError(f"checkpoint {path!r} holds {sampler.num_tasks} tasks of dim {sampler.dim}, "
                             f"but {trainer.num_tasks} tasks and an adapter of dim {trainer.flat.dim} "
                             "were passed")
        trainer.sampler, trainer.seed = sampler, sampler.seed
        return trainer
