"""Scores of predictive distributions: accuracy, negative log-likelihood, Brier score and the
expected calibration error, and temperature scaling.

For N examples with predictive distributions p_i over C classes (rows of ``probs``) and labels
y_i, and predictions yhat_i (the argmax of p_i unless given):

    acc   = 100 / N sum_i [yhat_i = y_i]                                  (%)
    nll   = -1 / N sum_i log p_i(y_i)                                     (nats per example)
    brier = 1 / N sum_i sum_c (p_ic - [c = y_i])^2                        (in [0, 2])
    ece   = 100 sum_b (n_b / N) |accuracy_b - mean confidence_b|          (%)

with confidence max_c p_ic and 15 equal-width confidence bins (0, 1/15], ..., (14/15, 1]; an
empty bin adds nothing. ``reliability_bins`` gives each bin's (count, summed confidence, hits),
which add up over tasks and seeds (a pooled reliability diagram, or a pooled ECE).

Temperature scaling: one model's logits divided by T > 0 before the softmax, T the minimiser of
the mean NLL on labelled data (``fit_temperature``, e.g. a task's support set); accuracy does not
change, confidence does.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

ECE_BINS = 15
METRICS = ("acc", "nll", "brier", "ece")


def _checked(probs: torch.Tensor, labels: torch.Tensor):
    if probs.dim() != 2:
        raise ValueError(f"probs must be [N, C], got shape {tuple(probs.shape)}")
    if labels.shape != probs.shape[:1]:
        raise ValueError(f"labels must be [N] = [{probs.shape[0]}], got shape {tuple(labels.shape)}")
    if probs.shape[0] == 0:
        raise ValueError("probs holds no example")
    return probs.double(), labels.long()


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> torch.Tensor:
    """[bins, 3] float64: per confidence bin ((b-1)/bins, b/bins] the number of examples, their
    summed confidence max_c p_c and their number of correct argmaxes, for probs [N, C] and
    integer labels [N]."""
    probs, labels = _checked(probs, labels)
    confidence, pred = probs.max(-1)
    which = (confidence * bins).ceil().clamp(1, bins).long() - 1
    columns = torch.stack([torch.ones_like(confidence), confidence, (pred == labels).double()], 1)
    return torch.zeros(bins, 3, dtype=torch.float64).index_add_(0, which, columns)


def ece_of_bins(bins: torch.Tensor) -> float:
    """The ECE (%) of reliability bins [B, 3] (summed over any number of tasks)."""
    count, confidence, hits = torch.as_tensor(bins, dtype=torch.float64).unbind(1)
    return 100.0 * float((hits - confidence).abs().sum() / count.sum())


def scores(probs: torch.Tensor, labels: torch.Tensor, predicted: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """{"acc", "nll", "brier", "ece"} (module docstring) of probs [N, C] for labels [N].
    ``predicted`` [N]: the predicted classes (default probs.argmax(-1); pass one model's logits'
    argmax so that rounding in the softmax cannot make ties)."""
    probs, labels = _checked(probs, labels)
    pred = probs.argmax(-1) if predicted is None else predicted
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
    nll = -probs.gather(1, labels[:, None]).clamp_min(1e-300).log().mean()
    return {"acc": 100.0 * float((pred == labels).float().mean()),
            "nll": float(nll),
            "brier": float(((probs - onehot) ** 2).sum(1).mean()),
            "ece": ece_of_bins(reliability_bins(probs, labels))}


LOG_T_RANGE = (math.log(0.05), math.log(20.0))


@torch.no_grad()
def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, grid: int = 241, refine: int = 40) -> float:
    """T in [0.05, 20] minimising the mean NLL (nats per example) of softmax(logits / T) for
    logits [N, C] and labels [N]: the best of ``grid`` log-spaced values, refined by ``refine``
    golden-section steps between its neighbours (the NLL is convex in 1/T)."""
    logits, labels = _checked(logits, labels)
    values_t = torch.linspace(*LOG_T_RANGE, grid, dtype=torch.float64)

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / math.exp(log_t), labels))

    values = [nll(float(v)) for v in values_t]
    best = min(range(grid), key=values.__getitem__)
    lo, hi = float(values_t[max(best - 1, 0)]), float(values_t[min(best + 1, grid - 1)])
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    at_a, at_b = nll(a), nll(b)
    for _ in range(refine):  # one new evaluation a step: the kept inner point is reused
        if at_a <= at_b:
            hi, b, at_b = b, a, at_a
            a = hi - ratio * (hi - lo)
            at_a = nll(a)
        else:
            lo, a, at_a = a, b, at_b
            b = lo + ratio * (hi - lo)
            at_b = nll(b)
    return math.exp((lo + hi) / 2.0)


__all__ = ["ECE_BINS", "METRICS", "reliability_bins", "ece_of_bins", "scores", "fit_temperature"]
