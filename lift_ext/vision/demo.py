"""The vision suite end to end: headroom, then the harness's ranking, written as tables (accuracy,
calibration), JSON, the ranking figure and a reliability diagram (``lift-ext demo --suite vision``;
benchmarks/vision_headroom.py adds the meta-val sweep).

The first run renders the tasks and pre-trains the backbone (cached under $LIFT_EXT_CACHE,
default ~/.cache/lift_ext/vision); its time is printed. Times are CPU seconds of this process and
of the ranking's worker processes (lift_ext.workers.cpu_seconds) and wall seconds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from lift_ext.harness import plot, report, stats
from lift_ext.harness.progress import progress_state
from lift_ext.workers import resolve_workers
from lift_ext.vision import bench
from lift_ext.vision import tasks as vt

LABELS = {"chance": "chance (1 / classes)", "prototypes": "unadapted backbone, prototypes of the shots",
          "independent_seed0": "independent fine-tuning (seed 0)", "independent_seed1": "independent fine-tuning (seed 1)",
          "pool_ceiling": "ceiling: fine-tuned on the whole 800-image pool",
          "label_set_oracle": "label-set oracle: a start from the meta-train tasks with the same labels, adapted",
          "independent": "independent", "multitask": "multitask + FT", "reptile": "Reptile + FT", "fomaml": "FO-MAML + FT",
          "lift": "LiFT (K components)", "lift_k1": "LiFT K = 1", "lift_sgld": "LiFT + pSGLD samples",
          "lift_ts": "LiFT + temperature scaling", "mbc": "MBC + FT", "retrieval": "LoRA-Retriever + FT"}


def _cells(scores, groups):
    means = stats.group_means(scores, groups, vt.GROUPS)
    return " | ".join(f"{means[g]:.1f}" if g in means else "" for g in vt.GROUPS)


def headroom_table(rec: dict, groups: dict, split_of: dict) -> str:
    """The headroom record as a table: per row the group means and the overall mean over its
    tasks (the ranked split's, and meta-val's with val_headroom); then the paired noise floor,
    the pool ceiling's gain (when the record has it) and the label-set oracle's gain (what
    meta-training could transfer), the last per split (``split_of``: {task name: "val" or "test"})."""
    splits = [sp for sp in ("val", "test") if any(split_of.get(n) == sp for n in rec["independent_seed0"])]
    lines = [f"| model ({' + '.join('meta-' + sp for sp in splits)} tasks, seed 0 unless said) | "
             + " | ".join(vt.GROUPS) + " | overall (%) ± s.e. over tasks |", "|---|" + "---:|" * (len(vt.GROUPS) + 1)]
    for name, scores in rec.items():
        mean, se = stats.mean_se(list(scores.values()))
        lines.append(f"| {LABELS.get(name, name)} | {_cells(scores, groups)} | {mean:.2f} ± {se:.2f} |")
    floor = stats.paired(rec["independent_seed1"], rec["independent_seed0"])
    lines.append(f"| noise floor: independent seed 1 - seed 0, paired over {floor[2]} tasks | | | | "
                 f"{floor[0]:+.2f} ± {floor[1]:.2f} pp |")
    if "pool_ceiling" in rec:
        gain = stats.paired(rec["pool_ceiling"], rec["independent_seed0"])
        lines.append(f"| ceiling - independent (seed 0), paired | | | | {gain[0]:+.2f} ± {gain[1]:.2f} pp |")
    for split in ("val", "test"):
        if any(split_of.get(n) == split for n in rec["label_set_oracle"]):
            d, se, n = headroom_gains(rec, split_of, split)[ORACLE_GAIN]
            lines.append(f"| label-set oracle - independent (seed 0), paired over the {n} meta-{split} tasks | | | | "
                         f"{d:+.2f} ± {se:.2f} pp |")
    return "\n".join(lines)


def ranking_table(rank: dict, groups: dict, split: str) -> str:
    return report.ranking_table(rank, groups, vt.GROUPS, LABELS, split)


def run(settings: bench.Settings, output: Optional[Path], cache=None, progress: bool = True,
        fresh: bool = False, workers: int = 1) -> dict:
    """Headroom and ranking under ``settings``; prints the tables and, with ``output``, writes
    them with every score as JSON and the reliability diagram beside it (reliability.png).
    With ``output`` every finished piece is kept beside it (``<output stem>.state.pt``,
    lift_ext.harness.progress), and a rerun resumes from them unless ``fresh``; ``progress``
    shows bars (the backbone's pre-training on a first run, the ranking); ``workers``: the
    ranking's processes (lift_ext.harness.methods.ranking; the same scores for any number).
    Returns the record."""
    workers = resolve_workers(workers)
    stages = {}
    suite = report.timed(stages, "load (tasks and backbone)", lambda: bench.Suite(settings, cache=cache,
                                                                                  progress=progress))
    pre = suite.pretraining
    print(f"backbone: {'loaded from the cache' if pre['cached'] else 'pre-trained now'}; its pre-training took "
          f"{pre['cpu_seconds']:.0f} CPU s ({pre['wall_seconds']:.0f} s wall, {pre['torch_threads']} thread(s)), "
          f"held-out upstream accuracy {pre['upstream_heldout_accuracy']:.1f} % over {pre['upstream_classes']} classes")
    groups = {t.spec.name: t.spec.group for t in suite.tasks}
    result = {"settings": bench.settings_dict(settings), "pretraining": pre, "machine": report.machine(),
              "stages": stages, "ranking_processes": workers}
    state = progress_state(output, fresh, suite="vision",  # a piece is one method's: any subset may resume
                           settings={k: v for k, v in result["settings"].items() if k != "ranked"},
                           tasks=[t.spec.name for t in suite.tasks])
    if state.resumed:
        print(state.describe(), flush=True)
    result["headroom"] = report.timed(stages, "headroom",
                                      lambda: state.get_or_run("headroom", lambda: bench.headroom(suite, progress=progress)))
    split_of = {suite.tasks[i].spec.name: split for split in ("val", "test") for i in suite.split[split]}
    text = headroom_table(result["headroom"], groups, split_of)
    print(text + "\n", flush=True)
    method_seconds = {}
    rank = report.timed(stages, "ranking", lambda: bench.ranking(suite, cpu_seconds=method_seconds, state=state,
                                                                       progress=progress, workers=workers))
    text += "\n\n" + ranking_table(rank["acc"], groups, settings.eval_split)
    text += "\n\n" + report.calibration_table(rank, LABELS, settings.eval_split)
    result["ranking"] = report.by_seed_name(rank["acc"])
    result["scores"] = {key: report.by_seed_name(per) for key, per in rank.items()}
    result["method_cpu_seconds"] = method_seconds
    cpu = sum(v["cpu_seconds"] for v in stages.values())
    wall = sum(v["wall_seconds"] for v in stages.values())
    footer = ("\n\nCPU seconds per method (meta-training and adaptation, all seeds; a LiFT chain shared by "
              "several methods counts under the first): "
              + ", ".join(f"{m} {v:.0f}" for m, v in method_seconds.items())
              + f"\n{report.describe(result['machine'])}, the ranking in {workers} process(es): {cpu:.0f} CPU s "
              f"({wall:.0f} s wall) including loading"
              + ("" if pre["cached"] else f" and the backbone's pre-training ({pre['cpu_seconds']:.0f} CPU s)")
              + (f"; {state.describe()}" if state.resumed else ""))
    print(text + footer)
    result["cpu_seconds"], result["wall_seconds"], result["table"] = cpu, wall, text + footer
    if output is not None:
        written = plot.write_run(result, Path(output), rank, groups, vt.GROUPS, LABELS,
                                 f"vision suite, meta-{settings.eval_split}",
                                 {k: v[0] for k, v in headroom_gains(result["headroom"], split_of,
                                                                      settings.eval_split).items()})
        print(f"wrote {', '.join(map(str, written))}")
    return result


ORACLE_GAIN, FLOOR = "label-set oracle - independent (seed 0)", "noise floor: independent seed 1 - seed 0"


def headroom_gains(rec: dict, split_of: dict, split: str) -> dict:
    """{label: (mean, s.e., n)} of the headroom record, paired over the ``split`` tasks: the
    label-set oracle's gain over independent fine-tuning (seed 0) and the noise floor (seed 1 -
    seed 0); the headroom table's per-split oracle rows and the ranking figure's lines."""
    seed0 = {n: v for n, v in rec["independent_seed0"].items() if split_of.get(n) == split}
    return {ORACLE_GAIN: stats.paired(rec["label_set_oracle"], seed0),
            FLOOR: stats.paired(rec["independent_seed1"], seed0)}
