"""lift_ext.calibration: accuracy, NLL, Brier score and ECE against values computed by hand
(one bin holding two examples, most bins empty), and temperature fitting."""
import math

import pytest
import torch

from lift_ext import calibration

# confidence 0.9 (bin 13, right), 0.7 (bin 10, wrong), 0.62 and 0.65 (bin 9, both right)
PROBS = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.62, 0.38], [0.35, 0.65]], dtype=torch.float64)
LABELS = torch.tensor([0, 0, 0, 1])


def test_scores_match_the_hand_computed_values():
    out = calibration.scores(PROBS, LABELS)
    assert out["acc"] == 75.0
    assert math.isclose(out["nll"], -(math.log(0.9) + math.log(0.3) + math.log(0.62) + math.log(0.65)) / 4)
    assert math.isclose(out["brier"], (0.02 + 0.98 + 2 * 0.38 ** 2 + 2 * 0.35 ** 2) / 4)
    # ECE: bin 9 |2 - 1.27|, bin 10 |0 - 0.7|, bin 13 |1 - 0.9|; the 12 empty bins add nothing
    assert math.isclose(out["ece"], 100 * (0.73 + 0.7 + 0.1) / 4)


def test_reliability_bins_hold_count_confidence_and_hits_and_add_up():
    bins = calibration.reliability_bins(PROBS, LABELS)
    assert bins.shape == (calibration.ECE_BINS, 3)
    assert torch.allclose(bins[9], torch.tensor([2.0, 1.27, 2.0], dtype=torch.float64))
    assert torch.allclose(bins[10], torch.tensor([1.0, 0.7, 0.0], dtype=torch.float64))
    assert torch.allclose(bins[13], torch.tensor([1.0, 0.9, 1.0], dtype=torch.float64))
    assert float(bins.sum(0)[0]) == 4 and int((bins[:, 0] == 0).sum()) == 12
    # a confidence of exactly 1 falls in the last bin; bins of two sets add up to the bins of both
    both = calibration.reliability_bins(torch.cat([PROBS, torch.tensor([[1.0, 0.0]])]), torch.cat([LABELS,
                                                                                                 torch.tensor([0])]))
    assert torch.allclose(both, bins + calibration.reliability_bins(torch.tensor([[1.0, 0.0]]), torch.tensor([0])))
    assert float(both[14, 0]) == 1
    assert math.isclose(calibration.ece_of_bins(bins), calibration.scores(PROBS, LABELS)["ece"])


def test_given_predictions_set_the_accuracy_only():
    out = calibration.scores(PROBS, LABELS, predicted=torch.tensor([0, 0, 0, 0]))
    assert out["acc"] == 75.0 and out["ece"] == calibration.scores(PROBS, LABELS)["ece"]
    assert calibration.scores(PROBS, LABELS, predicted=torch.tensor([1, 1, 1, 1]))["acc"] == 25.0


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match="probs"):
        calibration.scores(PROBS[0], LABELS)
    with pytest.raises(ValueError, match="labels"):
        calibration.scores(PROBS, LABELS[:3])


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_the_fitted_temperature_recovers_the_one_that_made_the_labels(true_t):
    gen = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(4000, 5, generator=gen)
    labels = torch.multinomial(torch.softmax(logits / true_t, -1), 1, generator=gen).squeeze(1)
    fitted = calibration.fit_temperature(logits, labels)
    assert abs(fitted / true_t - 1.0) < 0.1, fitted
    nll = [float(torch.nn.functional.cross_entropy(logits / t, labels)) for t in (fitted * 0.9, fitted, fitted * 1.1)]
    assert nll[1] < nll[0] and nll[1] < nll[2]
