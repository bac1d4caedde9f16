"""The reliability diagram of a ranking (PNG, matplotlib's Agg backend): per method, the
accuracy against the mean confidence max_c p_c of each of the 15 equal-width confidence bins,
the bins pooled over every (seed, task), and the diagonal of perfect calibration; and
``write_run``, which writes a run's record and its diagram together."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from lift_ext.calibration import ece_of_bins
from lift_ext.files import atomic_open
from lift_ext.harness import stats
from lift_ext.harness.scoring import pooled_bins


def reliability_png(bins: Mapping[str, Mapping[int, Mapping[str, list]]], labels: Mapping[str, str], path: Path,
                    title: str) -> Path:
    """Write the diagram of ``bins`` ({method: {seed: {task: reliability bins [15][3]}}}, the
    "bins" of lift_ext.harness.ranking) to ``path``, one curve per method (LiFT's variants
    solid, the others dashed; the legend gives each method's pooled ECE). Returns ``path``."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 6))
    for method, per_seed in bins.items():
        pooled = pooled_bins(list(stats.flatten(per_seed).values()))
        count, confidence, hits = pooled.unbind(1)
        kept = count > 0
        ax.plot((100 * confidence[kept] / count[kept]).tolist(), (100 * hits[kept] / count[kept]).tolist(),
                marker="o", markersize=3, linestyle="-" if method.startswith("lift") else "--",
                label=f"{labels.get(method, method)} (ECE {ece_of_bins(pooled):.1f} %)")
    ax.plot([0, 100], [0, 100], color="black", linewidth=0.8, linestyle=":")
    ax.set(xlim=(0, 100), ylim=(0, 100), xlabel="confidence, max_c p_c (%, 15 equal-width bins)",
           ylabel="accuracy in the bin (%)", title=title)
    ax.legend(fontsize=7, loc="upper left")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    with atomic_open(Path(path), "wb") as fh:
        fh.write(buffer.getvalue())
    return Path(path)


def write_run(result: dict, output: Path, bins, labels: Mapping[str, str], title: str) -> Path:
    """Write a run's record ``result`` as JSON to ``output`` (atomically) and its reliability
    diagram to reliability.png beside it; return the diagram's path."""
    with atomic_open(Path(output)) as fh:
        fh.write(json.dumps(result, indent=1, default=str))
    return reliability_png(bins, labels, Path(output).parent / "reliability.png", title)
