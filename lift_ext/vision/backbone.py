"""The vision suite's backbone and adapter.

A timm ViT sized for the CPU (32x32 grayscale images, patch 4: 64 tokens and a class token;
width 64, depth 4, 4 heads) is pre-trained in-house, every weight trained, on the upstream set
(lift_ext.vision.tasks.UPSTREAM_SPECS: characters and attributes no benchmark task uses) as
one classification over the union of the upstream label sets, with AdamW and a cosine
schedule. The weights (without the upstream head) are cached under the user cache directory,
keyed by the config, the upstream set's content key and this module's source, so a second run
loads them in seconds; the record holds the pre-training wall and CPU seconds and the accuracy
on held-out upstream images.

The adapter: peft LoRA (rank ``rank``, alpha 2 * rank) on every block's attention qkv and
output projection, plus the task's classification head (MAX_CLASSES outputs, zero-initialised,
peft ``modules_to_save=["head"]``), all in one flat vector (lift_ext.lift.FlatParams). A task
with C < MAX_CLASSES classes masks the other logits in the loss and the prediction.
"""
from __future__ import annotations

import hashlib
import math
import inspect
import json
import time
from dataclasses import asdict, dataclass
from typing import Sequence, Tuple

import timm
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from lift_ext.lift import FlatParams
from lift_ext.vision import tasks as vt

MASKED = -1e4  # the logit of a class the task does not have
HELD_OUT = 200  # upstream images per upstream task kept for the held-out accuracy


@dataclass(frozen=True)
class BackboneConfig:
    """ViT shape (``embed_dim``, ``depth``, ``num_heads``, ``patch_size`` px) and its
    pre-training: ``steps`` AdamW steps of ``batch_size`` upstream images at peak ``lr``
    (linear warm-up over the first 5 %, then cosine to 0; weight decay 0.05), ``seed`` for the init and the batches."""
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    patch_size: int = 4
    steps: int = 1_200
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        for name in ("embed_dim", "depth", "num_heads", "patch_size", "steps", "batch_size", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name in ("seed", "steps") else 1):
                raise ValueError(f"BackboneConfig.{name} must be a positive int, got {value!r}")
        if self.embed_dim % self.num_heads or 32 % self.patch_size:
            raise ValueError(f"BackboneConfig: embed_dim ({self.embed_dim}) must divide by num_heads "
                             f"({self.num_heads}) and 32 by patch_size ({self.patch_size})")
        if not self.lr > 0:
            raise ValueError(f"BackboneConfig.lr must be > 0, got {self.lr!r}")


def build_vit(cfg: BackboneConfig, num_classes: int) -> torch.nn.Module:
    """A fresh timm ViT of ``cfg``'s shape with a ``num_classes`` head (no downloaded weights)."""
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=cfg.patch_size,
                             in_chans=1, num_classes=num_classes, embed_dim=cfg.embed_dim, depth=cfg.depth,
                             num_heads=cfg.num_heads)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [N, 32, 32] -> the model's float input [N, 1, 32, 32], (x / 255 - 0.5) / 0.25."""
    return ((images.float() / 255.0 - 0.5) / 0.25)[:, None]


def masked_logits(logits: torch.Tensor, num_classes: torch.Tensor) -> torch.Tensor:
    """``logits`` [N, MAX] with the columns >= num_classes [N] (per row) set to MASKED."""
    cols = torch.arange(logits.shape[-1], device=logits.device)
    return logits.masked_fill(cols[None] >= num_classes[:, None], MASKED)


def loss_fn(call, batch) -> torch.Tensor:
    """Mean cross-entropy (nats per image) of a batch (inputs [N, 1, 32, 32], labels [N],
    classes [N]) over each row's own classes."""
    inputs, labels, classes = batch
    return F.cross_entropy(masked_logits(call(inputs), classes), labels)


def _upstream_arrays(upstream: Sequence[vt.VisionTask]):
    """(train inputs, train labels, held-out inputs, held-out labels, number of classes): the
    union label space, each upstream task's labels offset by the classes before it."""
    offset, parts = 0, []
    for task in upstream:
        parts.append((to_input(task.images), task.labels + offset))
        offset += task.spec.num_classes
    train_x = torch.cat([x[:-HELD_OUT] for x, _ in parts])
    train_y = torch.cat([y[:-HELD_OUT] for _, y in parts])
    test_x = torch.cat([x[-HELD_OUT:] for x, _ in parts])
    test_y = torch.cat([y[-HELD_OUT:] for _, y in parts])
    return train_x, train_y, test_x, test_y, offset


def pretrain(cfg: BackboneConfig, upstream: Sequence[vt.VisionTask], progress: bool = False
             ) -> Tuple[dict, dict]:
    """(state_dict of the ViT without its head, record): ``cfg.steps`` AdamW steps on the
    upstream set (module docstring). The record holds wall_seconds, cpu_seconds (this
    process), torch threads and the held-out upstream accuracy (%)."""
    torch.manual_seed(cfg.seed)
    train_x, train_y, test_x, test_y, classes = _upstream_arrays(upstream)
    vit = build_vit(cfg, classes)
    opt = torch.optim.AdamW(vit.parameters(), lr=cfg.lr, weight_decay=0.05)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / max(1, cfg.steps))))
    gen = torch.Generator().manual_seed(cfg.seed)
    wall, cpu = time.perf_counter(), time.process_time()
    vit.train()
    for step in range(cfg.steps):
        rows = torch.randint(len(train_y), (cfg.batch_size,), generator=gen)
        loss = F.cross_entropy(vit(train_x[rows]), train_y[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress and (step + 1) % 100 == 0:
            print(f"pre-training step {step + 1}/{cfg.steps}: loss {float(loss):.3f}", flush=True)
    vit.eval()
    with torch.no_grad():
        correct = sum(int((vit(x).argmax(-1) == y).sum()) for x, y in zip(test_x.split(500), test_y.split(500)))
    record = {"wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
              "torch_threads": torch.get_num_threads(), "upstream_classes": classes,
              "upstream_heldout_accuracy": 100.0 * correct / len(test_y), "config": asdict(cfg)}
    state = {k: v for k, v in vit.state_dict().items() if not k.startswith("head.")}
    return state, record


def cache_key(cfg: BackboneConfig, upstream_key: str) -> str:
    """Hash of the config, the upstream set's content key and this module's pre-training source."""
    source = inspect.getsource(pretrain) + inspect.getsource(_upstream_arrays) + inspect.getsource(build_vit)
    blob = json.dumps({"cfg": asdict(cfg), "upstream": upstream_key,
                       "source": hashlib.sha256(source.encode()).hexdigest()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_backbone(cfg: BackboneConfig = BackboneConfig(), seed: int = 0, cache=None,
                  progress: bool = False) -> Tuple[dict, dict]:
    """(backbone state_dict, pre-training record): loaded from the cache when present, else
    pre-trained (``pretrain``) on the upstream set of ``seed`` and stored; the record says
    ``cached`` (bool). ``cache`` as in lift_ext.vision.tasks.resolve_cache."""
    folder = vt.resolve_cache(cache)
    upstream_key = vt.content_key(vt.UPSTREAM_SPECS, seed + 10_007, vt.UPSTREAM_SIZE)
    path = None if folder is None else folder / "vision" / f"backbone-{cache_key(cfg, upstream_key)}.pt"
    if path is not None and path.exists():
        stored = torch.load(path, weights_only=True)
        return stored["state"], dict(stored["record"], cached=True)
    state, record = pretrain(cfg, vt.load_upstream(seed, cache), progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"state": state, "record": record}, tmp)
        tmp.replace(path)
    return state, dict(record, cached=False)


TARGETS = r".*blocks\.\d+\.attn\.(qkv|proj)"


def adapter_model(state: dict, cfg: BackboneConfig = BackboneConfig(), rank: int = 4, seed: int = 0
                  ) -> Tuple[torch.nn.Module, FlatParams]:
    """(peft model, its adapter as a FlatParams): the pre-trained ViT (``state``) with a fresh
    zero head of MAX_CLASSES outputs, LoRA of ``rank`` on every attention qkv and proj (LoRA A
    drawn from ``seed``, B = 0) and the head in the adapter (modules_to_save); the backbone
    is frozen. The FlatParams' vector is the adapter's initialisation and is never written."""
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an int >= 1, got {rank!r}")
    vit = build_vit(cfg, vt.MAX_CLASSES)
    missing, unexpected = vit.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"head.weight", "head.bias"}:
        raise ValueError(f"backbone state does not fit the config: missing {missing}, unexpected {unexpected}")
    torch.nn.init.zeros_(vit.head.weight)
    torch.nn.init.zeros_(vit.head.bias)
    torch.manual_seed(seed)
    model = get_peft_model(vit, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS,
                                           modules_to_save=["head"]))
    model.eval()
    return model, FlatParams(model)


def features(state: dict, cfg: BackboneConfig, images: torch.Tensor) -> torch.Tensor:
    """The frozen backbone's pooled features [N, embed_dim] (class token after the final norm)
    of uint8 images [N, 32, 32]."""
    vit = build_vit(cfg, 0)
    vit.load_state_dict(state, strict=False)
    vit.eval()
    with torch.no_grad():
        return torch.cat([vit.forward_head(vit.forward_features(to_input(x)), pre_logits=True)
                          for x in images.split(500)])
