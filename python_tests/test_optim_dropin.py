"""The drop-in path of `lift_ext.optim.SGLD` / `lift_ext.sgld_step` on the models people have:
mean losses (`num_data`), a prior centred on the initialisation, and pSGLD on weights whose
gradient is still 0 (lift_ext.preconditioner), on closed forms and on a peft LoRA model."""
import math
import warnings

import pytest
import torch

import lift_ext
from lift_ext.optim import SGLD
from lift_ext.preconditioner import HISTORY


def regression_data(num_data=100, seed=0):
    """1-D Bayesian linear regression y = theta x + N(0, 1) noise: data and the exact posterior
    (mean, sd) under the prior N(0, 1 / lam) with lam = 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_data, generator=g, dtype=torch.float64)
    y = 2.0 * x + torch.randn(num_data, generator=g, dtype=torch.float64)
    precision = 1.0 + float(x @ x)
    return x.float(), y.float(), float(x @ y) / precision, precision ** -0.5


def test_num_data_gives_the_summed_loss_posterior_from_a_mean_loss():
    """2,000 independent chains on the MEAN squared-error loss with num_data = N: their samples
    have the exact posterior's mean and sd (within 10 %); without num_data they do not."""
    x, y, mean, sd = regression_data()
    results = {}
    for num_data in (len(x), 1):
        theta = torch.nn.Parameter(torch.zeros(2000))
        opt = SGLD([theta], lr=0.05, temperature=1.0, prior_precision=1.0, num_data=num_data, seed=5)
        samples = []
        for step in range(400):
            opt.zero_grad()
            # every chain's own mean loss; summing over chains keeps each chain's gradient its own
            loss = (0.5 * (y[:, None] - x[:, None] * theta[None, :]) ** 2).mean(0).sum()
            loss.backward()
            opt.step()
            if step >= 200:
                samples.append(theta.detach().clone())
        drawn = torch.stack(samples)
        results[num_data] = (float(drawn.mean()), float(drawn.std()))
    got_mean, got_sd = results[len(x)]
    assert got_mean == pytest.approx(mean, rel=0.1) and got_sd == pytest.approx(sd, rel=0.1)
    assert results[1][1] > 3 * sd  # the mean loss read as a summed one: T N times too hot


def test_num_data_on_sgld_step_is_the_per_example_prior_and_temperature():
    g = torch.Generator().manual_seed(1)
    theta, grad = torch.randn(1001, generator=g), torch.randn(1001, generator=g)
    a, b = theta.clone(), theta.clone()
    lift_ext.sgld_step(a, grad, lr=1e-2, temperature=1.0, prior_precision=3.0, num_data=7, seed=4, offset=2)
    lift_ext.sgld_step(b, grad, lr=1e-2, temperature=1.0 / 7, prior_precision=3.0 / 7, seed=4, offset=2)
    assert torch.equal(a, b)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="num_data"):
            lift_ext.sgld_step(a, grad, lr=1e-2, num_data=bad, seed=0)
    with pytest.raises(ValueError, match="num_data"):
        SGLD([torch.nn.Parameter(theta.clone())], lr=1e-2, num_data=0)


def test_prior_mean_init_pulls_towards_the_initial_values():
    """temperature 0: SGD with weight decay toward the value the optimizer saw at construction."""
    start = torch.randn(50)
    theta = torch.nn.Parameter(start.clone())
    opt = SGLD([theta], lr=0.1, temperature=0.0, prior_precision=1.0, prior_mean="init")
    with torch.no_grad():
        theta.add_(1.0)
    theta.grad = torch.zeros(50)
    opt.step()
    torch.testing.assert_close(theta.detach(), start + 0.9)
    with pytest.raises(ValueError, match="prior_mean"):
        SGLD([torch.nn.Parameter(start.clone())], lr=0.1, prior_mean="zeros")


def _two_weights(size=4000):
    """w: a weight with a gradient every step; z: a weight the loss does not reach (gradient 0)."""
    torch.manual_seed(0)
    return torch.nn.Parameter(torch.randn(size)), torch.nn.Parameter(torch.randn(size))


def _noisy_loss(w, z, step):
    xi = torch.randn(w.shape, generator=torch.Generator().manual_seed(step))
    return (w * xi).sum() + 0.5 * (w ** 2).sum() + 0.0 * z.sum()


def test_a_zero_gradient_element_samples_its_prior():
    """pSGLD, prior N(init, 1/lam): z, whose gradient is always 0, has the prior's variance
    within 10 % (the kernel's own rule gives G = 1 / eps' = 1 / (lr lam): a pull of exactly 1 per
    step and twice the variance)."""
    w, z = _two_weights()
    start = z.detach().clone()
    lam = 4.0
    opt = SGLD([w, z], lr=0.02, temperature=1.0, prior_precision=lam, prior_mean="init",
               preconditioned=True, seed=11)
    deviations = []
    for step in range(600):
        opt.zero_grad()
        _noisy_loss(w, z, step).backward()
        opt.step()
        if step >= 300:
            deviations.append((z.detach() - start).clone())
    variance = float(torch.stack(deviations).var())
    assert variance == pytest.approx(1.0 / lam, rel=0.1)
    assert HISTORY in opt.state[z] and HISTORY not in opt.state[w]


def test_the_rule_keeps_a_zero_gradient_element_at_the_group_scale():
    """The square average of an element without history is the group's mean square average,
    and an element gaining history starts at its own g^2 (the kernel's fresh start)."""
    w = torch.nn.Parameter(torch.zeros(4))
    z = torch.nn.Parameter(torch.zeros(3))
    opt = SGLD([w, z], lr=1e-3, temperature=0.0, preconditioned=True, alpha=0.9)
    w.grad, z.grad = torch.tensor([1.0, 2.0, 0.0, 3.0]), torch.zeros(3)
    opt.step()
    reference = (1.0 + 4.0 + 9.0) / 3
    torch.testing.assert_close(opt.state[w]["square_avg"], torch.tensor([1.0, 4.0, reference, 9.0]))
    torch.testing.assert_close(opt.state[z]["square_avg"], torch.full((3,), reference))
    z.grad = torch.tensor([0.0, 5.0, 0.0])
    w.grad = torch.tensor([1.0, 2.0, 0.0, 3.0])
    opt.step()
    v = opt.state[z]["square_avg"]
    assert float(v[1]) == pytest.approx(25.0)  # started at g^2
    assert opt.state[z][HISTORY].tolist() == [False, True, False]


def test_state_dict_resume_keeps_the_history_masks():
    """n steps + state_dict round trip + n steps == 2n steps, bitwise, with masks in the state."""
    def run(w, z, opt, start, steps):
        for step in range(start, start + steps):
            opt.zero_grad()
            _noisy_loss(w, z, step).backward()
            opt.step()

    w, z = _two_weights(64)
    opt = SGLD([w, z], lr=0.05, prior_precision=1.0, prior_mean="init", preconditioned=True, seed=3)
    run(w, z, opt, 0, 6)
    w2, z2 = _two_weights(64)
    opt2 = SGLD([w2, z2], lr=0.05, prior_precision=1.0, prior_mean="init", preconditioned=True, seed=3)
    run(w2, z2, opt2, 0, 3)
    saved = {"w": w2.detach().clone(), "z": z2.detach().clone(), "opt": opt2.state_dict()}
    w3, z3 = _two_weights(64)
    with torch.no_grad():
        w3.copy_(saved["w"]), z3.copy_(saved["z"])
    opt3 = SGLD([w3, z3], lr=0.05, prior_precision=1.0, prior_mean="init", preconditioned=True, seed=0)
    opt3.load_state_dict(saved["opt"])
    assert opt3.state[z3][HISTORY].dtype == torch.bool
    run(w3, z3, opt3, 3, 3)
    assert torch.equal(w3, w) and torch.equal(z3, z)


def test_a_damaged_saved_mask_or_prior_mean_is_refused():
    w, z = _two_weights(8)
    opt = SGLD([w, z], lr=0.05, prior_precision=1.0, prior_mean="init", preconditioned=True, seed=3)
    opt.zero_grad()
    _noisy_loss(w, z, 0).backward()
    opt.step()
    state = opt.state_dict()
    state["state"][1]["prior_mean"] = torch.full((8,), float("nan"))
    with pytest.raises(ValueError, match="prior_mean"):
        opt.load_state_dict(state)
    state = opt.state_dict()
    del state["state"][0]["prior_mean"]
    with pytest.raises(ValueError, match="prior_mean='init'"):
        opt.load_state_dict(state)


def test_preconditioning_with_noise_and_no_prior_warns_once_at_the_callers_line():
    w, z = _two_weights(8)
    with pytest.warns(RuntimeWarning, match="no prior") as record:
        SGLD([w, z], lr=1e-3, preconditioned=True)
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SGLD([w, z], lr=1e-3, preconditioned=True, temperature=0.0)
        SGLD([w, z], lr=1e-3, preconditioned=True, prior_precision=1.0)


# ---- a peft LoRA model ----------------------------------------------------------------------

peft = pytest.importorskip("peft")


def lora_classifier(seed=0):
    """A small MLP classifier with peft LoRA (A random, B = 0) and its data."""
    torch.manual_seed(seed)
    backbone = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    model = peft.get_peft_model(backbone, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"]))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(256, 16, generator=g)
    y = (x[:, :4].argmax(1) + (x[:, 4] > 0).long()) % 4
    return model, x, y


def lora_tensors(model, kind):
    return [p for n, p in model.named_parameters() if f"lora_{kind}" in n]


def init_std(model):
    return float(torch.cat([a.detach().reshape(-1) for a in lora_tensors(model, "A")]).std())


def train(model, x, y, opt, steps):
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_lora_a_keeps_its_scale_under_the_guided_prior(temperature):
    """pSGLD with the prior the README recommends for LoRA (centred on the initialisation, its
    scale) and a mean loss with num_data: over 200 steps A stays at its initialisation's
    scale, and its deviation from it within the prior's."""
    model, x, y = lora_classifier()
    a_start = [a.detach().clone() for a in lora_tensors(model, "A")]
    scale = init_std(model)
    opt = SGLD([p for p in model.parameters() if p.requires_grad], lr=1e-3, temperature=temperature,
               prior_precision=scale ** -2, prior_mean="init", preconditioned=True, num_data=len(x), seed=0)
    train(model, x, y, opt, 200)
    deviation = torch.cat([(a - s).reshape(-1) for a, s in zip(lora_tensors(model, "A"), a_start)])
    after = torch.cat([a.detach().reshape(-1) for a in lora_tensors(model, "A")])
    assert 0.5 * scale < float(after.std()) < 1.5 * scale
    assert float(deviation.std()) < 1.2 * scale  # the prior sd is `scale`; the kernel rule: sqrt(2) scale


def test_lora_a_far_from_its_prior_is_not_reset_in_one_step():
    """Prior N(0, scale^2) while A sits at its random initialisation, temperature 0: one step
    moves A by a small fraction of the way (the kernel's rule alone set A to exactly 0)."""
    model, x, y = lora_classifier()
    a_start = torch.cat([a.detach().reshape(-1) for a in lora_tensors(model, "A")])
    opt = SGLD([p for p in model.parameters() if p.requires_grad], lr=1e-3, temperature=0.0,
               prior_precision=init_std(model) ** -2, preconditioned=True, num_data=len(x))
    train(model, x, y, opt, 1)
    after = torch.cat([a.detach().reshape(-1) for a in lora_tensors(model, "A")])
    assert float((after / a_start).min()) > 0.9


def test_lora_without_a_prior_does_not_blow_up_a():
    """The issue's case: defaults (no prior, temperature 1) on a mean loss. Noise still makes A
    random-walk (a warning says so), but at the group's scale, not at 1 / eps (|A| ~ 300)."""
    model, x, y = lora_classifier()
    before = float(torch.cat([a.detach().reshape(-1) for a in lora_tensors(model, "A")]).abs().mean())
    with pytest.warns(RuntimeWarning, match="no prior"):
        opt = SGLD([p for p in model.parameters() if p.requires_grad], lr=1e-3, preconditioned=True,
                   num_data=len(x), seed=0)
    train(model, x, y, opt, 1)
    after = float(torch.cat([a.detach().reshape(-1) for a in lora_tensors(model, "A")]).abs().mean())
    assert math.isfinite(after) and after < 2 * before


def test_an_interrupted_step_leaves_everything_as_it_was_and_the_chain_continues_exactly(monkeypatch):
    """A KeyboardInterrupt inside the kernel call of a step that applied the zero-gradient rule:
    parameters, square averages, history masks and the noise offset are as before it, and
    the interrupted chain then equals an uninterrupted one, bitwise."""
    def run(steps, interrupt_at=None):
        w, z = _two_weights(64)
        opt = SGLD([w, z], lr=0.05, prior_precision=1.0, prior_mean="init", preconditioned=True, seed=3)
        for step in range(steps):
            opt.zero_grad(set_to_none=False)
            _noisy_loss(w, z, step).backward()
            if step == interrupt_at:
                before = ([t.detach().clone() for t in (w, z)], opt.offset,
                          {k: (v["square_avg"].clone(), v.get(HISTORY)) for k, v in
                           ((id(p), opt.state[p]) for p in (w, z))})
                with monkeypatch.context() as patch:
                    def interrupted(*args, **kwargs):
                        raise KeyboardInterrupt
                    patch.setattr(lift_ext.ops, "sgld_step_table_", interrupted)
                    with pytest.raises(KeyboardInterrupt):
                        opt.step()
                assert all(torch.equal(a, b) for a, b in zip((w, z), before[0])) and opt.offset == before[1]
                for p in (w, z):
                    avg, mask = before[2][id(p)]
                    assert torch.equal(opt.state[p]["square_avg"], avg) and opt.state[p].get(HISTORY) is mask
            opt.step()
        return w, z

    interrupted = run(4, interrupt_at=2)
    straight = run(4)
    assert all(torch.equal(a, b) for a, b in zip(interrupted, straight))
