"""Query-set scores of an adapted role: next-character accuracy on all targets and on the
remapped ones, the negative log-likelihood, and calibration (docs/design.md section 11).

For theta samples theta_1..theta_S (S = 1 for a point estimate) the predictive distribution
p at each position is the average of the S softmax outputs; accuracy counts positions whose
argmax is the target, NLL is the mean of -log p(target) in nats per character. Calibration:
the expected calibration error over 15 equal-width confidence bins,

    ECE = sum_b (n_b / N) |accuracy_b - mean confidence_b|,   confidence = max_c p_c,

and the Brier score, the mean over positions of sum_c (p_c - [c = target])^2.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch

from lift_ext.lift import FlatParams, average_predictions

METRICS = ("acc", "acc_remapped", "nll", "ece", "brier")
ECE_BINS = 15


def calibration(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> Dict[str, float]:
    """{"ece", "brier"} of predictive distributions probs [..., C] for integer targets [...]
    (module docstring); bins of confidence (0, 1/bins], ..., ((bins-1)/bins, 1]."""
    probs, targets = probs.reshape(-1, probs.shape[-1]).double(), targets.reshape(-1)
    confidence, pred = probs.max(-1)
    hit = (pred == targets).double()
    which = (confidence * bins).ceil().clamp(1, bins).long() - 1
    count = torch.zeros(bins, dtype=torch.float64).index_add_(0, which, torch.ones_like(hit))
    gap = torch.zeros(bins, dtype=torch.float64).index_add_(0, which, hit - confidence)
    onehot = torch.nn.functional.one_hot(targets, probs.shape[-1]).double()
    return {"ece": float(gap.abs().sum() / count.sum()), "brier": float(((probs - onehot) ** 2).sum(-1).mean())}


@torch.no_grad()
def query_metrics(flat: FlatParams, thetas: Sequence[torch.Tensor], role) -> Dict[str, Optional[float]]:
    """METRICS of the predictive average over ``thetas`` on ``role``'s query pair (a
    FewShotRole). acc_remapped is None when no query target is remapped."""
    inputs, targets = role.query
    thetas = list(thetas)
    if len(thetas) == 1:  # argmax of the logits themselves: no ties made by rounding softmax
        logits = flat.call(thetas[0])(input_ids=inputs).logits.float()
        pred, logp = logits.argmax(-1), torch.log_softmax(logits, -1)
        probs = logp.exp()
    else:
        probs = average_predictions(flat, thetas,
                                    lambda call: torch.softmax(call(input_ids=inputs).logits.float(), -1))
        pred, logp = probs.argmax(-1), probs.clamp_min(1e-30).log()
    hit = pred == targets
    nll = -logp.gather(-1, targets[..., None]).mean()
    n_remapped = int(role.remapped.sum())
    return {"acc": float(hit.float().mean()),
            "acc_remapped": float(hit[role.remapped].float().mean()) if n_remapped else None,
            "nll": float(nll), **calibration(probs, targets)}


def mean_of(values: Sequence[Optional[float]]) -> float:
    """Mean of the values that are not None (nan if none is)."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else math.nan


__all__ = ["METRICS", "ECE_BINS", "calibration", "query_metrics", "mean_of"]
