"""Temperature scaling, the non-Bayesian calibration reference of the benchmark (lift_ext.shakespeare.scoring):
the fitted T recovers the temperature that generated the labels, and scaling moves confidence
(ECE, NLL) but never accuracy."""
from types import SimpleNamespace

import pytest
import torch

from lift_ext.shakespeare.scoring import fit_temperature, query_metrics


class FixedLogits:
    """A stand-in for FlatParams whose model returns the same logits [1, n, V] at every adapter."""

    def __init__(self, logits):
        self.logits = logits

    def call(self, theta):
        return lambda input_ids: SimpleNamespace(logits=self.logits[None])


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_the_fitted_temperature_recovers_the_one_that_made_the_labels(true_t):
    gen = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(4000, 5, generator=gen)
    targets = torch.multinomial(torch.softmax(logits / true_t, -1), 1, generator=gen).squeeze(1)
    fitted = fit_temperature(FixedLogits(logits), None, (None, targets[None]))
    assert abs(fitted / true_t - 1.0) < 0.1, fitted


def test_scaling_moves_confidence_not_accuracy():
    gen = torch.Generator().manual_seed(1)
    logits = 3.0 * torch.randn(2000, 5, generator=gen)
    targets = torch.multinomial(torch.softmax(logits / 3.0, -1), 1, generator=gen).squeeze(1)  # overconfident logits
    flat = FixedLogits(logits)
    role = SimpleNamespace(query=(None, targets[None]), remapped=torch.zeros(1, 2000, dtype=torch.bool))
    plain = query_metrics(flat, [None], role)
    scaled = query_metrics(flat, [None], role, temperature=fit_temperature(flat, None, (None, targets[None])))
    assert scaled["acc"] == plain["acc"]
    assert scaled["ece"] < plain["ece"] / 2 and scaled["nll"] < plain["nll"]
