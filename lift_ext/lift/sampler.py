"""`SGLDGibbs`: LiFT's posterior sampler over a shared prior phi and N task vectors theta_i.

Model (DESIGN.md sections 1 and 3), vectors of length D:
    phi ~ N(mu0, sigma^2 I),   theta_i | phi ~ N(phi, beta^2 I),   p(D_i | theta_i) given by
    `grad_fn(i, theta_i)` = a stochastic estimate of -d/dtheta log p(D_i | theta_i), summed
    over task i's data (the model's units; `mean_loss_grad` converts from a mean loss).

One `step()`:
  1. task i = next of a shuffled round-robin (a fresh permutation of the N tasks per epoch);
  2. theta_i <- theta_i - lr (g_i + (theta_i - phi)/beta^2) + sqrt(2 lr T) xi, and in the same
     fused pass S += theta_i,new - theta_i,old (S = sum_i theta_i, so J = (S - N phi)/beta^2
     equals the paper's running J of eq. 11 exactly). With ``preconditioned=True`` it is a
     pSGLD step (Li et al. 2016, without the Gamma correction term): v <- alpha v + (1 - alpha)
     g_i^2 (one average shared by all tasks, started at the first gradient's square),
     G = 1/(sqrt(v) + eps'), drift scaled by G and noise variance by G, where the damping
     eps' = max(eps, lr/beta^2) keeps lr G/beta^2 <= 1, so the prior pull is stable and the
     noise std at most beta sqrt(2T) even for weights whose data gradient vanishes;
  3. phi: Langevin (paper eq. 9) phi <- phi - lr_phi ((phi - mu0)/sigma^2 - (S - N phi)/beta^2)
     + sqrt(2 lr_phi T) xi, or "gibbs": an exact draw from p(phi | thetas) = N(m, T v I),
     v = 1/(1/sigma^2 + N/beta^2), m = v (mu0/sigma^2 + S/beta^2);
  4. after `burn_in` steps, every `thin`-th phi is a posterior sample fed to the OnlineGMM.
lr is half the paper's eta (see lift_ext.sgld). Noise of step t: Philox (seed, offset 2t) for
theta, (seed, offset 2t + 1) for phi, so a run is a pure function of its seed.
Memory: thetas [N, D] once, plus phi, S, mu0 and the mixture's K x D arrays, all on `device`
(default: the device of prior_mean, else of theta_init, else the CPU); grad_fn must return
gradients on that device.
"""
import math
import warnings
from typing import Callable, Dict, List, Optional, Union

import torch
from tqdm.auto import tqdm

from lift_ext import ops
from lift_ext.checkpoint import load_checked, save_atomic
from lift_ext.gmm import OnlineGMM
from lift_ext.sgld import start_square_avg_

GradFn = Callable[[int, torch.Tensor], torch.Tensor]
DeviceLike = Union[str, torch.device, None]

_FORMAT = "lift_ext.SGLDGibbs"
_VERSION = 1
_PHI_UPDATES = ("langevin", "gibbs")


def mean_loss_grad(grad_of_mean_loss: GradFn, task_sizes) -> GradFn:
    """Wrap a gradient of a task's MEAN loss into the summed units SGLDGibbs expects:
    g_sum(i, theta) = n_i * g_mean(i, theta), n_i = task_sizes[i] examples."""
    sizes = [int(n) for n in task_sizes]
    if any(n < 1 for n in sizes):
        raise ValueError("task_sizes must all be >= 1")
    return lambda i, theta: grad_of_mean_loss(i, theta) * sizes[i]


def _task_order(seed: int, epoch: int, num_tasks: int) -> List[int]:
    """The visiting order of epoch `epoch`: a permutation fixed by (seed, epoch)."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63 - 1))
    return torch.randperm(num_tasks, generator=gen).tolist()


def _default_device(device: DeviceLike, prior_mean, theta_init) -> torch.device:
    """`device` if given, else the device of prior_mean, else of theta_init, else the CPU."""
    if device is not None:
        return torch.device(device)
    for value in (prior_mean, theta_init):
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


class SGLDGibbs:
    """SGLD-Gibbs sampler of LiFT (see the module docstring for the math)."""

    def __init__(self, num_tasks: int, dim: int, grad_fn: GradFn, *, sigma: float, beta: float,
                 lr: float, lr_phi: Optional[float] = None, temperature: float = 1.0,
                 phi_update: str = "langevin", prior_mean: Optional[torch.Tensor] = None,
                 theta_init: Optional[torch.Tensor] = None, burn_in: int = 0, thin: int = 1,
                 n_components: int = 1, seed: int = 0, preconditioned: bool = False,
                 alpha: float = 0.99, eps: float = 1e-8, device: DeviceLike = None):
        for name, value, low in (("num_tasks", num_tasks, 1), ("dim", dim, 1), ("burn_in", burn_in, 0),
                                 ("thin", thin, 1), ("n_components", n_components, 1), ("seed", seed, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        for name, value in (("sigma", sigma), ("beta", beta), ("lr", lr)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        lr_phi = lr if lr_phi is None else lr_phi
        if not (isinstance(lr_phi, (int, float)) and math.isfinite(lr_phi) and lr_phi > 0):
            raise ValueError(f"lr_phi must be a finite number > 0, got {lr_phi!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if phi_update not in _PHI_UPDATES:
            raise ValueError(f"phi_update must be one of {_PHI_UPDATES}, got {phi_update!r}")
        if not isinstance(preconditioned, bool):
            raise ValueError(f"preconditioned must be a bool, got {preconditioned!r}")
        if not (isinstance(alpha, (int, float)) and 0.0 <= alpha < 1.0):
            raise ValueError(f"alpha must be a number in [0, 1), got {alpha!r}")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
        if not callable(grad_fn):
            raise TypeError("grad_fn must be callable as grad_fn(task_index, theta) -> Tensor [dim]")

        self.num_tasks, self.dim, self.grad_fn = num_tasks, dim, grad_fn
        self.sigma, self.beta, self.lr, self.lr_phi = float(sigma), float(beta), float(lr), float(lr_phi)
        self.temperature, self.phi_update = float(temperature), phi_update
        self.burn_in, self.thin, self.seed = burn_in, thin, seed
        self.preconditioned, self.alpha, self.eps = preconditioned, float(alpha), float(eps)
        dev = _default_device(device, prior_mean, theta_init)

        self._prior_mean = None if prior_mean is None else self._vector(prior_mean, "prior_mean", dev)
        self._thetas = torch.empty(num_tasks, dim, dtype=torch.float32, device=dev)
        if theta_init is None:
            self._thetas.copy_(self._prior_mean if self._prior_mean is not None else torch.zeros(dim))
        else:
            if not isinstance(theta_init, torch.Tensor) or theta_init.shape not in ((dim,), (num_tasks, dim)):
                raise ValueError(f"theta_init must be a Tensor of shape [{dim}] or [{num_tasks}, {dim}]")
            if not torch.isfinite(theta_init).all():
                raise ValueError("theta_init must be finite")
            self._thetas.copy_(theta_init.to(dev, torch.float32).expand(num_tasks, dim))
        total = torch.zeros(dim, dtype=torch.float64, device=dev)
        for row in self._thetas:  # row by row: O(D) extra memory, float64 accumulation
            total += row
        self._task_sum = total.float()
        self._phi = (total / num_tasks).float()
        self.gmm = OnlineGMM(n_components, dim, device=dev)
        self._square_avg = torch.zeros(dim, dtype=torch.float32, device=dev) if preconditioned else None
        self.step_count = 0
        self._epoch, self._position = 0, 0
        self._order = _task_order(seed, 0, num_tasks)
        self._warn_if_unstable()

    # ---- state ----------------------------------------------------------------------------
    @property
    def phi(self) -> torch.Tensor:
        """The shared prior mean phi [D] (the live buffer: clone it to keep a sample)."""
        return self._phi

    @property
    def thetas(self) -> torch.Tensor:
        """All task vectors [N, D] (the live buffer)."""
        return self._thetas

    @property
    def task_sum(self) -> torch.Tensor:
        """S = sum_i theta_i [D], kept up to date by the fused theta step."""
        return self._task_sum

    @property
    def prior_mean(self) -> Optional[torch.Tensor]:
        """mu0 [D], or None for 0."""
        return self._prior_mean

    @property
    def device(self) -> torch.device:
        return self._phi.device

    @property
    def num_gmm_samples(self) -> int:
        """phi samples fed to the mixture so far: (steps - burn_in) // thin, 0 before burn-in."""
        return max(0, self.step_count - self.burn_in) // self.thin

    def _vector(self, value: torch.Tensor, name: str, device: torch.device) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or value.shape != (self.dim,):
            raise ValueError(f"{name} must be a Tensor of shape [{self.dim}]")
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} must be finite")
        return value.detach().to(device, torch.float32).clone().contiguous()

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
            warnings.warn(f"lr_phi * (1/sigma^2 + N/beta^2) = {self.lr_phi * phi_precision:g} >= 1: the "
                          "Langevin phi step diverges; lower lr_phi or use phi_update='gibbs'",
                          RuntimeWarning, stacklevel=3)

    # ---- sampling -------------------------------------------------------------------------
    def _next_task(self) -> int:
        if self._position == self.num_tasks:
            self._epoch += 1
            self._position = 0
            self._order = _task_order(self.seed, self._epoch, self.num_tasks)
        task = self._order[self._position]
        self._position += 1
        return task

    def step(self) -> int:
        """One SGLD-Gibbs step; returns the index of the task visited."""
        task = self._next_task()
        theta = self._thetas[task]
        grad = self.grad_fn(task, theta)
        if not isinstance(grad, torch.Tensor) or grad.shape != (self.dim,):
            raise ValueError(f"grad_fn({task}, theta) must return a Tensor of shape [{self.dim}], got "
                             f"{getattr(grad, 'shape', type(grad).__name__)}")
        if grad.device != theta.device:
            raise ValueError(f"grad_fn({task}, theta) returned a tensor on {grad.device}, but the sampler's "
                             f"state is on {theta.device} (pass device= or a prior_mean on the right device)")
        offset = 2 * self.step_count
        grad = grad.detach()
        if self._square_avg is not None and self.step_count == 0:
            start_square_avg_(self._square_avg, grad)
        ops.sgld_step_(theta, grad, self._phi, self._task_sum, self._square_avg, lr=self.lr,
                       temperature=self.temperature, prior_precision=1.0 / self.beta**2,
                       alpha=self.alpha, eps=self.damping, seed=self.seed, offset=offset)
        ops.phi_step_(self._phi, self._task_sum, self._prior_mean, lr=self.lr_phi,
                      temperature=self.temperature, sigma=self.sigma, beta=self.beta,
                      num_tasks=self.num_tasks, gibbs=self.phi_update == "gibbs", seed=self.seed,
                      offset=offset + 1)
        self.step_count += 1
        if self.step_count > self.burn_in and (self.step_count - self.burn_in) % self.thin == 0:
            self._feed_mixture()
        return task

    def _feed_mixture(self) -> None:
        """Give phi to the mixture. The mixture refuses (unchanged) a sample that is not finite or
        so far from its components that it would become non-finite (its own check, no second
        pass here); either means the chain diverged, which is raised as FloatingPointError."""
        try:
            self.gmm.update(self._phi)
        except ValueError:
            raise FloatingPointError(
                f"SGLDGibbs diverged: phi is not finite or has run away after step {self.step_count} "
                f"(lr={self.lr:g}, lr / beta^2 = {self.lr / self.beta ** 2:g}); the gradients are too "
                "large for this lr: lower lr (or the temperature)") from None

    def diagnostics(self) -> Dict[str, float]:
        """Scalars to watch a run by: |phi| (RMS), the RMS spread of thetas around phi, and the
        number of mixture samples. Each call synchronises with the device."""
        spread = (self._thetas - self._phi).pow(2).mean().sqrt()
        return {"phi_rms": float(self._phi.pow(2).mean().sqrt()), "theta_spread": float(spread),
                "gmm_samples": float(self.num_gmm_samples)}

    def run(self, num_steps: int, progress: bool = True, report_every: Optional[int] = None) -> None:
        """`num_steps` steps with a tqdm bar showing `diagnostics()` every `report_every` steps
        (default: 20 reports per run)."""
        if not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"num_steps must be an int >= 0, got {num_steps!r}")
        every = report_every or max(1, num_steps // 20)
        with tqdm(total=num_steps, disable=not progress, desc="SGLD-Gibbs", unit="step") as bar:
            for done in range(1, num_steps + 1):
                self.step()
                if done % every == 0 or done == num_steps:
                    if progress:
                        bar.set_postfix({k: f"{v:.4g}" for k, v in self.diagnostics().items()}, refresh=False)
                    bar.update(done - bar.n)

    # ---- checkpoints ----------------------------------------------------------------------
    def _hparams(self) -> Dict[str, object]:
        return dict(num_tasks=self.num_tasks, dim=self.dim, sigma=self.sigma, beta=self.beta,
                    lr=self.lr, lr_phi=self.lr_phi, temperature=self.temperature,
                    phi_update=self.phi_update, burn_in=self.burn_in, thin=self.thin,
                    n_components=self.gmm.n_components, seed=self.seed,
                    preconditioned=self.preconditioned, alpha=self.alpha, eps=self.eps)

    def save(self, path: str) -> None:
        """Write the whole sampler state to one file, atomically (temp file + rename)."""
        save_atomic({
            "format": _FORMAT, "version": _VERSION, "hparams": self._hparams(),
            "phi": self._phi, "thetas": self._thetas, "task_sum": self._task_sum,
            "prior_mean": self._prior_mean, "gmm": self.gmm.state_dict(),
            "square_avg": self._square_avg,
            "step": self.step_count, "order": {"epoch": self._epoch, "position": self._position},
        }, path)

    @classmethod
    def load(cls, path: str, grad_fn: GradFn, device: DeviceLike = None) -> "SGLDGibbs":
        """Rebuild a sampler saved by `save`; it continues the exact same chain. A truncated,
        foreign or inconsistent file raises lift_ext.checkpoint.CheckpointError."""
        from lift_ext.checkpoint import CheckpointError

        state = load_checked(path, fmt=_FORMAT, version=_VERSION, map_location="cpu",
                             required=("hparams", "phi", "thetas", "task_sum", "prior_mean", "gmm",
                                       "step", "order"))
        hp = dict(state["hparams"])
        n, d = hp.get("num_tasks"), hp.get("dim")
        expected = {"phi": (d,), "thetas": (n, d), "task_sum": (d,)}
        if state["prior_mean"] is not None:
            expected["prior_mean"] = (d,)
        if hp.get("preconditioned"):
            expected["square_avg"] = (d,)
            if "square_avg" not in state:
                raise CheckpointError(f"checkpoint {path!r} is incomplete: a preconditioned sampler "
                                      "needs its square_avg")
        for key, shape in expected.items():
            value = state[key]
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape or value.dtype != torch.float32:
                raise CheckpointError(f"checkpoint {path!r}: {key} must be a float32 tensor of shape "
                                      f"{list(shape)}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                sampler = cls(grad_fn=grad_fn, prior_mean=state["prior_mean"], device=device, **hp)
            sampler.gmm.load_state_dict(state["gmm"])
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {path!r} is inconsistent: {exc}") from exc
        sampler._thetas.copy_(state["thetas"])
        sampler._task_sum.copy_(state["task_sum"])
        sampler._phi.copy_(state["phi"])
        if sampler._square_avg is not None:
            sampler._square_avg.copy_(state["square_avg"])
        sampler.step_count = int(state["step"])
        sampler._epoch = int(state["order"]["epoch"])
        sampler._position = int(state["order"]["position"])
        sampler._order = _task_order(sampler.seed, sampler._epoch, sampler.num_tasks)
        return sampler
