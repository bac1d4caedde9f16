"""`SGLDGibbs`: LiFT's posterior sampler over shared prior adapters and N task vectors theta_i.

Model (docs/design.md sections 3 and 10), vectors of length D in the units of theta:
    PaperHierarchy:   phi ~ N(mu0, sigma^2 I),  theta_i | phi ~ N(phi, beta^2 I);
    MixtureHierarchy: pi ~ Dir(a0 1_K), phi_k ~ N(mu0, sigma^2 I), z_i ~ Cat(pi),
                      theta_i | z_i = k ~ N(phi_k, beta^2 I)   (see lift_ext.lift.mixture);
and p(D_i | theta_i) given by `grad_fn(i, theta_i)` = a stochastic estimate of
-d/dtheta log p(D_i | theta_i), summed over task i's data (`mean_loss_grad` converts from a
mean loss).

One `step()` (t = step_count):
  1. tasks: the next B = `tasks_per_step` of a shuffled round-robin (lift_ext.lift.task_order);
     grad_fn is called for each of them first (grad_fn.many once, if it has it), and nothing
     changes until all have returned (an exception or KeyboardInterrupt leaves the state as it
     was; rows a grad_fn wrote into are put back);
  2. theta_i <- theta_i - lr (g_i + (theta_i - c_i)/beta^2) + sqrt(2 lr T) xi for the B tasks,
     c_i = phi (paper) or phi_{z_i} (mixture), and S_{z_i} += theta_i,new - theta_i,old (S stays
     the exact component sums): one `ops.sgld_step_list_` over the B rows, then
     S_{z_i} += new - old row by row in task order (lift_ext.lift.reduction.LocalReduction).
     Noise: Philox (seed, offset 2t), element b D + j for row b. ``preconditioned=True``: pSGLD
     with one RMSprop average v shared by all tasks (v = the mean of the rows' updated copies),
     damping eps' = max(eps, lr/beta^2) (docs/design.md section 3);
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
start.prior_mean, else of start.thetas, else the CPU); grad_fn must return gradients on that device.
ShardedSGLDGibbs runs this same `step` over its shards, with the all-reduce as its reduction.
"""
import warnings
from typing import Callable, Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from lift_ext import ops, validate
from lift_ext.gmm import OnlineGMM
from lift_ext.lift import sampler_state
from lift_ext.lift.batched_grad import checked_gradients
from lift_ext.lift.config import LangevinConfig, MixtureHierarchy, PaperHierarchy, check_type
from lift_ext.lift.collective import DIVERGED, OK
from lift_ext.lift.mixture import COMPONENT_STRIDE, Components, initial_assignments, keyed_generator, rows_identical
from lift_ext.lift.prior import MixturePrior
from lift_ext.lift.noncentred import draw_assignments_by_likelihood_, restore_point, shift_components_
from lift_ext.lift.readout import ChainReadout
from lift_ext.lift.reduction import LocalReduction
from lift_ext.lift.start import ChainStart, check_start, default_device, initial_rows
from lift_ext.lift.task_order import TaskOrder
from lift_ext.types import DeviceLike, GradFn

StepCallback = Callable[[int, List[int]], None]


class SGLDGibbs(ChainReadout, sampler_state.ChainState):
    """SGLD-Gibbs sampler of LiFT (see the module docstring for the math).

    The problem: num_tasks N, dim D and grad_fn. The settings: `langevin` (the theta step,
    lift_ext.lift.LangevinConfig) and `hierarchy` (PaperHierarchy: one phi and the online-EM
    mixture over its samples; MixtureHierarchy: K shared adapters phi_k with exact Gibbs for
    phi_k, z and pi). `start`: the initial thetas and mu0 (ChainStart). `seed` fixes the whole
    chain; `device` defaults to that of start's tensors, else the CPU."""

    def __init__(self, num_tasks: int, dim: int, grad_fn: GradFn, *, langevin: LangevinConfig,
                 hierarchy: "PaperHierarchy | MixtureHierarchy" = PaperHierarchy(),
                 start: Optional[ChainStart] = None, seed: int = 0, device: DeviceLike = None):
        num_tasks, dim = validate.integer("num_tasks", num_tasks, 1), validate.integer("dim", dim, 1)
        seed = validate.integer("seed", seed)
        check_type("langevin", langevin, LangevinConfig)
        check_type("hierarchy", hierarchy, PaperHierarchy, MixtureHierarchy)
        start = ChainStart() if start is None else check_type("start", start, ChainStart)
        mixture = isinstance(hierarchy, MixtureHierarchy)
        if mixture:
            validate.integer("components", hierarchy.components, 1, num_tasks)
            if hierarchy.z_update == "likelihood" and not callable(getattr(grad_fn, "losses", None)):
                raise TypeError("z_update='likelihood' needs a grad_fn with a method losses(task, candidates "
                                "[K, D]) -> [K] (lift_ext.lift.TaskGradients has it)")
        validate.integer("tasks_per_step", langevin.tasks_per_step, 1, self._tasks_per_step_limit(num_tasks))
        if not callable(grad_fn):
            raise TypeError("grad_fn must be callable as grad_fn(task_index, theta) -> Tensor [dim]")
        dev = default_device(device, start)
        mu0, start_thetas = check_start(start, num_tasks, dim, dev)

        self.num_tasks, self.dim, self.seed = num_tasks, dim, seed
        self.langevin, self.hierarchy = langevin, hierarchy
        self.grad_fn = grad_fn
        self._mixture = mixture
        self._prior_mean = mu0
        start_rows = initial_rows(start_thetas, mu0, num_tasks, dim, dev)
        k = hierarchy.components if mixture else 1
        self._components = Components(k, num_tasks, dim, dev, hierarchy.dirichlet_alpha if mixture else 1.0)
        if mixture and hierarchy.warmup_steps == 0:
            if k > 1 and rows_identical(start_rows):
                warnings.warn("MixtureHierarchy with warmup_steps=0 and identical initial thetas: z starts from "
                              "a random balanced assignment, from which components tend to merge and stay empty; "
                              "set warmup_steps (a few epochs: 5 N / tasks_per_step)", RuntimeWarning, stacklevel=2)
            self._assign_by_kmeans(start_rows)
        else:
            self._components.rebuild_(start_rows, torch.zeros(num_tasks, dtype=torch.int64), mu0)
        self._thetas = self._held_rows(start_rows)
        self.gmm = None if mixture else OnlineGMM(hierarchy.gmm_components, dim, device=dev)
        self._square_avg = torch.zeros(dim, dtype=torch.float32, device=dev) if langevin.preconditioned else None
        self.step_count = 0
        self._order = self._new_order()
        self._warn_if_unstable()

    def _tasks_per_step_limit(self, num_tasks: int) -> int:
        """The most tasks one step may take (all N; ShardedSGLDGibbs: the smallest shard)."""
        return num_tasks

    def _new_order(self, state: Optional[dict] = None):
        """The visiting order at its start, or at `state` (from its state_dict)."""
        if state is None:
            return TaskOrder(self.seed, self.num_tasks)
        return TaskOrder(self.seed, self.num_tasks, state["epoch"], state["position"])

    def _warn_if_unstable(self) -> None:
        lr, beta = self.langevin.lr, self.hierarchy.beta
        if not self.langevin.preconditioned and lr / beta**2 >= 1.0:
            warnings.warn(f"lr / beta^2 = {lr / beta ** 2:g} >= 1: the theta step overshoots "
                          "its prior pull and diverges; lower lr", RuntimeWarning, stacklevel=3)
        phi_precision = 1.0 / self.hierarchy.sigma**2 + self.num_tasks / beta**2
        if not self._gibbs_phi and self._phi_lr * phi_precision >= 1.0:
            warnings.warn(f"lr_phi * (1/sigma^2 + N/beta^2) = {self._phi_lr * phi_precision:g} >= 1: the Langevin "
                          "phi step diverges; lower lr_phi or use phi_update='gibbs'", RuntimeWarning, stacklevel=3)

    def meta_test_prior(self) -> MixturePrior:
        """The meta-test prior for `lift_ext.lift.adapt`, plus beta^2: PaperHierarchy: the OnlineGMM
        of the phi samples; MixtureHierarchy: the state's phi_k posteriors given z and S
        (Components.meta_test_prior)."""
        hierarchy = self.hierarchy
        if self._mixture:
            if self.step_count == 0 or self.step_count < hierarchy.warmup_steps:
                raise RuntimeError(f"the mixture prior is learned by the chain and needs run(steps) first: at "
                                   f"least {max(1, hierarchy.warmup_steps)} steps (warmup_steps="
                                   f"{hierarchy.warmup_steps} come before k-means assigns the tasks); "
                                   f"{self.step_count} have run")
            return self._components.meta_test_prior(self._prior_mean, sigma=hierarchy.sigma, beta=hierarchy.beta,
                                                    temperature=self.langevin.temperature)
        if not self.gmm.initialized:
            need, total = self.gmm.warmup, hierarchy.burn_in + hierarchy.thin * self.gmm.warmup
            raise RuntimeError(
                f"no meta-test prior yet: it is a mixture over phi samples and needs {need} of them; one "
                f"is kept every thin={hierarchy.thin} steps after burn_in={hierarchy.burn_in}, so "
                f"{self.step_count} steps have given {self.num_gmm_samples}: run at least "
                f"{total - self.step_count} more steps, or lower burn_in / thin")
        return MixturePrior.from_gmm(self.gmm, hierarchy.beta)

    # ---- sampling -------------------------------------------------------------------------
    _draws_bar = True  # run()'s progress bar is drawn by this process
    _first_task = 0  # the task of this process's first row of thetas (ShardedSGLDGibbs: of this rank)

    def _held_rows(self, start: torch.Tensor) -> torch.Tensor:
        """The task vectors this sampler holds, a new float32 buffer: all N rows of `start`."""
        return torch.empty(start.shape, dtype=torch.float32, device=start.device).copy_(start)

    def _task_grads(self, tasks: List[int], rows: List[torch.Tensor]) -> List[torch.Tensor]:
        """grad_fn's gradients for `tasks` at `rows` (views of the thetas), checked for shape,
        device, finiteness and in-place edits of the thetas (lift_ext.lift.batched_grad)."""
        return checked_gradients(self.grad_fn, tasks, rows, self._thetas, step=self.step_count)

    def step(self) -> List[int]:
        """One SGLD-Gibbs step; returns the tasks visited, in order (`tasks_per_step` of them,
        fewer when the next task of the round-robin is already among them; ShardedSGLDGibbs:
        those of every shard, in shard order). The same code for one process and a sharded
        chain: what differs is the plan (one shard, or every shard's) and the reduction that
        brings the rows' updates into the shared state (lift_ext.lift.reduction)."""
        plan, epoch, position = self._peek()
        tasks = [task for shard_tasks in plan for task in shard_tasks]
        t, comps = self.step_count, self._components
        mixing = self._mixture and t >= self._warmup_steps
        labelled = mixing and comps.k > 1
        reduction = self._reduction(len(tasks), labelled)
        held = self._held_shards()
        old = {s: torch.stack(self._rows(plan[s])) for s in held}
        version = self._thetas._version
        try:  # grad_fn may raise or edit its rows: edited rows are put back, nothing else has changed
            grads = {s: self._task_grads(plan[s], self._rows(plan[s])) for s in held}
        except BaseException:
            if self._thetas._version != version:
                self._put_back(plan, old)
            reduction.fail()
            raise
        generator = keyed_generator("SGLDGibbs.mixture", self.seed, t) if labelled else None
        uniform = comps.gumbel_uniforms(len(tasks), self.langevin.temperature, generator) if labelled else None
        likelihood = labelled and self._likelihood_z  # grad_fn.losses runs mid-step (one process only)
        restore = restore_point(self._thetas, comps, tasks, self._square_avg) if likelihood else None
        moved: List[int] = []  # tasks the likelihood draw carried to another component
        try:
            status, start = OK, 0
            for s in held:
                start = sum(len(p) for p in plan[:s])
                status = self._step_rows(s, plan[s], grads[s], old[s], t, start, reduction, uniform, mixing)
                if status != OK:
                    break
            if likelihood and status == OK:
                moved = draw_assignments_by_likelihood_(self._thetas, comps, tasks, self.grad_fn.losses,
                                                        temperature=self.langevin.temperature, generator=generator)
            shift = reduction.finish(status, tasks, [g for s in held for g in grads[s]], moved)
        except FloatingPointError as exc:
            if self._undoes_divergence:
                self._put_back(plan, old)
            raise self._divergence(str(exc)) from None
        except BaseException:  # grad_fn.losses raised, or a rank failed: the step never happened
            if restore is not None:
                restore()
            if self._undoes_divergence:
                self._put_back(plan, old)
            raise
        self._finish_step(t, mixing, generator, epoch, position, shift)
        return tasks

    def _step_rows(self, shard: int, tasks: List[int], grads: List[torch.Tensor], old: torch.Tensor, t: int,
                   start: int, reduction, uniform: Optional[torch.Tensor], mixing: bool) -> int:
        """Steps 2 and 3 for the rows of one shard's `tasks` (the step's tasks start.. of it):
        one fused list launch at Philox offset 2t + shard 2^40 (element b D + j for row b), the
        deltas and averages to the reduction, then (mixing) each row's z drawn by Gumbel-max with
        `uniform`'s rows start.. (the nearest phi_k at T = 0). Returns DIVERGED when a stepped
        row has no finite score (not finite, or every distance overflowed), else OK."""
        comps = self._components
        rows = self._rows(tasks)
        labels = [int(comps.assignments[task]) for task in tasks]
        centers = [comps.phis[label] for label in labels]
        averages = [] if self._square_avg is None else \
            list(self._square_avg.expand(len(tasks), -1).clone().unbind(0))
        ops.sgld_step_list_(rows, grads, centers, [], averages, **self._sgld_options(2 * t + shard * COMPONENT_STRIDE))
        new = torch.stack(rows)
        reduction.add_rows(shard, labels, new - old, averages)
        if mixing:
            try:
                if comps.k > 1:
                    labels = comps.choose(new, beta=self.hierarchy.beta, temperature=self.langevin.temperature,
                                          uniform=None if uniform is None else uniform[start:start + len(tasks)])
                elif not bool(torch.isfinite(new).all()):
                    return DIVERGED
            except FloatingPointError:
                return DIVERGED
        reduction.assign(shard, start, tasks, labels, new, grads)
        return OK

    # ---- the layout (ShardedSGLDGibbs: its shards) ---------------------------------------------
    _undoes_divergence = False  # one process: a diverged chain is left as it is; a sharded one undoes its rows

    def _peek(self):
        """(the next step's tasks per shard, and the order's position after them)."""
        tasks, epoch, position = self._order.peek(self.langevin.tasks_per_step)
        return [tasks], epoch, position

    def _held_shards(self) -> range:
        """The shards this process steps (one process: the one shard of all N tasks)."""
        return range(1)

    def _rows(self, tasks: Sequence[int]) -> List[torch.Tensor]:
        """The rows of `tasks` in the held thetas (views)."""
        return [self._thetas[task - self._first_task] for task in tasks]

    def _put_back(self, plan: List[List[int]], old: Dict[int, torch.Tensor]) -> None:
        """Restore the held rows of the step's tasks from their copies `old` (per shard)."""
        for s, rows in old.items():
            for task, row in zip(plan[s], rows):
                self._thetas[task - self._first_task].copy_(row)

    def _reduction(self, num_tasks: int, labelled: bool) -> LocalReduction:
        """The identity reduction of one process (lift_ext.lift.reduction)."""
        return LocalReduction(self._components, self._square_avg, shifting=self._shift_lr > 0.0)

    def _finish_step(self, t: int, mixing: bool, generator, epoch, position, shift_grads=None) -> None:
        """Steps 4 and 5 of step t (shift_grads: {k: gbar_k} of the shift), then on to (epoch, position)."""
        comps, langevin, hierarchy = self._components, self.langevin, self.hierarchy
        comps.draw_phis_(self._prior_mean, lr=self._phi_lr, temperature=langevin.temperature, sigma=hierarchy.sigma,
                         beta=hierarchy.beta, gibbs=self._gibbs_phi, seed=self.seed, step=t)
        if shift_grads:
            shift_components_(self._thetas, comps, shift_grads, self._square_avg, self._prior_mean,
                              lr=self._shift_lr, temperature=langevin.temperature, sigma=hierarchy.sigma,
                              alpha=langevin.alpha, eps=langevin.eps, seed=self.seed, step=t,
                              first_task=self._first_task)
        if mixing:
            comps.draw_weights_(temperature=langevin.temperature, generator=generator)
        self._order.advance(epoch, position)
        self.step_count += 1
        if self._mixture and self.step_count == self._warmup_steps:
            self._assign_by_kmeans()
        if self.gmm is None:
            return
        past_burn_in = self.step_count - hierarchy.burn_in
        if past_burn_in > 0 and past_burn_in % hierarchy.thin == 0:
            self._feed_mixture()

    def _sgld_options(self, offset: int) -> Dict[str, object]:
        """The scalar arguments of the theta step's op at Philox offset `offset`."""
        langevin = self.langevin
        return dict(lr=langevin.lr, temperature=langevin.temperature, prior_precision=1.0 / self.hierarchy.beta**2,
                    alpha=langevin.alpha, eps=self.damping, seed=self.seed, offset=offset)

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
        lr, beta = self.langevin.lr, self.hierarchy.beta
        return FloatingPointError(f"SGLDGibbs diverged: {what} at step {self.step_count} (lr={lr:g}, lr / "
                                  f"beta^2 = {lr / beta ** 2:g}); the gradients are too large for this "
                                  "lr: lower lr (or the temperature)")

    def all_thetas(self) -> torch.Tensor:
        """Every task's vector [N, D] (here the live buffer; ShardedSGLDGibbs gathers them)."""
        return self._thetas

    def run(self, num_steps: int, progress: bool = True, report_every: Optional[int] = None,
            callback: Optional[StepCallback] = None) -> None:
        """`num_steps` steps; a tqdm bar (where `_draws_bar`) shows `diagnostics()` every
        `report_every` steps (20 a run). `callback(step_count, tasks)` runs after each step
        (step_count: the steps done; tasks: those the step visited), e.g. to keep samples or
        checkpoint; an exception in it stops the run after that step."""
        validate.integer("num_steps", num_steps)
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable as callback(step_count, tasks)")
        every = report_every or max(1, num_steps // 20)
        with tqdm(total=num_steps, disable=not (progress and self._draws_bar), desc="SGLD-Gibbs", unit="step") as bar:
            for done in range(1, num_steps + 1):
                tasks = self.step()
                if callback is not None:
                    callback(self.step_count, tasks)
                if progress and (done % every == 0 or done == num_steps):
                    bar.set_postfix({k: f"{v:.4g}" for k, v in self.diagnostics().items()}, refresh=False)
                    bar.update(done - bar.n)
