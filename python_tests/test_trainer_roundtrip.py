"""Using LiFT's result: the meta-test prior, writing an adapter into the model, exporting it as
a standard peft adapter, symmetric save / load, the configs reaching the sampler, and errors
that name the user's own knobs. A 1-layer GPT-2 built locally (no downloads) with peft LoRA."""
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from lift_ext.lift import (ChainStart, FlatParams, LangevinConfig, LiFT, MapConfig, MixtureHierarchy, MixturePrior,
                           PaperHierarchy, TensorTask)

VOCAB, SEQ = 32, 12


def base_model():
    torch.manual_seed(0)  # the same backbone weights on every call; no dropout (deterministic)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=16,
                        bos_token_id=None, eos_token_id=None, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def lora_model(seed=1):
    model = base_model()
    torch.manual_seed(seed)  # LoRA A's random init
    return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True))


def next_token_loss(call, batch):
    (windows,) = batch
    logits = call(input_ids=windows[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), windows[:, 1:].reshape(-1))


def make_tasks(num=4, rows=6, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return [TensorTask(torch.randint(VOCAB, (rows, SEQ + 1), generator=gen), batch_size=4,
                       examples_per_row=SEQ) for _ in range(num)]


HIERARCHY = PaperHierarchy(sigma=0.1, beta=0.05, burn_in=3, thin=2, gmm_components=1)
KW = dict(langevin=LangevinConfig(lr=1e-2), hierarchy=HIERARCHY, seed=5)


def logits_of(model_or_call, windows):
    with torch.no_grad():
        return model_or_call(input_ids=windows).logits


@pytest.fixture(scope="module")
def trained():
    tasks = make_tasks()
    lift = LiFT(lora_model(), tasks, next_token_loss, **KW).run(3 + 4 * 2, progress=False)  # warm-up: 4 samples
    return lift, tasks


def test_apply_writes_the_adapter_into_the_model(trained):
    lift, tasks = trained
    windows = tasks[0].full()[0][:, :-1]
    prior = lift.meta_test_prior()
    assert isinstance(prior, MixturePrior) and prior.beta == HIERARCHY.beta and prior.n_components == 1
    torch.testing.assert_close(prior.means[0], lift.gmm.means[0])
    assert lift.apply() is lift.model
    assert torch.equal(lift.flat.vector, prior.means[0])
    lora = [p for n, p in lift.model.named_parameters() if "lora_" in n]
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in lora]), prior.means[0])
    support = TensorTask(tasks[1].full()[0][:3], batch_size=3, examples_per_row=SEQ)
    adapted = lift.adapt(support, config=MapConfig(steps=20, lr=1e-2))
    assert not torch.equal(adapted.theta, prior.means[0])
    lift.apply(adapted)
    torch.testing.assert_close(logits_of(lift.model, windows), logits_of(lift.flat.call(adapted.theta), windows))
    before = lift.flat.vector.clone()
    with pytest.raises(ValueError, match="theta"):
        lift.apply(torch.zeros(lift.flat.dim + 1))
    with pytest.raises(ValueError, match="theta"):
        lift.apply(torch.full((lift.flat.dim,), float("nan")))
    with pytest.raises(TypeError, match="theta"):
        lift.apply([0.0] * lift.flat.dim)
    assert torch.equal(lift.flat.vector, before)


def test_export_peft_is_loadable_by_plain_peft(trained, tmp_path):
    lift, tasks = trained
    windows = tasks[0].full()[0][:, :-1]
    theta = lift.meta_test_prior().means[0] + 0.05 * torch.randn(lift.flat.dim, generator=torch.Generator().manual_seed(0))
    before = lift.flat.vector.clone()
    lift.export_peft(str(tmp_path / "adapter"), theta)
    assert torch.equal(lift.flat.vector, before), "export leaves the model's adapter as it was"
    loaded = PeftModel.from_pretrained(base_model(), str(tmp_path / "adapter"))
    torch.testing.assert_close(logits_of(loaded, windows), logits_of(lift.flat.call(theta), windows))
    assert not torch.allclose(logits_of(loaded, windows), logits_of(lift.flat.call(before), windows))
    lift.export_peft(str(tmp_path / "prior_mean"))
    loaded = PeftModel.from_pretrained(base_model(), str(tmp_path / "prior_mean"))
    mean = lift.meta_test_prior().means[0]
    torch.testing.assert_close(logits_of(loaded, windows), logits_of(lift.flat.call(mean), windows))


def test_export_peft_needs_a_peft_model():
    model = torch.nn.Sequential(torch.nn.Linear(3, 1))
    task = TensorTask(torch.randn(5, 3), torch.randn(5))
    lift = LiFT(model, [task], lambda call, b: ((call(b[0]).squeeze(-1) - b[1]) ** 2).mean(),
                langevin=LangevinConfig(lr=1e-3), hierarchy=PaperHierarchy(beta=1.0))
    with pytest.raises(TypeError, match="peft model"):
        lift.export_peft("unused", torch.zeros(lift.flat.dim))


def test_save_and_load_are_symmetric(trained, tmp_path):
    lift, tasks = trained
    path = str(tmp_path / "lift.pt")
    straight = LiFT(lora_model(), tasks, next_token_loss, **KW).run(8, progress=False)
    first = LiFT(lora_model(), tasks, next_token_loss, **KW).run(5, progress=False)
    first.save(path)
    resumed = LiFT.load(path, lora_model(seed=9), tasks, next_token_loss)
    hierarchy = resumed.sampler.hierarchy
    assert hierarchy.burn_in == HIERARCHY.burn_in and hierarchy.thin == HIERARCHY.thin
    resumed.run(3, progress=False)
    assert torch.equal(resumed.phi, straight.phi) and torch.equal(resumed.thetas, straight.thetas)
    with pytest.raises(ValueError, match="adapter of dim"):
        small = get_peft_model(base_model(), LoraConfig(r=1, target_modules=["c_attn"], fan_in_fan_out=True))
        LiFT.load(path, small, tasks, next_token_loss)


def test_meta_test_prior_errors_name_burn_in_thin_and_steps():
    tasks = make_tasks(num=2)
    lift = LiFT(lora_model(), tasks, next_token_loss, **KW)  # burn_in 3, thin 2, warm-up 4 samples
    lift.run(2, progress=False)
    with pytest.raises(RuntimeError, match=r"no meta-test prior yet.*thin=2 steps after burn_in=3") as info:
        lift.meta_test_prior()
    assert "run at least 9 more steps" in str(info.value)
    assert "update()" not in str(info.value)
    lift.run(4, progress=False)  # 6 steps: 1 sample
    with pytest.raises(RuntimeError, match="6 steps have given 1: run at least 5 more steps"):
        lift.apply()
    lift.run(4, progress=False)
    with pytest.raises(RuntimeError, match="run at least 1 more steps"):
        lift.adapt(tasks[0])
    lift.run(1, progress=False)
    assert lift.meta_test_prior().n_components == 1


def test_meta_test_prior_comes_from_the_sampler_when_it_builds_one(trained):
    lift, _ = trained
    own = MixturePrior(torch.zeros(2, lift.flat.dim), torch.zeros(2, lift.flat.dim),
                       torch.tensor([0.25, 0.75], dtype=torch.float64), 0.2)
    lift.sampler.meta_test_prior = lambda: own
    try:
        assert lift.meta_test_prior() is own
    finally:
        del lift.sampler.meta_test_prior


def test_configs_reach_the_sampler_and_unknown_options_are_refused():
    """The configs reach the chain in the sampler's units: a preconditioned LangevinConfig as
    given, a plain one with lr / n_ref (n_ref the mean task size); the hierarchy as given.
    A keyword LiFT does not have is a TypeError, a bad start a ValueError, neither touching the model."""
    tasks = make_tasks(num=2)
    preconditioned = LangevinConfig(lr=1e-2, preconditioned=True, alpha=0.9, eps=1e-6)
    lift = LiFT(lora_model(), tasks, next_token_loss, **{**KW, "langevin": preconditioned})
    assert lift.sampler.langevin == preconditioned and lift.sampler.hierarchy == HIERARCHY
    assert lift.sampler.langevin.alpha == 0.9 and lift.sampler.langevin.eps == 1e-6
    plain = LiFT(lora_model(), tasks, next_token_loss, **KW)
    n_ref = tasks[0].num_examples
    assert n_ref == 6 * SEQ and plain.sampler.langevin.lr == pytest.approx(1e-2 / n_ref)
    assert plain.sampler.hierarchy == HIERARCHY and plain.langevin == KW["langevin"]
    model = lora_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(TypeError, match="no_such_option"):
        LiFT(model, tasks, next_token_loss, no_such_option=1, **KW)
    with pytest.raises(TypeError, match="device"):
        LiFT(model, tasks, next_token_loss, device="cpu", **KW)
    with pytest.raises(TypeError, match="alpha"):
        LiFT(model, tasks, next_token_loss, alpha=0.9, **KW)  # a LangevinConfig field, not LiFT's
    with pytest.raises(ValueError, match="prior_mean"):
        LiFT(model, tasks, next_token_loss, start=ChainStart(prior_mean="zeros"), **KW)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in before.items())


def test_a_model_without_peft_or_select_warns_that_everything_is_packed():
    with pytest.warns(RuntimeWarning, match=r"packs every trainable parameter of the GPT2LMHeadModel") as record:
        LiFT(base_model(), make_tasks(), next_token_loss, **KW)
    packing = [w for w in record if "packs every" in str(w.message)]
    assert packing[0].filename == __file__  # attributed to the caller's line
    model = base_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        LiFT(lora_model(), make_tasks(), next_token_loss, **KW)
        LiFT(FlatParams(model, select=["transformer.ln_f.weight"]), make_tasks(), next_token_loss, **KW)


def test_the_mixture_prior_before_any_step_is_refused():
    lift = LiFT(lora_model(), make_tasks(), next_token_loss, langevin=LangevinConfig(lr=1e-2),
                hierarchy=MixtureHierarchy(components=2, sigma=0.1, beta=0.05), seed=5)
    with pytest.raises(RuntimeError, match=r"needs run\(steps\) first: at least 1 steps"):
        lift.meta_test_prior()
    lift.run(1, progress=False)
    assert lift.meta_test_prior().n_components == 2
