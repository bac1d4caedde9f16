"""The meta-test prior: a diagonal Gaussian mixture over a new task's adapter theta*,

    p(theta*) = sum_k w_k N(theta*; m_k, diag(v_k) + beta^2 I),

where m_k, v_k are the mean and variance of component k's shared adapter phi_k (a learned
prior location and its uncertainty) and beta^2 the task-level spread around it (docs/design.md
section 5). Built by the samplers (`SGLDGibbs.meta_test_prior()`) or from an `OnlineGMM`
fitted to phi samples (`MixturePrior.from_gmm`, the paper's route); `lift_ext.lift.adapt`
takes it.
"""
from dataclasses import dataclass

import torch

from lift_ext import ops, validate


@dataclass(frozen=True)
class MixturePrior:
    """means m [K, D] float32, variances v [K, D] float32 (>= 0, of phi_k, without beta^2),
    weights w [K] float64 (> 0, summing to 1), beta > 0 (units of theta)."""

    means: torch.Tensor
    variances: torch.Tensor
    weights: torch.Tensor
    beta: float

    def __post_init__(self):
        validate.number("beta", self.beta)
        if not isinstance(self.means, torch.Tensor) or self.means.dim() != 2:
            raise ValueError("means must be a Tensor [K, D]")
        k, d = self.means.shape
        if not isinstance(self.variances, torch.Tensor) or tuple(self.variances.shape) != (k, d):
            raise ValueError(f"variances must be a Tensor [K, D] = [{k}, {d}] like means")
        if not isinstance(self.weights, torch.Tensor) or tuple(self.weights.shape) != (k,):
            raise ValueError(f"weights must be a Tensor [K] = [{k}]")
        if not (bool(torch.isfinite(self.means).all()) and bool(torch.isfinite(self.variances).all())
                and bool((self.variances >= 0).all())):
            raise ValueError("means must be finite and variances finite and >= 0")
        if not (bool((self.weights > 0).all()) and abs(float(self.weights.sum()) - 1.0) < 1e-6):
            raise ValueError(f"weights must be > 0 and sum to 1, got {self.weights.tolist()}")
        object.__setattr__(self, "means", self.means.detach().float().contiguous())
        object.__setattr__(self, "variances", self.variances.detach().float().contiguous())
        object.__setattr__(self, "weights", self.weights.detach().double().contiguous())

    @classmethod
    def from_gmm(cls, gmm, beta: float) -> "MixturePrior":
        """The paper's prior: the OnlineGMM fitted to phi samples (components with no weight
        dropped), plus beta^2."""
        keep = gmm.weights > 0
        if not bool(keep.any()):
            raise ValueError("the mixture has no fitted component yet (it has seen no phi sample)")
        weights = gmm.weights[keep]
        return cls(gmm.means[keep], gmm.variances[keep], weights / weights.sum(), float(beta))

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def device(self) -> torch.device:
        return self.means.device

    def to(self, device) -> "MixturePrior":
        return MixturePrior(self.means.to(device), self.variances.to(device), self.weights.to(device), self.beta)

    def _op_args(self):
        """The fused mixture ops read var_k = m2_k / n_k + reg: n = w, m2 = v w, reg = beta^2."""
        return self.means, self.variances * self.weights.float()[:, None], self.weights, self.beta ** 2

    def log_prob(self, theta: torch.Tensor) -> float:
        """log p(theta) = logsumexp_k [log w_k + log N(theta; m_k, diag(v_k) + beta^2 I)] in nats
        (float64 sums, from the fused E-step), for theta [D]."""
        means, m2, counts, reg = self._op_args()
        loglik, _ = ops.gmm_estep(theta.reshape(1, -1).float(), means, m2, counts, reg=reg)
        return float(torch.logsumexp(loglik[0], dim=0))

    def log_peak(self) -> float:
        """C = max_k [log w_k - (1/2) sum_d log(2 pi (v_kd + beta^2))], the log density at the
        centre of the highest component alone (nats): log p(theta) - C is log p without its
        normalising constants (<= log K), the form `adapt` reports its objective in."""
        variances = self.variances.double() + self.beta ** 2
        heights = self.weights.to(variances.device).log() - 0.5 * torch.log(2 * torch.pi * variances).sum(1)
        return float(heights.max())

    def max_precision(self) -> float:
        """The largest curvature of -log p along any coordinate, 1 / min_kd (v_kd + beta^2)
        (per unit of theta^2): what bounds a stable step on the prior term."""
        return 1.0 / (float(self.variances.min()) + self.beta ** 2)

    def responsibilities(self, theta: torch.Tensor) -> torch.Tensor:
        """r_k(theta) = p(component k | theta) [K] float64, from the fused E-step."""
        means, m2, counts, reg = self._op_args()
        _, resp = ops.gmm_estep(theta.reshape(1, -1).float(), means, m2, counts, reg=reg)
        return resp[0]

    def add_prior_grad_(self, grad: torch.Tensor, theta: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        """grad += scale * (-d log p(theta) / d theta) = scale * sum_k r_k (theta - m_k) /
        (v_k + beta^2), in place on grad [D] float32; returns r [K] float64."""
        means, m2, counts, reg = self._op_args()
        _, resp = ops.gmm_estep(theta.reshape(1, -1), means, m2, counts, reg=reg)
        ops.gmm_prior_grad_(grad, theta, means, m2, counts, resp[0], reg=reg, scale=float(scale))
        return resp[0]
