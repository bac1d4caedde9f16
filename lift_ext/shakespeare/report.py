"""Results: summary statistics, ``results.json``, a Markdown table and a bar plot.

Each method's score is the mean next-character accuracy (fraction of positions whose argmax
prediction is right) over its per-(seed, test role) query accuracies, with the standard error
s / sqrt(n) (s the sample standard deviation, n = seeds x test roles). Files are written
atomically (temporary file + os.replace).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List

from lift_ext.files import atomic_open
from lift_ext.shakespeare.config import BenchConfig

LABELS = {"lift": "LiFT (K components)", "lift_k1": "LiFT K=1", "independent": "independent LoRA",
          "multitask": "multi-task + FT", "reptile": "Reptile + FT", "fomaml": "FO-MAML + FT",
          "retrieval": "retrieval + FT", "mbc": "MBC (k-means) + FT"}


def mean_stderr(xs: List[float]) -> tuple:
    """(mean, standard error of the mean); stderr 0 for a single value."""
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return mean, 0.0
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var / n)


def summarize(cfg: BenchConfig, per_task: Dict[str, List[float]], detail: Dict[str, dict],
              roles: List[str], extra: dict) -> dict:
    """The results.json object: {"config", "roles", "methods": {name: {"mean", "stderr",
    "per_task", "lr", ...}}, ...extra}; per_task is ordered seed-major, role-minor."""
    out = {"config": cfg.to_dict(), "test_roles": roles, "methods": {}}
    for m, accs in per_task.items():
        mean, se = mean_stderr(accs)
        out["methods"][m] = {"mean": mean, "stderr": se, "per_task": accs, **detail.get(m, {})}
    out.update(extra)
    return out


def markdown_table(results: dict) -> str:
    """Methods sorted by mean accuracy (percent, +- standard error), with LiFT's lead over each
    method twice: in units of the larger of the two standard errors (the target's criterion),
    and as the mean paired difference over the same (seed, role) pairs in percentage points
    with its standard error (the sharper test, since role difficulty cancels)."""
    methods = results["methods"]
    ref = methods.get("lift")
    lines = ["| method | accuracy (%) | ± s.e. | LiFT lead (s.e. units) | LiFT lead, paired (pp) | adapt lr |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in sorted(methods.items(), key=lambda kv: -kv[1]["mean"]):
        gap = paired = ""
        if ref is not None and name != "lift":
            se = max(ref["stderr"], r["stderr"])
            gap = f"{(ref['mean'] - r['mean']) / se:+.1f}" if se > 0 else ""
            d_mean, d_se = mean_stderr([a - b for a, b in zip(ref["per_task"], r["per_task"])])
            paired = f"{100 * d_mean:+.2f} ± {100 * d_se:.2f}"
        lrs = sorted({float(v) for v in r.get("lr", {}).values()})
        lines.append(f"| {LABELS.get(name, name)} (`{name}`) | {100 * r['mean']:.2f} | "
                     f"{100 * r['stderr']:.2f} | {gap} | {paired} | {', '.join(f'{v:g}' for v in lrs)} |")
    n = len(next(iter(methods.values()))["per_task"])
    lines.append("")
    lines.append(f"Mean next-character accuracy on the query windows of {len(results['test_roles'])} "
                 f"meta-test roles x {len(results['config']['seeds'])} seed(s) (n = {n}); "
                 "adaptation lr chosen on meta-val roles.")
    return "\n".join(lines) + "\n"


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def plot_png(results: dict) -> bytes:
    """A bar plot (PNG bytes) of mean accuracy with +-1 standard error bars."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(results["methods"].items(), key=lambda kv: -kv[1]["mean"])
    names = [k for k, _ in items]
    means = [100 * v["mean"] for _, v in items]
    errs = [100 * v["stderr"] for _, v in items]
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = ["tab:red" if n.startswith("lift") else "tab:gray" for n in names]
    ax.bar(names, means, yerr=errs, capsize=4, color=colors)
    low = min(m - e for m, e in zip(means, errs))
    high = max(m + e for m, e in zip(means, errs))
    pad = max(0.5, 0.15 * (high - low))
    ax.set_ylim(low - pad, high + pad)
    ax.set_ylabel("next-character accuracy (%)")
    ax.set_title("Shakespeare meta-test roles: mean ± s.e.")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def write_results(results: dict, output: Path) -> Dict[str, Path]:
    """Write results.json, results.md and results.png into ``output`` (atomically)."""
    paths = {"json": output / "results.json", "md": output / "results.md", "png": output / "results.png"}
    _write_bytes(paths["json"], json.dumps(results, indent=1).encode())
    _write_bytes(paths["md"], markdown_table(results).encode())
    _write_bytes(paths["png"], plot_png(results))
    return paths
