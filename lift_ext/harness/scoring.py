"""Query scores of adapted adapters (lift_ext.calibration's metrics).

For adapters theta_1..theta_S (S = 1 for a point estimate) the predictive distribution of a
query row is the mean over s of softmax(logits(theta_s) / T) over the task's own classes
(lift_ext.lift.average_predictions), T = 1 unless temperature scaling fitted one. A single
adapter's predicted class is the argmax of its logits; an average's, the argmax of the mean.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from lift_ext import calibration
from lift_ext.harness.suite import BenchSuite
from lift_ext.lift import TensorTask, average_predictions


def logits_at(suite: BenchSuite, theta: torch.Tensor, rows: TensorTask):
    """(logits [n, C] float64, labels [n]) of adapter ``theta`` on ``rows`` (all of them)."""
    with torch.no_grad():
        logits, labels = suite.logits_fn(suite.flat.call(theta), rows.full())
    return logits.double(), labels


def support_temperature(suite: BenchSuite, theta: torch.Tensor, support: TensorTask) -> float:
    """The temperature T minimising the support set's mean NLL at ``theta`` (calibration.fit_temperature)."""
    return calibration.fit_temperature(*logits_at(suite, theta, support))


def query_scores(suite: BenchSuite, thetas: Sequence[torch.Tensor], query: TensorTask,
                 temperature: float = 1.0) -> Dict[str, object]:
    """calibration.METRICS of the predictive average over ``thetas`` on ``query`` (module
    docstring), and "bins": its reliability_bins as a list [15][3]."""
    thetas = list(thetas)
    if not thetas:
        raise ValueError("thetas is empty: give at least one adapter")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if len(thetas) == 1:
        logits, labels = logits_at(suite, thetas[0], query)
        predicted = logits.argmax(-1)
        probs = torch.softmax(logits / temperature, -1)
    else:
        batch, seen = query.full(), []

        def predict(call):
            logits, labels = suite.logits_fn(call, batch)
            seen.append(labels)
            return torch.softmax(logits.double() / temperature, -1)

        probs, labels, predicted = average_predictions(suite.flat, thetas, predict), seen[0], None
    out: Dict[str, object] = dict(calibration.scores(probs, labels, predicted))
    out["bins"] = calibration.reliability_bins(probs, labels).tolist()
    return out


def pooled_bins(per_task: List[list]) -> torch.Tensor:
    """The sum [15, 3] of reliability bins (lists or tensors) over tasks and seeds."""
    if not per_task:
        raise ValueError("per_task is empty")
    return torch.stack([torch.as_tensor(b, dtype=torch.float64) for b in per_task]).sum(0)


__all__ = ["logits_at", "support_temperature", "query_scores", "pooled_bins"]
