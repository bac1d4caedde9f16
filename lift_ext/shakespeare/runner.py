"""The benchmark pipeline in three resumable stages, each saved in the output directory.

    meta_train  data + cached backbone + every method's meta-training   -> meta_state.pt
    adapt       per method, the adaptation lr picked on meta-val roles,
                then every meta-test role adapted from its support set  -> adapted.pt
    evaluate    next-character accuracy on each test role's query set   -> results.json/.md/.png

A stage file records the fingerprint of the config fields it depends on; a later stage run
with a different config stops with a clear error instead of mixing runs.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import torch
from tqdm.auto import tqdm

from lift_ext.shakespeare import methods as M
from lift_ext.shakespeare.config import BenchConfig
from lift_ext.shakespeare.episodes import pool_tasks, support_task
from lift_ext.checkpoint import CheckpointError, load_checked, save_atomic
from lift_ext.lift import FlatParams

META_FILE, ADAPT_FILE = "meta_state.pt", "adapted.pt"
_FORMAT = {"meta": "lift_ext.shakespeare.meta_state", "adapt": "lift_ext.shakespeare.adapted"}
LIBRARY_METHODS = ("lift", "lift_k1", "retrieval", "mbc")


class StageError(RuntimeError):
    """A stage's input is missing or was made with another config (the message says which)."""


@dataclass
class Setup:
    """The data, the adapter-wrapped backbone and its flat LoRA vector for one seed."""
    bench: object
    model: torch.nn.Module
    flat: FlatParams
    pools: List[torch.Tensor]
    val: list
    test: list
    backbone: dict


def _limit(items: list, n: int) -> list:
    return items if n == 0 else items[:n]


def setup(cfg: BenchConfig, seed: int, cache=None, progress: bool = True) -> Setup:
    """Load the Shakespeare role benchmark and the cached (or newly pre-trained) backbone,
    wrap it with LoRA (PEFT init drawn with torch seed ``seed``) and pack the adapter."""
    from lift_ext.shakespeare.roles import load_benchmark
    from lift_ext.shakespeare.backbone import add_lora, load_or_pretrain

    device = torch.device(cfg.device)
    bench = load_benchmark(n_support=cfg.n_support, n_query=cfg.n_query, min_lines=cfg.min_lines,
                           cache=cache)
    ids = bench.vocab.encode(bench.pretrain_text(include_train_roles=cfg.pretrain_train_roles))
    model, info = load_or_pretrain(ids, len(bench.vocab), cfg.backbone_config(), cache=cache,
                                   device=device, progress=progress)
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(seed)
    model = add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha).to(device).eval()
    flat = FlatParams(model)
    pools = [t.pool.to(device) for t in _limit(bench.tasks["train"], cfg.max_train)]
    val = _limit(bench.tasks["val"], cfg.max_val)
    test = _limit(bench.tasks["test"], cfg.max_test)
    for split, roles in (("meta-train", pools), ("meta-val", val), ("meta-test", test)):
        if not roles:
            raise StageError(f"the {split} split is empty: lower min_lines or raise max_* in the config")
    backbone = {k: info[k] for k in ("key", "path", "cached", "train_seconds", "final_loss") if k in info}
    return Setup(bench, model, flat, pools, val, test, backbone)


def meta_train(cfg: BenchConfig, su: Setup, seed: int, progress: bool = True) -> M.MetaState:
    """Meta-train every configured method on the meta-train pools with ``cfg.meta_steps``
    gradient evaluations each."""
    init = su.flat.vector.detach().clone()
    state = M.MetaState(init=init)
    tasks = pool_tasks(su.pools, cfg.batch_size, su.bench.config["pool_stride"])
    wanted = set(cfg.methods)
    common = dict(steps=cfg.meta_steps, seed=seed, progress=progress)
    if "multitask" in wanted:
        state.starts["multitask"] = M.train_multitask(su.flat, tasks, init, lr=cfg.meta_lr, **common)
    if "reptile" in wanted:
        state.starts["reptile"] = M.train_reptile(su.flat, tasks, init, inner_steps=cfg.inner_steps,
                                                  lr=cfg.meta_lr, outer_lr=cfg.outer_lr, **common)
    if "fomaml" in wanted:
        state.starts["fomaml"] = M.train_fomaml(su.flat, su.pools, init, inner_steps=cfg.inner_steps,
                                                lr=cfg.meta_lr, n_support=cfg.batch_size,
                                                n_query=cfg.batch_size, **common)
    if wanted & set(LIBRARY_METHODS):
        gmm_k, gmm_1, thetas = M.train_lift(
            su.model, tasks, sigma=cfg.sigma, beta=cfg.beta, lr=cfg.lift_lr, temperature=cfg.temperature,
            n_components=cfg.n_components, burn_in=int(cfg.burn_in * cfg.meta_steps), thin=cfg.thin,
            preconditioned=cfg.lift_preconditioned, **common)
        state.priors = {"lift": gmm_k, "lift_k1": gmm_1}
        state.library = thetas
        state.centres = M.kmeans(thetas, cfg.mbc_clusters, seed)
        if not torch.equal(su.flat.vector, init):
            raise RuntimeError("meta-training changed the shared adapter buffer")
    return state


def _adapt_roles(cfg: BenchConfig, su: Setup, state: M.MetaState, method: str, roles: list, lr: float,
                 seed: int, starts: Dict[str, object] | None = None) -> List[torch.Tensor]:
    """Adapted vectors of ``method`` for ``roles``; ``starts`` memoises each role's start
    vector (retrieval / MBC score their whole library once per role, not once per lr)."""
    device = su.flat.vector.device
    starts = {} if starts is None else starts
    out = []
    for r in roles:
        task = support_task(r.support.to(device), cfg.batch_size)
        if r.key not in starts:
            starts[r.key] = M.start_vector(method, state, su.flat, task)
        out.append(M.adapt_role(method, state, su.flat, task, steps=cfg.adapt_steps, lr=lr, beta=cfg.beta,
                                seed=seed, start=starts[r.key]))
    return out


def _accuracies(su: Setup, thetas: List[torch.Tensor], roles: list) -> List[float]:
    device = su.flat.vector.device
    return [M.query_accuracy(su.flat, th, r.query.to(device)) for th, r in zip(thetas, roles)]


def select_lr(cfg: BenchConfig, su: Setup, state: M.MetaState, method: str, seed: int) -> Dict[float, float]:
    """Mean meta-VAL query accuracy of ``method`` for every lr of ``cfg.adapt_lrs``."""
    if len(cfg.adapt_lrs) == 1:
        return {cfg.adapt_lrs[0]: float("nan")}
    scores, starts = {}, {}
    for lr in cfg.adapt_lrs:
        accs = _accuracies(su, _adapt_roles(cfg, su, state, method, su.val, lr, seed, starts), su.val)
        scores[lr] = sum(accs) / len(accs)
    return scores


def adapt_test(cfg: BenchConfig, su: Setup, state: M.MetaState, seed: int, progress: bool = True) -> dict:
    """Per method: lr chosen on meta-val (highest mean query accuracy), then the adapted
    vectors of every meta-test role and the seconds taken."""
    out = {}
    for method in tqdm(cfg.methods, desc=f"adapting (seed {seed})", disable=not progress):
        t0 = time.perf_counter()
        scores = select_lr(cfg, su, state, method, seed)
        lr = max(scores, key=lambda k: -math.inf if math.isnan(scores[k]) else scores[k])
        thetas = _adapt_roles(cfg, su, state, method, su.test, lr, seed)
        out[method] = {"lr": lr, "val_scores": {str(k): v for k, v in scores.items()},
                       "thetas": torch.stack(thetas).cpu(), "seconds": time.perf_counter() - t0}
    return out


# ---- stage files ------------------------------------------------------------------------

def _save(kind: str, cfg: BenchConfig, stage: str, payload: dict, path: Path) -> None:
    save_atomic({"format": _FORMAT[kind], "version": 1, "fingerprint": cfg.fingerprint(stage),
                 "config": cfg.to_dict(), **payload}, str(path))


def _load(kind: str, cfg: BenchConfig, stage: str, path: Path, producer: str) -> dict:
    try:
        state = load_checked(str(path), fmt=_FORMAT[kind], version=1, required=("fingerprint", "seeds"),
                             map_location="cpu")
    except CheckpointError as exc:
        if not path.exists():
            raise StageError(f"{path} does not exist: run `lift-ext {producer}` with this config and "
                             "--output first") from None
        raise StageError(str(exc)) from None
    if state["fingerprint"] != cfg.fingerprint(stage):
        raise StageError(f"{path} was made with another config (fingerprint {state['fingerprint']}, "
                         f"this config {cfg.fingerprint(stage)}): rerun `lift-ext {producer}` or use "
                         "another --output directory")
    return state


def run_meta_train(cfg: BenchConfig, output: Path, cache=None, progress: bool = True) -> Path:
    """Stage 1 for every seed; writes ``output/meta_state.pt``."""
    seeds = {}
    for seed in cfg.seeds:
        t0 = time.perf_counter()
        su = setup(cfg, seed, cache, progress)
        state = meta_train(cfg, su, seed, progress)
        seeds[seed] = {"state": _to_cpu(state.to_state()), "backbone": su.backbone,
                       "seconds": time.perf_counter() - t0}
    path = output / META_FILE
    _save("meta", cfg, "meta-train", {"seeds": seeds}, path)
    return path


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    return obj


def _to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def run_adapt(cfg: BenchConfig, output: Path, cache=None, progress: bool = True) -> Path:
    """Stage 2; needs ``meta_state.pt`` of the same config, writes ``output/adapted.pt``."""
    meta = _load("meta", cfg, "meta-train", output / META_FILE, "meta-train")
    seeds = {}
    for seed in cfg.seeds:
        su = setup(cfg, seed, cache, progress=False)
        state = M.MetaState.from_state(_to_device(meta["seeds"][seed]["state"], cfg.device))
        for gmm in state.priors.values():
            gmm.to(cfg.device)
        seeds[seed] = adapt_test(cfg, su, state, seed, progress)
    path = output / ADAPT_FILE
    _save("adapt", cfg, "adapt", {"seeds": seeds, "meta_seconds": {s: meta["seeds"][s]["seconds"]
                                                                   for s in cfg.seeds}}, path)
    return path


def run_evaluate(cfg: BenchConfig, output: Path, cache=None, extra: dict | None = None) -> dict:
    """Stage 3; needs ``adapted.pt`` of the same config. Returns the results dict (see
    ``lift_ext.shakespeare.report``) without writing it."""
    adapted = _load("adapt", cfg, "adapt", output / ADAPT_FILE, "adapt")
    per_method: Dict[str, list] = {m: [] for m in cfg.methods}
    detail: Dict[str, dict] = {m: {"lr": {}, "val_scores": {}, "adapt_seconds": 0.0} for m in cfg.methods}
    roles = None
    for seed in cfg.seeds:
        su = setup(cfg, seed, cache, progress=False)
        roles = su.test
        for method in cfg.methods:
            rec = adapted["seeds"][seed][method]
            thetas = list(rec["thetas"].to(cfg.device))
            per_method[method] += _accuracies(su, thetas, su.test)
            detail[method]["lr"][str(seed)] = rec["lr"]
            detail[method]["val_scores"][str(seed)] = rec["val_scores"]
            detail[method]["adapt_seconds"] += rec["seconds"]
    from lift_ext.shakespeare.report import summarize
    return summarize(cfg, per_method, detail, [r.key for r in roles], extra=extra or {})


def check_output(output: Path) -> Path:
    """Create ``output`` if needed and make sure files can be written there."""
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StageError(f"output directory {str(output)!r} cannot be created: {exc.strerror or exc}") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise StageError(f"output directory {str(output)!r} is not writable")
    return output
