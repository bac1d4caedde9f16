"""The vision suite's tasks, splits, upstream set and ViT adapter (lift_ext.vision): fast checks
on small draws; nothing is pre-trained or cached."""
import hashlib

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("peft")
pytest.importorskip("sklearn")

from lift_ext.lift import LangevinConfig, LiFT, MapConfig, MixtureHierarchy, adapt  # noqa: E402
from lift_ext.vision import backbone as vb  # noqa: E402
from lift_ext.vision import methods as vm  # noqa: E402
from lift_ext.vision import tasks as vt  # noqa: E402

TINY = vb.BackboneConfig(embed_dim=16, depth=1, num_heads=4, patch_size=8, steps=0)


def _digests(images):
    return {hashlib.sha256(x.numpy().tobytes()).hexdigest() for x in images}


def test_suite_shape():
    assert len(vt.TASK_SPECS) >= 30
    assert len({s.name for s in vt.TASK_SPECS}) == len(vt.TASK_SPECS)
    for group in vt.GROUPS:
        assert sum(s.group == group for s in vt.TASK_SPECS) >= 10
    assert all(4 <= s.num_classes <= vt.MAX_CLASSES for s in vt.TASK_SPECS)
    assert vt.TASK_SIZE == 1_000 and vt.SUPPORT_POOL == 800


@pytest.mark.parametrize("name", ["digits-sklearn", "greek-stix-inverted", "scene-count-noisy",
                                  "texture-pattern-window"])
def test_tasks_are_deterministic(name):
    spec = next(s for s in vt.TASK_SPECS if s.name == name)
    x1, y1 = vt.generate(spec, 0, 40)
    x2, y2 = vt.generate(spec, 0, 40)
    x3, _ = vt.generate(spec, 1, 40)
    assert x1.shape == (40, 32, 32) and x1.dtype == torch.uint8 and y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert set(y1.tolist()) == set(range(spec.num_classes))


def test_full_task_sizes_and_support_query_disjoint():
    spec = next(s for s in vt.TASK_SPECS if s.name == "texture-frequency-clean")
    task = vt.VisionTask(spec, *vt.generate(spec, 0, vt.TASK_SIZE))
    (sx, sy), (qx, qy) = task.support_pool, task.query
    assert len(sx) == 800 and len(qx) == 200 and len(sy) + len(qy) == vt.TASK_SIZE
    assert torch.bincount(task.labels).tolist() == [250] * 4
    assert not _digests(sx) & _digests(qx)
    rows = vt.few_shot(task, 5, seed=3)
    assert len(rows) == 5 * spec.num_classes and int(rows.max()) < vt.SUPPORT_POOL
    assert torch.bincount(sy[rows]).tolist() == [5] * 4
    assert torch.equal(rows, vt.few_shot(task, 5, seed=3)) and not torch.equal(rows, vt.few_shot(task, 5, seed=4))
    with pytest.raises(ValueError, match="shots"):
        vt.few_shot(task, 0, seed=0)


def test_splits_disjoint_by_task_with_every_group():
    parts = vt.split()
    ids = [i for s in vt.SPLITS for i in parts[s]]
    assert sorted(ids) == list(range(len(vt.TASK_SPECS)))
    for s in vt.SPLITS:
        assert {vt.TASK_SPECS[i].group for i in parts[s]} == set(vt.GROUPS)
    assert parts == vt.split()


def test_upstream_is_disjoint_from_the_benchmark():
    bench_labels = {label for s in vt.TASK_SPECS for label in s.label_set}
    upstream_labels = {label for s in vt.UPSTREAM_SPECS for label in s.label_set}
    assert not bench_labels & upstream_labels
    assert not {f for s in vt.TASK_SPECS for f in s.fonts} & {f for s in vt.UPSTREAM_SPECS for f in s.fonts}
    assert all(s.kind != "digits" for s in vt.UPSTREAM_SPECS)
    up = _digests(vt.generate(vt.UPSTREAM_SPECS[0], 10_007, 30)[0])
    assert not up & _digests(vt.generate(vt.TASK_SPECS[4], 0, 30)[0])


def test_content_key_depends_on_seed_and_specs():
    key = vt.content_key(vt.TASK_SPECS, 0, 1_000)
    assert key == vt.content_key(vt.TASK_SPECS, 0, 1_000)
    assert key != vt.content_key(vt.TASK_SPECS, 1, 1_000) != vt.content_key(vt.TASK_SPECS[:-1], 0, 1_000)


def _tiny_adapter():
    torch.manual_seed(0)
    state = {k: v for k, v in vb.build_vit(TINY, 3).state_dict().items() if not k.startswith("head.")}
    return vb.adapter_model(state, TINY, rank=2)


def test_adapter_vector_holds_lora_and_head():
    model, flat = _tiny_adapter()
    head = [n for n in flat.names if "head" in n]
    assert len(head) == 2 and all("modules_to_save" in n for n in head)
    assert any("attn.qkv.lora_A" in n for n in flat.names) and any("attn.proj.lora_B" in n for n in flat.names)
    assert not any("patch_embed" in n for n in flat.names)
    assert flat.dim == sum(p.numel() for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="rank"):
        vb.adapter_model({}, TINY, rank=0)


def test_masked_loss_ignores_missing_classes():
    logits = torch.zeros(2, vt.MAX_CLASSES)
    logits[:, 7] = 100.0
    out = vb.masked_logits(logits, torch.tensor([4, 10]))
    assert out[0].argmax() < 4 and out[1].argmax() == 7


def test_tiny_lift_step_and_adapt_on_the_vit_adapter():
    _, flat = _tiny_adapter()
    specs = [s for s in vt.TASK_SPECS if s.group == "texture"][:2]
    data = [vt.VisionTask(s, *vt.generate(s, 0, 24)) for s in specs]
    tasks = [vm.labelled(t, torch.arange(24), batch_size=8) for t in data]
    lift = LiFT(flat, tasks, vb.loss_fn, langevin=LangevinConfig(lr=1e-3, temperature=0.01, preconditioned=True,
                                                                 tasks_per_step=2),
                hierarchy=MixtureHierarchy(components=2, sigma=0.1, beta=0.05, warmup_steps=1), seed=0).run(2, progress=False)
    assert torch.isfinite(lift.thetas).all()
    head = slice(flat.offsets[-2], flat.dim)
    assert not torch.equal(lift.thetas[0, head], lift.init_vector[head])
    result = adapt(flat, tasks[0], vb.loss_fn, prior=lift.meta_test_prior(), config=MapConfig(steps=2, eval_every=1))
    assert torch.isfinite(result.theta).all() and result.component in (0, 1)
    query = vt.VisionTask(specs[0], data[0].images.repeat(35, 1, 1)[:vt.SUPPORT_POOL + 40],
                          data[0].labels.repeat(35)[:vt.SUPPORT_POOL + 40])
    accuracy = vm.query_accuracy(flat, result.theta, query)
    assert 0.0 <= accuracy <= 100.0
    logits, labels = vm.logits_fn(flat.call(result.theta), vm.query_task(query).full())
    assert logits.shape == (40, specs[0].num_classes) and torch.equal(labels, query.query[1])
    assert 100.0 * float((logits.argmax(-1) == labels).float().mean()) == accuracy


def test_label_set_oracle_trains_on_exactly_the_siblings():
    from types import SimpleNamespace

    from lift_ext import baselines
    from lift_ext.vision import bench

    _, flat = _tiny_adapter()
    names = ["scene-shape-clean", "scene-count-noisy", "scene-shape-noisy", "scene-distance-clean"]
    specs = [next(s for s in vt.TASK_SPECS if s.name == n) for n in names]
    data = []
    for spec in specs:  # a pool of SUPPORT_POOL images: 24 drawn ones repeated
        x, y = vt.generate(spec, 0, 24)
        data.append(vt.VisionTask(spec, x.repeat(34, 1, 1)[:vt.SUPPORT_POOL], y.repeat(34)[:vt.SUPPORT_POOL]))
    settings = bench.Settings(pool_steps=3, pool_batch=8)
    init = flat.vector.detach().clone()
    suite = SimpleNamespace(settings=settings, tasks=data, split={"train": [0, 1, 2]}, flat=flat, init=init)
    start = bench.label_set_start(suite, specs[0].label_set, seed=0)
    siblings = baselines.train_multitask(flat, [vm.pool_task(data[i], 8) for i in (0, 2)], vb.loss_fn, init,
                                         steps=3, lr=settings.adapt_lr, seed=0)
    assert torch.equal(start, siblings) and not torch.equal(start, init)
    assert bench.label_set_start(suite, specs[3].label_set, seed=0) is init  # no meta-train task has its labels


def test_headroom_covers_the_ranked_split_and_meta_val_only_when_asked():
    from lift_ext.vision import bench

    assert bench.Settings().headroom_splits() == ("test",)
    assert bench.Settings(val_headroom=True).headroom_splits() == ("val", "test")
    assert bench.Settings(eval_split="val", val_headroom=True).headroom_splits() == ("val",)
    assert bench.Settings(eval_split="val").headroom_splits() == ("val",)
