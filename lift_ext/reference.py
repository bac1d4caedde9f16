"""Pure-PyTorch oracle for every lift_ext kernel: the same math, written plainly.

Nothing here calls the compiled extension. Where precision matters the math runs in
float64; tests compare the fused kernels against these functions.
"""
import math
from typing import Optional, Tuple

import torch

_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def _mulhilo32(a: torch.Tensor, b: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of a * b for uint32 values held in int64, without overflow."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    p_hi, p_lo = a_hi * b, a_lo * b  # each < 2^48
    low = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    high = (p_hi + (p_lo >> 16)) >> 16
    return high & _MASK32, low


def philox4x32_10(counter: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Philox4x32-10 on int64 tensors holding uint32 words.

    counter: [..., 4], key: [..., 2] (broadcastable). Returns [..., 4] output words.
    """
    c0, c1, c2, c3 = (counter[..., i].to(torch.int64) & _MASK32 for i in range(4))
    k0, k1 = (key[..., i].to(torch.int64) & _MASK32 for i in range(2))
    for _ in range(10):
        hi0, lo0 = _mulhilo32(c0, _PHILOX_M0)
        hi1, lo1 = _mulhilo32(c2, _PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _PHILOX_W0) & _MASK32
        k1 = (k1 + _PHILOX_W1) & _MASK32
    return torch.stack([c0, c1, c2, c3], dim=-1)


def philox_uniform_words(numel: int, seed: int, offset: int) -> torch.Tensor:
    """The 32-bit Philox words of elements 0..numel-1: counter (i // 4, offset), key seed."""
    groups = (numel + 3) // 4
    g = torch.arange(groups, dtype=torch.int64)
    counter = torch.stack([g & _MASK32, g >> 32,
                           torch.full_like(g, offset & _MASK32), torch.full_like(g, offset >> 32)], -1)
    key = torch.tensor([seed & _MASK32, seed >> 32], dtype=torch.int64)
    return philox4x32_10(counter, key).reshape(-1)[:numel]


def philox_normal(numel: int, seed: int, offset: int) -> torch.Tensor:
    """float64 Box-Muller normals of the kernel stream (exact log / sin / cos).

    Words (w0, w1, w2, w3) of each group give (z0, z1) from (w0, w1) and (z2, z3) from (w2, w3):
    u = (w_even >> 8) * 2^-24 + 2^-25, angle = (w_odd >> 30) * pi/2 + ((w_odd >> 6) & (2^24-1)) * 2^-24 * pi/2,
    z_even = sqrt(-2 log u) cos(angle), z_odd = sqrt(-2 log u) sin(angle).
    """
    groups = (numel + 3) // 4
    words = philox_uniform_words(4 * groups, seed, offset).reshape(-1, 2)
    u = (words[:, 0] >> 8).double() * 2.0**-24 + 2.0**-25
    quadrant = (words[:, 1] >> 30).double()
    fraction = ((words[:, 1] >> 6) & 0xFFFFFF).double() * 2.0**-24
    angle = (quadrant + fraction) * (math.pi / 2)
    radius = torch.sqrt(-2.0 * torch.log(u))
    z = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)
    return z.reshape(-1)[:numel]


def sgld_step(param: torch.Tensor, grad: torch.Tensor, noise: Optional[torch.Tensor], *, lr: float,
              temperature: float = 1.0, prior_mean: Optional[torch.Tensor] = None,
              prior_precision: float = 0.0, accum: Optional[torch.Tensor] = None,
              square_avg: Optional[torch.Tensor] = None, alpha: float = 0.99, eps: float = 1e-8,
              ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """One SGLD step in float64, out of place; returns (param, accum, square_avg) after it.

        v <- g^2 if v == 0 else alpha v + (1 - alpha) g^2,  G = 1 / (sqrt(v) + eps'),
        eps' = max(eps, lr * prior_precision)                   (only with square_avg)
        theta <- theta - lr G (g + lam (theta - c)) + sqrt(2 lr T G) xi

    lr is half the paper's eta; lam = prior_precision; c = prior_mean (0 when None); xi = noise.
    accum, when given, receives theta_new - theta_old.
    """
    theta = param.double()
    g = grad.double()
    drift = g
    if prior_precision != 0.0:
        center = prior_mean.double() if prior_mean is not None else torch.zeros_like(theta)
        drift = g + prior_precision * (theta - center)
    precond = torch.ones_like(theta)
    new_square_avg = None
    if square_avg is not None:
        v = square_avg.double()
        new_square_avg = torch.where(v == 0, g * g, alpha * v + (1.0 - alpha) * g * g)
        precond = 1.0 / (torch.sqrt(new_square_avg) + max(eps, lr * prior_precision))
    new_theta = theta - lr * precond * drift
    if temperature != 0.0:
        new_theta = new_theta + math.sqrt(2.0 * lr * temperature) * torch.sqrt(precond) * noise.double()
    new_accum = None if accum is None else accum.double() + (new_theta - theta)
    return new_theta, new_accum, new_square_avg


def phi_step(phi: torch.Tensor, task_sum: torch.Tensor, prior_mean: Optional[torch.Tensor],
             noise: Optional[torch.Tensor], *, lr: float, temperature: float, sigma: float,
             beta: float, num_tasks: int, gibbs: bool) -> torch.Tensor:
    """SGLD-Gibbs update of the shared prior phi in float64, out of place.

    Langevin (paper eq. 9 with J = (S - N phi)/beta^2):
        phi <- phi - lr ((phi - mu0)/sigma^2 - (S - N phi)/beta^2) + sqrt(2 lr T) xi
    Exact conditional draw:  phi <- m + sqrt(T v) xi,
        v = 1/(1/sigma^2 + N/beta^2),  m = v (mu0/sigma^2 + S/beta^2).
    """
    p, s = phi.double(), task_sum.double()
    mu0 = prior_mean.double() if prior_mean is not None else torch.zeros_like(p)
    if gibbs:
        variance = 1.0 / (1.0 / sigma**2 + num_tasks / beta**2)
        out = variance * (mu0 / sigma**2 + s / beta**2)
        scale = math.sqrt(temperature * variance)
    else:
        out = p - lr * ((p - mu0) / sigma**2 - (s - num_tasks * p) / beta**2)
        scale = math.sqrt(2.0 * lr * temperature)
    if scale != 0.0:
        out = out + scale * noise.double()
    return out
# ---------------------------------------------------------------------------------------
# Diagonal Gaussian mixture, online EM (docs/design.md sections 4 and 5), float64.
#
# State: counts n [K], means mu [K, D], centred second moments M2 [K, D];
# var = M2 / n + reg, alpha = n / sum n.
# ---------------------------------------------------------------------------------------

_LOG_2PI = math.log(2.0 * math.pi)


def gmm_variances(m2: torch.Tensor, counts: torch.Tensor, reg: float) -> torch.Tensor:
    """var_kd = M2_kd / n_k + reg in float64 (components with n_k <= 0 get reg)."""
    n = counts.double()[:, None]
    safe = torch.where(n > 0, n, torch.ones_like(n))
    return torch.where(n > 0, m2.double() / safe, torch.zeros_like(m2, dtype=torch.float64)) + reg


def gmm_estep(x: torch.Tensor, means: torch.Tensor, m2: torch.Tensor, counts: torch.Tensor,
              reg: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(loglik, resp) [B, K] in float64:
    loglik_bk = log alpha_k - 1/2 sum_d [(x_bd - mu_kd)^2 / var_kd + log var_kd + log 2 pi],
    resp = softmax_k(loglik); n_k <= 0 gives -inf."""
    x = x.double()
    mu = means.double()
    var = gmm_variances(m2, counts, reg)
    n = counts.double()
    log_alpha = torch.where(n > 0, torch.log(n.clamp_min(0)) - torch.log(n.clamp_min(0).sum()),
                            torch.full_like(n, -math.inf))
    logdet = torch.log(var).sum(1)
    quad = torch.stack([(((xb[None, :] - mu) ** 2) / var).sum(1) for xb in x]) if len(x) else \
        x.new_empty((0, mu.shape[0]))
    loglik = log_alpha[None, :] - 0.5 * (quad + logdet[None, :] + x.shape[1] * _LOG_2PI)
    return loglik, torch.softmax(loglik, dim=1)


def gmm_mstep(means: torch.Tensor, m2: torch.Tensor, counts: torch.Tensor, x: torch.Tensor,
              resp: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mini-batch M-step, out of place: Chan's merge of the resp-weighted batch.

    W = sum_b q_b, m = sum_b q_b x_b / W, S = sum_b q_b (x_b - m)^2,
    n' = n + W, mu' = mu + (m - mu) W / n', M2' = M2 + S + (m - mu)^2 n W / n'.
    Components with W = 0 are returned unchanged. Returns (means, m2, counts) in float64.
    """
    mu, M2, n = means.double().clone(), m2.double().clone(), counts.double().clone()
    x, q = x.double(), resp.double()
    for k in range(mu.shape[0]):
        w = q[:, k].sum()
        if w == 0:
            continue
        batch_mean = (q[:, k, None] * x).sum(0) / w
        batch_m2 = (q[:, k, None] * (x - batch_mean) ** 2).sum(0)
        delta = batch_mean - mu[k]
        updated = n[k] + w
        mu[k] = mu[k] + delta * (w / updated)
        M2[k] = M2[k] + batch_m2 + delta * delta * (n[k] * w / updated)
        n[k] = updated
    return mu, M2, n


def gmm_welford_update(means: torch.Tensor, m2: torch.Tensor, counts: torch.Tensor,
                       x: torch.Tensor, q: torch.Tensor
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sample x [D] with responsibilities q [K], the Welford form, in the dtype given:
    n' = n + q, delta = x - mu, mu' = mu + (q / n') delta, M2' = M2 + q delta (x - mu')."""
    n_new = counts + q
    ratio = torch.where(n_new > 0, q / torch.where(n_new > 0, n_new, torch.ones_like(n_new)),
                        torch.zeros_like(n_new)).to(means.dtype)[:, None]
    qd = q.to(means.dtype)[:, None]
    delta = x[None, :] - means
    mu_new = means + ratio * delta
    return mu_new, m2 + qd * delta * (x[None, :] - mu_new), n_new


def gmm_raw_moment_update(means: torch.Tensor, second: torch.Tensor, counts: torch.Tensor,
                          x: torch.Tensor, q: torch.Tensor
                          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The paper's form (eq. 14) in the dtype given: running raw second moment S_k = E[x^2],
    n' = n + q, mu' = mu + (q/n')(x - mu), S' = S + (q/n')(x^2 - S); var = S - mu^2 (see
    `gmm_raw_moment_variances`). Algebraically equal to the Welford form, but S - mu^2
    cancels catastrophically when |mu| >> std."""
    n_new = counts + q
    ratio = (q / n_new).to(means.dtype)[:, None]
    return means + ratio * (x[None, :] - means), second + ratio * (x[None, :] ** 2 - second), n_new


def gmm_raw_moment_variances(means: torch.Tensor, second: torch.Tensor, reg: float) -> torch.Tensor:
    """var = S - mu^2 + reg, in the dtype of the inputs."""
    return second - means * means + reg


def gmm_prior_grad(theta: torch.Tensor, means: torch.Tensor, m2: torch.Tensor,
                   counts: torch.Tensor, reg: float, beta: float
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradient of -log sum_k alpha_k N(theta; mu_k, var_k + beta^2) in float64, and the
    responsibilities r [K] it uses: sum_k r_k (theta - mu_k) / (var_k + beta^2)."""
    reg_total = reg + beta * beta
    _, resp = gmm_estep(theta[None, :], means, m2, counts, reg_total)
    var = gmm_variances(m2, counts, reg_total)
    r = resp[0]
    grad = (r[:, None] * (theta.double()[None, :] - means.double()) / var).sum(0)
    return grad, r
