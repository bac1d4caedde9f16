"""Query-set scores of an adapted role: next-character accuracy on all targets and on the
remapped ones, the negative log-likelihood, and calibration (docs/design.md section 11).

For theta samples theta_1..theta_S (S = 1 for a point estimate) the predictive distribution
p at each position is the average of the S softmax outputs; accuracy counts positions whose
argmax is the target, NLL is the mean of -log p(target) in nats per character. Calibration:
the expected calibration error over 15 equal-width confidence bins,

    ECE = sum_b (n_b / N) |accuracy_b - mean confidence_b|,   confidence = max_c p_c,

and the Brier score, the mean over positions of sum_c (p_c - [c = target])^2.

Temperature scaling (the non-Bayesian reference for calibration): one point estimate's logits
divided by T > 0 before the softmax, T the minimiser of the mean support NLL
(`fit_temperature`); accuracy is unchanged, confidence is what moves.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch

from lift_ext.calibration import ECE_BINS
from lift_ext.calibration import fit_temperature as fit_logit_temperature
from lift_ext.calibration import reliability_bins as core_reliability_bins
from lift_ext.lift import FlatParams, average_predictions

METRICS = ("acc", "acc_remapped", "nll", "ece", "brier")


def reliability_bins(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> torch.Tensor:
    """lift_ext.calibration.reliability_bins over every position: [bins, 3] float64 (count,
    summed confidence, correct argmaxes per confidence bin) for predictive distributions
    probs [..., C] and integer targets [...]. Sums over roles add up."""
    return core_reliability_bins(probs.reshape(-1, probs.shape[-1]), targets.reshape(-1), bins)


def calibration(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> Dict[str, float]:
    """{"ece", "brier"} of predictive distributions probs [..., C] for integer targets [...]
    (module docstring)."""
    count, confidence, hits = reliability_bins(probs, targets, bins).unbind(1)
    onehot = torch.nn.functional.one_hot(targets.reshape(-1), probs.shape[-1]).double()
    brier = ((probs.reshape(-1, probs.shape[-1]).double() - onehot) ** 2).sum(-1).mean()
    return {"ece": float((hits - confidence).abs().sum() / count.sum()), "brier": float(brier)}


@torch.no_grad()
def fit_temperature(flat: FlatParams, theta: torch.Tensor, pair) -> float:
    """T in [0.05, 20] minimising the mean NLL (nats per target) of softmax(logits / T) on the
    (inputs, targets) ``pair`` at adapter ``theta`` (lift_ext.calibration.fit_temperature over
    every predicted character)."""
    inputs, targets = pair
    logits = flat.call(theta)(input_ids=inputs).logits.double()
    return fit_logit_temperature(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def query_metrics(flat: FlatParams, thetas: Sequence[torch.Tensor], role,
                  temperature: float = 1.0) -> Dict[str, Optional[float]]:
    """METRICS of the predictive average over ``thetas`` on ``role``'s query pair (a
    FewShotRole), each model's logits divided by ``temperature`` (temperature scaling), and
    "reliability", its `reliability_bins` as lists. acc_remapped is None when no query target
    is remapped."""
    inputs, targets = role.query
    thetas = list(thetas)
    if len(thetas) == 1:  # argmax of the logits themselves: no ties made by rounding softmax
        logits = flat.call(thetas[0])(input_ids=inputs).logits.float() / temperature
        pred, logp = logits.argmax(-1), torch.log_softmax(logits, -1)
        probs = logp.exp()
    else:
        probs = average_predictions(flat, thetas,
                                    lambda call: torch.softmax(call(input_ids=inputs).logits.float() / temperature, -1))
        pred, logp = probs.argmax(-1), probs.clamp_min(1e-30).log()
    hit = pred == targets
    nll = -logp.gather(-1, targets[..., None]).mean()
    n_remapped = int(role.remapped.sum())
    return {"acc": float(hit.float().mean()),
            "acc_remapped": float(hit[role.remapped].float().mean()) if n_remapped else None,
            "nll": float(nll), **calibration(probs, targets),
            "reliability": reliability_bins(probs, targets).tolist()}


def mean_of(values: Sequence[Optional[float]]) -> float:
    """Mean of the values that are not None (nan if none is)."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else math.nan


__all__ = ["METRICS", "ECE_BINS", "calibration", "reliability_bins", "fit_temperature", "query_metrics", "mean_of"]
