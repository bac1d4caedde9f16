"""The adapt stage's work for one seed: each method's adaptation lr (and MBC's C, retrieval's k)
chosen on the meta-val roles by mean query accuracy, then every evaluated role adapted from its
support windows (lift_ext.shakespeare.methods.adapt_role); the query scores of adapted vectors
(lift_ext.shakespeare.scoring), which the evaluate stage reads too."""
from __future__ import annotations

import math
import time
from typing import Dict, List, Optional

import torch
from tqdm.auto import tqdm

from lift_ext.lift import MapConfig
from lift_ext.shakespeare import methods as M
from lift_ext.clock import Clock
from lift_ext.shakespeare.config import BenchConfig, candidate_name, candidates
from lift_ext.shakespeare.episodes import support_task
from lift_ext.shakespeare.loading import Setup
from lift_ext.shakespeare.scoring import fit_temperature, query_metrics


def adapt_config(cfg: BenchConfig, lr: float) -> MapConfig:
    """lift_ext.lift.adapt's settings for one method: MAP with at most ``adapt_steps`` steps and
    the stopping rule (``adapt_eval_every`` 0: the support objective is checked only at the end)."""
    every = cfg.adapt_eval_every or max(1, cfg.adapt_steps)
    return MapConfig(steps=cfg.adapt_steps, lr=lr, tol=cfg.adapt_tol, patience=cfg.adapt_patience, eval_every=every)


def _adapt_roles(cfg: BenchConfig, su: Setup, state: M.MetaState, method: str, roles: list, lr: float,
                 seed: int, starts: dict, components: Optional[list] = None, bar=None,
                 option: Optional[int] = None) -> List[torch.Tensor]:
    """Adapted vectors [S, D] of ``method`` (with its ``option``, MBC's C or retrieval's k) for
    each of ``roles`` (the chosen prior component of each appended to ``components``);
    ``starts`` memoises each (role, option)'s start (retrieval / MBC route and the LiFT variants
    choose their component once per role, not once per lr) and sums the CPU seconds spent
    choosing them under "cpu"; ``bar`` (a tqdm bar) advances by one per role."""
    out = []
    for r in roles:
        task = support_task(r.support, cfg.batch_size)
        if (r.key, option) not in starts:
            cpu = time.process_time()
            starts[r.key, option] = M.start_vector(method, state, su.flat, task, r.family, option)
            starts["cpu"] = starts.get("cpu", 0.0) + time.process_time() - cpu
        samples, component = M.adapt_role(method, state, su.flat, task, start=starts[r.key, option],
                                          config=adapt_config(cfg, lr), seed=seed, temperature=cfg.temperature)
        out.append(torch.stack(samples))
        if components is not None:
            components.append(component)
        if bar is not None:
            bar.update(1)
    return out


def role_scores(su: Setup, thetas: List[torch.Tensor], roles: list, scaled: bool = False) -> List[dict]:
    """Query scores of each role's adapted vectors; ``scaled``: with the temperature fitted on the
    role's support set to its first vector (temperature scaling), recorded as "temperature"."""
    if not scaled:
        return [query_metrics(su.flat, list(th), r) for th, r in zip(thetas, roles)]
    out = []
    for th, r in zip(thetas, roles):
        temperature = fit_temperature(su.flat, th[0], r.support)
        out.append(dict(query_metrics(su.flat, list(th), r, temperature), temperature=temperature))
    return out


def is_chosen(cfg: BenchConfig, method: str) -> bool:
    """Whether ``method``'s adaptation is chosen on meta-val (more than one candidate)."""
    return len(candidates(cfg, method)) > 1


def adaptations(cfg: BenchConfig, su: Setup, methods=None) -> int:
    """Role adaptations of one seed's adapt stage for ``methods`` (default: all; meta-val roles
    per candidate tried, then the evaluated roles), the unit its progress bar counts."""
    return sum(len(su.evaluated) + (len(su.data.val) * len(candidates(cfg, m)) if is_chosen(cfg, m) else 0)
               for m in methods or cfg.methods)


def select(cfg: BenchConfig, su: Setup, state: M.MetaState, method: str, seed: int,
           starts: dict, bar=None) -> Dict[tuple, float]:
    """Mean meta-VAL query accuracy of ``method`` for every (option, lr) of ``candidates``
    (nan when there is nothing to choose)."""
    pairs = candidates(cfg, method)
    if not is_chosen(cfg, method):
        return {pairs[0]: math.nan}
    scores = {}
    for option, lr in pairs:
        accs = [s["acc"] for s in role_scores(su, _adapt_roles(cfg, su, state, method, su.data.val, lr, seed,
                                                           starts, bar=bar, option=option), su.data.val)]
        scores[option, lr] = sum(accs) / len(accs)
    return scores


def adapt_roles(cfg: BenchConfig, su: Setup, state: M.MetaState, seed: int, progress: bool = True) -> dict:
    """Per method: (option, lr) chosen on meta-val (highest mean query accuracy; the first
    candidate on a tie), then the adapted vectors of every evaluated role, the seconds taken
    and the CPU seconds of choosing the starts (``start_cpu``: retrieval's embedding and
    merging, MBC's routing by support loss, the LiFT variants' best component, over meta-val and
    evaluated roles; a part of ``cpu``)."""
    out = {}
    bar = tqdm(total=adaptations(cfg, su), desc=f"adapting (seed {seed})", unit="role", disable=not progress,
               mininterval=1.0)
    for method in cfg.methods:
        bar.set_postfix(method=method)
        if method in M.TEMPERATURE_SCALED and "lift" in out:  # lift's own adapters, scaled at evaluation
            out[method] = dict(out["lift"], wall=0.0, cpu=0.0, start_cpu=0.0)
            bar.update(adaptations(cfg, su, [method]))
            continue
        clock = Clock()
        val_starts: dict = {}
        scores = select(cfg, su, state, method, seed, val_starts, bar)
        option, lr = max(scores, key=lambda k: -math.inf if math.isnan(scores[k]) else scores[k])
        starts = val_starts if su.evaluated is su.data.val else {"cpu": val_starts.get("cpu", 0.0)}
        components: list = []
        thetas = _adapt_roles(cfg, su, state, method, su.evaluated, lr, seed, starts, components, bar, option)
        out[method] = {"lr": lr, "option": option, "start_cpu": starts.get("cpu", 0.0),
                       "val_scores": {candidate_name(method, *k): None if math.isnan(v) else v
                                      for k, v in scores.items()},
                       "components": components, "thetas": torch.stack(thetas).cpu(), **clock.lap("adapt")}
    bar.close()
    return out


__all__ = ["adapt_config", "adapt_roles", "adaptations", "is_chosen", "role_scores", "select"]
