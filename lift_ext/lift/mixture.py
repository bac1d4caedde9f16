"""The components of `SGLDGibbs`'s hierarchy and the Gibbs draws of the mixture prior
(docs/design.md sections 3 and 10).

Model (vectors of length D, units of theta):
    pi ~ Dir(a0 1_K),  phi_k ~ N(mu0, sigma^2 I),  z_i | pi ~ Cat(pi),
    theta_i | z_i = k ~ N(phi_k, beta^2 I).
The paper's hierarchy (one shared phi) is K = 1 with z = 0 and pi = 1, and no z or pi draws.

State: phis [K, D] and sums S [K, D] (S_k = sum of theta_i with z_i = k) float32 on the
sampler's device; assignments z [N] int64, weights pi [K] float64 and counts
n_k = #{i : z_i = k} on the CPU (they choose the rows of each launch, so they live on the host).

Conditional draws, with the temperature T scaling every Gaussian variance:
  z_i:   P(z_i = k) ∝ pi_k exp(-||theta_i - phi_k||^2 / (2 beta^2 T)), from the fused E-step
         (`ops.gmm_estep` with means = phis, m2 = 0, counts = pi, reg = beta^2 T: its loglik is
         log pi_k - ||theta_i - phi_k||^2 / (2 beta^2 T) + a constant), drawn by Gumbel-max;
         at T = 0 the nearest phi_k. A move k -> k' takes theta_i out of S_k into S_k'.
  phi_k: N(m_k, T v_k I), v_k = 1 / (1/sigma^2 + n_k/beta^2), m_k = v_k (mu0/sigma^2 + S_k/beta^2),
         by `ops.phi_step_` (gibbs=True, num_tasks = n_k); an empty component (n_k = 0, S_k = 0)
         is thereby drawn from its prior N(mu0, T sigma^2 I).
  pi:    Dir(a0 + n) (not tempered; at T = 0 its mean (a0 + n_k) / (K a0 + N)).
Noise: phi_k of step t uses Philox offset 2t + 1 + k 2^40 (theta uses 2t), collision-free for
t < 2^39 and K <= 2^23; z and pi use a CPU torch.Generator keyed by (seed, t). So a run is a
pure function of its seed, and K = 1 draws phi at offset 2t + 1 like the paper's chain.
"""
import hashlib
from typing import Dict, List, Optional, Sequence

import torch

from lift_ext import ops
from lift_ext.kmeans import plus_plus_seeds, squared_distances
from lift_ext.lift.prior import MixturePrior

COMPONENT_STRIDE = 2**40
MAX_COMPONENTS = 2**23


def keyed_seed(*key: object) -> int:
    """A 63-bit seed from a hash of `key` (distinct keys: unrelated seeds)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def keyed_generator(*key: object) -> torch.Generator:
    """A CPU torch.Generator seeded by a hash of `key` (distinct keys: independent streams)."""
    return torch.Generator().manual_seed(keyed_seed(*key))


def rows_identical(x: torch.Tensor) -> bool:
    """True when every row of x [N, D] equals the first (at once for one row broadcast as a view)."""
    return x.shape[0] < 2 or x.stride(0) == 0 or bool((x == x[0]).all())


def _lloyd(x: torch.Tensor, k: int, generator: torch.Generator, iterations: int):
    """(labels [N] int64 CPU, within-cluster sum of squares) of k-means over the rows of x:
    k-means++ seeding with `generator`, each row to its nearest centre, Lloyd iterations until
    the labels settle (at most `iterations`)."""
    centers = x[plus_plus_seeds(x, k, generator)].clone()
    labels = squared_distances(x, centers).argmin(dim=1).cpu()
    for _ in range(iterations):
        for j in labels.unique().tolist():
            centers[j] = x[(labels == j).nonzero().squeeze(1).to(x.device)].mean(0)
        fresh = squared_distances(x, centers).argmin(dim=1).cpu()
        if torch.equal(fresh, labels):
            break
        labels = fresh
    inertia = sum(float((x[labels.to(x.device) == j] - centers[j]).pow(2).sum()) for j in labels.unique().tolist())
    return labels, inertia


def initial_assignments(thetas: torch.Tensor, k: int, generator: torch.Generator, restarts: int = 10,
                        lloyd_iterations: int = 20) -> torch.Tensor:
    """z [N] int64 (CPU) for the start of the chain, from the DIRECTIONS in which the task
    vectors left their mean: u_i = (theta_i - mean) / ||theta_i - mean|| (0 for a row at the
    mean). k-means over the u_i (`_lloyd`), `restarts` times with seeds from `generator`, the
    labels with the lowest within-cluster sum of squares kept. Directions, not the vectors: how
    far a task's vector has moved mostly reflects how much data it has and how often it was
    visited, and with raw vectors a few far-travelled tasks take components of their own
    (docs/design.md section 10). Identical rows (nothing to cluster): a balanced assignment,
    task perm[j] to component j mod K."""
    n = thetas.shape[0]
    if rows_identical(thetas):
        perm = torch.randperm(n, generator=generator)
        labels = torch.empty(n, dtype=torch.int64)
        labels[perm] = torch.arange(n) % k
        return labels
    deviations = thetas - thetas.mean(0)
    directions = deviations / deviations.norm(dim=1, keepdim=True).clamp_min(torch.finfo(thetas.dtype).tiny)
    runs = [_lloyd(directions, k, generator, lloyd_iterations) for _ in range(restarts)]
    return min(runs, key=lambda run: run[1])[0]


class Components:
    """phis, S, z, pi and n of a K-component hierarchy over N tasks of dimension D (module
    docstring). `a0` is the Dirichlet concentration of pi."""

    def __init__(self, k: int, num_tasks: int, dim: int, device: torch.device, a0: float = 1.0):
        self.k, self.num_tasks, self.dim, self.a0 = k, num_tasks, dim, float(a0)
        self.phis = torch.zeros(k, dim, dtype=torch.float32, device=device)
        self.sums = torch.zeros_like(self.phis)
        self.assignments = torch.zeros(num_tasks, dtype=torch.int64)
        self.counts: List[int] = [num_tasks] + [0] * (k - 1)
        self.weights = self.expected_weights()
        self._zero_m2: Optional[torch.Tensor] = None  # the E-step's m2 = 0, allocated on first use

    def expected_weights(self) -> torch.Tensor:
        """E[pi | z] = (a0 + n_k) / (K a0 + N) [K] float64 (CPU)."""
        counts = torch.tensor(self.counts, dtype=torch.float64)
        return (self.a0 + counts) / (self.k * self.a0 + self.num_tasks)

    def rebuild_(self, thetas: torch.Tensor, assignments: torch.Tensor,
                 prior_mean: Optional[torch.Tensor]) -> None:
        """Set z, n and S from the thetas (`member_sums`), each phi_k to its members' mean (mu0,
        or 0, when it has none) and pi to E[pi | z]."""
        total = self.member_sums(thetas, assignments)
        self.assignments = assignments.to("cpu", torch.int64).clone()
        self.counts = torch.bincount(self.assignments, minlength=self.k).tolist()
        self.sums.copy_(total)
        for comp, members in enumerate(self.counts):
            if members > 0:
                self.phis[comp].copy_(total[comp] / members)
            elif prior_mean is not None:
                self.phis[comp].copy_(prior_mean)
            else:
                self.phis[comp].zero_()
        self.weights = self.expected_weights()

    def member_sums(self, thetas: torch.Tensor, assignments: torch.Tensor) -> torch.Tensor:
        """sum of the rows of `thetas` [N, D] per component of `assignments` [N], float64 [K, D],
        added row by row in task order (O(K D) extra memory)."""
        total = torch.zeros(self.k, self.dim, dtype=torch.float64, device=thetas.device)
        for row, comp in zip(thetas, assignments.tolist()):
            total[comp] += row
        return total

    @staticmethod
    def phi_offset(step: int, comp: int) -> int:
        """Philox offset of phi_k's draw at step t: 2t + 1 + k 2^40."""
        return 2 * step + 1 + comp * COMPONENT_STRIDE

    def draw_phis_(self, prior_mean: Optional[torch.Tensor], *, lr: float, temperature: float,
                   sigma: float, beta: float, gibbs: bool, seed: int, step: int) -> None:
        """Every phi_k from its conditional (exact with gibbs=True, else one Langevin step;
        Langevin is used only with K = 1, where n_0 = N)."""
        for comp, members in enumerate(self.counts):
            ops.phi_step_(self.phis[comp], self.sums[comp], prior_mean, lr=lr, temperature=temperature,
                          sigma=sigma, beta=beta, num_tasks=members, gibbs=gibbs, seed=seed,
                          offset=self.phi_offset(step, comp))

    def move_(self, task: int, comp: int, leaving: torch.Tensor, arriving: torch.Tensor) -> None:
        """z_task = comp: `leaving` (its vector as it was) out of S of its old component, `arriving`
        (its vector from now on) into S_comp, n updated; an emptied S is 0 exactly."""
        old = int(self.assignments[task])
        self.assignments[task] = comp
        self.counts[old] -= 1
        self.counts[comp] += 1
        self.sums[comp].add_(arriving)
        if self.counts[old] == 0:
            self.sums[old].zero_()  # the sum over no task, exactly (no rounding residue)
        else:
            self.sums[old].sub_(leaving)

    def gumbel_uniforms(self, count: int, temperature: float, generator: torch.Generator
                        ) -> Optional[torch.Tensor]:
        """The uniforms [count, K] float64 (CPU) of `count` z draws, None at T = 0 (no draw)."""
        if temperature == 0.0:
            return None
        return torch.rand((count, self.k), dtype=torch.float64, generator=generator)

    def choose(self, rows: torch.Tensor, *, beta: float, temperature: float,
               uniform: Optional[torch.Tensor]) -> List[int]:
        """The component drawn for each row [B, D] from its conditional by Gumbel-max with
        `uniform` [B, K] (from `gumbel_uniforms`; at T = 0 the nearest phi_k). Changes nothing;
        FloatingPointError when a row has no finite score (a row or phi_k not finite, or so far
        apart that every float32 distance overflows)."""
        if self._zero_m2 is None:
            self._zero_m2 = torch.zeros_like(self.phis)
        if temperature > 0.0:
            counts = self.weights.to(self.phis.device)
            loglik, _ = ops.gmm_estep(rows, self.phis, self._zero_m2, counts, reg=beta**2 * temperature)
            scores = loglik.cpu() - torch.log(-torch.log(uniform.clamp_min(1e-300)))
        else:
            scores = -squared_distances(rows, self.phis).cpu()
        if not bool(torch.isfinite(scores.max(dim=1).values).all()):  # NaN, or every distance overflowed
            raise FloatingPointError("a stepped theta or a phi_k is not finite")
        return scores.argmax(dim=1).tolist()

    def assign_(self, tasks: Sequence[int], labels: Sequence[int]) -> None:
        """z_i = label for each (task, label), n recounted, and S_k = 0 exactly for every empty
        component (S itself is the caller's to update for the moves)."""
        for task, label in zip(tasks, labels):
            self.assignments[task] = int(label)
        self.counts = torch.bincount(self.assignments, minlength=self.k).tolist()
        for comp, members in enumerate(self.counts):
            if members == 0:
                self.sums[comp].zero_()

    def draw_weights_(self, *, temperature: float, generator: torch.Generator) -> None:
        """pi ~ Dir(a0 + n) (its mean at T = 0; pi = 1 exactly for K = 1)."""
        if temperature == 0.0 or self.k == 1:
            self.weights = self.expected_weights()
            return
        concentration = self.a0 + torch.tensor(self.counts, dtype=torch.float64)
        self.weights = torch._sample_dirichlet(concentration, generator=generator)

    def meta_test_prior(self, prior_mean: Optional[torch.Tensor], *, sigma: float, beta: float,
                        temperature: float) -> MixturePrior:
        """The Rao-Blackwellised posterior of the current state: means m_k, variances T v_k
        (broadcast to [K, D]), weights E[pi | z], and beta."""
        counts = torch.tensor(self.counts, dtype=torch.float64)
        variance = 1.0 / (1.0 / sigma**2 + counts / beta**2)  # v_k [K]
        device = self.phis.device
        v = variance.to(device)[:, None]
        means = v * self.sums.double() / beta**2
        if prior_mean is not None:
            means += v * prior_mean.double()[None, :] / sigma**2
        variances = (temperature * v).expand(self.k, self.dim)
        return MixturePrior(means.float(), variances.float(), self.expected_weights().to(device), beta)

    # ---- persistence ----------------------------------------------------------------------
    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"phis": self.phis.clone(), "sums": self.sums.clone(),
                "assignments": self.assignments.clone(), "weights": self.weights.clone()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Replace the state by `state` (from `state_dict`); everything is checked first, a
        ValueError leaves this object unchanged."""
        shapes = {"phis": ((self.k, self.dim), torch.float32), "sums": ((self.k, self.dim), torch.float32),
                  "assignments": ((self.num_tasks,), torch.int64), "weights": ((self.k,), torch.float64)}
        if not isinstance(state, dict) or set(state) != set(shapes):
            raise ValueError(f"the component state must be a dict with keys {sorted(shapes)}")
        for key, (shape, dtype) in shapes.items():
            value = state[key]
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape or value.dtype != dtype:
                raise ValueError(f"{key} must be a {dtype} tensor of shape {list(shape)}")
            if dtype.is_floating_point and not bool(torch.isfinite(value).all()):
                raise ValueError(f"{key} must be finite")
        z, w = state["assignments"], state["weights"]
        if bool((z < 0).any()) or bool((z >= self.k).any()):
            raise ValueError(f"assignments must lie in [0, {self.k})")
        if bool((w < 0).any()) or abs(float(w.sum()) - 1.0) > 1e-6:
            raise ValueError("weights must be >= 0 and sum to 1")
        self.phis.copy_(state["phis"])
        self.sums.copy_(state["sums"])
        self.assignments = z.clone()
        self.counts = torch.bincount(z, minlength=self.k).tolist()
        self.weights = w.clone()
