"""The text suite end to end: headroom, then the harness's ranking, written as tables (accuracy,
calibration), JSON and a reliability diagram (``lift-ext demo --suite text``;
benchmarks/text_headroom.py adds the meta-val sweep).

1. Headroom on the ranked split's tasks (meta-test; with ``val_headroom`` meta-val's too): the
   head at its initialisation (uniform probabilities: the share of the first class), the
   unadapted backbone (nearest class centroid of its pooled states), independent fine-tuning on
   the 32 support sentences under seeds 0 and 1, the per-kind oracle (a ceiling that is told
   the kind), and the noise floor (independent seed 1 - seed 0, paired by task).
2. Ranking on ``split`` (meta-test) over the seeds: every method of lift_ext.harness, its
   accuracy and its calibration (ECE, NLL, Brier score; paired differences from MAP LiFT).

Accuracies are in %, differences in percentage points, times in CPU seconds of this process and
of the ranking's worker processes (lift_ext.workers.cpu_seconds), and the run's wall
seconds. The first run computes the cached lower-layer features of its tasks' sentences
(docs/text_suite.md).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, Optional

from tqdm.auto import tqdm

from lift_ext.harness import LiftSettings, MethodSettings, plot, report, stats
from lift_ext.harness.progress import progress_state
from lift_ext.harness.suite import headroom_splits
from lift_ext.workers import cpu_seconds, resolve_workers
from lift_ext.harness import methods as hm
from lift_ext.lift import MapConfig
from lift_ext.text.backbone import accuracy
from lift_ext.text.methods import oracle_starts, prototype_accuracy
from lift_ext.text.suite import TextSuite, load_suite
from lift_ext.text.tasks import KINDS


@dataclass(frozen=True)
class Settings:
    """A run: ``methods`` (the harness's MethodSettings: budgets, LiFT, adaptation, seeds),
    ``limit`` ({split: tasks per kind}, None for all), ``split`` ranked; ``val_headroom``: the
    headroom on the meta-val tasks as well as ``split``'s (the sweep's view; off in the default
    run, which needs the headroom of the split it ranks only).

    Chosen on the 15 meta-val tasks (seeds 0 and 1; docs/text_suite.md lists every value tried):
    reset_head (by multitask, benchmarks/head_select.py: kept), LiFT's beta, components and
    warm-up, its sigma (benchmarks/chain_select.py, which also kept its lr 3e-3), lift_sgld's
    sampling_temperature (benchmarks/sgld_temperature.py, docs/calibration.md), MBC's
    mbc_clusters and retrieval's retrieval_k (benchmarks/peer_select.py). The adaptation lr was
    chosen earlier by independent fine-tuning; every other value was set once, not searched."""
    methods: MethodSettings = MethodSettings(
        lift=LiftSettings(steps=300, tasks_per_step=4, batch=16, lr=3e-3, temperature=0.01, components=5,
                          sigma=0.3, beta=0.3, warmup=0.75, shift_lr=3e-3),
        meta_lr=1e-3, inner_steps=5, outer_lr=0.5, reset_head=False,
        adapt=MapConfig(steps=20, lr=1e-3, eval_every=5, patience=2), seeds=(0, 1, 2), sampling_temperature=0.01,
        mbc_clusters=10, retrieval_k=3)
    limit: Optional[Dict[str, int]] = None
    split: str = "test"
    val_headroom: bool = False

    def headroom_splits(self) -> tuple:
        """The splits the headroom covers (lift_ext.harness.suite.headroom_splits)."""
        return headroom_splits(self.split, self.val_headroom)


QUICK = Settings(methods=replace(Settings().methods, seeds=(0, 1),
                                 lift=replace(Settings().methods.lift, steps=12, batch=8),
                                 adapt=MapConfig(steps=5, lr=1e-3, eval_every=5, patience=2)),
                 limit={"train": 2, "val": 1, "test": 1})

LABELS = {"independent": "independent", "multitask": "multitask + FT", "reptile": "Reptile + FT",
          "fomaml": "FO-MAML + FT", "lift": "LiFT (K components)", "lift_k1": "LiFT K = 1",
          "lift_sgld": "LiFT + pSGLD samples", "lift_ts": "LiFT + temperature scaling", "mbc": "MBC + FT",
          "retrieval": "LoRA-Retriever + FT"}


def headroom(suite: TextSuite, settings: Settings, adaptations: Optional[hm.Adaptations] = None,
             progress: bool = False) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{split: {row: {task name: accuracy (%)}}} on the settings' headroom_splits (module docstring);
    ``adaptations`` keeps its fine-tuning runs for the ranking; ``progress``: a bar over the
    adaptations."""
    s = settings.methods
    bench = suite.bench(s.lift.batch * s.lift.tasks_per_step)
    init0 = bench.initial(0)
    oracle = oracle_starts(suite.flat, suite.splits["train"], init0, steps=s.lift.steps,
                           batch=s.lift.batch * s.lift.tasks_per_step, lr=s.meta_lr, seed=0)
    splits = settings.headroom_splits()
    bar = tqdm(total=3 * sum(len(bench.splits[split]) for split in splits), desc="text headroom",
               unit="task", disable=not progress)

    def adapted(task, start, seed, memo=None):
        bar.update()
        return hm.adapted_scores(bench, task, start, s.adapt, seed, adaptations=memo)["acc"]

    out = {}
    for split in splits:
        tasks, bench_tasks = suite.splits[split], bench.splits[split]
        rows = {"head at init": {t.name: 100 * accuracy(suite.flat, init0, t.query) for t in tasks},
                "unadapted backbone (prototype)": {t.name: 100 * prototype_accuracy(suite.flat, t) for t in tasks}}
        for seed in (0, 1):
            rows[f"independent, seed {seed}"] = {b.name: adapted(b, bench.initial(seed), seed, adaptations)
                                                 for b in bench_tasks}
        rows["oracle (per-kind multitask)"] = {b.name: adapted(b, oracle[t.kind], 0) for t, b in zip(tasks, bench_tasks)}
        out[split] = rows
    bar.close()
    return out


def headroom_table(scores: dict, group_of: Dict[str, str]) -> str:
    lines = ["| model | split | " + " | ".join(KINDS) + " | overall |", "|---|---|" + "---:|" * (len(KINDS) + 1)]
    for split, rows in scores.items():
        for row, values in rows.items():
            means = stats.group_means(values, group_of, KINDS)
            lines.append(f"| {row} | {split} | " + " | ".join(f"{means[k]:.1f}" if k in means else "" for k in KINDS)
                         + f" | {means['overall']:.2f} |")
        gains = headroom_gains(rows)
        d, se, n = gains[FLOOR]
        lines.append(f"| noise floor: independent seed 1 - seed 0, paired over {n} tasks | {split} |"
                     + " |" * len(KINDS) + f" {d:+.2f} ± {se:.2f} pp |")
        d, se, n = gains[ORACLE_GAIN]
        lines.append(f"| oracle - independent (seed 0), paired | {split} |" + " |" * len(KINDS)
                     + f" {d:+.2f} ± {se:.2f} pp |")
    return "\n".join(lines)


def run(settings: Settings, output: Optional[Path], cache=None, fresh: bool = False, progress: bool = True,
        workers: int = 1) -> dict:
    """Headroom and ranking under ``settings``; prints the tables and, with ``output``, writes
    them with every score as JSON and the reliability diagram beside it (reliability.png).
    With ``output`` every finished piece is kept beside it (``<output stem>.state.pt``,
    lift_ext.harness.progress), and a rerun resumes from them unless ``fresh``; ``progress``
    shows a bar over the ranking; ``workers``: the ranking's processes
    (lift_ext.harness.methods.ranking; the same scores for any number). Returns the record."""
    workers = resolve_workers(workers)
    clock: Dict[str, float] = {}
    machine = report.machine()  # the commit of the code this run loaded
    start, started = cpu_seconds(), time.perf_counter()
    suite = load_suite(0, cache=cache, limit=settings.limit)
    clock["features (computed this run)"] = suite.feature_cpu_seconds
    clock["load"] = cpu_seconds() - start - suite.feature_cpu_seconds
    group_of = {t.name: KINDS[t.kind] for ts in suite.splits.values() for t in ts}
    mark = cpu_seconds()
    fingerprinted = asdict(settings)
    del fingerprinted["methods"]["methods"]  # a piece is one method's: any subset may resume
    state = progress_state(output, fresh, suite="text", settings=fingerprinted,
                           tasks={sp: [t.name for t in ts] for sp, ts in suite.texts.items()})
    if state.resumed:
        print(state.describe(), flush=True)
    adaptations = hm.Adaptations()  # the headroom's independent fine-tuning, reused by the ranking
    head = state.get_or_run("headroom", lambda: headroom(suite, settings, adaptations, progress))
    clock["headroom"] = cpu_seconds() - mark
    counted = ", ".join(f"{len(suite.splits[split])} meta-{split}" for split in head)
    text = f"### Headroom (seed 0 unless said; {counted} tasks; accuracy %)\n\n{headroom_table(head, group_of)}"
    print(text + "\n", flush=True)
    method_seconds: Dict[str, float] = {}
    s = settings.methods
    rank = hm.ranking(suite.bench(s.lift.batch * s.lift.tasks_per_step), s, split=settings.split,
                      cpu_seconds=method_seconds, adaptations=adaptations, state=state,
                      progress=progress, workers=workers)
    clock.update({f"ranking {m}": v for m, v in method_seconds.items()})
    clock["total excluding features"] = cpu_seconds() - start - suite.feature_cpu_seconds
    wall = time.perf_counter() - started
    text += (f"\n\n### Ranking on meta-{settings.split} (seeds {list(s.seeds)}; accuracy %, mean ± s.e. over "
             f"(task, seed))\n\n{report.ranking_table(rank['acc'], group_of, KINDS, LABELS, settings.split)}\n\n"
             f"### Calibration on meta-{settings.split} (paired differences from MAP LiFT; lower is better)\n\n"
             f"{report.calibration_table(rank, LABELS, settings.split)}\n\n"
             f"CPU seconds ({report.describe(machine)}, the ranking in {workers} process(es); "
             "a LiFT chain shared by several methods counts under the first): "
             + ", ".join(f"{k} {v:.0f}" for k, v in clock.items()) + f"; {wall:.0f} s wall"
             + (f"; {state.describe()}" if state.resumed else ""))
    print(text)
    result = {"settings": asdict(settings), "tasks": {sp: [t.name for t in ts] for sp, ts in suite.texts.items()},
              "headroom": head, "ranking": report.by_seed_name(rank["acc"]),
              "scores": {key: report.by_seed_name(per) for key, per in rank.items()},
              "cpu_seconds": clock, "wall_seconds": wall, "ranking_processes": workers, "machine": machine,
              "markdown": text}
    if output is not None:
        written = plot.write_run(result, Path(output), rank, group_of, KINDS, LABELS,
                                 f"text suite, meta-{settings.split}",
                                 {k: v[0] for k, v in headroom_gains(head[settings.split]).items()})
        print(f"wrote {', '.join(map(str, written))}")
    return result


ORACLE_GAIN, FLOOR = "per-kind oracle - independent (seed 0)", "noise floor: independent seed 1 - seed 0"


def headroom_gains(rows: dict) -> dict:
    """{label: (mean, s.e., n)} of one split's headroom rows, paired over its tasks: the per-kind
    oracle's gain over independent fine-tuning (seed 0) and the noise floor (seed 1 - seed 0);
    the headroom table's last rows and the ranking figure's lines."""
    seed0 = rows["independent, seed 0"]
    return {ORACLE_GAIN: stats.paired(rows["oracle (per-kind multitask)"], seed0),
            FLOOR: stats.paired(rows["independent, seed 1"], seed0)}
