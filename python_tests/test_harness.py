"""lift_ext.harness: the suite contract, the methods' ranking loop on a tiny synthetic suite
(the LiFT methods' shared chain, lift_sgld's averaged samples, lift_ts's temperature), the
paired statistics, the ranking and calibration tables and the reliability diagram."""
import json
import math

import pytest
import torch

from lift_ext import calibration
from lift_ext.harness import BenchSuite, BenchTask, LiftSettings, MethodSettings
from lift_ext.harness import methods as hm
from lift_ext.harness import plot, report, scoring, stats
from lift_ext.harness.suite import head_mask
from lift_ext.lift import FlatParams, MapConfig, TensorTask, adapt


class Tiny(torch.nn.Module):
    """A frozen feature map, a trainable "adapter" scale and a linear head."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(4, 4)
        self.body.requires_grad_(False)
        self.adapter = torch.nn.Parameter(torch.zeros(4))
        self.head = torch.nn.Linear(4, 3)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(self.body(x) * (1 + self.adapter))


def loss_fn(call, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(call(x), y)


def _task(name, group, seed):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 4, generator=gen) * 2
    y = torch.arange(60) % 3
    x = centres[y] + 0.5 * torch.randn(60, 4, generator=gen)

    def support(s):
        rows = torch.randperm(40, generator=torch.Generator().manual_seed(s))[:9]
        return TensorTask(x[rows], y[rows], batch_size=9)

    def episode(gen):
        rows = torch.randperm(40, generator=gen)
        return (x[rows[:8]], y[rows[:8]]), (x[rows[8:16]], y[rows[8:16]])

    return BenchTask(name, group, support, lambda b: TensorTask(x[:40], y[:40], batch_size=b), episode,
                     TensorTask(x[40:], y[40:], batch_size=20))


def logits_fn(call, batch):
    x, y = batch
    return call(x), y


@pytest.fixture
def suite():
    torch.manual_seed(0)
    flat = FlatParams(Tiny())
    init = flat.vector.clone()
    tasks = {"train": [_task(f"t{i}", "ab"[i % 2], i) for i in range(6)],
             "val": [_task("v0", "a", 10)], "test": [_task("x0", "a", 20), _task("x1", "b", 21)]}
    return BenchSuite("tiny", flat, lambda seed: init, loss_fn, logits_fn, head_mask(flat), ("a", "b"), tasks)


SETTINGS = MethodSettings(lift=LiftSettings(steps=6, tasks_per_step=2, batch=4, lr=1e-2, temperature=0.01,
                                            components=2, sigma=0.5, beta=0.5, warmup=0.5, shift_lr=1e-3),
                          meta_lr=1e-2, inner_steps=2, outer_lr=0.5, reset_head=True,
                          adapt=MapConfig(steps=5, lr=1e-2, eval_every=1, patience=2), seeds=(0, 1))


def test_head_mask_marks_the_head_only(suite):
    flat = suite.flat
    assert int(suite.head.sum()) == 3 * 4 + 3
    views = flat.views(suite.head.float())
    assert float(views["adapter"].sum()) == 0 and float(views["head.weight"].min()) == 1
    with pytest.raises(ValueError, match="no parameter"):
        head_mask(flat, "classifier")


def test_suite_contract_is_checked(suite):
    with pytest.raises(ValueError, match="splits"):
        BenchSuite("x", suite.flat, suite.initial, loss_fn, logits_fn, suite.head, ("a", "b"), {"train": []})
    with pytest.raises(ValueError, match="head"):
        BenchSuite("x", suite.flat, suite.initial, loss_fn, logits_fn, suite.head[:-1], ("a", "b"), suite.splits)
    with pytest.raises(ValueError, match="groups"):
        BenchSuite("x", suite.flat, suite.initial, loss_fn, logits_fn, suite.head, ("a",), suite.splits)
    with pytest.raises(ValueError, match="unknown"):
        MethodSettings(**{**SETTINGS.__dict__, "methods": ("lift", "maml")})


def test_ranking_scores_every_method_seed_and_task(suite):
    seconds = {}
    scores = hm.ranking(suite, SETTINGS, cpu_seconds=seconds)
    assert set(scores) == {"acc", "nll", "brier", "ece", "bins"}
    rank = scores["acc"]
    assert set(rank) == set(hm.METHODS) and set(seconds) == set(hm.METHODS)
    for per_seed in rank.values():
        assert set(per_seed) == {0, 1}
        assert all(set(scores) == {"x0", "x1"} and all(0 <= v <= 100 for v in scores.values())
                   for scores in per_seed.values())
    independent = [v for scores in rank["independent"].values() for v in scores.values()]
    assert sum(independent) / len(independent) > 50.0  # adaptation moved well off chance (33 %)


def test_learned_starts_have_their_head_reset_only_when_asked(suite):
    for method in hm.START_METHODS:
        reset = hm.meta_train(method, suite, SETTINGS, seed=0)
        kept = hm.meta_train(method, suite, MethodSettings(**{**SETTINGS.__dict__, "reset_head": False}), seed=0)
        assert float(reset[suite.head].abs().sum()) == 0.0
        assert float(kept[suite.head].abs().sum()) > 0.0
        assert torch.equal(reset[~suite.head], kept[~suite.head])


def test_paired_statistics():
    assert stats.mean_se([1.0, 3.0]) == (2.0, 1.0)
    d, se, n = stats.paired({"a": 3.0, "b": 5.0, "c": 1.0}, {"a": 1.0, "b": 2.0})
    assert (d, n) == (2.5, 2) and math.isclose(se, 0.5)
    with pytest.raises(ValueError):
        stats.paired({"a": 1.0}, {"b": 1.0})
    assert stats.group_means({"x": 10.0, "y": 20.0, "z": 60.0}, {"x": "a", "y": "a", "z": "b"}, ("a", "b", "c")) == \
        {"a": 15.0, "b": 60.0, "overall": 30.0}


def test_ranking_table_rows_and_paired_columns():
    rank = {"independent": {0: {"x": 50.0, "y": 60.0}, 1: {"x": 52.0, "y": 58.0}},
            "lift": {0: {"x": 55.0, "y": 64.0}, 1: {"x": 55.0, "y": 63.0}}}
    table = report.ranking_table(rank, {"x": "a", "y": "b"}, ("a", "b"), {"lift": "LiFT"}, "test")
    lines = table.splitlines()
    assert lines[2].startswith("| independent | 51.0 | 59.0 | 55.00 ± ")
    assert lines[3].startswith("| LiFT | 55.0 | 63.5 | 59.25 ± ") and "+4.25 ± " in lines[3]
    assert "noise floor: independent seed 1 - seed 0, paired over 2 tasks" in lines[4]


def test_the_lift_methods_share_one_chain_per_seed(suite, monkeypatch):
    calls = []
    real = hm.lift_prior

    def counted(suite_, components, settings, seed):
        calls.append((components, seed))
        return real(suite_, components, settings, seed)

    monkeypatch.setattr(hm, "lift_prior", counted)
    settings = MethodSettings(**{**SETTINGS.__dict__, "methods": ("lift", "lift_k1", "lift_sgld", "lift_ts")})
    scores = hm.ranking(suite, settings)
    assert calls == [(2, 0), (1, 0), (2, 1), (1, 1)]
    # temperature scaling moves confidence, never the predicted class
    assert scores["acc"]["lift_ts"] == scores["acc"]["lift"]
    assert scores["nll"]["lift_ts"] != scores["nll"]["lift"]


@pytest.mark.parametrize("steps, burn_in, thin, kept", [(25, 12, 3, 5), (20, 10, 2, 5), (7, 3, 1, 4), (1, 0, 1, 1)])
def test_lift_sgld_samples_within_the_map_adaptations_step_limit(steps, burn_in, thin, kept):
    s = MethodSettings(**{**SETTINGS.__dict__, "adapt": MapConfig(steps=steps, lr=1e-2)})
    config = hm.sampling_config(s)
    assert (config.steps, config.kept_after, config.thin) == (steps, burn_in, thin)
    assert len(range(config.kept_after, config.steps, config.thin)) == kept <= hm.SGLD_SAMPLES


def test_lift_sgld_averages_the_predictions_of_its_samples(suite):
    prior = hm.meta_train("lift", suite, SETTINGS, seed=0)
    task = suite.splits["test"][0]
    config = hm.sampling_config(SETTINGS)
    assert (config.steps, config.kept_after, config.thin) == (5, 2, 1)  # the MAP adaptation's 5 steps
    samples = adapt(suite.flat, task.support(0), loss_fn, prior=prior, config=config, seed=0).samples
    assert len(samples) == 3
    x, y = task.query.full()
    with torch.no_grad():
        probs = torch.stack([torch.softmax(suite.flat.call(t)(x).double(), -1) for t in samples]).mean(0)
    expected = calibration.scores(probs, y)
    got = hm.method_scores("lift_sgld", suite, task, prior, SETTINGS, seed=0)
    assert all(math.isclose(got[k], expected[k], rel_tol=1e-9) for k in calibration.METRICS)
    last = scoring.query_scores(suite, samples[-1:], task.query)
    assert not math.isclose(got["nll"], last["nll"], rel_tol=1e-6)  # not one sample's predictions
    assert torch.allclose(torch.tensor(got["bins"], dtype=torch.float64), calibration.reliability_bins(probs, y))


def test_temperature_scaling_scores_the_map_adapter_at_the_support_temperature(suite):
    prior = hm.meta_train("lift", suite, SETTINGS, seed=0)
    task = suite.splits["test"][1]
    theta = adapt(suite.flat, task.support(0), loss_fn, prior=prior, config=SETTINGS.adapt, seed=0).theta
    x, y = task.support(0).full()
    with torch.no_grad():
        temperature = calibration.fit_temperature(suite.flat.call(theta)(x), y)
        qx, qy = task.query.full()
        probs = torch.softmax(suite.flat.call(theta)(qx).double() / temperature, -1)
    got = hm.method_scores("lift_ts", suite, task, prior, SETTINGS, seed=0)
    assert math.isclose(got["nll"], calibration.scores(probs, qy)["nll"], rel_tol=1e-9)
    with pytest.raises(ValueError, match="temperature"):
        scoring.query_scores(suite, [theta], task.query, temperature=0.0)


def test_an_adaptation_done_twice_is_done_once_with_the_same_result(suite, monkeypatch):
    prior = hm.meta_train("lift", suite, SETTINGS, seed=0)
    task = suite.splits["test"][0]
    fresh = {m: hm.method_scores(m, suite, task, prior, SETTINGS, seed=0) for m in ("lift", "lift_ts")}
    calls = []
    real = hm.adapt
    monkeypatch.setattr(hm, "adapt", lambda *a, **k: calls.append(k["seed"]) or real(*a, **k))
    done = hm.Adaptations()
    shared = {m: hm.method_scores(m, suite, task, prior, SETTINGS, seed=0, adaptations=done)
              for m in ("lift", "lift_ts")}
    assert shared == fresh and calls == [0]  # lift_ts scaled lift's MAP adapter, not a second one
    hm.method_scores("lift", suite, task, prior, SETTINGS, seed=1, adaptations=done)
    other = suite.splits["test"][1]
    hm.method_scores("lift", suite, other, prior, SETTINGS, seed=0, adaptations=done)
    start = suite.initial(0)
    hm.adapted_scores(suite, task, start, SETTINGS.adapt, 0, adaptations=done)
    hm.adapted_scores(suite, task, start.clone(), SETTINGS.adapt, 0, adaptations=done)  # same bytes
    hm.adapted_scores(suite, task, start + 1e-3, SETTINGS.adapt, 0, adaptations=done)
    assert calls == [0, 1, 0, 0, 0]


def test_the_start_component_is_chosen_once_per_support_set_and_prior(suite, monkeypatch):
    """lift and lift_sgld start from one choice of component (K support passes once), with the
    scores each gets when it chooses alone; another seed's support set chooses again."""
    prior = hm.meta_train("lift", suite, SETTINGS, seed=0)
    assert prior.n_components > 1
    task = suite.splits["test"][0]
    alone = {m: hm.method_scores(m, suite, task, prior, SETTINGS, seed=0) for m in ("lift", "lift_sgld")}
    chosen = []
    real = hm.best_component
    monkeypatch.setattr(hm, "best_component", lambda *a, **k: chosen.append(1) or real(*a, **k))
    done = hm.Adaptations()
    shared = {m: hm.method_scores(m, suite, task, prior, SETTINGS, seed=0, adaptations=done)
              for m in ("lift", "lift_sgld")}
    assert shared == alone and len(chosen) == 1
    hm.method_scores("lift_sgld", suite, task, prior, SETTINGS, seed=1, adaptations=done)
    assert len(chosen) == 2


def test_ranking_figure_pairs_each_group_against_the_reference(tmp_path):
    """paired_by_group: the paired mean, s.e. and count of each group's (seed, task) pairs and
    overall, the reference left out; ranking_png writes a PNG and refuses a missing reference."""
    rank = {"independent": {0: {"a": 50.0, "b": 60.0, "c": 70.0}, 1: {"a": 52.0, "b": 58.0, "c": 71.0}},
            "lift": {0: {"a": 54.0, "b": 61.0, "c": 69.0}, 1: {"a": 55.0, "b": 62.0, "c": 71.0}}}
    group_of = {"a": "g1", "b": "g1", "c": "g2"}
    paired = plot.paired_by_group(rank, group_of, ("g1", "g2", "empty"), "independent")
    assert list(paired) == ["lift"] and list(paired["lift"]) == ["g1", "g2", "overall"]
    g1 = [4.0, 1.0, 3.0, 4.0]  # (0, a), (0, b), (1, a), (1, b)
    assert paired["lift"]["g1"] == stats.mean_se(g1) + (4,)
    assert paired["lift"]["g2"] == stats.mean_se([-1.0, 0.0]) + (2,)
    assert paired["lift"]["overall"] == stats.paired(stats.flatten(rank["lift"]), stats.flatten(rank["independent"]))
    png = plot.ranking_png(rank, group_of, ("g1", "g2"), {"lift": "LiFT"}, tmp_path / "ranking.png", "tiny",
                           references={"oracle - independent": 3.0})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="reference 'multitask'"):
        plot.ranking_png(rank, group_of, ("g1", "g2"), {}, tmp_path / "r.png", "tiny", reference="multitask")
    with pytest.raises(ValueError, match="besides the reference"):
        plot.ranking_png({"independent": rank["independent"]}, group_of, ("g1", "g2"), {}, tmp_path / "r.png", "x")
    bins = calibration.reliability_bins(torch.tensor([[0.9, 0.1, 0.0]]), torch.tensor([0])).tolist()
    scores = {"acc": rank, "bins": {m: {s: {t: bins for t in per} for s, per in by.items()} for m, by in rank.items()}}
    run = tmp_path / "run"
    run.mkdir()
    written = plot.write_run({"x": 1}, run / "results.json", scores, group_of, ("g1", "g2"), {}, "tiny")
    assert [p.name for p in written] == ["results.json", "ranking.png", "reliability.png"]
    one = {"acc": {"lift": rank["lift"]}, "bins": {"lift": scores["bins"]["lift"]}}
    alone = tmp_path / "alone"
    alone.mkdir()
    written = plot.write_run({"x": 1}, alone / "results.json", one, group_of, ("g1", "g2"), {}, "tiny")
    assert [p.name for p in written] == ["results.json", "reliability.png"]  # nothing to pair against
    assert sorted(p.name for p in alone.iterdir()) == ["reliability.png", "results.json"]


def test_calibration_table_pairs_against_the_reference_and_the_plot_is_written(tmp_path):
    def per(a, b):
        return {0: {"x": a, "y": b}}

    bins = calibration.reliability_bins(torch.tensor([[0.9, 0.1], [0.4, 0.6]]), torch.tensor([0, 0])).tolist()
    scores = {"acc": {"lift": per(50.0, 60.0), "lift_sgld": per(50.0, 62.0)},
              "ece": {"lift": per(20.0, 10.0), "lift_sgld": per(15.0, 9.0)},
              "nll": {"lift": per(1.0, 1.0), "lift_sgld": per(0.9, 0.8)},
              "brier": {"lift": per(0.5, 0.5), "lift_sgld": per(0.5, 0.4)},
              "bins": {"lift": per(bins, bins), "lift_sgld": per(bins, bins)}}
    lines = report.calibration_table(scores, {"lift_sgld": "SGLD"}, "test").splitlines()
    assert lines[2].startswith("| lift | 55.00 ± 5.00 | 15.00 ± 5.00 |  | 1.000 ± 0.000 |  |")
    assert lines[3].startswith("| SGLD | 56.00 ± 6.00 | 12.00 ± 3.00 | -3.00 ± 2.00 | 0.850 ± 0.050 | -0.150 ± 0.050 |")
    assert lines[3].endswith(f"| {calibration.ece_of_bins(torch.tensor(bins)):.2f} |")
    with pytest.raises(ValueError, match="reference"):
        report.calibration_table(scores, {}, "test", reference="independent")
    png = plot.reliability_png({m: torch.tensor([bins, bins]).sum(0) for m in ("lift", "lift_sgld")}, {},
                               tmp_path / "r.png", "tiny")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_stopped_ranking_resumes_from_its_state_file_with_the_same_scores(suite, tmp_path, monkeypatch):
    from lift_ext.harness.progress import RunState, RunStateError
    settings = MethodSettings(**{**SETTINGS.__dict__, "methods": ("independent", "lift", "lift_sgld"),
                                 "seeds": (0,)})
    whole = hm.ranking(suite, settings)
    path = tmp_path / "results.state.pt"
    real, chains = hm.method_scores, []

    def stopped_at_sgld(method, *args, **kwargs):
        if method == "lift_sgld":
            raise KeyboardInterrupt
        return real(method, *args, **kwargs)

    monkeypatch.setattr(hm, "method_scores", stopped_at_sgld)
    with pytest.raises(KeyboardInterrupt):
        hm.ranking(suite, settings, state=RunState(path, "run-a"))
    monkeypatch.setattr(hm, "method_scores", real)
    real_prior = hm.lift_prior
    monkeypatch.setattr(hm, "lift_prior", lambda *a: chains.append(a[1]) or real_prior(*a))
    state = RunState(path, "run-a")
    assert set(state.keys()) == {"ranking/test/0/independent", "ranking/test/0/lift", "chain/0/2"}
    resumed = hm.ranking(suite, settings, state=state)
    assert resumed == whole and chains == []  # lift_sgld sampled under the kept chain, not a new one
    monkeypatch.setattr(hm, "meta_train", lambda *a, **k: pytest.fail("a finished piece was computed again"))
    assert hm.ranking(suite, settings, state=RunState(path, "run-a")) == whole
    with pytest.raises(RunStateError, match="another run.*--fresh"):
        RunState(path, "run-b")
    assert RunState(path, "run-b", fresh=True).resumed == 0
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(RunStateError, match="--fresh"):
        RunState(path, "run-a")


def test_lift_sgld_samples_at_its_own_temperature_chosen_by_the_meta_val_rule(suite, monkeypatch, tmp_path):
    import os
    import runpy
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    assert hm.sampling_config(SETTINGS).temperature == SETTINGS.lift.temperature
    hot = MethodSettings(**{**SETTINGS.__dict__, "sampling_temperature": 0.5})
    assert hm.sampling_config(hot).temperature == 0.5
    script = runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                         "benchmarks", "sgld_temperature.py"))
    rows = script["sweep"](suite, SETTINGS, [0.01, 1.0])
    assert set(rows) == {"lift", "lift_ts", "lift_sgld T=0.01", "lift_sgld T=1"}
    assert all(set(per["acc"]) == {(0, "v0"), (1, "v0")} for per in rows.values())
    assert "| lift_sgld T=1 |" in script["table"](rows)
    out = tmp_path / "sweep.json"
    script["write_sweep"]("sgld_temperature", "tiny", script["table"](rows), 0.01, {"sweep": {"cpu_seconds": 1.0}},
                          rows, out, temperatures=[0.01, 1.0])
    record = json.loads(out.read_text())
    assert record["chosen"] == 0.01 and record["temperatures"] == [0.01, 1.0]
    assert record["rows"]["lift"]["acc"]["1/v0"] == rows["lift"]["acc"][(1, "v0")]

    def row(acc, ece):
        return {"acc": {(0, "v"): acc}, "ece": {(0, "v"): ece}, "nll": {(0, "v"): 1.0}}

    crafted = {"lift": row(60.0, 20.0), "lift_sgld T=0.1": row(59.5, 15.0), "lift_sgld T=1": row(50.0, 5.0)}
    assert script["choose"](crafted, [0.1, 1.0], 0.01) == 0.1  # T = 1 has the lowest ECE but loses 10 pp
    crafted["lift_sgld T=0.1"] = row(58.0, 15.0)
    assert script["choose"](crafted, [0.1, 1.0], 0.01) == 0.01  # none within 1 pp: the chain's


def test_mbc_and_retrieval_start_from_one_library_per_seed_as_published(suite, monkeypatch):
    from lift_ext import peers
    from lift_ext.harness import peers as harness_peers
    calls = []
    real = harness_peers.train_library
    monkeypatch.setattr(harness_peers, "train_library", lambda *a: calls.append(a[2]) or real(*a))
    shared = {}
    mbc = hm.meta_train("mbc", suite, SETTINGS, seed=0, shared=shared)
    retrieval = hm.meta_train("retrieval", suite, SETTINGS, seed=0, shared=shared)
    assert calls == [0] and retrieval.adapters is shared["library"]
    library, train = shared["library"], suite.splits["train"]
    # the library: each row its own task's adapter at LiFT's per-task budget (6 steps x 2 tasks / 6)
    assert library.shape == (len(train), suite.flat.dim)
    assert peers.library_steps(6, 8, 4, 6) == 2
    assert len({tuple(row.tolist()) for row in library}) == len(train)
    # the head layer's input is what a task is keyed by: body(x) * (1 + adapter) at the initial adapter
    x, y = train[0].pool(64).full()
    with torch.no_grad():
        expected = suite.flat.module.body(x[:64]).mean(0)
    assert torch.allclose(retrieval.keys[0], expected, atol=1e-6)
    assert mbc.adapters.shape[0] == min(SETTINGS.mbc_clusters, len(train))
    task = suite.splits["test"][0]
    support = task.support(0)
    # MBC: the cluster adapter of lowest support loss; retrieval: the similarity-weighted merge
    losses = [float(loss_fn(suite.flat.call(a), support.full())) for a in mbc.adapters]
    assert torch.equal(mbc.start(suite, suite.initial(0), support), mbc.adapters[losses.index(min(losses))])
    query = harness_peers.embedding(suite, suite.initial(0), support.full())
    idx, w = peers.retrieve(query, retrieval.keys, SETTINGS.retrieval_k)
    assert torch.equal(retrieval.start(suite, suite.initial(0), support), peers.merge(library, idx, w))
    with pytest.raises(ValueError, match="mbc_clusters"):
        MethodSettings(**{**SETTINGS.__dict__, "mbc_clusters": 0})


def test_tables_of_a_subset_pair_against_the_first_method_when_the_reference_was_not_ranked():
    rank = {"lift": {0: {"x": 55.0, "y": 64.0}, 1: {"x": 55.0, "y": 63.0}},
            "mbc": {0: {"x": 50.0, "y": 60.0}, 1: {"x": 52.0, "y": 58.0}}}
    lines = report.ranking_table(rank, {"x": "a", "y": "b"}, ("a", "b"), {}, "test").splitlines()
    assert "minus lift (pp)" in lines[0] and lines[3].startswith("| mbc |") and "-4.25 ± " in lines[3]
    assert "noise floor: lift seed 1 - seed 0" in lines[4]
    assert report.default_reference(["mbc", "lift"], "lift") == "lift"
    assert report.default_reference(["mbc", "retrieval"], "lift") == "mbc"


def test_a_piece_whose_write_is_interrupted_changes_neither_the_file_nor_the_state(tmp_path, monkeypatch):
    from lift_ext.harness import progress
    path = tmp_path / "results.state.pt"
    state = progress.RunState(path, "run-a")
    state.put("headroom", {"x": 1.0})
    before = path.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(progress, "save_atomic", interrupted)
    with pytest.raises(KeyboardInterrupt):
        state.put("ranking/test/0/lift", {"scores": {}, "cpu_seconds": 1.0})
    assert "ranking/test/0/lift" not in state and list(state.keys()) == ["headroom"]
    assert path.read_bytes() == before


def test_adapt_beta_widens_the_meta_test_prior_only(suite):
    """LiftSettings.adapt_beta: the chain runs at its beta, the meta-test prior keeps the chain's
    means, variances and weights and takes adapt_beta as its task spread; None keeps the
    chain's beta; a non-positive value is refused."""
    from dataclasses import replace
    plain = hm.lift_prior(suite, 2, SETTINGS.lift, 0)
    wide = hm.lift_prior(suite, 2, replace(SETTINGS.lift, adapt_beta=2.0), 0)
    assert plain.beta == SETTINGS.lift.beta and wide.beta == 2.0
    for name in ("means", "variances", "weights"):
        assert torch.equal(getattr(plain, name), getattr(wide, name)), name
    assert wide.log_prob(plain.means[0] + 1.0) > plain.log_prob(plain.means[0] + 1.0)  # a wider spread
    for bad in (0.0, -1.0, "1", True, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="adapt_beta must be a number > 0"):
            replace(SETTINGS.lift, adapt_beta=bad)
