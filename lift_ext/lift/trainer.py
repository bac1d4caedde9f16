"""`LiFT`: meta-training of a shared adapter prior over many tasks with SGLD-Gibbs.

Takes a model whose trainable parameters are the adapter (e.g. peft LoRA over a frozen
backbone), a list of tasks and a loss function, and runs `SGLDGibbs` on the flat adapter
vectors (`FlatParams`). Units: `loss_fn(call, batch)` returns the MEAN loss of a minibatch,
so the gradient of -log p(D_i | theta) (a sum over n_i examples) is n_i times its gradient;
`lr` is given per example (mean-loss units, half the paper's eta) and the sampler runs with
lr / n_ref, n_ref = the mean task size, which makes its steps match a mean-loss step of size lr.
With ``preconditioned=True`` the theta steps are pSGLD (a shared RMSprop average, see
`SGLDGibbs`) and ``lr`` is passed unchanged: the preconditioned step is scale-free, so lr is
an RMSprop step size (about the change of each weight per step), as for the baselines.
``lr_phi`` (Langevin phi only) stays per example.

Defaults (documented choices the paper leaves open): theta_i start at the adapter's
initialisation (the PEFT init: LoRA A random, B zero, never all-zero) or at given per-task
adapters; phi starts at their mean; mu0 = the initialisation vector; phi is drawn exactly from
its Gaussian conditional ("gibbs"), because at the paper's sigma = beta = 0.01 a Langevin phi
step is only stable for tiny lr_phi.
"""
from typing import Any, Callable, Optional, Sequence, Union

import torch

from lift_ext.gmm import OnlineGMM
from lift_ext.lift.flat import FlatParams, Selector
from lift_ext.lift.sampler import SGLDGibbs
from lift_ext.lift.tasks import Task

LossFn = Callable[[Callable[..., Any], Any], torch.Tensor]


class LiFT:
    """LiFT meta-training over `tasks` for the adapter of `model` (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, tasks: Sequence[Task], loss_fn: LossFn, *,
                 sigma: float = 0.01, beta: float = 0.01, lr: float = 1e-3,
                 lr_phi: Optional[float] = None, temperature: float = 1.0,
                 phi_update: str = "gibbs", burn_in: int = 0, thin: int = 1, n_components: int = 1,
                 seed: int = 0, preconditioned: bool = False, select: Selector = None,
                 task_adapters: Optional[torch.Tensor] = None,
                 prior_mean: Union[str, torch.Tensor] = "init"):
        if len(tasks) < 1:
            raise ValueError("tasks must hold at least one task")
        sizes = []
        for i, task in enumerate(tasks):
            n = getattr(task, "num_examples", None)
            if not isinstance(n, int) or n < 1 or not callable(getattr(task, "batch", None)):
                raise TypeError(f"tasks[{i}] must have num_examples (int >= 1) and batch(generator)")
            sizes.append(n)
        self.model, self.tasks, self.loss_fn, self.seed = model, list(tasks), loss_fn, seed
        self.flat = FlatParams(model, select)
        self.init_vector = self.flat.vector.detach().clone()
        self.reference_size = sum(sizes) / len(sizes)
        if isinstance(prior_mean, str):
            if prior_mean not in ("init", "zero"):
                raise ValueError(f"prior_mean must be 'init', 'zero' or a Tensor, got {prior_mean!r}")
            mu0 = self.init_vector if prior_mean == "init" else None
        else:
            mu0 = prior_mean
        theta_init = self.init_vector if task_adapters is None else task_adapters
        self._sizes = sizes
        self.sampler = SGLDGibbs(
            len(tasks), self.flat.dim, self._grad, sigma=sigma, beta=beta,
            lr=lr if preconditioned else lr / self.reference_size,
            lr_phi=(lr if lr_phi is None else lr_phi) / self.reference_size,
            temperature=temperature, phi_update=phi_update, prior_mean=mu0, theta_init=theta_init,
            burn_in=burn_in, thin=thin, n_components=n_components, seed=seed,
            preconditioned=preconditioned, device=self.flat.vector.device)

    def _grad(self, task: int, theta: torch.Tensor) -> torch.Tensor:
        """n_i * d(mean minibatch loss)/d theta: the summed-units gradient of task `task`."""
        step = self.sampler.step_count  # minibatches are a function of (seed, step)
        gen = torch.Generator().manual_seed((self.seed * 7_919 + step) % (2**63 - 1))
        batch = self.tasks[task].batch(gen)
        _, grad = self.flat.loss_and_grad(theta, lambda call: self.loss_fn(call, batch))
        return grad * self._sizes[task]

    def run(self, num_steps: int, progress: bool = True) -> "LiFT":
        """Run `num_steps` SGLD-Gibbs steps (one task each); minibatches depend only on
        (seed, step), so a run is reproducible and resumable."""
        self.sampler.run(num_steps, progress=progress)
        return self

    @property
    def gmm(self) -> OnlineGMM:
        """The mixture over phi samples: the meta-learned prior for `adapt`."""
        return self.sampler.gmm

    @property
    def phi(self) -> torch.Tensor:
        return self.sampler.phi

    @property
    def thetas(self) -> torch.Tensor:
        return self.sampler.thetas

    def save(self, path: str) -> None:
        """The sampler's checkpoint (the model and tasks are the caller's to rebuild)."""
        self.sampler.save(path)

    def load_sampler(self, path: str) -> None:
        """Continue from a checkpoint written by `save` with the same model, tasks and loss."""
        loaded = SGLDGibbs.load(path, self._grad, device=self.flat.vector.device)
        if loaded.dim != self.flat.dim or loaded.num_tasks != len(self.tasks):
            raise ValueError(f"checkpoint {path!r} holds {loaded.num_tasks} tasks of dim {loaded.dim}, "
                             f"this trainer has {len(self.tasks)} of dim {self.flat.dim}")
        self.sampler = loaded
