"""results.json / results.md / results.png on synthetic scores: strict JSON, the reference of
the paired differences, footers that say what the run did, and the two-panel plot."""
import json
import math
import warnings

import pytest

pytest.importorskip("matplotlib")

from lift_ext.shakespeare import report  # noqa: E402
from lift_ext.shakespeare.config import BenchConfig  # noqa: E402


def _results(methods=("lift", "multitask"), adapt_lrs=(1e-3,), seeds=(0,)):
    cfg = BenchConfig(methods=list(methods), adapt_lrs=list(adapt_lrs), seeds=list(seeds))
    roles = [("a", 0), ("b", 1), ("c", 2)]
    scores = {m: [{"acc": 0.2 + 0.01 * i + 0.02 * j, "acc_remapped": None, "nll": 2.0}
                  for i in range(len(seeds)) for j in range(len(roles))] for m in methods}
    detail = {m: {"lr": {str(s): adapt_lrs[0] for s in seeds}, "val_scores": {"0": {"0.001": math.nan}}}
              for m in methods}
    return report.summarize(cfg, scores, detail, roles, extra={"odd": [math.inf, -math.nan]})


def _refuse(constant):
    raise ValueError(f"not JSON: {constant}")


def test_results_json_is_strict(tmp_path):
    paths = report.write_results(_results(), tmp_path)
    data = json.loads(paths["json"].read_text(), parse_constant=_refuse)
    assert data["odd"] == [None, None] and data["methods"]["lift"]["val_scores"]["0"]["0.001"] is None


def test_paired_reference_is_lift_else_the_first_method():
    assert _results()["reference"] == "lift" and set(_results()["paired"]) == {"multitask"}
    other = _results(methods=("multitask", "reptile"))
    assert other["reference"] == "multitask" and set(other["paired"]) == {"reptile"}
    table = report.markdown_table(other)
    assert "multi-task + FT lead, paired (pp)" in table and "LiFT" not in table


def test_footer_says_whether_the_lr_was_chosen():
    single = report.markdown_table(_results(adapt_lrs=(1e-3,)))
    assert "the only lr tried: not tuned" in single and "chosen" not in single
    assert "no noise floor" in single
    several = report.markdown_table(_results(adapt_lrs=(1e-3, 1e-4)))
    assert "lr chosen per method and seed among 0.001, 0.0001" in several and "not tuned" not in several


def test_plot_has_a_full_accuracy_axis_and_paired_differences(monkeypatch):
    import matplotlib.figure
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, buf, **kw: saved.append(fig) or buf.write(b"\x89PNG"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report.plot_png(_results(methods=("lift", "multitask", "reptile"), seeds=(0, 1)))
    acc, diff = saved[0].axes
    assert acc.get_ylim() == (0.0, 100.0)
    assert "paired" in diff.get_title() and "lift" in diff.get_xlabel()
    assert [t.get_text() for t in diff.get_yticklabels()] == ["multitask", "reptile"]


def test_calibration_by_hand_and_on_a_calibrated_forecaster():
    """ECE and Brier against a hand computation, and ECE ~ 0 for a forecaster whose confidence
    is its accuracy (targets drawn from its own predictive distribution)."""
    import torch

    from lift_ext.shakespeare.scoring import calibration
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
    targets = torch.tensor([0, 1, 1, 0])
    # confidences 0.9, 0.6, 0.7, 0.55 -> bins 14, 9, 10, 8 (of 15), each alone: |hit - conf|
    ece = (0.1 + 0.6 + 0.3 + 0.45) / 4
    brier = (2 * 0.1**2 + 2 * 0.6**2 + 2 * 0.3**2 + 2 * 0.45**2) / 4
    got = calibration(probs, targets)
    assert got["ece"] == pytest.approx(ece) and got["brier"] == pytest.approx(brier)
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(200_000, 5, generator=g), -1)
    drawn = torch.multinomial(probs, 1, generator=g).squeeze(-1)
    assert calibration(probs, drawn)["ece"] < 0.01
    assert calibration(probs, probs.argmin(-1))["ece"] > 0.3


def test_reliability_is_pooled_over_roles_and_drawn_as_a_third_panel():
    """Bins summed over (seed, role) rows: counts add, confidence and accuracy are pooled means;
    the plot gains the reliability panel (wider figure) where the results hold it."""
    import io

    import matplotlib.image
    import torch

    from lift_ext.shakespeare.scoring import reliability_bins
    probs = torch.tensor([[0.9, 0.1], [0.95, 0.05], [0.3, 0.7]])
    rows = [reliability_bins(probs[:2], torch.tensor([0, 1])).tolist(),
            reliability_bins(probs[2:], torch.tensor([1])).tolist()]
    pooled = report.reliability(rows)
    assert pooled["count"][13] == 1 and pooled["count"][14] == 1 and pooled["count"][10] == 1
    assert pooled["accuracy"][14] == 0.0 and pooled["confidence"][14] == pytest.approx(0.95)
    assert pooled["confidence"][0] is None and sum(pooled["count"]) == 3
    results = _results()
    plain = matplotlib.image.imread(io.BytesIO(report.plot_png(results)))
    for record in results["methods"].values():
        record["reliability"] = pooled
    with_diagram = matplotlib.image.imread(io.BytesIO(report.plot_png(results)))
    assert with_diagram.shape[1] > 1.4 * plain.shape[1]
