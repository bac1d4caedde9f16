"""results.json / results.md and the figures on synthetic scores: strict JSON, the reference of
the paired differences, footers that say what the run did, and ranking.png / reliability.png
drawn by the harness's plot from the results."""
import json
import math

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


def test_results_are_drawn_with_every_suites_figures(tmp_path):
    """write_results draws lift_ext.harness.plot's figures: ranking.png (paired from independent
    fine-tuning, per family) and reliability.png where the results hold diagrams; figure_inputs
    unfolds the seed-major per_task lists into {method: {seed: {role: %}}} and the pooled
    diagrams back into bins [15, 3]."""
    results = _results(methods=("lift", "independent", "multitask"), seeds=(0, 1))
    inputs = report.figure_inputs(results)
    lift = inputs["accuracy"]["lift"]
    assert list(lift) == [0, 1] and all(list(per) == ["a", "b", "c"] for per in lift.values())
    assert [lift[s][r] for s in (0, 1) for r in "abc"] == pytest.approx([20.0, 22.0, 24.0, 21.0, 23.0, 25.0])
    assert inputs["groups"] == ("family 0", "family 1", "family 2") and inputs["group_of"]["b"] == "family 1"
    assert inputs["pooled"] == {}
    assert list(inputs["references"]) == ["noise floor: independent, first seed - second"]
    assert inputs["references"]["noise floor: independent, first seed - second"] == pytest.approx(-1.0)
    paths = report.write_results(results, tmp_path)
    assert sorted(paths) == ["json", "md", "ranking"]  # no diagram held: no reliability.png
    assert paths["ranking"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one_family = dict(results, roles=[[key, 0] for key, _ in results["roles"]])
    assert report.figure_inputs(one_family)["groups"] == ()  # the roles suite: overall only


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


def test_reliability_is_pooled_over_roles_and_drawn_as_its_own_figure(tmp_path):
    """Bins summed over (seed, role) rows: counts add, confidence and accuracy are pooled means;
    figure_inputs turns the pooled diagram back into the summed bins, and write_results draws
    reliability.png from them."""
    import torch

    from lift_ext.shakespeare.scoring import reliability_bins
    probs = torch.tensor([[0.9, 0.1], [0.95, 0.05], [0.3, 0.7]])
    rows = [reliability_bins(probs[:2], torch.tensor([0, 1])), reliability_bins(probs[2:], torch.tensor([1]))]
    pooled = report.reliability([r.tolist() for r in rows])
    assert pooled["count"][13] == 1 and pooled["count"][14] == 1 and pooled["count"][10] == 1
    assert pooled["accuracy"][14] == 0.0 and pooled["confidence"][14] == pytest.approx(0.95)
    assert pooled["confidence"][0] is None and sum(pooled["count"]) == 3
    results = _results()
    for record in results["methods"].values():
        record["reliability"] = pooled
    bins = report.figure_inputs(results)["pooled"]
    assert set(bins) == {"lift", "multitask"}
    assert torch.allclose(bins["lift"], (rows[0] + rows[1]).double())
    paths = report.write_results(results, tmp_path)
    assert paths["reliability"].name == "reliability.png" and paths["reliability"].read_bytes()[:4] == b"\x89PNG"
