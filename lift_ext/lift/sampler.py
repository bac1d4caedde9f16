"""`SGLDGibbs`: LiFT's posterior sampler over shared prior adapters and N task vectors theta_i.

Model (docs/design.md sections 3 and 10), vectors of length D in the units of theta:
    prior="paper":   phi ~ N(mu0, sigma^2 I),  theta_i | phi ~ N(phi, beta^2 I);
    prior="mixture": pi ~ Dir(a0 1_K), phi_k ~ N(mu0, sigma^2 I), z_i ~ Cat(pi),
                     theta_i | z_i = k ~ N(phi_k, beta^2 I)   (see lift_ext.lift.mixture);
and p(D_i | theta_i) given by `grad_fn(i, theta_i)` = a stochastic estimate of
-d/dtheta log p(D_i | theta_i), summed over task i's data (`mean_loss_grad` converts from a
mean loss).

One `step()` (t = step_count):
  1. tasks: the next B = `tasks_per_step` of a shuffled round-robin (lift_ext.lift.task_order);
     grad_fn is called for each of them first (grad_fn.many once, if it has it), and nothing
     changes until all have returned (an exception or KeyboardInterrupt leaves the state as it was);
  2. theta_i <- theta_i - lr (g_i + (theta_i - c_i)/beta^2) + sqrt(2 lr T) xi for the B tasks,
     c_i = phi (paper) or phi_{z_i} (mixture), and S_{z_i} += theta_i,new - theta_i,old (S stays
     the exact component sums). B = 1: one `ops.sgld_step_` that also accumulates into S; B > 1:
     one `ops.sgld_step_list_` over the B rows, then S_{z_i} += new - old row by row in task order.
     Noise: Philox (seed, offset 2t), element b D + j for row b. ``preconditioned=True``: pSGLD
     with one RMSprop average v shared by all tasks, damping eps' = max(eps, lr/beta^2) (docs/design.md section 3);
  3. mixture only: each stepped task's z_i from its conditional given theta_i (by distance);
     z_update="likelihood" then again given eta_i (lift_ext.lift.noncentred; its grad_fn.losses
     runs after step 2, so if it raises, steps 2-3 are undone);
  4. phi (paper): a Langevin step (eq. 9) or ("gibbs") an exact draw from its conditional given S,
     noise at offset 2t + 1 (docs/design.md section 3); mixture: every phi_k exactly, then pi;
  5. paper only: after `burn_in` steps every `thin`-th phi is a sample for the OnlineGMM.
lr is half the paper's eta (see lift_ext.sgld). A run is a pure function of its seed.
Mixture start: z from k-means over the directions of the initial thetas (lift_ext.lift.mixture;
balanced when all equal), or, with warmup_steps = W > 0, of the thetas after W one-phi steps.
Memory: thetas [N, D] once plus K x D arrays, all on `device` (default: the device of
prior_mean, else of theta_init, else the CPU); grad_fn must return gradients on that device.
"""
import warnings
from typing import Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from lift_ext import ops, validate
from lift_ext.gmm import OnlineGMM
from lift_ext.lift import sampler_state
from lift_ext.lift.batched_grad import checked_gradients
from lift_ext.lift.mixture import MAX_COMPONENTS, Components, initial_assignments, keyed_generator, rows_identical
from lift_ext.lift.prior import MixturePrior
from lift_ext.lift.noncentred import (draw_assignments_by_likelihood_, member_mean_gradients, restore_point,
                                      shift_components_)
from lift_ext.lift.task_order import TaskOrder
from lift_ext.types import DeviceLike, GradFn

_PHI_UPDATES = ("langevin", "gibbs")
_PRIORS = ("paper", "mixture")
_Z_UPDATES = ("distance", "likelihood")
# The constructor's arguments that fix a chain (all but grad_fn, the tensors and the device).
HPARAMS = ("num_tasks", "dim", "sigma", "beta", "lr", "lr_phi", "temperature", "phi_update", "burn_in", "thin",
           "n_components", "seed", "preconditioned", "alpha", "eps", "tasks_per_step", "prior",
           "dirichlet_alpha", "warmup_steps", "shift_lr", "z_update")


def _default_device(device: DeviceLike, prior_mean, theta_init) -> torch.device:
    """`device` if given, else the device of prior_mean, else of theta_init, else the CPU."""
    if device is not None:
        return torch.device(device)
    for value in (prior_mean, theta_init):
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def _start_rows(theta_init, mu0, num_tasks: int, dim: int, device: torch.device) -> torch.Tensor:
    """The initial task vectors [N, D] float32: theta_init's rows, or one vector (theta_init
    [D], else mu0, else 0) broadcast as a view (no N x D copy)."""
    if theta_init is not None and theta_init.dim() == 2:
        return theta_init.to(device, torch.float32).contiguous()
    row = theta_init if theta_init is not None else mu0 if mu0 is not None else torch.zeros(dim)
    return row.to(device, torch.float32).expand(num_tasks, dim)


class SGLDGibbs:
    """SGLD-Gibbs sampler of LiFT (see the module docstring for the math).

    prior: "paper" (one phi; `n_components` is the OnlineGMM's K over phi samples) or
    "mixture" (`n_components` = K <= num_tasks shared adapters phi_k, exact Gibbs for phi_k, z
    and pi; Dirichlet concentration `dirichlet_alpha`; `warmup_steps` one-phi steps before
    k-means++ sets z; burn_in and thin feed the OnlineGMM and so apply to "paper" only)."""

    def __init__(self, num_tasks: int, dim: int, grad_fn: GradFn, *, sigma: float, beta: float,
                 lr: float, lr_phi: Optional[float] = None, temperature: float = 1.0,
                 phi_update: str = "langevin", prior_mean: Optional[torch.Tensor] = None,
                 theta_init: Optional[torch.Tensor] = None, burn_in: int = 0, thin: int = 1,
                 n_components: int = 1, seed: int = 0, preconditioned: bool = False,
                 alpha: float = 0.99, eps: float = 1e-8, tasks_per_step: int = 1,
                 prior: str = "paper", dirichlet_alpha: float = 1.0, warmup_steps: int = 0,
                 shift_lr: float = 0.0, z_update: str = "distance", device: DeviceLike = None):
        num_tasks, dim = validate.integer("num_tasks", num_tasks, 1), validate.integer("dim", dim, 1)
        burn_in, thin = validate.integer("burn_in", burn_in), validate.integer("thin", thin, 1)
        seed = validate.integer("seed", seed)
        prior = validate.one_of("prior", prior, _PRIORS)
        mixture = prior == "mixture"
        n_components = validate.integer("n_components", n_components, 1,
                                        min(num_tasks, MAX_COMPONENTS) if mixture else None)
        tasks_per_step = validate.integer("tasks_per_step", tasks_per_step, 1, num_tasks)
        warmup_steps = validate.integer("warmup_steps", warmup_steps)
        if warmup_steps and not mixture:
            raise ValueError(f"warmup_steps applies to prior='mixture' only, got {warmup_steps} with prior='paper'")
        dirichlet_alpha = validate.number("dirichlet_alpha", dirichlet_alpha)
        shift_lr = validate.number("shift_lr", shift_lr, inclusive=True)
        z_update = validate.one_of("z_update", z_update, _Z_UPDATES)
        if z_update == "likelihood" and not (mixture and callable(getattr(grad_fn, "losses", None))):
            raise TypeError("z_update='likelihood' needs prior='mixture' and a grad_fn with a method "
                            "losses(task, candidates [K, D]) -> [K] (lift_ext.lift.TaskGradients has it)")
        sigma, beta, lr = validate.scale("sigma", sigma), validate.scale("beta", beta), validate.number("lr", lr)
        lr_phi = validate.number("lr_phi", lr if lr_phi is None else lr_phi)
        temperature = validate.number("temperature", temperature, inclusive=True)
        phi_update = validate.one_of("phi_update", phi_update, _PHI_UPDATES)
        if mixture and phi_update != "gibbs":
            raise ValueError("phi_update must be 'gibbs' with prior='mixture' (each phi_k is drawn "
                             f"exactly from its conditional), got {phi_update!r}")
        validate.boolean("preconditioned", preconditioned)
        alpha = validate.number("alpha", alpha, inclusive=True, high=1.0)
        eps = validate.number("eps", eps)
        if not callable(grad_fn):
            raise TypeError("grad_fn must be callable as grad_fn(task_index, theta) -> Tensor [dim]")
        dev = _default_device(device, prior_mean, theta_init)
        mu0 = None if prior_mean is None else validate.vector("prior_mean", prior_mean, dim, dev)
        if theta_init is not None:
            if not isinstance(theta_init, torch.Tensor) or theta_init.shape not in ((dim,), (num_tasks, dim)):
                raise ValueError(f"theta_init must be a Tensor of shape [{dim}] or [{num_tasks}, {dim}]")
            if not bool(torch.isfinite(theta_init.detach().to(torch.float32)).all()):
                raise ValueError("theta_init must be finite in float32 (its value overflows or is NaN / Inf)")

        checked = locals()
        for name in HPARAMS:
            setattr(self, name, checked[name])
        self.grad_fn = grad_fn
        self._prior_mean = mu0
        start = _start_rows(theta_init, mu0, num_tasks, dim, dev)
        self._components = Components(n_components if mixture else 1, num_tasks, dim, dev, dirichlet_alpha)
        if mixture and warmup_steps == 0:
            if n_components > 1 and rows_identical(start):
                warnings.warn("prior='mixture' with warmup_steps=0 and identical initial thetas: z starts from a "
                              "random balanced assignment, from which components tend to merge and stay empty; "
                              "set warmup_steps (a few epochs: 5 N / tasks_per_step)", RuntimeWarning, stacklevel=2)
            self._assign_by_kmeans(start)
        else:
            self._components.rebuild_(start, torch.zeros(num_tasks, dtype=torch.int64), mu0)
        self._thetas = self._held_rows(start)
        self.gmm = None if mixture else OnlineGMM(n_components, dim, device=dev)
        self._square_avg = torch.zeros(dim, dtype=torch.float32, device=dev) if preconditioned else None
        self.step_count = 0
        self._order = TaskOrder(seed, num_tasks)
        self._warn_if_unstable()

    # ---- state ----------------------------------------------------------------------------
    @property
    def phi(self) -> torch.Tensor:
        """The shared prior mean phi [D] of prior="paper" (the live buffer: clone it to keep a sample)."""
        if self.prior == "mixture":
            raise AttributeError("SGLDGibbs(prior='mixture') has no single phi: read phis [K, D] "
                                 "(with assignments and weights) or meta_test_prior()")
        return self._components.phis[0]

    @property
    def phis(self) -> torch.Tensor:
        """The shared adapters phi_k [K, D] (the live buffer; [1, D] for prior="paper")."""
        return self._components.phis

    @property
    def assignments(self) -> torch.Tensor:
        """z [N] int64 on the CPU: the component of each task (all 0 for prior="paper")."""
        return self._components.assignments.clone()

    @property
    def weights(self) -> torch.Tensor:
        """pi [K] float64 on the CPU: the current draw of the component weights."""
        return self._components.weights.clone()

    @property
    def thetas(self) -> torch.Tensor:
        """All task vectors [N, D] (the live buffer)."""
        return self._thetas

    @property
    def task_sums(self) -> torch.Tensor:
        """S_k = sum of theta_i over the tasks of component k [K, D] (the live buffer; [1, D]
        for prior="paper"), kept up to date by the theta step and the z draws."""
        return self._components.sums

    @property
    def task_sum(self) -> torch.Tensor:
        """S = sum_i theta_i [D] of prior="paper" (the live buffer); see `task_sums`."""
        if self.prior == "mixture":
            raise AttributeError("SGLDGibbs(prior='mixture') keeps one sum per component: read task_sums [K, D]")
        return self._components.sums[0]

    @property
    def prior_mean(self) -> Optional[torch.Tensor]:
        """mu0 [D], or None for 0."""
        return self._prior_mean

    @property
    def device(self) -> torch.device:
        return self._thetas.device

    @property
    def num_gmm_samples(self) -> int:
        """phi samples fed to the OnlineGMM so far: (steps - burn_in) // thin, 0 before burn-in
        (always 0 for prior="mixture", which has no OnlineGMM)."""
        return 0 if self.gmm is None else max(0, self.step_count - self.burn_in) // self.thin

    @property
    def square_avg(self) -> Optional[torch.Tensor]:
        """The shared running average of squared task gradients v [D] (None without
        preconditioning)."""
        return self._square_avg

    @property
    def damping(self) -> float:
        """eps' = max(eps, lr / beta^2), the preconditioner's damping (module docstring)."""
        return max(self.eps, self.lr / self.beta**2)

    def _warn_if_unstable(self) -> None:
        if not self.preconditioned and self.lr / self.beta**2 >= 1.0:
            warnings.warn(f"lr / beta^2 = {self.lr / self.beta ** 2:g} >= 1: the theta step overshoots "
                          "its prior pull and diverges; lower lr", RuntimeWarning, stacklevel=3)
        phi_precision = 1.0 / self.sigma**2 + self.num_tasks / self.beta**2
        if self.phi_update == "langevin" and self.lr_phi * phi_precision >= 1.0:
            warnings.warn(f"lr_phi * (1/sigma^2 + N/beta^2) = {self.lr_phi * phi_precision:g} >= 1: the Langevin "
                          "phi step diverges; lower lr_phi or use phi_update='gibbs'", RuntimeWarning, stacklevel=3)

    def meta_test_prior(self) -> MixturePrior:
        """The meta-test prior for `lift_ext.lift.adapt`, plus beta^2: prior="paper": the OnlineGMM of
        the phi samples; "mixture": the state's phi_k posteriors given z and S (Components.meta_test_prior)."""
        if self.prior == "mixture":
            if self.step_count == 0 or self.step_count < self.warmup_steps:
                raise RuntimeError(f"the mixture prior is learned by the chain and needs run(steps) first: at "
                                   f"least {max(1, self.warmup_steps)} steps (warmup_steps={self.warmup_steps} come "
                                   f"before k-means assigns the tasks); {self.step_count} have run")
            return self._components.meta_test_prior(self._prior_mean, sigma=self.sigma, beta=self.beta,
                                                    temperature=self.temperature)
        if not self.gmm.initialized:
            need, total = self.gmm.warmup, self.burn_in + self.thin * self.gmm.warmup
            raise RuntimeError(
                f"no meta-test prior yet: it is a mixture over phi samples and needs {need} of them; one "
                f"is kept every thin={self.thin} steps after burn_in={self.burn_in}, so {self.step_count} "
                f"steps have given {self.num_gmm_samples}: run at least {total - self.step_count} more "
                "steps, or lower burn_in / thin")
        return MixturePrior.from_gmm(self.gmm, self.beta)

    # ---- sampling -------------------------------------------------------------------------
    _draws_bar = True  # run()'s progress bar is drawn by this process
    _first_task = 0  # the task of this process's first row of thetas (ShardedSGLDGibbs: of this rank)

    def _held_rows(self, start: torch.Tensor) -> torch.Tensor:
        """The task vectors this sampler holds, a new float32 buffer: all N rows of `start`."""
        return torch.empty(start.shape, dtype=torch.float32, device=start.device).copy_(start)

    def _task_grads(self, tasks: List[int], rows: List[torch.Tensor]) -> List[torch.Tensor]:
        """grad_fn's gradients for `tasks` at `rows` (views of the thetas), checked for shape,
        device, finiteness and in-place edits of the thetas (lift_ext.lift.batched_grad)."""
        return checked_gradients(self.grad_fn, tasks, rows, self._thetas, step=self.step_count,
                                 on_edit=self._rows_edited)

    def _rows_edited(self) -> None:
        """grad_fn wrote into the thetas: S_k is recomputed from them (Components.resum_), so that
        S_k = the sum of its members' rows again."""
        self._components.resum_(self._thetas)

    def step(self) -> List[int]:
        """One SGLD-Gibbs step; returns the tasks visited, in order (`tasks_per_step` of them,
        fewer when the next task of the round-robin is already among them)."""
        tasks, epoch, position = self._order.peek(self.tasks_per_step)
        grads = self._task_grads(tasks, [self._thetas[task] for task in tasks])  # may raise: nothing changed
        t, comps = self.step_count, self._components
        mixing = self.prior == "mixture" and t >= self.warmup_steps
        generator = keyed_generator("SGLDGibbs.mixture", self.seed, t) if mixing and comps.k > 1 else None
        likelihood = mixing and comps.k > 1 and self.z_update == "likelihood"  # grad_fn.losses runs mid-step
        restore = restore_point(self._thetas, comps, tasks, self._square_avg) if likelihood else None
        moved: List[int] = []  # tasks the likelihood draw carried to another component
        try:
            self._step_thetas(tasks, grads, offset=2 * t)
            if mixing:
                comps.draw_assignments_(self._thetas, tasks, beta=self.beta, temperature=self.temperature,
                                        generator=generator)
            if likelihood:
                moved = draw_assignments_by_likelihood_(self._thetas, comps, tasks, self.grad_fn.losses,
                                                        temperature=self.temperature, generator=generator)
        except FloatingPointError:
            raise self._divergence("a theta or phi_k is not finite") from None
        except BaseException:  # grad_fn.losses raised or was interrupted: the step never happened
            if restore is not None:
                restore()
            raise
        shift = member_mean_gradients(comps, tasks, grads, moved) if self.shift_lr > 0.0 else None
        self._finish_step(t, mixing, generator, epoch, position, shift)
        return tasks

    def _finish_step(self, t: int, mixing: bool, generator, epoch, position, shift_grads=None) -> None:
        """Steps 4 and 5 of step t (shift_grads: {k: gbar_k} of the shift), then on to (epoch, position)."""
        comps = self._components
        comps.draw_phis_(self._prior_mean, lr=self.lr_phi, temperature=self.temperature, sigma=self.sigma,
                         beta=self.beta, gibbs=self.phi_update == "gibbs", seed=self.seed, step=t)
        if shift_grads:
            shift_components_(self._thetas, comps, shift_grads, self._square_avg, self._prior_mean,
                              lr=self.shift_lr, temperature=self.temperature, sigma=self.sigma, alpha=self.alpha,
                              eps=self.eps, seed=self.seed, step=t, first_task=self._first_task)
        if mixing:
            comps.draw_weights_(temperature=self.temperature, generator=generator)
        self._order.advance(epoch, position)
        self.step_count += 1
        if self.prior == "mixture" and self.step_count == self.warmup_steps:
            self._assign_by_kmeans()
        past_burn_in = self.step_count - self.burn_in
        if self.gmm is not None and past_burn_in > 0 and past_burn_in % self.thin == 0:
            self._feed_mixture()

    def _step_thetas(self, tasks: Sequence[int], grads: Sequence[torch.Tensor], offset: int) -> None:
        """Step 2 of the module docstring for the rows of `tasks`."""
        comps = self._components
        rows = [self._thetas[task] for task in tasks]
        centers = [comps.phis[int(comps.assignments[task])] for task in tasks]
        kwargs = self._sgld_options(offset)
        if len(tasks) == 1:
            sums = comps.sums[int(comps.assignments[tasks[0]])]
            ops.sgld_step_(rows[0], grads[0], centers[0], sums, self._square_avg, **kwargs)
            return
        old = torch.stack(rows)
        averages = None if self._square_avg is None else self._square_avg.expand(len(tasks), -1).clone()
        ops.sgld_step_list_(rows, grads, centers, [], [] if averages is None else list(averages.unbind(0)),
                            **kwargs)
        if averages is not None:
            self._square_avg.copy_(averages.mean(dim=0))
        comps.add_deltas_(tasks, torch.stack(rows).sub_(old))

    def _sgld_options(self, offset: int) -> Dict[str, object]:
        """The scalar arguments of the theta step's op at Philox offset `offset`."""
        return dict(lr=self.lr, temperature=self.temperature, prior_precision=1.0 / self.beta**2,
                    alpha=self.alpha, eps=self.damping, seed=self.seed, offset=offset)

    def _assign_by_kmeans(self, thetas: Optional[torch.Tensor] = None) -> None:
        """z from k-means++ over all N `thetas` (default: the current ones, seeded by `seed`);
        S, n, phis and pi rebuilt."""
        comps, thetas = self._components, self._thetas if thetas is None else thetas
        try:
            labels = initial_assignments(thetas, comps.k, keyed_generator("SGLDGibbs.kmeans", self.seed))
        except ValueError:  # their squared distances overflow: the warm-up diverged
            raise self._divergence("the task vectors lie too far apart to cluster") from None
        comps.rebuild_(thetas, labels, self._prior_mean)

    def _feed_mixture(self) -> None:
        """Give phi to the OnlineGMM. It refuses (unchanged) a sample that is not finite or so
        far from its components that it would become non-finite (its own check, no second pass
        here); either means the chain diverged, which is raised as FloatingPointError."""
        try:
            self.gmm.update(self.phi)
        except ValueError:
            raise self._divergence("phi (not finite, or run away from the mixture)") from None

    def _divergence(self, what: str) -> FloatingPointError:
        return FloatingPointError(f"SGLDGibbs diverged: {what} at step {self.step_count} (lr={self.lr:g}, lr / "
                                  f"beta^2 = {self.lr / self.beta ** 2:g}); the gradients are too large for this "
                                  "lr: lower lr (or the temperature)")

    def diagnostics(self) -> Dict[str, float]:
        """RMS of the phis, RMS spread of the thetas around their phi_{z_i}, OnlineGMM samples, components used."""
        comps = self._components
        centers = comps.phis.index_select(0, comps.assignments.to(self.device))
        out = {"phi_rms": float(comps.phis.pow(2).mean().sqrt()),
               "theta_spread": float((self._thetas - centers).pow(2).mean().sqrt()),
               "gmm_samples": float(self.num_gmm_samples)}
        if self.prior == "mixture":
            out["components_used"] = float(sum(n > 0 for n in comps.counts))
        return out

    def run(self, num_steps: int, progress: bool = True, report_every: Optional[int] = None) -> None:
        """`num_steps` steps; a tqdm bar (where `_draws_bar`) shows `diagnostics()` every `report_every` (20 a run)."""
        validate.integer("num_steps", num_steps)
        every = report_every or max(1, num_steps // 20)
        with tqdm(total=num_steps, disable=not (progress and self._draws_bar), desc="SGLD-Gibbs", unit="step") as bar:
            for done in range(1, num_steps + 1):
                self.step()
                if progress and (done % every == 0 or done == num_steps):
                    bar.set_postfix({k: f"{v:.4g}" for k, v in self.diagnostics().items()}, refresh=False)
                    bar.update(done - bar.n)

    # ---- checkpoints (lift_ext.lift.sampler_state) -----------------------------------------
    def hparams(self) -> Dict[str, object]:
        """The constructor's arguments that fix the chain (all but grad_fn, the tensors and device)."""
        return {name: getattr(self, name) for name in HPARAMS}

    def save(self, path: str) -> None:
        """Write the whole sampler state to one file, atomically (temp file + rename)."""
        sampler_state.save(self, path)

    @classmethod
    def load(cls, path: str, grad_fn: GradFn, device: DeviceLike = None) -> "SGLDGibbs":
        """Rebuild a sampler saved by `save`; it continues the exact same chain. A truncated,
        foreign or inconsistent file raises lift_ext.checkpoint.CheckpointError."""
        return sampler_state.load(cls, path, grad_fn, device)
