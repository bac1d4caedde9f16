"""The multi-adapter pass: B tasks' gradients from one forward/backward, each row through its own
task's adapter, equal to B separate passes (peft LoRA on GPT-2 and on the Shakespeare backbone,
a plain Linear adapter with a bias); what it refuses; a LiFT chain that uses it."""
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from lift_ext.lift import LangevinConfig, LiFT, PaperHierarchy, TensorTask
from lift_ext.lift.batched_grad import (
    CPU_ROWS_PER_TASK,
    MULTI_ADAPTER,
    RTOL,
    TaskGradients,
)
from lift_ext.lift.flat import FlatParams
from lift_ext.lift.multi_adapter import MultiAdapterPass, NotBatchable
from lift_ext.shakespeare.backbone import BackboneConfig, add_lora, build_model
from lift_ext.shakespeare.methods import window_loss

VOCAB = 13


def gpt2(**lora):
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=12, vocab_size=VOCAB, n_positions=16, bos_token_id=None,
                        eos_token_id=None, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    settings = {"r": 3, "lora_alpha": 5, "target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True}
    return get_peft_model(GPT2LMHeadModel(config), LoraConfig(**{**settings, **lora}))


def next_token_loss(call, batch):
    (windows,) = batch
    logits = call(input_ids=windows[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))


def separate(flat, loss_fn, batches, thetas):
    """The reference: one forward/backward per task through FlatParams' functional call."""
    return torch.stack([flat.loss_and_grad(theta, lambda call, b=batch: loss_fn(call, b))[1]
                        for theta, batch in zip(thetas, batches)])


def random_inputs(flat, tasks, rows, length, seed=1):
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.randint(VOCAB, (rows, length + 1), generator=gen),) for _ in range(tasks)]
    thetas = flat.vector + 0.1 * torch.randn(tasks, flat.dim, generator=gen)  # LoRA B != 0
    return batches, thetas


def assert_close(out, want):
    assert out.shape == want.shape and out.dtype == torch.float32
    assert float((out - want).abs().max()) <= RTOL * float(want.abs().max())


@pytest.mark.parametrize("tasks,rows,length", [(1, 2, 5), (3, 1, 7), (3, 2, 9), (4, 3, 4)])
def test_gradients_equal_separate_passes_on_a_peft_gpt2(tasks, rows, length):
    flat = FlatParams(gpt2())
    multi = MultiAdapterPass(flat)
    assert multi.unsupported is None and len(multi.layers) == 8  # 2 blocks x 2 targets x (A, B)
    batches, thetas = random_inputs(flat, tasks, rows, length)
    out = multi.gradients(next_token_loss, batches, thetas)
    want = separate(flat, next_token_loss, batches, thetas)
    assert_close(out, want)
    assert all(float(row.abs().max()) > 0 for row in want)
    assert multi.rows_per_task == rows * length  # every position of every window of a task
    assert all("forward" not in vars(module) for module in multi.layers)  # the layers are put back


def test_each_task_gets_its_own_adapter_row():
    flat = FlatParams(gpt2())
    multi = MultiAdapterPass(flat)
    batches, thetas = random_inputs(flat, 3, 2, 7)
    want = separate(flat, next_token_loss, batches, thetas)
    swapped = multi.gradients(next_token_loss, batches, thetas[[1, 0, 2]])
    assert not torch.allclose(swapped[0], want[0], atol=1e-3 * float(want.abs().max()))
    assert_close(swapped[2:], want[2:])
    moved = thetas.clone()
    moved[1] += 0.5
    out = multi.gradients(next_token_loss, batches, moved)
    assert not torch.allclose(out[1], want[1], atol=1e-3 * float(want.abs().max()))
    assert_close(out[[0, 2]], want[[0, 2]])  # another task's adapter does not reach these rows


def test_gradients_equal_separate_passes_on_the_shakespeare_backbone():
    config = BackboneConfig(n_layer=2, n_embd=16, n_head=2, n_positions=16, seq_len=11)
    model = add_lora(build_model(VOCAB, config), r=5, include_mlp=True)
    flat = FlatParams(model)
    multi = MultiAdapterPass(flat)
    assert multi.unsupported is None and len(multi.layers) == 16
    gen = torch.Generator().manual_seed(2)
    windows = [torch.randint(VOCAB, (2, config.seq_len + 1), generator=gen) for _ in range(3)]
    batches = [(w[:, :-1], w[:, 1:]) for w in windows]
    thetas = flat.vector + 0.1 * torch.randn(3, flat.dim, generator=gen)
    assert_close(multi.gradients(window_loss, batches, thetas), separate(flat, window_loss, batches, thetas))


class Head(torch.nn.Module):
    """A frozen feature layer and a Linear adapter (weight and, with `bias_trained`, bias)."""

    def __init__(self, bias_trained: bool):
        super().__init__()
        torch.manual_seed(3)
        self.features = torch.nn.Linear(5, 6).requires_grad_(False)
        self.head = torch.nn.Linear(6, 3)
        self.head.bias.requires_grad_(bias_trained)

    def forward(self, x):
        return self.head(torch.tanh(self.features(x)))


def regression_loss(call, batch):
    x, y = batch
    return ((call(x) - y) ** 2).mean()


@pytest.mark.parametrize("bias_trained", [True, False])
def test_a_linear_adapter_with_or_without_its_bias(bias_trained):
    flat = FlatParams(Head(bias_trained))
    gen = torch.Generator().manual_seed(4)
    batches = [(torch.randn(4, 2, 5, generator=gen), torch.randn(4, 2, 3, generator=gen)) for _ in range(3)]
    thetas = torch.randn(3, flat.dim, generator=gen)
    out = MultiAdapterPass(flat).gradients(regression_loss, batches, thetas)
    assert_close(out, separate(flat, regression_loss, batches, thetas))


@pytest.mark.parametrize("rows,batched,kept", [(CPU_ROWS_PER_TASK, None, True), (CPU_ROWS_PER_TASK + 1, None, False),
                                                (CPU_ROWS_PER_TASK + 1, True, True)])
def test_auto_on_the_cpu_keeps_the_pass_for_small_tasks_only(rows, batched, kept, recwarn):
    flat = FlatParams(Head(True))
    gen = torch.Generator().manual_seed(5)
    batches = [(torch.randn(rows, 5, generator=gen), torch.randn(rows, 3, generator=gen)) for _ in range(2)]
    thetas = torch.randn(2, flat.dim, generator=gen)
    grads = TaskGradients(flat, regression_loss, lambda i: batches[i], [1.0, 1.0], batched=batched)
    out = grads.many([0, 1], thetas)
    assert grads.multi_adapter.rows_per_task == rows
    assert (grads.passes[:1] == [MULTI_ADAPTER]) is kept and grads.batched is kept
    assert_close(out, separate(flat, regression_loss, batches, thetas))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]  # a choice, not a failure


@pytest.mark.parametrize("lora,why", [
    ({"target_modules": ["wte"], "fan_in_fan_out": False}, "only torch.nn.Linear adapter layers"),
    ({"modules_to_save": ["ln_f"]}, "of a LayerNorm"),
])
def test_adapters_outside_linear_layers_are_not_batched(lora, why):
    flat = FlatParams(gpt2(**lora))
    assert why in MultiAdapterPass(flat).unsupported
    grads = TaskGradients(flat, next_token_loss, lambda i: None, [1.0, 1.0])
    assert grads.passes == [] and grads.batched is False  # auto on the CPU: no vmap either
    grads.choose(True)
    assert grads.passes == ["vmap"]


def test_dropout_in_training_mode_is_refused_and_eval_mode_batched():
    model = gpt2(lora_dropout=0.2)
    flat = FlatParams(model)
    multi = MultiAdapterPass(flat)
    batches, thetas = random_inputs(flat, 2, 1, 5)
    model.train()
    with pytest.raises(NotBatchable, match="Dropout in training mode"):
        multi.gradients(next_token_loss, batches, thetas)
    model.eval()
    assert_close(multi.gradients(next_token_loss, batches, thetas), separate(flat, next_token_loss, batches, thetas))


def test_minibatches_of_unequal_shapes_take_the_sequential_path():
    flat = FlatParams(gpt2())
    batches, thetas = random_inputs(flat, 2, 2, 5)
    ragged = [batches[0], (batches[1][0][:1],)]
    assert MultiAdapterPass(flat).gradients(next_token_loss, ragged, thetas) is None
    grads = TaskGradients(flat, next_token_loss, lambda i: ragged[i], [2.0, 5.0])
    out = grads.many([0, 1], thetas)
    assert grads.batched is None and grads.passes == [MULTI_ADAPTER]  # not decided by a call that never tried
    assert torch.equal(out, separate(flat, next_token_loss, ragged, thetas) * torch.tensor([[2.0], [5.0]]))


def test_loss_functions_the_pass_cannot_replay():
    flat = FlatParams(gpt2())
    multi = MultiAdapterPass(flat)
    batches, thetas = random_inputs(flat, 2, 2, 5)

    def twice(call, batch):
        return next_token_loss(call, batch) + next_token_loss(call, batch)

    def model_loss(call, batch):  # the model's own loss: a mean over all B tasks' rows
        return call(input_ids=batch[0], labels=batch[0]).loss

    def no_model(call, batch):
        return batch[0].float().mean()

    for loss_fn, why in ((twice, "more than once"), (model_loss, "not one row per input row"),
                         (no_model, "without calling the model")):
        with pytest.raises(NotBatchable, match=why):
            multi.gradients(loss_fn, batches, thetas)
    assert all("forward" not in vars(module) for module in multi.layers)


def test_task_gradients_drop_the_pass_when_it_cannot_run():
    model = gpt2(lora_dropout=0.2).train()
    flat = FlatParams(model)
    batches, thetas = random_inputs(flat, 2, 1, 5)
    grads = TaskGradients(flat, next_token_loss, lambda i: batches[i], [1.0, 1.0])
    with pytest.warns(RuntimeWarning, match=r"\(multi-adapter\) are off .*Dropout.*; using one forward/backward"):
        out = grads.many([0, 1], thetas)
    assert grads.batched is False and grads.passes == [] and out.shape == thetas.shape


def test_a_lift_chain_with_the_pass_follows_the_sequential_chain():
    gen = torch.Generator().manual_seed(5)
    tasks = [TensorTask(torch.randint(VOCAB, (4, 8), generator=gen), batch_size=2, examples_per_row=7)
             for _ in range(6)]
    kw = {"langevin": LangevinConfig(lr=1e-2, tasks_per_step=3), "hierarchy": PaperHierarchy(sigma=0.1, beta=0.05),
              "seed": 6}
    auto = LiFT(gpt2(), tasks, next_token_loss, **kw).run(5, progress=False)
    plain = LiFT(gpt2(), tasks, next_token_loss, **kw)
    plain.batched_grads = False
    plain.run(5, progress=False)
    assert auto.batched_grads is True and auto.grads.passes == [MULTI_ADAPTER]
    for a, b in ((auto.thetas, plain.thetas), (auto.phi, plain.phi)):
        assert float((a - b).abs().max()) <= 1e-6 * float(b.abs().max())
