"""`LiFT`: meta-training of a shared adapter prior over many tasks with SGLD-Gibbs, and the
way back from its result to a usable model.

Takes a model whose trainable parameters are the adapter (e.g. peft LoRA over a frozen
backbone; or a `FlatParams` of the model for another selection), a list of tasks, a loss
function and the chain's configs, and runs `SGLDGibbs` on the flat adapter vectors. Units:
`loss_fn(call, batch)` returns the MEAN loss of a minibatch, so the gradient of
-log p(D_i | theta) (a sum over n_i examples) is n_i times its gradient. `langevin.lr` is the
step size of the mean loss (per example, half the paper's eta) in both modes: without
preconditioning the sampler runs with lr / n_ref, n_ref = the mean task size, which makes its
steps match a mean-loss step of size lr; with `preconditioned=True` (pSGLD, a shared RMSprop
average, see `SGLDGibbs`) lr is passed unchanged, since the preconditioned step is the same for
the summed and the mean loss (an RMSprop step size: about the change of each weight per step),
as for the baselines. PaperHierarchy's `lr_phi` (Langevin phi only) is per example and
MixtureHierarchy's `shift_lr` (the non-centred shift, docs/design.md section 12) is treated as
lr. With tasks_per_step = B > 1 the B task gradients of a step can come from one batched
forward/backward (`batched_grads`: True = the multi-adapter pass, then vmap; False = B passes;
None = auto, the multi-adapter pass on any device and vmap on a GPU only, where vmap measured
slower on the CPU; see lift_ext.lift.batched_grad, which falls back to B passes where the model
does not allow it).

Defaults (documented choices the paper leaves open): theta_i start at the adapter's
initialisation (the PEFT init: LoRA A random, B zero, never all-zero) or at start.thetas; mu0
= the initialisation vector (or start.prior_mean); phi starts at the thetas' mean and is drawn
exactly from its Gaussian conditional (PaperHierarchy's phi_update="gibbs"), because at the
paper's sigma = beta = 0.01 a Langevin phi step is only stable for tiny lr_phi.

Using the result: `meta_test_prior()` is the learned prior over a new task's adapter;
`adapt(task)` adapts to a support set under it; `apply(theta)` writes an adapter into the
model's own tensors; `export_peft(path, theta)` writes a standard peft adapter directory;
`state_dict()` / `load_state_dict()` and `save(path)` / `LiFT.load(path, model, tasks,
loss_fn)` checkpoint and resume the chain.
"""
import dataclasses
from collections.abc import Mapping
from typing import Dict, List, Optional, Sequence, Union

import torch

from lift_ext import validate
from lift_ext.checkpoint import load_checked, save_atomic
from lift_ext.gmm import OnlineGMM
from lift_ext.lift import sampler_state
from lift_ext.lift.adapt import Adapted, adapt
from lift_ext.lift.batched_grad import TaskGradients
from lift_ext.lift.config import (AdaptConfig, Hierarchy, LangevinConfig, MapConfig, MixtureHierarchy,
                                  PaperHierarchy, check_type)
from lift_ext.lift.flat import FlatParams
from lift_ext.lift.prior import MixturePrior
from lift_ext.lift.sampler import ChainStart, SGLDGibbs
from lift_ext.lift.tasks import Task
from lift_ext.types import LossFn
from lift_ext.warn import warn_user

AdapterLike = Union[None, torch.Tensor, Adapted]
ModelLike = Union[torch.nn.Module, FlatParams]

FORMAT = "lift_ext.LiFT"
VERSION = 1


def task_sizes(tasks: Sequence[Task]) -> List[int]:
    """n_i of each task, checked (each must have num_examples >= 1 and batch(generator))."""
    check_task_sequence(tasks)
    if len(tasks) < 1:
        raise ValueError("tasks must hold at least one task")
    sizes = []
    for i, task in enumerate(tasks):
        n = getattr(task, "num_examples", None)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1 or not callable(getattr(task, "batch", None)):
            raise TypeError(f"tasks[{i}] must have num_examples (int >= 1) and batch(generator)")
        sizes.append(n)
    return sizes


def check_task_sequence(tasks) -> None:
    """TypeError unless `tasks` is a sequence (a list or tuple of tasks, indexed by task)."""
    if isinstance(tasks, Mapping) or not isinstance(tasks, Sequence):
        raise TypeError(f"tasks must be a sequence of tasks (a list, indexed by task), got {type(tasks).__name__}")


def flat_adapter(model: ModelLike) -> FlatParams:
    """The adapter of `model` as one vector: a FlatParams as given, or every trainable parameter
    of a module (with a warning when it is not a peft model, whose trainable parameters would
    usually be the whole network)."""
    if isinstance(model, FlatParams):
        return model
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or a FlatParams, got {type(model).__name__}")
    flat = FlatParams(model)
    if not hasattr(model, "peft_config"):
        warn_user(f"LiFT packs every trainable parameter of the {type(model).__name__} ({flat.dim:,} weights in "
                  f"{len(flat.names)} tensors) as the adapter: it is not a peft model. Wrap the backbone with "
                  "peft (get_peft_model), freeze what is not the adapter (requires_grad_(False)) or pass "
                  "FlatParams(model, select=...) as the model")
    return flat


def sampler_configs(langevin: LangevinConfig, hierarchy: Hierarchy, reference_size: float):
    """(langevin, hierarchy) in the sampler's units from LiFT's mean-loss units (module
    docstring): lr, and PaperHierarchy's lr_phi or MixtureHierarchy's shift_lr, divided by the
    mean task size unless the step is preconditioned (lr_phi always: the phi step is never
    preconditioned)."""
    scaled = langevin if langevin.preconditioned else \
        dataclasses.replace(langevin, lr=langevin.lr / reference_size)
    if isinstance(hierarchy, PaperHierarchy) and hierarchy.phi_update == "langevin":
        lr_phi = langevin.lr if hierarchy.lr_phi is None else hierarchy.lr_phi
        hierarchy = dataclasses.replace(hierarchy, lr_phi=lr_phi / reference_size)
    elif isinstance(hierarchy, MixtureHierarchy) and not langevin.preconditioned:
        hierarchy = dataclasses.replace(hierarchy, shift_lr=hierarchy.shift_lr / reference_size)
    return scaled, hierarchy


class LiFT:
    """LiFT meta-training over `tasks` for the adapter of `model` (see the module docstring).

    model: a module whose trainable parameters are the adapter, or a FlatParams of it.
    langevin, hierarchy: the chain's settings (LangevinConfig in mean-loss units, PaperHierarchy
    or MixtureHierarchy). start: ChainStart (thetas: one adapter [D] or per-task adapters
    [N, D]; prior_mean: mu0), each defaulting to the adapter's initialisation. seed: the chain
    and the minibatch order.

    Attributes: model, tasks, loss_fn, flat (the adapter as a FlatParams), init_vector (the
    adapter as it was when this LiFT was built, a copy), sampler (the SGLDGibbs chain),
    batched_grads (settable)."""

    def __init__(self, model: ModelLike, tasks: Sequence[Task], loss_fn: LossFn, *,
                 langevin: LangevinConfig, hierarchy: Hierarchy = PaperHierarchy(),
                 start: Optional[ChainStart] = None, seed: int = 0):
        self.langevin = check_type("langevin", langevin, LangevinConfig)
        self.hierarchy = check_type("hierarchy", hierarchy, PaperHierarchy, MixtureHierarchy)
        start = ChainStart() if start is None else check_type("start", start, ChainStart)
        self.seed = validate.integer("seed", seed)
        self._bind(model, tasks, loss_fn)
        sampler_langevin, sampler_hierarchy = sampler_configs(langevin, hierarchy, self.reference_size)
        full_start = ChainStart(thetas=self.init_vector if start.thetas is None else start.thetas,
                                prior_mean=self.init_vector if start.prior_mean is None else start.prior_mean)
        self.sampler = self._new_sampler(sampler_langevin, sampler_hierarchy, full_start)

    def _new_sampler(self, langevin: LangevinConfig, hierarchy: Hierarchy, start: ChainStart) -> SGLDGibbs:
        """The chain (ShardedLiFT shards it)."""
        return SGLDGibbs(self.num_tasks, self.flat.dim, self.grads, langevin=langevin, hierarchy=hierarchy,
                         start=start, seed=self.seed, device=self.flat.vector.device)

    def _bind(self, model: ModelLike, tasks: Sequence[Task], loss_fn: LossFn) -> None:
        """Everything but the sampler: the task sizes, the model's adapter as a flat vector and
        the task gradients."""
        self._sizes = task_sizes(tasks)
        self.num_tasks, self.reference_size = len(self._sizes), sum(self._sizes) / len(self._sizes)
        self._attach(model, list(tasks), loss_fn)

    def _attach(self, model: ModelLike, tasks, loss_fn: LossFn) -> None:
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(model_call, batch) -> mean loss")
        self.flat = flat_adapter(model)
        self.model, self.tasks, self.loss_fn = self.flat.module, tasks, loss_fn
        self.init_vector = self.flat.vector.detach().clone()
        # n_i * d(mean minibatch loss)/d theta, the B tasks of a step in one batched pass
        self.grads = TaskGradients(self.flat, loss_fn, self._batch_of, self._sizes)

    @property
    def batched_grads(self) -> Optional[bool]:
        """Whether a step's B task gradients come from one batched pass: True (a pass checked and
        in use: `grads.passes[0]`), False (B passes), or None (a pass still to be checked, falling
        back to B passes where the model does not allow it). Set True, False or None (auto): see
        the module docstring."""
        return self.grads.batched

    @batched_grads.setter
    def batched_grads(self, value: Optional[bool]) -> None:
        self.grads.choose(value)

    def _batch_of(self, task: int):
        """Task `task`'s minibatch of the current step: a function of (seed, step)."""
        step = self.sampler.step_count
        gen = torch.Generator().manual_seed((self.seed * 7_919 + step) % (2**63 - 1))
        return self.tasks[task].batch(gen)

    def run(self, num_steps: int, progress: bool = True, callback=None) -> "LiFT":
        """Run `num_steps` SGLD-Gibbs steps (`SGLDGibbs.run`, with its `callback(step_count, tasks)`);
        minibatches depend only on (seed, step), so a run is reproducible and resumable."""
        self.sampler.run(num_steps, progress=progress, callback=callback)
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

    def adapt(self, task: Task, *, config: AdaptConfig = MapConfig(), start="best_component",
              seed: int = 0) -> Adapted:
        """`lift_ext.lift.adapt(self.flat, task, self.loss_fn, prior=self.meta_test_prior(), ...)`.
        The model is not changed: `apply(result)` writes the adapted adapter into it."""
        return adapt(self.flat, task, self.loss_fn, prior=self.meta_test_prior(), config=config, start=start,
                     seed=seed)

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

    # ---- state ----------------------------------------------------------------------------
    def config(self) -> Dict[str, object]:
        """LiFT's own settings, JSON-ready: the configs as given (mean-loss units) and the seed."""
        return {"langevin": self.langevin.to_dict(), "hierarchy": self.hierarchy.to_dict(), "seed": self.seed}

    def state_dict(self) -> Dict[str, object]:
        """{config: `config()`, sampler: the chain's `state_dict()`} (the model, tasks and loss
        function are the caller's)."""
        return {"config": self.config(), "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Continue the chain of `state` (a `state_dict()` of a LiFT with the same settings over
        the same tasks and adapter shape); ValueError, with nothing changed, when it does not fit."""
        if not isinstance(state, dict) or set(state) != {"config", "sampler"}:
            raise ValueError("the state must be a LiFT state_dict(): a dict with keys config and sampler")
        if state["config"] != self.config():
            raise ValueError("the state is of a LiFT with other settings: its config differs "
                             f"({state['config']!r} against {self.config()!r})")
        self.sampler.load_state_dict(state["sampler"])

    def save(self, path: str) -> None:
        """Write `state_dict()` to one checksummed file, atomically. Read it with `LiFT.load`."""
        save_atomic({"format": FORMAT, "version": VERSION, **self.state_dict()}, path)

    @classmethod
    def load(cls, path: str, model: ModelLike, tasks: Sequence[Task], loss_fn: LossFn) -> "LiFT":
        """A LiFT continuing the chain saved by `save` at `path`, over `model`'s adapter (the
        same architecture and selection), the same `tasks` (in order) and loss function; its
        settings come from the file. `init_vector` is `model`'s adapter as passed in. A foreign
        or damaged file raises lift_ext.checkpoint.CheckpointError; a mismatch with the model or
        tasks a ValueError."""
        state = load_checked(path, fmt=FORMAT, version=VERSION, map_location="cpu", required=("config", "sampler"))
        return restore(cls, path, state["config"], state["sampler"], model, tasks, loss_fn)


def restore(cls, path: str, config: dict, sampler: dict, model: ModelLike, tasks, loss_fn: LossFn, **arguments):
    """A `cls` (LiFT or ShardedLiFT, with its own `arguments`) continuing the chain saved at
    `path`: built from LiFT's saved `config`, checked against the saved `sampler` state's number
    of tasks and adapter size (ValueError), then loaded. An inconsistent state is a
    CheckpointError naming the file."""
    with sampler_state.refusing_inconsistency(path):
        settings = SGLDGibbs.settings_of(config)
        sampler_state.check_sizes(sampler)  # before the trainer allocates anything from it
    trainer = sampler_state.quietly(cls, model, tasks, loss_fn, **arguments, **settings)
    n, d = sampler["config"]["num_tasks"], sampler["config"]["dim"]
    if d != trainer.flat.dim or n != trainer.num_tasks:
        raise ValueError(f"checkpoint {path!r} holds {n} tasks of dim {d}, but {trainer.num_tasks} tasks and an "
                         f"adapter of dim {trainer.flat.dim} were passed")
    with sampler_state.refusing_inconsistency(path):
        trainer.load_state_dict({"config": config, "sampler": sampler})
    return trainer
