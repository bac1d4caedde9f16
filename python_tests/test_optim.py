"""lift_ext.optim.SGLD: the fused step as a torch.optim.Optimizer."""
import copy

import pytest
import torch

import lift_ext
from lift_ext import reference
from lift_ext.optim import SGLD


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))


def loss_fn(model, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 7, generator=g)
    return (model(x) ** 2).mean()


def test_temperature_zero_matches_torch_sgd_with_weight_decay():
    a, b = make_model(), make_model()
    opt_a = SGLD(a.parameters(), lr=0.05, temperature=0.0, prior_precision=0.1, seed=0)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.05, weight_decay=0.1)
    for step in range(5):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            loss_fn(model, step).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


def test_step_matches_reference_with_noise():
    model = make_model()
    opt = SGLD(model.parameters(), lr=1e-3, temperature=1.0, prior_precision=2.0, seed=17)
    loss_fn(model, 0).backward()
    params = list(model.parameters())
    flat_before = torch.cat([p.detach().reshape(-1) for p in params])
    flat_grad = torch.cat([p.grad.reshape(-1) for p in params])
    noise = lift_ext.philox_normal(flat_before.numel(), seed=17, offset=0)
    expected, _, _ = reference.sgld_step(flat_before, flat_grad, noise, lr=1e-3, prior_precision=2.0)
    opt.step()
    after = torch.cat([p.detach().reshape(-1) for p in params])
    torch.testing.assert_close(after.double(), expected, rtol=1e-5, atol=1e-6)


def test_preconditioned_state_and_lr_scheduler():
    model = make_model()
    opt = SGLD(model.parameters(), lr=1e-2, preconditioned=True, seed=3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for step in range(3):
        opt.zero_grad()
        loss_fn(model, step).backward()
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**3)
    for p in model.parameters():
        assert opt.state[p]["square_avg"].shape == p.shape
        assert (opt.state[p]["square_avg"] > 0).all()


def test_state_dict_resume_is_exact():
    """n steps + save + load + n steps == 2n steps, bitwise (noise stream included)."""
    def run(model, opt, steps, start):
        for step in range(start, start + steps):
            opt.zero_grad()
            loss_fn(model, step).backward()
            opt.step()

    full = make_model()
    opt_full = SGLD(full.parameters(), lr=1e-3, preconditioned=True, seed=99)
    run(full, opt_full, 6, 0)

    part = make_model()
    opt_part = SGLD(part.parameters(), lr=1e-3, preconditioned=True, seed=99)
    run(part, opt_part, 3, 0)
    saved_model, saved_opt = part.state_dict(), opt_part.state_dict()
    resumed = make_model(seed=1)
    resumed.load_state_dict(saved_model)
    opt_resumed = SGLD(resumed.parameters(), lr=1e-3, preconditioned=True, seed=0)
    opt_resumed.load_state_dict(saved_opt)
    run(resumed, opt_resumed, 3, 3)
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_load_foreign_state_dict_is_refused():
    model = make_model()
    opt = SGLD(model.parameters(), lr=1e-3, seed=0)
    foreign = torch.optim.SGD(model.parameters(), lr=1e-3).state_dict()
    with pytest.raises(ValueError, match="rng"):
        opt.load_state_dict(foreign)


@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=-1.0), "lr"), (dict(lr=1e-3, temperature=-1.0), "temperature"),
    (dict(lr=1e-3, alpha=1.0), "alpha"), (dict(lr=1e-3, eps=0.0), "eps"),
    (dict(lr=1e-3, prior_precision=-2.0), "prior_precision"), (dict(lr="0.1"), "lr must be a finite number"),
    (dict(lr=float("nan")), "lr"), (dict(lr=1e-3, preconditioned=1), "preconditioned must be a bool"),
])
def test_bad_hyper_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SGLD(make_model().parameters(), **kwargs)


def test_seed_none_follows_torch_manual_seed():
    params = list(make_model().parameters())
    seeds = []
    for global_seed in (4, 4, 5):
        torch.manual_seed(global_seed)
        seeds.append(SGLD(params, lr=1e-3).seed)
    assert seeds[0] == seeds[1] != seeds[2]


def _two_groups(preconditioned=True):
    model = make_model()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    opt = SGLD([{"params": first}, {"params": second}], lr=1e-3, preconditioned=preconditioned, seed=5)
    loss_fn(model, 0).backward()
    return model, opt


def _replace_second(opt, value, grad):
    """Put a parameter holding `value` (grad `grad`) first in the second group."""
    param = torch.nn.Parameter(value)
    param.grad_dtype = None
    param.grad = grad
    opt.param_groups[1]["params"][0] = param


def _snapshot(model, opt):
    return [p.detach().clone() for p in model.parameters()], opt.offset, len(opt.state)


@pytest.mark.parametrize("spoil,error,message", [
    (lambda opt: opt.param_groups[1].update(lr=-1.0), ValueError, r"param_groups\[1\]: lr must be"),
    (lambda opt: opt.param_groups[1].update(alpha="0.9"), ValueError, r"param_groups\[1\]: alpha must be"),
    (lambda opt: _replace_second(opt, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)),
     RuntimeError, r"params\[0\] must be float32"),
    (lambda opt: _replace_second(opt, torch.zeros(7, 3).t(), torch.zeros(3, 7)), RuntimeError,
     r"params\[0\] must be contiguous"),
    (lambda opt: _replace_second(opt, torch.zeros(3), torch.zeros(3, dtype=torch.float64)), RuntimeError,
     r"grads\[0\] must be float32, bfloat16 or float16"),
])
def test_step_checks_every_group_before_stepping_any(spoil, error, message):
    """A bad second group is refused before the first is stepped: parameters, state and the
    noise offset stay as they were."""
    model, opt = _two_groups()
    before = _snapshot(model, opt)
    spoil(opt)
    with pytest.raises(error, match=message):
        opt.step()
    after = _snapshot(model, opt)
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0])) and before[1:] == after[1:]


def _spoiled_state_dicts(saved):
    def edit(fn):
        sd = copy.deepcopy(saved)
        fn(sd)
        return sd
    return [
        (edit(lambda sd: sd["rng"].update(seed=3.0)), "seed must be an int"),
        (edit(lambda sd: sd["rng"].update(seed=True)), "seed must be an int"),
        (edit(lambda sd: sd["rng"].update(offset=-1)), "offset must be an int"),
        (edit(lambda sd: sd["param_groups"][1].update(lr=float("inf"))), r"param_groups\[1\]: lr must be"),
        (edit(lambda sd: sd["param_groups"][0].pop("eps")), r"param_groups\[0\]: the parameter group has no \['eps'\]"),
        (edit(lambda sd: sd["state"][0].update(square_avg=torch.zeros(3))), "square_avg'\\] must be a finite Tensor"),
        (edit(lambda sd: sd["state"][1]["square_avg"].fill_(float("nan"))), "square_avg'\\] must be a finite Tensor"),
        (edit(lambda sd: sd["param_groups"].pop()), "do not match"),
    ]


def test_load_state_dict_checks_everything_before_replacing_anything():
    model, opt = _two_groups()
    opt.step()
    saved = opt.state_dict()
    target_model, target = _two_groups()
    target.param_groups[0]["lr"] = 0.5
    target.step()
    expected = copy.deepcopy(target.state_dict())
    for spoiled, message in _spoiled_state_dicts(saved):
        with pytest.raises(ValueError, match=message):
            target.load_state_dict(spoiled)
        now = target.state_dict()
        assert now["rng"] == expected["rng"] and now["param_groups"] == expected["param_groups"], message
        assert all(torch.equal(now["state"][k]["square_avg"], v["square_avg"]) for k, v in expected["state"].items())
    target.load_state_dict(saved)  # the unspoiled one loads
    assert target.state_dict()["rng"] == saved["rng"]


@pytest.mark.parametrize("seed", [3.0, 2.5, True, -1, 2**63])
def test_seed_must_be_an_int_in_range(seed):
    with pytest.raises(ValueError, match="seed must be an int"):
        SGLD(make_model().parameters(), lr=1e-3, seed=seed)


def _zero(set_to_none):
    def event(model, mirror, opt):
        opt.zero_grad(set_to_none=set_to_none)
        mirror.zero_grad(set_to_none=set_to_none)
    return event


def _model_to(model, mirror, opt):
    _zero(False)(model, mirror, opt)
    for m in (model, mirror):  # every parameter (and grad) gets new memory, same values
        m.to(torch.float64).to(torch.float32)


def _data_replaced(model, mirror, opt):
    _zero(False)(model, mirror, opt)
    first = next(model.parameters())
    first.data = first.data.clone()


def _grad_assigned(model, mirror, opt):
    _zero(False)(model, mirror, opt)
    for m in (model, mirror):
        last = list(m.parameters())[-1]
        last.grad = torch.zeros_like(last)  # a new tensor; backward accumulates into it


def _grad_vanishes(model, mirror, opt):
    _zero(False)(model, mirror, opt)
    for m in (model, mirror):
        m[0].bias.grad = None
        m[0].bias.requires_grad_(False)  # no grad from now on: not stepped


def _state_loaded(model, mirror, opt):
    _zero(False)(model, mirror, opt)
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # new square-average tensors


@pytest.mark.parametrize("preconditioned", [False, True])
@pytest.mark.parametrize("event", [_zero(True), _zero(False), _model_to, _data_replaced, _grad_assigned,
                                   _grad_vanishes, _state_loaded],
                         ids=["set_to_none", "zero_in_place", "model_to", "data_replaced", "grad_assigned",
                              "grad_vanishes", "state_loaded"])
def test_steps_follow_replaced_tensors(preconditioned, event):
    """The optimizer's cached tables follow every replacement: its parameters (and square
    averages) stay bitwise equal to list calls of lift_ext.sgld_step on a twin model."""
    model = make_model()
    mirror = copy.deepcopy(model)
    kw = dict(lr=1e-2, prior_precision=0.5, eps=1e-2)
    opt = SGLD(model.parameters(), preconditioned=preconditioned, seed=11, **kw)
    avgs = {}
    for step in range(4):
        for m in (model, mirror):
            loss_fn(m, step).backward()
        opt.step()
        stepped = [(i, p) for i, p in enumerate(mirror.parameters()) if p.grad is not None]
        square = [avgs.setdefault(i, torch.zeros_like(p)) for i, p in stepped] if preconditioned else None
        with torch.no_grad():  # leaves that require grad: stepped outside autograd, as opt.step does
            lift_ext.sgld_step([p for _, p in stepped], [p.grad for _, p in stepped], square_avg=square,
                               seed=11, offset=step, **kw)
        for a, b in zip(model.parameters(), mirror.parameters()):
            assert torch.equal(a, b), step
        if preconditioned:
            for i, p in enumerate(model.parameters()):
                if i in avgs:
                    assert torch.equal(opt.state[p]["square_avg"], avgs[i]), step
        event(model, mirror, opt)


def test_a_current_table_is_kept():
    model = make_model()
    opt = SGLD(model.parameters(), lr=1e-3, seed=0)
    tables = []
    for step in range(3):
        opt.zero_grad(set_to_none=False)
        loss_fn(model, step).backward()
        opt.step()
        tables.append(opt._tables[0])
    assert tables[0] is tables[1] is tables[2]
    opt.zero_grad()  # set_to_none: the table (and the old grads it holds) is dropped
    assert not opt._tables


def test_copies_continue_the_noise_stream():
    """A deep copy (pickling goes the same way) keeps the seed and offset and builds its own
    tables over its own parameters."""
    model = make_model()
    opt = SGLD(model.parameters(), lr=1e-3, preconditioned=True, seed=21)
    loss_fn(model, 0).backward()
    opt.step()
    twin = copy.deepcopy(opt)  # parameters and state copied together (not the grads)
    assert (twin.seed, twin.offset) == (opt.seed, opt.offset)
    mine, theirs = opt.param_groups[0]["params"], twin.param_groups[0]["params"]
    for a, b in zip(mine, theirs):
        b.grad = a.grad.clone()
    opt.step()
    twin.step()
    assert all(a is not b and torch.equal(a, b) for a, b in zip(mine, theirs))


def test_preconditioned_first_step_keeps_a_lora_model_at_the_prior_scale():
    """LoRA A's gradient is 0 while B = 0, so its RMSprop average stays 0 and G = 1/eps': the
    damping eps' = max(eps, lr * prior_precision) bounds that noise by the prior's scale
    (without it: std sqrt(2 lr T / eps) = 141 at lr 1e-4)."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=32, n_positions=16,
                                     bos_token_id=None, eos_token_id=None)
    model = peft.get_peft_model(transformers.GPT2LMHeadModel(config),
                                peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True))
    lora_a = [p for n, p in model.named_parameters() if "lora_A" in n]
    before = max(float(p.abs().max()) for p in lora_a)
    prior_precision = 1e2  # prior std 0.1
    opt = lift_ext.optim.SGLD([p for p in model.parameters() if p.requires_grad], lr=1e-4, temperature=1.0,
                              prior_precision=prior_precision, preconditioned=True, seed=0)
    ids = torch.randint(32, (4, 9))
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(float(p.grad.abs().max()) == 0.0 for p in lora_a)
    opt.step()
    after = max(float(p.abs().max()) for p in lora_a)
    assert after < before + 6 * (2.0 / prior_precision) ** 0.5  # |xi| <= 5.89


def test_an_exhausted_noise_offset_is_refused_before_any_group_steps():
    """Group-steps use offsets offset, offset + 1, ...: past 2^63 - 1 they cannot be passed to the
    op, so the step is refused with parameters and offset untouched."""
    model, opt = _two_groups()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.offset = 2**63 - 1  # two groups need two offsets
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="noise offset .* cannot advance"):
        opt.step()
    assert opt.offset == 2**63 - 1
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


@pytest.mark.parametrize("preconditioned", [False, True])
def test_grad_scaler_skips_a_step_with_inf_gradients(preconditioned):
    """torch.amp.GradScaler with optim.SGLD: a step whose (unscaled) gradients hold Inf is
    skipped, leaving the parameters, the square averages and the noise offset as they were;
    finite gradients step normally, unscaled (NaN / Inf propagate through a step taken without
    the scaler, as in torch.optim: docs/design.md section 2)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = SGLD(model.parameters(), lr=1e-3, preconditioned=preconditioned, seed=5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(8, 4)

    def scaled_step(poison: bool):
        opt.zero_grad()
        scaler.scale(model(x).pow(2).mean()).backward()
        if poison:
            model.weight.grad[0, 1] = float("inf")
        scaler.step(opt)
        scaler.update()

    scaled_step(poison=False)
    before = copy.deepcopy(opt.state_dict())
    params = [p.detach().clone() for p in model.parameters()]
    scaled_step(poison=True)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    after = opt.state_dict()
    assert after["rng"] == before["rng"]
    for key, state in before["state"].items():
        for name, value in state.items():
            assert torch.equal(after["state"][key][name], value), name
    assert scaler.get_scale() == 512.0  # the scaler backed off
    scaled_step(poison=False)
    assert after["rng"]["offset"] + 1 == opt.state_dict()["rng"]["offset"]
    assert all(bool(torch.isfinite(p).all()) and not torch.equal(p, q) for p, q in zip(model.parameters(), params))
