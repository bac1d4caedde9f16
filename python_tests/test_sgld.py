"""The fused SGLD step against lift_ext.reference, and its contract."""
import warnings

import pytest
import torch

import lift_ext
from lift_ext import ops, reference

from conftest import DEVICES, requires_cuda

SIZES = [0, 1, 3, 4097, 1 << 20]
LIST_SIZES = [3, 0, 4097, 1, 64, 5, 1000]


def make_state(n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = lambda: torch.randn(n, generator=g).to(device)  # noqa: E731
    return dict(param=t(), grad=t(), prior=t(), accum=t(), square=torch.rand(n, generator=g).to(device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("preconditioned", [False, True])
def test_flat_matches_reference(device, numel, preconditioned):
    s = make_state(numel, device)
    ref_theta, ref_accum, ref_sq = reference.sgld_step(
        s["param"].cpu(), s["grad"].cpu(), reference_noise(numel, 5, 9), lr=1e-3, temperature=0.7,
        prior_mean=s["prior"].cpu(), prior_precision=3.0, accum=s["accum"].cpu(),
        square_avg=s["square"].cpu() if preconditioned else None, alpha=0.9, eps=1e-6)
    lift_ext.sgld_step(s["param"], s["grad"], lr=1e-3, temperature=0.7, prior_mean=s["prior"],
                       prior_precision=3.0, accum=s["accum"],
                       square_avg=s["square"] if preconditioned else None, alpha=0.9, eps=1e-6,
                       seed=5, offset=9)
    torch.testing.assert_close(s["param"].cpu().double(), ref_theta, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s["accum"].cpu().double(), ref_accum, rtol=1e-5, atol=1e-6)
    if preconditioned:
        torch.testing.assert_close(s["square"].cpu().double(), ref_sq, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_rmsprop_start_at_zero_average_matches_reference(device):
    """Random v and g with exact zeros in both: where v == 0 the average starts at g^2
    (exactly, in float32); elsewhere alpha v + (1 - alpha) g^2. Kernel against reference."""
    n = 4099
    s = make_state(n, device, seed=8)
    gen = torch.Generator().manual_seed(8)
    s["square"][torch.rand(n, generator=gen) < 0.3] = 0.0
    s["grad"][torch.rand(n, generator=gen) < 0.25] = 0.0
    v_was_zero = s["square"] == 0
    grad = s["grad"].clone()
    ref_theta, _, ref_sq = reference.sgld_step(
        s["param"].cpu(), grad.cpu(), reference_noise(n, 2, 3), lr=1e-3, temperature=0.5,
        prior_mean=s["prior"].cpu(), prior_precision=1.0, square_avg=s["square"].cpu(), alpha=0.9, eps=1e-3)
    lift_ext.sgld_step(s["param"], grad, lr=1e-3, temperature=0.5, prior_mean=s["prior"], prior_precision=1.0,
                       square_avg=s["square"], alpha=0.9, eps=1e-3, seed=2, offset=3)
    assert v_was_zero.any() and (v_was_zero & (grad == 0)).any() and (v_was_zero & (grad != 0)).any()
    assert torch.equal(s["square"][v_was_zero], (grad * grad)[v_was_zero])
    torch.testing.assert_close(s["square"].cpu().double(), ref_sq, rtol=1e-6, atol=0)
    torch.testing.assert_close(s["param"].cpu().double(), ref_theta, rtol=1e-5, atol=1e-6)


def _late_gradient_steps(step_fn, lr):
    """Steps of weight 0 whose gradient is 0 for 3 steps, then 0.02; weight 1 sees 0.02 from
    the start. Returns (first step of weight 0 after its gradient appears, weight 1's first)."""
    history = []
    for step in range(5):
        grad = torch.tensor([0.0 if step < 3 else 0.02, 0.02])
        history.append(step_fn(grad).clone())
    return (history[3][0] - history[2][0]).item(), (history[0][1] - 1.0).item()


@pytest.mark.parametrize("device", DEVICES)
def test_weight_with_late_first_gradient_steps_about_lr(device):
    """pSGLD at temperature 0: a weight whose first gradients are 0 moves by about lr (not
    10 lr = lr / sqrt(1 - alpha)) when its gradient appears, through sgld_step and optim.SGLD."""
    lr = 1e-3
    theta, avg = torch.ones(2, device=device), torch.zeros(2, device=device)

    def with_sgld_step(grad):
        lift_ext.sgld_step(theta, grad.to(device), lr=lr, temperature=0.0, square_avg=avg)
        return theta.cpu()

    param = torch.nn.Parameter(torch.ones(2, device=device))
    opt = lift_ext.optim.SGLD([param], lr=lr, temperature=0.0, preconditioned=True, seed=0)

    def with_optimizer(grad):
        param.grad = grad.to(device)
        opt.step()
        return param.detach().cpu()

    for step_fn in (with_sgld_step, with_optimizer):
        late, first = _late_gradient_steps(step_fn, lr)
        assert late == pytest.approx(-lr, rel=1e-4), step_fn.__name__
        assert first == pytest.approx(-lr, rel=1e-4), step_fn.__name__


def reference_noise(numel, seed, offset):
    """The kernel's own noise (float32), so the reference sees identical noise."""
    return lift_ext.philox_normal(numel, seed=seed, offset=offset)


@pytest.mark.parametrize("device", DEVICES)
def test_exact_noise_is_added(device):
    """With zero gradient and no prior, the step adds exactly sqrt(2 lr T) * philox_normal."""
    n = 4099
    p = torch.zeros(n, device=device)
    lift_ext.sgld_step(p, torch.zeros(n, device=device), lr=0.02, temperature=2.0, seed=3, offset=4)
    expected = torch.sqrt(torch.tensor(2 * 0.02 * 2.0)) * lift_ext.philox_normal(n, seed=3, offset=4)
    torch.testing.assert_close(p.cpu(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad_dtype", [torch.bfloat16, torch.float16])
def test_low_precision_grads(device, grad_dtype):
    s = make_state(4099, device)
    grad_lp = s["grad"].to(grad_dtype)
    ref_theta, _, _ = reference.sgld_step(s["param"].cpu(), grad_lp.cpu().float(), reference_noise(4099, 1, 2),
                                          lr=1e-2, prior_mean=s["prior"].cpu(), prior_precision=1.0)
    lift_ext.sgld_step(s["param"], grad_lp, lr=1e-2, prior_mean=s["prior"], prior_precision=1.0, seed=1, offset=2)
    torch.testing.assert_close(s["param"].cpu().double(), ref_theta, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preconditioned", [False, True])
def test_list_equals_flat_bitwise(device, preconditioned):
    total = sum(LIST_SIZES)
    flat = make_state(total, device, seed=1)
    parts = {k: list(v.clone().split(LIST_SIZES)) for k, v in flat.items()}
    kw = dict(lr=3e-3, temperature=1.3, prior_precision=2.0, alpha=0.95, eps=1e-7, seed=11, offset=2)
    lift_ext.sgld_step(flat["param"], flat["grad"], prior_mean=flat["prior"], accum=flat["accum"],
                       square_avg=flat["square"] if preconditioned else None, **kw)
    # list items must be contiguous standalone tensors
    parts = {k: [t.contiguous().clone() for t in v] for k, v in parts.items()}
    lift_ext.sgld_step(parts["param"], parts["grad"], prior_mean=parts["prior"], accum=parts["accum"],
                       square_avg=parts["square"] if preconditioned else None, **kw)
    for key in ("param", "accum") + (("square",) if preconditioned else ()):
        assert torch.equal(torch.cat(parts[key]), flat[key]), key


@pytest.mark.parametrize("device", DEVICES)
def test_list_matches_reference_mixed_sizes(device):
    total = sum(LIST_SIZES)
    noise = reference_noise(total, 21, 0)
    state = make_state(total, device, seed=2)
    ref_theta, ref_accum, _ = reference.sgld_step(state["param"].cpu(), state["grad"].cpu(), noise, lr=1e-3,
                                                  prior_mean=state["prior"].cpu(), prior_precision=5.0,
                                                  accum=state["accum"].cpu())
    params = [t.clone() for t in state["param"].split(LIST_SIZES)]
    accums = [t.clone() for t in state["accum"].split(LIST_SIZES)]
    lift_ext.sgld_step(params, list(state["grad"].split(LIST_SIZES)), lr=1e-3,
                       prior_mean=list(state["prior"].split(LIST_SIZES)), prior_precision=5.0,
                       accum=accums, seed=21, offset=0)
    torch.testing.assert_close(torch.cat(params).cpu().double(), ref_theta, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat(accums).cpu().double(), ref_accum, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("numel", [1, 4097])
def test_temperature_zero_is_sgd_with_weight_decay(device, numel):
    s = make_state(numel, device)
    lr, lam = 0.01, 4.0
    expected = s["param"] - lr * (s["grad"] + lam * (s["param"] - s["prior"]))  # float32, same op order
    gen = torch.Generator().manual_seed(0)
    before = gen.get_state()
    lift_ext.sgld_step(s["param"], s["grad"], lr=lr, temperature=0.0, prior_mean=s["prior"],
                       prior_precision=lam, generator=gen)
    assert torch.equal(s["param"], expected)
    assert torch.equal(gen.get_state(), before), "no noise drawn, generator untouched"


@pytest.mark.parametrize("device", DEVICES)
def test_accumulator_tracks_running_sum(device):
    """accum += new - old keeps S == sum of the parameters over many steps."""
    thetas = [torch.randn(1001, device=device) for _ in range(3)]
    total = torch.stack(thetas).sum(0)
    for step in range(60):
        i = step % 3
        lift_ext.sgld_step(thetas[i], torch.randn(1001, device=device), lr=1e-2, accum=total, seed=step, offset=0)
    torch.testing.assert_close(total, torch.stack(thetas).sum(0), rtol=1e-5, atol=1e-5)


def test_same_seed_offset_same_result_and_generator_semantics():
    base = make_state(5000, "cpu")
    outs = []
    for _ in range(2):
        p = base["param"].clone()
        lift_ext.sgld_step(p, base["grad"], lr=1e-3, seed=42, offset=7)
        outs.append(p)
    assert torch.equal(outs[0], outs[1])
    # a generator draws (seed, offset) and advances: same generator state => same result
    results = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(123)
        p = base["param"].clone()
        lift_ext.sgld_step(p, base["grad"], lr=1e-3, generator=gen)
        q = base["param"].clone()
        lift_ext.sgld_step(q, base["grad"], lr=1e-3, generator=gen)
        results.append((p, q))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert not torch.equal(results[0][0], results[0][1]), "the generator advanced between calls"
    # torch.manual_seed drives the default
    torch.manual_seed(5)
    a = base["param"].clone()
    lift_ext.sgld_step(a, base["grad"], lr=1e-3)
    torch.manual_seed(5)
    b = base["param"].clone()
    lift_ext.sgld_step(b, base["grad"], lr=1e-3)
    assert torch.equal(a, b)


def _bad_calls(device):
    n = 17
    p = torch.randn(n, device=device)
    g = torch.randn(n, device=device)
    return p, [
        (dict(grads=g.double()), "grads must be float32, bfloat16 or float16"),
        (dict(grads=torch.randn(n + 1, device=device)), "grads must have the shape"),
        (dict(grads=g, prior_mean=torch.randn(n, device=device).half()), "prior_mean must be float32"),
        (dict(grads=g, accum=torch.randn(n - 1, device=device)), "accum must have the shape"),
        (dict(grads=g, square_avg=torch.randn(2 * n, device=device)[::2]), "square_avg must be contiguous"),
        (dict(grads=g, lr=-1.0), "lr must be"),
        (dict(grads=g, temperature=-0.5), "temperature must be"),
        (dict(grads=g, prior_precision=-1.0), "prior_precision must be"),
        (dict(grads=g, square_avg=torch.rand(n, device=device), alpha=1.0), "alpha must be"),
        (dict(grads=g, seed=-3), "seed must be"),
        (dict(grads=[g]), "grads must be a Tensor"),
        (dict(grads=g, offset=4), "offset was given without seed"),
        (dict(grads=g, seed=1, generator=torch.Generator()), "either seed/offset or generator"),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_name_the_argument_and_leave_params_untouched(device):
    p, cases = _bad_calls(device)
    snapshot = p.clone()
    for kwargs, message in cases:
        kwargs = dict(kwargs)
        grads = kwargs.pop("grads")
        kwargs.setdefault("lr", 1e-3)
        with pytest.raises((RuntimeError, ValueError, TypeError), match=message):
            lift_ext.sgld_step(p, grads, **kwargs)
        assert torch.equal(p, snapshot), message


def test_bad_list_inputs_leave_all_params_untouched():
    params = [torch.randn(5), torch.randn(7), torch.randn(3)]
    snap = [t.clone() for t in params]
    grads = [torch.randn(5), torch.randn(7), torch.randn(4)]  # the last one is wrong
    with pytest.raises(RuntimeError, match=r"grads\[2\] must have the shape"):
        lift_ext.sgld_step(params, grads, lr=1e-3, seed=0)
    with pytest.raises(ValueError, match="one tensor per param"):
        lift_ext.sgld_step(params, grads[:2], lr=1e-3, seed=0)
    with pytest.raises(RuntimeError, match=r"params\[1\] must be float32"):
        lift_ext.sgld_step([params[0], params[1].double(), params[2]], [g.clone() for g in grads[:2]] + [torch.randn(3)],
                           lr=1e-3, seed=0)
    non_contig = torch.randn(3, 4).t()
    with pytest.raises(RuntimeError, match=r"params\[1\] must be contiguous"):
        lift_ext.sgld_step([params[0], non_contig], [grads[0], torch.randn(4, 3)], lr=1e-3, seed=0)
    for a, b in zip(params, snap):
        assert torch.equal(a, b)


@pytest.mark.parametrize("use_default", [False, True])
def test_refused_call_advances_no_generator(use_default):
    """Whatever refuses the call (a scalar in Python, a tensor in the op, after the draw), the
    generator it would have drawn (seed, offset) from is left where it was."""
    gen = torch.default_generator if use_default else torch.Generator().manual_seed(3)
    p, g = torch.randn(9), torch.randn(9)
    snapshot = p.clone()
    bad = [dict(grads=g.double()), dict(grads=torch.randn(10)), dict(grads=g, lr=-1.0),
           dict(grads=g, lr="0.1"), dict(grads=g, square_avg=torch.rand(9)[None]),
           dict(grads=g, prior_mean=torch.randn(9).half())]
    for kwargs in bad:
        kwargs = {"lr": 1e-3, **kwargs}
        grads = kwargs.pop("grads")
        before = gen.get_state()
        with pytest.raises((RuntimeError, ValueError, TypeError)):
            lift_ext.sgld_step(p, grads, generator=None if use_default else gen, **kwargs)
        assert torch.equal(gen.get_state(), before), kwargs
        assert torch.equal(p, snapshot)
    lift_ext.sgld_step(p, g, lr=1e-3, generator=None if use_default else gen)
    assert not torch.equal(gen.get_state(), before), "an accepted call draws"


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(seed=3.0), ValueError, "seed must be an int"), (dict(seed=1, offset=2.0), ValueError, "offset must be an int"),
    (dict(seed=True), ValueError, "seed must be an int"), (dict(generator=5), TypeError, "generator must be a torch.Generator"),
    (dict(lr=3e38 * 10), ValueError, "lr must be a finite number in"), (dict(eps=0.0), ValueError, "eps must be"),
    (dict(eps=1e-50, square_avg=torch.zeros(5)), ValueError, "eps must be within float32's range"),
    (dict(prior_precision=1e300), ValueError, "prior_precision must be a finite number in"),
    (dict(lr="0.1"), ValueError, "lr must be a finite number"),
])
def test_scalar_arguments_are_refused_by_name(kwargs, error, message):
    kwargs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    p = torch.randn(5)
    snapshot = p.clone()
    with pytest.raises(error, match=message):
        lift_ext.sgld_step(p, torch.randn(5), **{"lr": 1e-3, **kwargs})
    assert torch.equal(p, snapshot)


@requires_cuda
def test_device_mismatch_is_refused():
    p = torch.randn(10, device="cuda")
    with pytest.raises(RuntimeError, match="grads must be on the same device"):
        lift_ext.sgld_step(p, torch.randn(10), lr=1e-3, seed=0)


def test_unstable_step_warns():
    p = torch.randn(4)
    with pytest.warns(RuntimeWarning, match="unstable"):
        lift_ext.sgld_step(p, torch.randn(4), lr=0.5, prior_precision=3.0, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lift_ext.sgld_step(p, torch.randn(4), lr=0.1, prior_precision=3.0, seed=0)
    with warnings.catch_warnings():  # preconditioned: the damping eps' = max(eps, lr lam) makes it stable
        warnings.simplefilter("error")
        lift_ext.sgld_step(p, torch.zeros(4), lr=0.1, prior_precision=3.0, square_avg=torch.zeros(4),
                           eps=1e-8, seed=0)


def test_damping_bounds_weights_whose_gradient_is_still_zero():
    # v = 0 and g = 0 (LoRA A while B = 0): G = 1/eps' with eps' = max(eps, lr lam), so the pull
    # lands at most on the prior mean and the noise variance is at most 2 T / lam.
    n, lr, lam, temperature = 1 << 16, 1e-4, 4.0, 1.0
    theta = torch.full((n,), 0.5)
    lift_ext.sgld_step(theta, torch.zeros(n), lr=lr, temperature=0.0, prior_precision=lam,
                       square_avg=torch.zeros(n), seed=0)
    torch.testing.assert_close(theta, torch.zeros(n))  # lr G lam = 1: exactly onto the mean 0
    theta = torch.zeros(n)
    lift_ext.sgld_step(theta, torch.zeros(n), lr=lr, temperature=temperature, prior_precision=lam,
                       square_avg=torch.zeros(n), seed=0)
    assert abs(theta.var().item() / (2 * temperature / lam) - 1) < 0.03  # not 2 lr T / 1e-8
    noise = reference.philox_normal(n, seed=0, offset=0)
    expected, _, _ = reference.sgld_step(torch.zeros(n), torch.zeros(n), noise, lr=lr, temperature=temperature,
                                         prior_precision=lam, square_avg=torch.zeros(n))
    torch.testing.assert_close(theta.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    s = make_state(1031, device)
    one = [[s[k]] for k in ("param", "grad", "prior", "accum", "square")]
    torch.library.opcheck(torch.ops.lift_ext.sgld_step_list_.default, (*one, 1e-3, 1.0, 2.0, 0.99, 1e-8, 3, 4))
    torch.library.opcheck(torch.ops.lift_ext.sgld_step_list_.default,
                          (one[0], one[1], [], [], [], 1e-3, 0.0, 0.0, 0.99, 1e-8, 0, 0))
    lists = [list(make_state(n, device, seed=n)[k] for n in (5, 1, 7)) for k in ("param", "grad", "prior", "accum", "square")]
    torch.library.opcheck(torch.ops.lift_ext.sgld_step_list_.default,
                          (*lists, 1e-3, 1.0, 2.0, 0.99, 1e-8, 3, 4))
    torch.library.opcheck(torch.ops.lift_ext.sgld_step_list_.default,
                          (lists[0], lists[1], [], [], [], 1e-3, 1.0, 0.0, 0.99, 1e-8, 3, 4))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optional", [False, True])
def test_flat_wrapper_is_the_list_op_with_one_tensor(device, optional):
    """ops.sgld_step_ (one tensor, None for absent) is the list op on lists of one; no
    separate single-tensor op is registered."""
    kw = dict(lr=1e-3, temperature=0.8, prior_precision=2.0, alpha=0.9, eps=1e-6, seed=4, offset=3)
    a = make_state(4099, device, seed=3)
    b = {k: v.clone() for k, v in a.items()}
    names = ("prior", "accum", "square")
    lift_ext.ops.sgld_step_(a["param"], a["grad"], *(a[k] if optional else None for k in names), **kw)
    lift_ext.ops.sgld_step_list_([b["param"]], [b["grad"]], *([b[k]] if optional else [] for k in names), **kw)
    for key in ("param", "accum", "square"):
        assert torch.equal(a[key], b[key]), key
    assert not hasattr(torch.ops.lift_ext, "sgld_step_")


def test_torch_compile_fullgraph():
    def step(p, g, c, acc, seed):
        lift_ext.ops.sgld_step_(p, g, c, acc, None, lr=1e-3, temperature=1.0, prior_precision=2.0,
                                alpha=0.99, eps=1e-8, seed=seed, offset=0)
        return p * 1.0

    compiled = torch.compile(step, fullgraph=True)
    s = make_state(513, "cpu")
    eager = {k: v.clone() for k, v in s.items()}
    out = compiled(s["param"], s["grad"], s["prior"], s["accum"], 9)
    step(eager["param"], eager["grad"], eager["prior"], eager["accum"], 9)
    assert torch.equal(out, eager["param"]) and torch.equal(s["param"], eager["param"])
    assert torch.equal(s["accum"], eager["accum"])


@requires_cuda
@pytest.mark.parametrize("preconditioned", [False, True])
@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16])
def test_cpu_and_cuda_agree(preconditioned, grad_dtype):
    """Same noise stream and the same op order on both backends: results agree to the bit."""
    sizes = [4099, 1, 65536, 3, 6144]
    cpu = {k: [t.clone() for t in v.split(sizes)] for k, v in make_state(sum(sizes), "cpu", seed=4).items()}
    cpu["grad"] = [g.to(grad_dtype) for g in cpu["grad"]]
    gpu = {k: [t.cuda() for t in v] for k, v in cpu.items()}
    kw = dict(lr=1e-3, temperature=1.0, prior_precision=2.0, seed=8, offset=1)
    for state in (cpu, gpu):
        lift_ext.sgld_step(state["param"], state["grad"], prior_mean=state["prior"], accum=state["accum"],
                           square_avg=state["square"] if preconditioned else None, **kw)
    for key in ("param", "accum", "square"):
        for a, b in zip(cpu[key], gpu[key]):
            assert torch.equal(a, b.cpu()), key


@requires_cuda
def test_cpu_and_cuda_agree_on_lists_longer_than_one_launch():
    """More tensors than one launch's table holds (448): the CUDA path splits the list into
    several launches; every tensor still matches the CPU bitwise (same global noise index)."""
    sizes = [(i * 37) % 11 for i in range(500)]
    cpu = {k: [t.clone() for t in v.split(sizes)] for k, v in make_state(sum(sizes), "cpu", seed=6).items()}
    gpu = {k: [t.cuda() for t in v] for k, v in cpu.items()}
    for state in (cpu, gpu):
        lift_ext.sgld_step(state["param"], state["grad"], prior_mean=state["prior"], accum=state["accum"],
                           square_avg=state["square"], lr=1e-3, prior_precision=0.5, seed=2, offset=5)
    for key in ("param", "accum", "square"):
        for a, b in zip(cpu[key], gpu[key]):
            assert torch.equal(a, b.cpu()), key


def test_empty_list_is_refused_by_name():
    """No tensors: a ValueError naming params (the dispatcher's 'no tensor arguments' before);
    the generator it would draw from is left alone."""
    gen = torch.Generator().manual_seed(1)
    before = gen.get_state()
    with pytest.raises(ValueError, match="params must hold at least one tensor"):
        lift_ext.sgld_step([], [], lr=1e-3, generator=gen)
    assert torch.equal(gen.get_state(), before)
    with pytest.raises(ValueError, match="params must hold at least one tensor"):
        lift_ext.ops.sgld_step_list_([], [], [], [], [], lr=1e-3, temperature=1.0, prior_precision=0.0,
                                     alpha=0.99, eps=1e-8, seed=0, offset=0)


# ---- autograd sees the in-place updates (csrc/autograd.cpp) --------------------------------

def _autograd_calls():
    """name -> (tensor the call writes, call(t)) for every in-place op and entry."""
    g = torch.randn(6)
    hp = dict(lr=1e-3, temperature=1.0, prior_precision=0.0, alpha=0.99, eps=1e-8, seed=0, offset=0)
    means, m2 = torch.randn(2, 6), torch.rand(2, 6)
    counts = torch.tensor([2.0, 3.0], dtype=torch.float64)
    return {
        "sgld_step": lambda t: lift_ext.sgld_step(t, g, lr=1e-3, seed=0),
        "sgld_step(table)": lambda t: lift_ext.sgld_step(lift_ext.TensorTable([t], [g]), lr=1e-3, seed=0),
        "sgld_step(rng_state)": lambda t: lift_ext.sgld_step(t, g, lr=1e-3, rng_state=torch.tensor([0, 0])),
        "sgld_step(table, rng_state)": lambda t: lift_ext.sgld_step(lift_ext.TensorTable([t], [g]), lr=1e-3,
                                                                    rng_state=torch.tensor([0, 0])),
        "ops.sgld_step_list_": lambda t: ops.sgld_step_list_([t], [g], [], [], [], **hp),
        "ops.philox_normal_": lambda t: ops.philox_normal_(t, seed=0, offset=0),
        "ops.phi_step_": lambda t: ops.phi_step_(t, torch.zeros(6), None, lr=1e-3, temperature=1.0, sigma=1.0,
                                                 beta=1.0, num_tasks=1, gibbs=True, seed=0, offset=0),
        "ops.gmm_prior_grad_": lambda t: ops.gmm_prior_grad_(t, torch.randn(6), means, m2, counts,
                                                             torch.tensor([0.5, 0.5], dtype=torch.float64),
                                                             reg=1e-3, scale=1.0),
        "ops.gmm_mstep_": lambda t: ops.gmm_mstep_(t.view(1, 6), torch.zeros(1, 6), torch.ones(1, dtype=torch.float64),
                                                   torch.randn(2, 6), torch.ones(2, 1, dtype=torch.float64)),
    }


@pytest.mark.parametrize("name", sorted(_autograd_calls()))
def test_in_place_updates_bump_the_version_and_break_a_saved_backward(name):
    """A tensor saved for backward and then stepped: backward raises torch's usual error
    instead of silently using the new values."""
    call = _autograd_calls()[name]
    w = torch.randn(6, requires_grad=True)
    t = torch.randn(6)
    y = (w * t).sum()  # saves t for w's gradient
    before = t._version
    call(t)
    assert t._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@pytest.mark.parametrize("name", sorted(_autograd_calls()))
def test_a_leaf_that_requires_grad_is_refused_under_grad_mode(name):
    """An in-place update of a leaf that requires grad is refused (nothing written): torch's
    error for the ops, one naming torch.no_grad() for sgld_step (the public entry, which the
    README's training loop calls); the update runs under torch.no_grad() as an optimizer's does."""
    call = _autograd_calls()[name]
    leaf = torch.randn(6, requires_grad=True)
    snapshot = leaf.detach().clone()
    public = name.startswith("sgld_step")
    with pytest.raises(RuntimeError, match=r"inside `with torch\.no_grad\(\):`" if public else
                       "a leaf Variable that requires grad is being used in an in-place"):
        call(leaf)
    assert torch.equal(leaf.detach(), snapshot) and leaf._version == 0
    with pytest.raises(RuntimeError, match=r"torch\.no_grad\(\)" if public else "a view of a leaf Variable"):
        call(leaf[:])
    with torch.no_grad():
        call(leaf)
    assert leaf._version == 1
    nonleaf = leaf * 2.0
    with pytest.raises(RuntimeError, match="not differentiable"):
        call(nonleaf)


def test_in_place_updates_inside_inference_mode():
    with torch.inference_mode():
        t = torch.randn(6)
        lift_ext.sgld_step(t, torch.randn(6), lr=1e-3, seed=0)
    with pytest.raises(RuntimeError, match="inference tensor"):
        lift_ext.sgld_step(t, torch.randn(6), lr=1e-3, seed=0)
