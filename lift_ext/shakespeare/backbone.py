"""A small causal character-level transformer (GPT-2 layout, transformers format), its
pre-training with an on-disk cache, LoRA adapters via peft, and evaluation helpers.

Token windows everywhere are int64 [n, T + 1]: the model reads ``w[:, :-1]`` and is scored
on predicting ``w[:, 1:]`` (next token at every position).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["BackboneConfig", "build_model", "pretrain", "load_or_pretrain", "backbone_key", "add_lora",
           "lm_loss", "target_loss", "next_token_accuracy", "GPT2_ATTENTION_MODULES", "GPT2_MLP_MODULES"]

GPT2_ATTENTION_MODULES = ("attn.c_attn", "attn.c_proj")
GPT2_MLP_MODULES = ("mlp.c_fc", "mlp.c_proj")
_META = "lift_ext_backbone.json"


@dataclass(frozen=True)
class BackboneConfig:
    """Architecture and pre-training budget of the backbone.

    Training: AdamW (``lr``, ``weight_decay``), linear warm-up over ``warmup`` steps then
    cosine decay to 0.1 * lr, ``steps`` steps of ``batch_size`` random windows of
    ``seq_len + 1`` tokens from the training text, mean next-token cross-entropy (nats).
    The default takes about 2-3 minutes on a 2-core CPU."""
    n_layer: int = 3
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 128
    seq_len: int = 80
    steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("lr", "weight_decay"):
                if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
                    raise ValueError(f"BackboneConfig.{f.name} must be a finite number >= 0, got {v!r}")
            elif not isinstance(v, int) or v < (0 if f.name in ("warmup", "seed") else 1):
                raise ValueError(f"BackboneConfig.{f.name} must be a positive int, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"BackboneConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.seq_len > self.n_positions:
            raise ValueError(f"BackboneConfig.seq_len ({self.seq_len}) exceeds n_positions ({self.n_positions})")


def build_model(vocab_size: int, config: BackboneConfig = BackboneConfig()):
    """A freshly initialised ``GPT2LMHeadModel`` for ``vocab_size`` tokens (no dropout)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    if not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=config.n_positions, n_embd=config.n_embd,
                     n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(config.seed)
    return GPT2LMHeadModel(cfg)


def _check_windows(windows: torch.Tensor, name: str = "windows") -> None:
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.shape[1] < 2 \
            or windows.dtype != torch.long:
        raise ValueError(f"{name} must be an int64 tensor [n, T + 1] with T >= 1, got "
                         f"{getattr(windows, 'dtype', type(windows))} {tuple(getattr(windows, 'shape', ()))}")


def lm_loss(model, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats per token) of ``model`` on ``windows`` [B, T + 1],
    averaged over all B * T predicted positions. Differentiable."""
    _check_windows(windows)
    return target_loss(model, windows[:, :-1], windows[:, 1:])


def target_loss(model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats per position) of ``model`` reading ``inputs`` [B, T] and scored
    on ``targets`` [B, T] (position t's target; the next token for plain text). Differentiable."""
    logits = model(input_ids=inputs).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


@torch.no_grad()
def next_token_accuracy(model, windows: torch.Tensor, batch_size: int = 256,
                        positions: str = "all") -> float:
    """Fraction of correct argmax next-token predictions on ``windows`` [n, T + 1].

    ``positions="all"`` scores all n * T positions (every prefix of each window);
    ``"last"`` scores only the final position (LEAF's next-character-after-T-characters
    metric). Runs batched without gradients; the model's train/eval mode is restored."""
    _check_windows(windows)
    if positions not in ("all", "last"):
        raise ValueError(f"positions must be 'all' or 'last', got {positions!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if windows.shape[0] == 0:
        raise ValueError("windows is empty")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    try:
        for b in windows.split(batch_size):
            b = b.to(device)
            pred = model(input_ids=b[:, :-1]).logits.argmax(-1)
            tgt = b[:, 1:]
            if positions == "last":
                pred, tgt = pred[:, -1], tgt[:, -1]
            correct += int((pred == tgt).sum())
            total += tgt.numel()
    finally:
        model.train(was_training)
    return correct / total


def pretrain(model, train_ids: torch.Tensor, config: BackboneConfig = BackboneConfig(),
             progress: bool = True) -> list[float]:
    """Pre-train ``model`` in place on random windows of the 1-D token stream ``train_ids``
    (see :class:`BackboneConfig` for the schedule). Returns the loss of every step."""
    from tqdm.auto import tqdm
    if train_ids.dim() != 1 or train_ids.numel() < config.seq_len + 2:
        raise ValueError(f"train_ids must be 1-D with more than seq_len + 1 = {config.seq_len + 1} "
                         f"tokens, got shape {tuple(train_ids.shape)}")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(config.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)

    def lr_at(step: int) -> float:
        if step < config.warmup:
            return config.lr * (step + 1) / config.warmup
        t = (step - config.warmup) / max(1, config.steps - config.warmup)
        return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    offsets = torch.arange(config.seq_len + 1)
    n_start = train_ids.numel() - config.seq_len
    model.train()
    losses = []
    bar = tqdm(range(config.steps), desc="pre-training backbone", disable=not progress,
               mininterval=1.0)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        starts = torch.randint(0, n_start, (config.batch_size,), generator=gen)
        batch = train_ids[starts[:, None] + offsets].to(device)
        loss = lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def _cache_root(cache) -> Path:
    from lift_ext.shakespeare.cache import cache_dir
    return cache_dir(cache)


def backbone_key(train_ids: torch.Tensor, vocab_size: int, config: BackboneConfig) -> str:
    """SHA-256 over the config, the vocabulary size and the exact training token stream."""
    h = hashlib.sha256(json.dumps({"config": dataclasses.asdict(config), "vocab_size": vocab_size,
                                   "format": 1}, sort_keys=True).encode())
    h.update(train_ids.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def _hub_progress_bars(enabled: bool):
    """transformers' own load/save progress bars, switched off when `enabled` is False."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()


def load_or_pretrain(train_ids: torch.Tensor, vocab_size: int,
                     config: BackboneConfig = BackboneConfig(), cache=None, device="cpu",
                     progress: bool = True, rebuild: bool = False):
    """The pre-trained backbone for this (data, config), trained only when not cached.

    Saved with ``save_pretrained`` under ``<cache>/backbones/gpt2-char-<key[:16]>`` (``cache``
    as in :func:`lift_ext.shakespeare.cache.cache_dir`), written to a temporary directory and
    renamed into place, with ``lift_ext_backbone.json`` recording config, key, training time
    and final loss. A directory that fails to load is rebuilt. Returns ``(model, info)``
    with the model in eval mode on ``device``; ``info`` is that JSON plus ``"path"`` and
    ``"cached"`` (False when it was trained by this call)."""
    from transformers import GPT2LMHeadModel
    if not isinstance(train_ids, torch.Tensor) or train_ids.dim() != 1:
        raise ValueError("train_ids must be a 1-D tensor of token ids")
    if train_ids.numel() and (int(train_ids.min()) < 0 or int(train_ids.max()) >= vocab_size):
        raise ValueError(f"train_ids hold ids outside [0, vocab_size={vocab_size})")
    key = backbone_key(train_ids, vocab_size, config)
    root = _cache_root(cache) / "backbones"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"gpt2-char-{key[:16]}"
    if final.exists() and not rebuild:
        try:
            info = json.loads((final / _META).read_text(encoding="utf-8"))
            if info.get("key") != key:
                raise ValueError("key mismatch")
            with _hub_progress_bars(progress):
                model = GPT2LMHeadModel.from_pretrained(final).to(device).eval()
            return model, {**info, "path": str(final), "cached": True}
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            warnings.warn(f"cached backbone {str(final)!r} does not load ({e}); retraining it",
                          RuntimeWarning, stacklevel=2)
    model = build_model(vocab_size, config).to(device)
    t0 = time.perf_counter()
    losses = pretrain(model, train_ids, config, progress=progress)
    info = {"key": key, "config": dataclasses.asdict(config), "vocab_size": vocab_size,
            "train_tokens": int(train_ids.numel()), "train_seconds": time.perf_counter() - t0,
            "final_loss": sum(losses[-50:]) / len(losses[-50:]), "device": str(device)}
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=root))
    try:
        with _hub_progress_bars(progress):
            model.save_pretrained(tmp)
        (tmp / _META).write_text(json.dumps(info, indent=1), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model.eval(), {**info, "path": str(final), "cached": False}


def add_lora(model, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
             target_modules=None, include_mlp: bool = False):
    """Wrap ``model`` with peft LoRA adapters; only adapter weights stay trainable.

    Each targeted weight W gets W + (alpha / r) * B A with A [r, in] random (peft's Kaiming
    init) and B [out, r] = 0, so the wrapped model starts exactly at the backbone's function
    while A and B both receive gradient (B's from A != 0). ``target_modules`` defaults to
    GPT-2's attention projections (``attn.c_attn``, ``attn.c_proj``) plus, with
    ``include_mlp``, ``mlp.c_fc`` and ``mlp.c_proj``; names match module-name suffixes.
    GPT-2's Conv1D layers store W transposed, so ``fan_in_fan_out`` is set for them."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"r must be a positive int, got {r!r}")
    if target_modules is None:
        target_modules = list(GPT2_ATTENTION_MODULES) + (list(GPT2_MLP_MODULES) if include_mlp else [])
    elif include_mlp:
        raise ValueError("include_mlp applies to the default GPT-2 targets only; list the MLP "
                         "modules in target_modules instead")
    target_modules = list(target_modules)
    hits = [m for n, m in model.named_modules()
            if any(n == t or n.endswith("." + t) for t in target_modules)]
    if not hits:
        raise ValueError(f"target_modules {target_modules} match no module of the model")
    conv = [isinstance(m, Conv1D) for m in hits]
    if any(conv) and not all(conv):
        raise ValueError("target_modules mix Conv1D and Linear layers; wrap them separately")
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                     fan_in_fan_out=all(conv), bias="none")
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` property while wrapping;
        # that FutureWarning concerns the two libraries, not this model (nothing here checkpoints).
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        return get_peft_model(model, cfg)
