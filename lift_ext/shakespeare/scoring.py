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

from lift_ext.lift import FlatParams, average_predictions

METRICS = ("acc", "acc_remapped", "nll", "ece", "brier")
ECE_BINS = 15


def reliability_bins(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> torch.Tensor:
    """[bins, 3] float64: per confidence bin (0, 1/bins], ..., ((bins-1)/bins, 1] the number of
    positions, their summed confidence max_c p_c and their number of correct argmaxes, for
    predictive distributions probs [..., C] and integer targets [...]. Sums over roles add up."""
    probs, targets = probs.reshape(-1, probs.shape[-1]).double(), targets.reshape(-1)
    confidence, pred = probs.max(-1)
    which = (confidence * bins).ceil().clamp(1, bins).long() - 1
    columns = torch.stack([torch.ones_like(confidence), confidence, (pred == targets).double()], 1)
    return torch.zeros(bins, 3, dtype=torch.float64).index_add_(0, which, columns)


def calibration(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> Dict[str, float]:
    """{"ece", "brier"} of predictive distributions probs [..., C] for integer targets [...]
    (module docstring)."""
    count, confidence, hits = reliability_bins(probs, targets, bins).unbind(1)
    onehot = torch.nn.functional.one_hot(targets.reshape(-1), probs.shape[-1]).double()
    brier = ((probs.reshape(-1, probs.shape[-1]).double() - onehot) ** 2).sum(-1).mean()
    return {"ece": float((hits - confidence).abs().sum() / count.sum()), "brier": float(brier)}


LOG_T_GRID = torch.linspace(math.log(0.05), math.log(20.0), 241, dtype=torch.float64)


@torch.no_grad()
def fit_temperature(flat: FlatParams, theta: torch.Tensor, pair) -> float:
    """T in [0.05, 20] minimising the mean NLL (nats per target) of softmax(logits / T) on the
    (inputs, targets) ``pair`` at adapter ``theta``: the best of 241 log-spaced values, refined
    by 40 golden-section steps between its neighbours (the NLL is convex in 1/T)."""
    inputs, targets = pair
    logits = flat.call(theta)(input_ids=inputs).logits.double()
    logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / math.exp(log_t), targets))

    values = [nll(float(v)) for v in LOG_T_GRID]
    best = min(range(len(values)), key=values.__getitem__)
    lo, hi = float(LOG_T_GRID[max(best - 1, 0)]), float(LOG_T_GRID[min(best + 1, len(values) - 1)])
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    at_a, at_b = nll(a), nll(b)
    for _ in range(40):  # one new evaluation a step: the kept inner point is reused
        if at_a <= at_b:
            hi, b, at_b = b, a, at_a
            a = hi - ratio * (hi - lo)
            at_a = nll(a)
        else:
            lo, a, at_a = a, b, at_b
            b = lo + ratio * (hi - lo)
            at_b = nll(b)
    return math.exp((lo + hi) / 2.0)


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
