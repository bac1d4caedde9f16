"""A one-minute check that the fused SGLD step samples the right posterior.

Bayesian linear regression: y = X w + e, e ~ N(0, s^2), prior w ~ N(0, I / lam). The exact
posterior is N(m, S) with S = (X^T X / s^2 + lam I)^-1, m = S X^T y / s^2. Full-batch Langevin
with `lift_ext.sgld_step` (g = X^T (X w - y) / s^2, prior_precision = lam, T = 1) must
reproduce m and diag(S) up to Monte-Carlo error and the O(lr) discretisation bias.
"""
import math
import time

import torch

import lift_ext


def run(dim: int = 8, n: int = 200, steps: int = 20000, burn_in: int = 2000, lr: float = 2e-4,
        seed: int = 0) -> dict:
    """Sample the posterior and return the exact and sampled moments."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    w_true = torch.randn(dim, generator=gen, dtype=torch.float64)
    noise_sd, lam = 0.5, 1.0
    y = x @ w_true + noise_sd * torch.randn(n, generator=gen, dtype=torch.float64)
    precision = x.T @ x / noise_sd**2 + lam * torch.eye(dim, dtype=torch.float64)
    cov = torch.linalg.inv(precision)
    mean = cov @ x.T @ y / noise_sd**2

    xf, yf = x.float(), y.float()
    w = torch.zeros(dim)
    total = torch.zeros(dim, dtype=torch.float64)
    total_sq = torch.zeros(dim, dtype=torch.float64)
    start = time.perf_counter()
    for step in range(steps):
        grad = xf.T @ (xf @ w - yf) / noise_sd**2
        lift_ext.sgld_step(w, grad, lr=lr, prior_precision=lam, seed=seed, offset=step)
        if step >= burn_in:
            total += w.double()
            total_sq += w.double() ** 2
    elapsed = time.perf_counter() - start
    kept = steps - burn_in
    sample_mean = total / kept
    sample_sd = (total_sq / kept - sample_mean**2).clamp_min(0).sqrt()
    return dict(exact_mean=mean, exact_sd=cov.diagonal().sqrt(), sample_mean=sample_mean,
                sample_sd=sample_sd, seconds=elapsed, steps=steps)


def report(result: dict) -> str:
    """A plain-text table of the exact and sampled posterior moments."""
    lines = ["posterior of a Bayesian linear regression: exact vs lift_ext.sgld_step samples",
             f"{'coef':>4} {'exact mean':>11} {'SGLD mean':>11} {'exact sd':>9} {'SGLD sd':>9}"]
    for i in range(len(result["exact_mean"])):
        lines.append(f"{i:>4} {result['exact_mean'][i]:>11.4f} {result['sample_mean'][i]:>11.4f} "
                     f"{result['exact_sd'][i]:>9.4f} {result['sample_sd'][i]:>9.4f}")
    z = (result["sample_mean"] - result["exact_mean"]) / result["exact_sd"]
    ratio = result["sample_sd"] / result["exact_sd"]
    lines.append(f"max |mean error| / sd = {z.abs().max():.3f};  sd ratio in "
                 f"[{ratio.min():.3f}, {ratio.max():.3f}];  {result['steps']} steps in "
                 f"{result['seconds']:.1f} s")
    ok = bool(z.abs().max() < 0.5 and (ratio - 1).abs().max() < 0.15)
    lines.append("OK: samples match the exact posterior" if ok else
                 "MISMATCH: samples do not match the exact posterior")
    return "\n".join(lines)


def main() -> int:
    result = run()
    print(report(result))
    return 0 if math.isfinite(float(result["sample_mean"].sum())) else 1


if __name__ == "__main__":
    raise SystemExit(main())
