"""Batched task gradients: one batched forward/backward (the multi-adapter pass or vmap) for the
B tasks of a step equals B sequential ones, the fallbacks from one pass to the next and to
sequential calls, and SGLDGibbs / LiFT using them (the multi-adapter pass itself:
test_multi_adapter.py)."""
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from lift_ext.lift import ChainStart, LangevinConfig, LiFT, PaperHierarchy, SGLDGibbs, TensorTask
from lift_ext.lift.batched_grad import MULTI_ADAPTER, RTOL, VMAP, TaskGradients, stack_batches
from lift_ext.lift.flat import FlatParams

VOCAB, SEQ, B = 24, 10, 4


def lora_model():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=16, bos_token_id=None,
                        eos_token_id=None, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return get_peft_model(GPT2LMHeadModel(config), LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"],
                                                              fan_in_fan_out=True))


def next_token_loss(call, batch):
    (windows,) = batch
    logits = call(input_ids=windows[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), windows[:, 1:].reshape(-1))


@pytest.fixture(scope="module")
def setup():
    model = lora_model()
    flat = FlatParams(model)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randint(VOCAB, (3, SEQ + 1), generator=gen),) for _ in range(B)]
    thetas = flat.vector + 0.05 * torch.randn(B, flat.dim, generator=gen)
    return flat, batches, thetas


def sequential(flat, loss_fn, batches, thetas, scales):
    return torch.stack([flat.loss_and_grad(theta, lambda call, b=batch: loss_fn(call, b))[1] * scale
                        for theta, batch, scale in zip(thetas, batches, scales)])


@pytest.mark.parametrize("path", [MULTI_ADAPTER, VMAP])
def test_batched_gradients_equal_the_sequential_ones(setup, path):
    flat, batches, thetas = setup
    scales = [3.0, 1.0, 7.0, 2.0]
    grads = TaskGradients(flat, next_token_loss, lambda i: batches[i], scales, batched=True)
    grads.passes = [path]
    out = grads.many(list(range(B)), thetas)
    assert grads.batched is True and grads.passes == [path]
    want = sequential(flat, next_token_loss, batches, thetas, scales)
    assert float((out - want).abs().max()) <= RTOL * float(want.abs().max())
    assert torch.equal(grads(2, thetas[2]), want[2])
    assert torch.equal(grads.many([1, 3], thetas[[1, 3]]), out[[1, 3]])  # later calls: no re-check needed


def test_a_model_vmap_cannot_run_falls_back_with_one_warning(setup):
    flat, batches, thetas = setup

    def loss_with_item(call, batch):  # .item() is data-dependent control flow for vmap
        loss = next_token_loss(call, batch)
        return loss * (1.0 if loss.item() > 0 else 2.0)

    grads = TaskGradients(flat, loss_with_item, lambda i: batches[i], [1.0] * B, batched=True)
    grads.passes = [VMAP]  # the multi-adapter pass runs this loss
    with pytest.warns(RuntimeWarning, match=r"batched task gradients \(vmap\) are off"):
        out = grads.many(list(range(B)), thetas)
    assert grads.batched is False
    assert torch.equal(out, sequential(flat, loss_with_item, batches, thetas, [1.0] * B))
    grads.many([0, 1], thetas[:2])  # no second warning: the decision is kept


def test_batched_results_that_disagree_are_not_used(setup, monkeypatch):
    flat, batches, thetas = setup
    grads = TaskGradients(flat, next_token_loss, lambda i: batches[i], [1.0] * B, batched=True)
    monkeypatch.setattr(grads, "_vmapped", lambda th, b: torch.ones_like(th))
    monkeypatch.setattr(grads.multi_adapter, "gradients", lambda loss_fn, b, th: torch.ones_like(th))
    with pytest.warns(RuntimeWarning, match="differ from the sequential") as record:
        out = grads.many(list(range(B)), thetas)
    assert [str(w.message).split(")")[0] for w in record] == ["batched task gradients (multi-adapter",
                                                              "batched task gradients (vmap"]
    assert grads.batched is False and grads.passes == []
    assert torch.equal(out, sequential(flat, next_token_loss, batches, thetas, [1.0] * B))


def test_a_multi_adapter_pass_that_disagrees_hands_over_to_vmap(setup, monkeypatch):
    flat, batches, thetas = setup
    grads = TaskGradients(flat, next_token_loss, lambda i: batches[i], [1.0] * B, batched=True)
    monkeypatch.setattr(grads.multi_adapter, "gradients", lambda loss_fn, b, th: 2 * th)
    with pytest.warns(RuntimeWarning, match=r"\(multi-adapter\) are off .*; using vmap"):
        out = grads.many(list(range(B)), thetas)
    assert grads.batched is True and grads.passes == [VMAP]
    want = sequential(flat, next_token_loss, batches, thetas, [1.0] * B)
    assert float((out - want).abs().max()) <= RTOL * float(want.abs().max())


def test_minibatches_that_cannot_be_stacked_take_the_sequential_path(setup):
    flat, batches, thetas = setup
    ragged = [batches[0], (batches[1][0][:2],)]
    assert stack_batches(ragged) is None and stack_batches([(1,), (1,)]) is None
    grads = TaskGradients(flat, next_token_loss, lambda i: ragged[i], [1.0, 1.0], batched=True)
    out = grads.many([0, 1], thetas[:2])
    assert grads.batched is None  # not decided by a call that never tried
    assert torch.equal(out, sequential(flat, next_token_loss, ragged, thetas[:2], [1.0, 1.0]))


def test_a_real_error_of_the_loss_is_raised_not_hidden(setup):
    flat, batches, thetas = setup

    def broken(call, batch):
        raise KeyError("no such column")

    grads = TaskGradients(flat, broken, lambda i: batches[i], [1.0] * B, batched=True)
    with pytest.raises(KeyError, match="no such column"):
        grads.many(list(range(B)), thetas)


def test_sampler_calls_many_once_per_step_and_checks_its_result():
    calls = []

    class Grads:
        def __call__(self, task, theta):
            return theta - task

        def many(self, tasks, thetas):
            calls.append(list(tasks))
            return thetas - torch.tensor(tasks, dtype=thetas.dtype)[:, None]

    kw = dict(langevin=LangevinConfig(lr=1e-2, tasks_per_step=3),
              hierarchy=PaperHierarchy(sigma=1.0, beta=0.5, phi_update="langevin"), seed=2,
              start=ChainStart(thetas=torch.randn(6, 5)))
    batched, plain = SGLDGibbs(6, 5, Grads(), **kw), SGLDGibbs(6, 5, lambda i, th: th - i, **kw)
    for _ in range(4):
        assert batched.step() == plain.step()
    assert len(calls) == 4 and all(len(c) == 3 for c in calls)
    assert torch.equal(batched.thetas, plain.thetas) and torch.equal(batched.phi, plain.phi)
    bad = Grads()
    bad.many = lambda tasks, thetas: thetas[:1]
    sampler = SGLDGibbs(6, 5, bad, **kw)
    with pytest.raises(ValueError, match=r"grad_fn.many\(tasks, thetas\) must return a Tensor \[3, D\]"):
        sampler.step()
    assert sampler.step_count == 0 and torch.equal(sampler.thetas, kw["start"].thetas)


def test_lift_with_batched_gradients_follows_the_sequential_chain():
    gen = torch.Generator().manual_seed(3)
    tasks = [TensorTask(torch.randint(VOCAB, (5, SEQ + 1), generator=gen), batch_size=3, examples_per_row=SEQ)
             for _ in range(5)]
    kw = dict(langevin=LangevinConfig(lr=1e-2, tasks_per_step=3), hierarchy=PaperHierarchy(sigma=0.1, beta=0.05),
              seed=4)
    runs = []
    for flag in (True, False):
        lift = LiFT(lora_model(), tasks, next_token_loss, **kw)
        lift.batched_grads = flag
        runs.append(lift.run(4, progress=False))
    assert runs[0].batched_grads is True and runs[1].batched_grads is False
    assert torch.allclose(runs[0].thetas, runs[1].thetas, rtol=0, atol=1e-6 * float(runs[1].thetas.abs().max()))
    assert torch.allclose(runs[0].phi, runs[1].phi, rtol=0, atol=1e-6 * float(runs[1].phi.abs().max()))
    lift = LiFT(lora_model(), tasks, next_token_loss, langevin=LangevinConfig(lr=1e-3))
    assert lift.batched_grads is None and lift.grads.passes == [MULTI_ADAPTER]  # auto: no vmap on the CPU
    lift.batched_grads = False
    assert lift.batched_grads is False and lift.grads.passes == []
    with pytest.raises(ValueError, match="batched_grads must be True, False or None"):
        lift.batched_grads = 1
