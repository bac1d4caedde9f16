"""Results: summary statistics, ``results.json``, a Markdown table and the figures every suite
draws (ranking.png, reliability.png: lift_ext.harness.plot).

Scores per (seed, evaluated role): next-character accuracy on all query targets ("acc"), on
the targets the role's family permutation changes ("acc_remapped"; roles without any, e.g.
the identity family, have none), the NLL in nats per character ("nll"), and the calibration
of the predictive distribution: ECE over 15 confidence bins ("ece") and the Brier score
("brier"; lift_ext.shakespeare.scoring). Each method's
score is the mean over (seed, role) with the standard error s / sqrt(n) (s the sample
standard deviation). A paired difference is the mean over the same (seed, role) pairs of
one method's score minus another's, with its standard error: role difficulty cancels, so it
is the sharper test; the reference method of the paired differences is LiFT (``lift``) when
it ran, else the first method of the config. The noise floor is the paired difference of one
method with itself under two seeds. results.json is strict JSON (a missing or non-finite
number is null); files are written atomically.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from lift_ext.files import atomic_open
from lift_ext.harness.plot import write_figures
from lift_ext.harness.stats import mean_se
from lift_ext.shakespeare.config import PEER_OPTIONS, BenchConfig
from lift_ext.shakespeare.scoring import METRICS

LABELS = {"lift": "LiFT", "lift_k1": "LiFT K=1 (ablation)", "lift_paper": "LiFT, paper's prior (ablation)",
          "lift_sgld": "LiFT, SGLD adaptation (prediction averaging)",
          "lift_ts": "LiFT + temperature scaling (calibration reference)",
          "independent": "independent LoRA", "multitask": "multi-task + FT", "reptile": "Reptile + FT",
          "fomaml": "FO-MAML + FT", "retrieval": "LoRA-Retriever + FT", "mbc": "MBC + FT",
          "oracle": "family oracle + FT (reference)", "backbone": "backbone, unadapted (reference)"}
UNITS = {"acc": 100.0, "acc_remapped": 100.0, "nll": 1.0, "ece": 100.0, "brier": 1.0}


def paired(a: Sequence[Optional[float]], b: Sequence[Optional[float]]) -> dict:
    """Mean and standard error of a - b over the positions where both are present."""
    diffs = [x - y for x, y in zip(a, b) if x is not None and y is not None]
    mean, se = mean_se(diffs) if diffs else (None, None)
    return {"mean": mean, "se": se, "n": len(diffs)}


def _stats(values: List[Optional[float]]) -> dict:
    """Mean and s.e. of the values present (None when there are none: JSON has no nan)."""
    present = [v for v in values if v is not None]
    mean, se = mean_se(present) if present else (None, None)
    return {"mean": mean, "stderr": se, "per_task": values}


def reference_method(methods: Sequence[str]) -> str:
    """The method the paired differences are taken against: ``lift`` when present, else the first."""
    return "lift" if "lift" in methods else methods[0]


def strict_json(obj):
    """``obj`` with every non-finite float (nan, inf) replaced by None, so that it is JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def summarize(cfg: BenchConfig, scores: Dict[str, List[dict]], detail: Dict[str, dict],
              roles: List[tuple], extra: dict) -> dict:
    """The results.json object: {"config", "roles" ([key, family] per evaluated role),
    "methods": {name: {"mean", "stderr", "per_task" (accuracy), "metrics": {metric: {"mean",
    "stderr", "per_task"}}, "lr", ...}}, "reference" (see `reference_method`), "paired" (the
    reference minus each other method, per metric), "noise_floor" (each method, first seed
    minus second), ...extra}; per_task lists are ordered seed-major, role-minor."""
    reference = reference_method(list(scores))
    out = {"config": cfg.to_dict(), "roles": [list(r) for r in roles], "methods": {}, "reference": reference,
           "paired": {}, "noise_floor": {}}
    for m, rows in scores.items():
        metrics = {k: _stats([row.get(k) for row in rows]) for k in METRICS}  # older stage files: no ece
        out["methods"][m] = {"mean": metrics["acc"]["mean"], "stderr": metrics["acc"]["stderr"],
                             "per_task": metrics["acc"]["per_task"], "metrics": metrics, **detail.get(m, {})}
        if rows and all("reliability" in row for row in rows):
            out["methods"][m]["reliability"] = reliability(row["reliability"] for row in rows)
    ref = out["methods"][reference]
    for m, r in out["methods"].items():
        if m != reference:
            out["paired"][m] = {k: paired(ref["metrics"][k]["per_task"], r["metrics"][k]["per_task"])
                                for k in METRICS}
        if len(cfg.seeds) >= 2:
            n = len(roles)
            per = r["metrics"]["acc"]["per_task"]
            out["noise_floor"][m] = paired(per[:n], per[n:2 * n])
    for m, r in out["methods"].items():
        comps = r.get("components") or []
        if comps and None not in comps:
            out["component_purity"] = {**out.get("component_purity", {}), m: purity(comps, roles)}
    out.update(extra)
    return out


def reliability(per_role) -> dict:
    """The reliability diagram's data pooled over (seed, role): per confidence bin the number
    of query positions, their mean confidence and their accuracy (None for an empty bin)."""
    total = [[sum(col) for col in zip(*rows)] for rows in zip(*per_role)]
    return {"count": [int(n) for n, _, _ in total],
            "confidence": [c / n if n else None for n, c, _ in total],
            "accuracy": [h / n if n else None for n, _, h in total]}


def purity(components: List[int], roles: List[tuple]) -> float:
    """The fraction of evaluated (seed, role) pairs whose chosen prior component's most common
    family (in that seed, whose chain labels its components) is the role's own family."""
    n = len(roles)
    agree = 0
    for start in range(0, len(components), n):
        table: Dict[int, Dict[int, int]] = {}
        for comp, (_, family) in zip(components[start:start + n], roles):
            table.setdefault(comp, {}).setdefault(family, 0)
            table[comp][family] += 1
        agree += sum(max(counts.values()) for counts in table.values())
    return agree / len(components)


def label(name: str, record: dict) -> str:
    """The table's name for a method; a LiFT variant also names its prior model and K."""
    notes = record.get("notes") or {}
    extra = f", {notes['prior']} prior, K = {notes['components']}" if "prior" in notes else ""
    return f"{LABELS.get(name, name)}{extra} (`{name}`)"


def _cell(stats: dict, metric: str) -> str:
    if stats["mean"] is None:
        return "n/a"
    u = UNITS[metric]
    digits = 3 if metric in ("nll", "brier") else 2
    return f"{u * stats['mean']:.{digits}f} ± {u * stats['stderr']:.{digits}f}"


def _short(name: str) -> str:
    return LABELS.get(name, name).split(" (")[0]


def adaptation_note(config: dict) -> str:
    """What the adaptation did, as the run's config says: the lr chosen on meta-val, or the
    single lr that was tried."""
    lrs = config["adapt_lrs"]
    steps = f"at most {config['adapt_steps']} RMSprop steps per role"
    if len(lrs) == 1:
        return f"adaptation: {steps} at lr {lrs[0]:g} (the only lr tried: not tuned)"
    return (f"adaptation: {steps}, lr chosen per method and seed among {', '.join(f'{v:g}' for v in lrs)} "
            f"by mean query accuracy on {config['max_val'] or 'all'} meta-val roles")


def option_note(config: dict, methods) -> str:
    """"; with it, C of MBC among ... and k of retrieval among ... picked per seed by mean query
    accuracy on the meta-val roles" for the peers that ran ("" when none did)."""
    parts = [f"{symbol} of `{name}` among {', '.join(map(str, config[key]))}"
             for name, (symbol, key) in PEER_OPTIONS.items() if name in methods]
    return f"; with it, {' and '.join(parts)} picked per seed by mean query accuracy on the meta-val roles" \
        if parts else ""


def markdown_table(results: dict) -> str:
    """Methods sorted by mean accuracy: accuracy (all and remapped targets, %), NLL (nats /
    char), ECE (%) and Brier, each mean ± s.e., and the reference method's paired lead over each method in
    accuracy (pp, and in paired standard errors); a footer that says what the run did."""
    methods, config = results["methods"], results["config"]
    reference = results.get("reference", reference_method(list(methods)))
    ref = _short(reference)
    remapped = any(r["metrics"]["acc_remapped"]["mean"] is not None for r in methods.values())
    head = ["method", "accuracy (%)"] + (["remapped targets (%)"] if remapped else []) + \
        ["NLL (nats/char)", "ECE (%)", "Brier", f"{ref} lead, paired (pp)", f"{ref} lead (paired s.e.)", "adapt lr",
         "CPU s, meta-train / adapt"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, r in sorted(methods.items(), key=lambda kv: -(kv[1]["mean"] or 0.0)):
        cells = [label(name, r), _cell(r["metrics"]["acc"], "acc")]
        if remapped:
            cells.append(_cell(r["metrics"]["acc_remapped"], "acc_remapped"))
        cells += [_cell(r["metrics"][k], k) for k in ("nll", "ece", "brier")]
        lead = results["paired"].get(name, {}).get("acc")
        if lead is None or lead["mean"] is None:
            cells += ["", ""]
        else:
            cells.append(f"{100 * lead['mean']:+.2f} ± {100 * lead['se']:.2f}")
            cells.append(f"{lead['mean'] / lead['se']:+.1f}" if lead["se"] else "")
        lrs = sorted({float(v) for v in r.get("lr", {}).values()}) if name != "backbone" else []
        options = sorted({v for v in (r.get("option") or {}).values() if v is not None})
        chosen = f"{PEER_OPTIONS[name][0]} = {', '.join(map(str, options))}; " if options else ""
        cells.append(chosen + ", ".join(f"{v:g}" for v in lrs))
        cells.append(f"{r.get('meta_cpu_seconds', 0.0):.1f} / {r.get('adapt_cpu_seconds', 0.0):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    n_roles, n_seeds = len(results["roles"]), len(config["seeds"])
    split = "meta-test" if config.get("eval_split", "test") == "test" else "meta-val"
    lines += ["", f"Query windows of {n_roles} {split} roles x {n_seeds} seed(s) (n = {n_roles * n_seeds}); "
              f"{config['meta_steps']} meta-training steps per method; {adaptation_note(config)}"
              f"{option_note(config, methods)}; paired: {ref} (`{reference}`) minus the method on the same "
              "(seed, role)."]
    calibration = [f"`{m}` {100 * p['ece']['mean']:+.2f} ± {100 * p['ece']['se']:.2f}"
                   for m, p in results["paired"].items() if m != "backbone" and p.get("ece", {}).get("mean") is not None]
    if calibration:
        lines.append(f"ECE, paired ({ref} minus the method on the same (seed, role), pp; negative: {ref} is "
                     "better calibrated): " + ", ".join(calibration) + ".")
    peers = peer_costs(methods)
    if peers:
        lines.append(peers)
    temperatures = [t for r in methods.values() for t in r.get("temperatures", [])]
    if temperatures:
        ordered = sorted(temperatures)
        lines.append(f"Temperatures fitted on the support sets: median {ordered[len(ordered) // 2]:.2f} "
                     f"(range {ordered[0]:.2f}-{ordered[-1]:.2f}).")
    pure = results.get("component_purity", {})
    if pure and config.get("suite") == "families":
        lines.append("Family purity of the prior component each LiFT variant starts from (fraction of roles whose "
                     "component mostly serves their own family): "
                     + ", ".join(f"`{m}` {100 * v:.0f} %" for m, v in pure.items()) + ".")
    floor = results.get("noise_floor", {})
    if floor:
        parts = [f"`{m}` {100 * v['mean']:+.2f} ± {100 * v['se']:.2f}" for m, v in floor.items()
                 if m != "backbone" and v["mean"] is not None]
        lines.append("Noise floor (accuracy, pp: the same method, first seed minus second, paired by role): "
                     + ", ".join(parts) + ".")
    elif n_seeds == 1:
        lines.append("One seed: no noise floor (the same method under two seeds) was measured.")
    return "\n".join(lines) + "\n"


def peer_costs(methods: dict) -> str:
    """The footer line of the library-based peers' costs (CPU seconds summed over seeds): the
    parts of their meta-training (the library is shared: each counts it in its own total), the
    CPU seconds spent choosing their starts at adaptation (retrieval: embedding the support
    inputs and merging; MBC: routing by support loss), and LiFT's chain for comparison; "" when
    neither peer ran."""
    parts = []
    for name in ("mbc", "retrieval"):
        r = methods.get(name)
        if r is None:
            continue
        costs = ", ".join(f"{part} {cpu:.1f}" for part, cpu in (r.get("costs") or {}).items())
        parts.append(f"`{name}` meta-training {r.get('meta_cpu_seconds', 0.0):.1f} ({costs}), choosing the starts "
                     f"at adaptation {r.get('start_cpu_seconds', 0.0):.1f}")
    if not parts:
        return ""
    lift = methods.get("lift")
    versus = f"; `lift`'s chain {lift.get('meta_cpu_seconds', 0.0):.1f}" if lift else ""
    return "Costs of the library-based peers (CPU s, summed over seeds): " + "; ".join(parts) + versus + "."


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def figure_inputs(results: dict) -> dict:
    """The arguments of lift_ext.harness.plot.write_figures for a results.json object:
    "accuracy" {method: {seed: {role: accuracy %}}} from the per_task lists (seed-major,
    role-minor), "pooled" {method: reliability bins [15, 3]} back from each method's pooled
    diagram (count, count x mean confidence, count x accuracy), "group_of" {role: "family f"}
    and "groups" (the families, none when every role is of one family: the roles suite),
    "references" (the noise floor of independent fine-tuning, first seed minus second, pp)."""
    roles = [key for key, _ in results["roles"]]
    families = sorted({family for _, family in results["roles"]})
    n, seeds = len(roles), results["config"]["seeds"]
    accuracy = {m: {seed: {role: 100.0 * value for role, value in zip(roles, r["per_task"][i * n:(i + 1) * n])
                           if value is not None} for i, seed in enumerate(seeds)}
                for m, r in results["methods"].items()}
    pooled = {}
    for m, r in results["methods"].items():
        if r.get("reliability"):
            d = r["reliability"]
            pooled[m] = torch.tensor([[c, c * (conf or 0.0), c * (acc or 0.0)]
                                      for c, conf, acc in zip(d["count"], d["confidence"], d["accuracy"])],
                                     dtype=torch.float64)
    floor = results.get("noise_floor", {}).get("independent", {}).get("mean")
    return {"accuracy": accuracy, "pooled": pooled, "group_of": {key: f"family {f}" for key, f in results["roles"]},
            "groups": tuple(f"family {f}" for f in families) if len(families) > 1 else (),
            "references": {} if floor is None else {"noise floor: independent, first seed - second": 100.0 * floor}}


def write_results(results: dict, output: Path) -> Dict[str, Path]:
    """Write results.json, results.md and every suite's figures (lift_ext.harness.plot.write_figures:
    ranking.png, paired from independent fine-tuning with its noise floor, per family on the
    family suite; reliability.png) into ``output`` (atomically); returns {"json", "md", and each
    figure's stem: path}."""
    paths = {"json": output / "results.json", "md": output / "results.md"}
    _write_bytes(paths["json"], json.dumps(strict_json(results), indent=1, allow_nan=False).encode())
    _write_bytes(paths["md"], markdown_table(results).encode())
    title = f"Shakespeare {results['config'].get('suite', 'roles')} suite, {len(results['roles'])} roles"
    for path in write_figures(output, **figure_inputs(results), labels=LABELS, title=title):
        paths[path.stem] = path
    return paths
