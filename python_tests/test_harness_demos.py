"""`lift-ext demo --suite vision | text --quick` end to end, in a child process with a fresh cache
(the first run renders or computes what the suite caches, and pre-trains the vision backbone):
the headroom on the ranked split only, every method of the harness scored on every (seed,
task) with none collapsing, the tables, the JSON and the reliability diagram; the same command
again resumes every piece from the state file and writes the same scores."""
import json
import math
import re
import statistics

import pytest

from conftest import run_cli
from lift_ext.cli import missing_packages
from lift_ext.harness.methods import METHODS

QUICK_SEEDS = 2
TIMEOUT_S = 1200  # a cold cache: the vision backbone's pre-training is ~2 CPU-minutes


@pytest.fixture(scope="module", params=["vision", "text"])
def quick(request, tmp_path_factory):
    suite = request.param
    missing = missing_packages(suite)
    if missing:
        pytest.skip(f"the {suite} suite needs {', '.join(missing)}")
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("out") / suite
    args = ["demo", "--suite", suite, "--quick", "--no-progress", "--output", str(out)]
    first = run_cli(args, cache, timeout=TIMEOUT_S)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    return suite, args, cache, out, first, results


def _method_means(results) -> dict:
    """{method: mean accuracy (%) over (seed, task)}, checking every score is there and finite."""
    acc = results["scores"]["acc"]
    assert list(acc) == list(METHODS)
    tasks = None
    means = {}
    for method, per_seed in acc.items():
        assert len(per_seed) == QUICK_SEEDS, method
        for per_task in per_seed.values():
            tasks = tasks or set(per_task)
            assert set(per_task) == tasks, method
            assert all(math.isfinite(v) and 0.0 <= v <= 100.0 for v in per_task.values()), method
        means[method] = statistics.mean(v for per_task in per_seed.values() for v in per_task.values())
    for metric in ("nll", "brier", "ece"):
        assert set(results["scores"][metric]) == set(METHODS), metric
    return means


def test_quick_run_ranks_every_method_over_the_ranked_splits_headroom(quick):
    suite, _, _, out, first, results = quick
    means = _method_means(results)
    ranked_tasks = set(next(iter(results["scores"]["acc"]["independent"].values())))
    if suite == "vision":
        assert all(set(row) == ranked_tasks for row in results["headroom"].values())  # meta-test only
        floor = statistics.mean(results["headroom"]["chance"].values()) + 10.0
        table = results["table"]
    else:
        assert list(results["headroom"]) == ["test"]
        assert all(set(row) == ranked_tasks for row in results["headroom"]["test"].values())
        floor = statistics.mean(results["headroom"]["test"]["head at init"].values())  # uniform predictions
        table = results["markdown"]
    low = {m: v for m, v in means.items() if v <= floor}
    assert not low, (low, floor)  # no method collapses to chance
    assert "| method (meta-test, 2 seeds) |" in table and "ECE (%)" in table
    for figure in ("reliability.png", "ranking.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    assert "resumed" not in first.stdout


def test_the_same_command_resumes_every_piece_to_the_same_scores(quick):
    _, args, cache, out, _, results = quick
    again = run_cli(args, cache, timeout=TIMEOUT_S)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = re.search(r"resumed (\d+) finished pieces", again.stdout)
    assert resumed and int(resumed.group(1)) >= 1 + QUICK_SEEDS * len(METHODS), again.stdout[-2000:]
    assert json.loads((out / "results.json").read_text())["scores"] == results["scores"]
