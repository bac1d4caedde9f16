"""A ranking's figures (PNG, matplotlib's Agg backend), ``write_figures``, and ``write_run``,
which writes a harness run's record and its figures together.

    ranking.png      left: each method's accuracy minus the reference's (independent
                     fine-tuning), paired over (seed, task), in percentage points, the thick
                     bar ±1 paired s.e., the thin one ±2, beside the suite's headroom lines
                     (e.g. the oracle's gain over the reference, the seed-to-seed noise floor);
                     right: the same paired mean per group of tasks and overall, as a grid of
                     numbers coloured by sign (the per-group view of the ranking table)
    reliability.png  per method, the accuracy against the mean confidence max_c p_c of each of
                     the 15 equal-width confidence bins, the bins pooled over every (seed,
                     task), and the diagonal of perfect calibration

Every suite draws these two (``write_figures``): the harness's through ``write_run``, the
Shakespeare suites' from their results.json (lift_ext.shakespeare.report).
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

import torch

from lift_ext.calibration import ece_of_bins
from lift_ext.files import atomic_open
from lift_ext.harness import stats
from lift_ext.harness.scoring import pooled_bins


def reliability_png(pooled: Mapping[str, torch.Tensor], labels: Mapping[str, str], path: Path, title: str) -> Path:
    """Write the diagram of ``pooled`` ({method: reliability bins [15, 3] (count, summed
    confidence, correct argmaxes) summed over every (seed, task)}) to ``path``, one curve per
    method (LiFT's variants solid, the others dashed; the legend gives each method's pooled
    ECE). Returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 6))
    for method, bins in pooled.items():
        count, confidence, hits = bins.unbind(1)
        kept = count > 0
        ax.plot((100 * confidence[kept] / count[kept]).tolist(), (100 * hits[kept] / count[kept]).tolist(),
                marker="o", markersize=3, linestyle="-" if method.startswith("lift") else "--",
                label=f"{labels.get(method, method)} (ECE {ece_of_bins(bins):.1f} %)")
    ax.plot([0, 100], [0, 100], color="black", linewidth=0.8, linestyle=":")
    ax.set(xlim=(0, 100), ylim=(0, 100), xlabel="confidence, max_c p_c (%, 15 equal-width bins)",
           ylabel="accuracy in the bin (%)", title=title)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` as PNG (atomically) and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    with atomic_open(Path(path), "wb") as fh:
        fh.write(buffer.getvalue())
    return Path(path)


def paired_by_group(rank: Mapping[str, Mapping[int, Mapping[str, float]]], group_of: Mapping[str, str],
                    groups: Sequence[str], reference: str) -> dict:
    """{method: {group or "overall": (mean, s.e., n)}}: each method's score minus the
    reference's, paired over the (seed, task) pairs of the group (every method but the reference)."""
    base = stats.flatten(rank[reference])
    out = {}
    for method, per_seed in rank.items():
        if method == reference:
            continue
        flat = stats.flatten(per_seed)
        out[method] = {g: stats.paired({k: v for k, v in flat.items() if group_of[k[1]] == g}, base)
                       for g in groups if any(group_of[k[1]] == g for k in flat)}
        out[method]["overall"] = stats.paired(flat, base)
    return out


def ranking_png(rank: Mapping[str, Mapping[int, Mapping[str, float]]], group_of: Mapping[str, str],
                groups: Sequence[str], labels: Mapping[str, str], path: Path, title: str,
                references: Optional[Mapping[str, float]] = None, reference: str = "independent") -> Path:
    """Write ranking.png (module docstring) of ``rank`` ({method: {seed: {task: accuracy %}}})
    to ``path``: the paired differences from ``reference`` overall and per group
    (``group_of``: {task: group}, ``groups`` in order), and ``references`` ({label: pp}) as
    vertical lines (headroom: an oracle's gain, a noise floor). Returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if reference not in rank:
        raise ValueError(f"reference {reference!r} is not among the ranked methods {list(rank)}")
    paired = paired_by_group(rank, group_of, groups, reference)
    if not paired:
        raise ValueError("ranking_png needs a method besides the reference")
    methods = sorted(paired, key=lambda m: -paired[m]["overall"][0])
    columns = [g for g in groups if any(g in paired[m] for m in methods)] + ["overall"]
    fig, (bars, grid) = plt.subplots(1, 2, figsize=(13, 0.45 * len(methods) + 2.2),
                                     gridspec_kw={"width_ratios": [1.1, 1]})
    rows = range(len(methods))
    means = [paired[m]["overall"][0] for m in methods]
    errors = [paired[m]["overall"][1] for m in methods]
    colours = ["tab:red" if m.startswith("lift") else "tab:gray" for m in methods]
    bars.barh(rows, means, xerr=[2 * e for e in errors], color=colours, alpha=0.35,
              error_kw={"elinewidth": 0.8, "capsize": 2})
    bars.errorbar(means, rows, xerr=errors, fmt="o", color="black", elinewidth=2.2, markersize=3)
    bars.axvline(0.0, color="black", linewidth=0.8)
    for (label, value), style in zip((references or {}).items(), ("--", ":", "-.", (0, (5, 1)))):
        bars.axvline(value, color="tab:blue", linestyle=style, linewidth=1.2, label=f"{label}: {value:+.2f} pp")
    if references:
        bars.legend(fontsize=7, loc="best")
    bars.set_yticks(list(rows), [labels.get(m, m) for m in methods], fontsize=8)
    bars.invert_yaxis()
    seeds = len(rank[reference])
    bars.set_xlabel(f"accuracy minus {labels.get(reference, reference)} (pp), paired over (seed, task); "
                    "bar ±1 s.e., whisker ±2 s.e.", fontsize=8)
    values = [[paired[m][c][0] if c in paired[m] else float("nan") for c in columns] for m in methods]
    scale = max([abs(v) for row in values for v in row if v == v] + [1e-9])
    digits = 1 if scale >= 1 else 2  # a field within 1 pp (the roles suite) keeps its s.e. readable
    grid.imshow(values, cmap="RdBu", vmin=-scale, vmax=scale, aspect="auto")
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if value == value:
                se = paired[methods[i]][columns[j]][1]
                grid.text(j, i, f"{value:+.{digits}f}\n±{se:.{digits}f}", ha="center", va="center", fontsize=7,
                          color="white" if abs(value) > 0.6 * scale else "black")
    grid.set_xticks(range(len(columns)), columns, fontsize=8)
    grid.set_yticks(list(rows), [labels.get(m, m) for m in methods], fontsize=8)
    grid.set_title("per group: mean paired difference (pp) ± s.e.", fontsize=9)
    fig.suptitle(f"{title} ({seeds} seed{'s' if seeds != 1 else ''})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def write_figures(folder: Path, accuracy: Mapping[str, Mapping[int, Mapping[str, float]]],
                  pooled: Mapping[str, torch.Tensor], group_of: Mapping[str, str], groups: Sequence[str],
                  labels: Mapping[str, str], title: str, references: Optional[Mapping[str, float]] = None
                  ) -> List[Path]:
    """Write a ranking's figures into ``folder`` and return them: ranking.png of ``accuracy``
    ({method: {seed: {task: accuracy %}}}, paired from independent fine-tuning when it was
    ranked, else from the first method; only when more than one method was ranked;
    ``references``: the headroom's lines) and reliability.png of ``pooled`` (reliability_png;
    only when some method has bins)."""
    folder, written = Path(folder), []
    if len(accuracy) > 1:
        reference = "independent" if "independent" in accuracy else next(iter(accuracy))
        written.append(ranking_png(accuracy, group_of, groups, labels, folder / "ranking.png", title,
                                   references=references, reference=reference))
    if pooled:
        written.append(reliability_png(pooled, labels, folder / "reliability.png",
                                       f"{title}: bins pooled over tasks and seeds"))
    return written


def write_run(result: dict, output: Path, rank: Mapping[str, Mapping[str, Mapping[int, Mapping[str, object]]]],
              group_of: Mapping[str, str], groups: Sequence[str], labels: Mapping[str, str], title: str,
              references: Optional[Mapping[str, float]] = None) -> List[Path]:
    """Write a run's record ``result`` as JSON to ``output`` (atomically) and beside it the
    figures (write_figures) of ``rank["acc"]`` and of ``rank["bins"]`` pooled over (seed, task);
    return the files written."""
    output = Path(output)
    with atomic_open(output) as fh:
        fh.write(json.dumps(result, indent=1, default=str))
    pooled = {method: pooled_bins(list(stats.flatten(per_seed).values())) for method, per_seed in rank["bins"].items()}
    return [output] + write_figures(output.parent, rank["acc"], pooled, group_of, groups, labels, title, references)
