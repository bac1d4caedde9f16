"""One seed's data, LoRA-wrapped backbone and flat adapter, loaded (the backbone pre-trained and
cached on a first run) for every stage of the Shakespeare benchmark."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from lift_ext.lift import FlatParams
from lift_ext.shakespeare.config import BenchConfig
from lift_ext.shakespeare.lift_methods import chains_needed
from lift_ext.shakespeare.stages import StageError
from lift_ext.shakespeare.suite import SuiteData, build_suite


@dataclass
class Setup:
    """The data, the adapter-wrapped backbone and its flat LoRA vector for one seed."""
    bench: object
    model: torch.nn.Module
    flat: FlatParams
    data: SuiteData
    backbone: dict
    evaluated: list  # the scored roles: data.test, or data.val with eval_split "val"


def setup(cfg: BenchConfig, seed: int, cache=None, progress: bool = True,
          setups: Optional[dict] = None) -> Setup:
    """Load the Shakespeare role benchmark, its suite and the cached (or newly pre-trained)
    backbone, wrap it with LoRA (PEFT init drawn with torch seed ``seed``) and pack the adapter;
    reuse ``setups[seed]`` when given."""
    if setups is not None and seed in setups:
        return setups[seed]
    from lift_ext.shakespeare.backbone import add_lora, load_or_pretrain
    from lift_ext.shakespeare.roles import load_benchmark

    device = torch.device(cfg.device)
    bench = load_benchmark(n_support=cfg.n_support, n_query=cfg.n_query, min_lines=cfg.min_lines,
                           cache=cache)
    data = build_suite(bench, cfg, device)  # before the backbone: an empty split stops the run at once
    empty = [split for split, roles in (("meta-train", data.pools), ("meta-val", data.val),
                                        ("meta-test", data.test)) if not roles]
    if empty:
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(bench.dropped.items())) or "none"
        raise StageError(f"the {', '.join(empty)} split(s) come out empty (roles dropped: {dropped}): "
                         f"lower min_lines (now {cfg.min_lines}) or n_support + n_query (now {cfg.n_support} + "
                         f"{cfg.n_query} windows a role must hold) in the config")
    check_chains(cfg, len(data.pools))
    ids = bench.vocab.encode(bench.pretrain_text(include_train_roles=cfg.pretrain_train_roles))
    model, info = load_or_pretrain(ids, len(bench.vocab), cfg.backbone_config(), cache=cache,
                                   device=device, progress=progress)
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(seed)
    model = add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha).to(device).eval()
    backbone = {k: info[k] for k in ("key", "path", "cached", "train_seconds", "final_loss") if k in info}
    su = Setup(bench, model, FlatParams(model), data, backbone,
               data.test if cfg.eval_split == "test" else data.val)
    if setups is not None:
        setups[seed] = su
    return su


def check_chains(cfg: BenchConfig, n_train: int) -> None:
    """StageError naming the config keys when the LiFT chains the methods need cannot run on
    ``n_train`` meta-train roles: more tasks per step, or more mixture-prior components, than roles."""
    chains = chains_needed(cfg, set(cfg.methods))
    if not chains:
        return
    more = "or raise max_train (0 = all) or lower min_lines in the config"
    if cfg.tasks_per_step > n_train:
        raise StageError(f"tasks_per_step ({cfg.tasks_per_step}) exceeds the number of meta-train roles "
                         f"({n_train}): lower tasks_per_step, {more}")
    k = max((k for prior, k in chains if prior == "mixture"), default=0)
    if k > n_train:
        raise StageError(f"n_components ({k}) exceeds the number of meta-train roles ({n_train}; the mixture "
                         f"prior needs a role per component): lower n_components, {more}")


__all__ = ["Setup", "setup", "check_chains"]
