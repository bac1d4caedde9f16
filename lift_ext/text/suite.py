"""The text suite assembled: tasks (lift_ext.text.tasks), cached lower-layer features and the
adapter (lift_ext.text.backbone), each task as a SuiteTask of tensors (lift_ext.text.methods)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from lift_ext.harness import BenchSuite
from lift_ext.harness.suite import head_mask
from lift_ext.lift import FlatParams
from lift_ext.text.backbone import (build_adapter, class_logits, classification_loss, initial_vector, load_encoder,
                                    sentence_features, tensor_task)
from lift_ext.text.methods import SuiteTask, bench_task
from lift_ext.text.tasks import KINDS, SPLITS, SUPPORT, TextTask, load_tasks


@dataclass
class TextSuite:
    """``flat`` (the adapter), ``splits`` {split: [SuiteTask]}, ``texts`` {split: [TextTask]}
    (the same order), ``feature_cpu_seconds`` (CPU seconds spent computing the cached features
    in this call; 0 when they were loaded from the cache)."""
    flat: FlatParams
    splits: Dict[str, List[SuiteTask]]
    texts: Dict[str, List[TextTask]]
    feature_cpu_seconds: float

    def bench(self, episode_batch: int) -> BenchSuite:
        """The harness's view: under seed s every method starts from ``initial_vector(flat, s)``
        (the support sets are fixed, so the seed draws LoRA A); FO-MAML episodes of
        ``episode_batch`` sentences. batched_grads is off: the loss trims each minibatch's
        padding, so minibatch shapes differ between tasks."""
        return BenchSuite(name="text", flat=self.flat, initial=lambda seed: initial_vector(self.flat, seed),
                          loss_fn=classification_loss, logits_fn=class_logits, head=head_mask(self.flat),
                          groups=KINDS,
                          splits={s: [bench_task(t, episode_batch) for t in ts] for s, ts in self.splits.items()},
                          batched_grads=False)


def load_suite(seed: int = 0, cache=None, batch_size: int = 16,
               limit: Optional[Dict[str, int]] = None) -> TextSuite:
    """The suite of ``seed``. Meta-training minibatches hold ``batch_size`` sentences. ``limit``
    {split: n} keeps the first n tasks of each kind in that split (a smaller run); the features are
    computed and cached for the kept tasks' sentences (a cache of their own: a limited run on a
    fresh machine computes a fraction of the full run's, and a full run never reads features
    computed in other batches)."""
    tasks = load_tasks(seed, cache)
    if limit is not None:
        unknown = sorted(set(limit) - set(SPLITS))
        if unknown:
            raise ValueError(f"limit names unknown splits {unknown}; use {SPLITS}")
        kept = []
        for split in SPLITS:
            for kind in KINDS:
                mine = [t for t in tasks if t.split == split and t.kind == kind]
                kept += mine[:limit.get(split, len(mine))]
        tasks = kept
    tokenizer, encoder = load_encoder()
    features = sentence_features([s for t in tasks for s in t.support + t.query], encoder, tokenizer, cache)
    flat = build_adapter(encoder)
    splits: Dict[str, List[SuiteTask]] = {s: [] for s in SPLITS}
    texts: Dict[str, List[TextTask]] = {s: [] for s in SPLITS}
    for t in tasks:
        support = tensor_task(features, t.support, t.support_labels, t.num_classes, SUPPORT)
        query = tensor_task(features, t.query, t.query_labels, t.num_classes, SUPPORT)
        pool = tensor_task(features, t.support + t.query, t.support_labels + t.query_labels, t.num_classes,
                           batch_size)
        splits[t.split].append(SuiteTask(t.name, KINDS.index(t.kind), support, query, pool))
        texts[t.split].append(t)
    return TextSuite(flat, splits, texts, features.cpu_seconds)


def kind_names(tasks: Sequence[SuiteTask]) -> List[str]:
    """The kind name of each task."""
    return [KINDS[t.kind] for t in tasks]


__all__ = ["TextSuite", "load_suite", "kind_names"]
