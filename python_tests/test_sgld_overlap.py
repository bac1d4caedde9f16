"""Aliasing inside one SGLD call: a tensor the step writes (params, accum, square_avg) sharing
memory with any other tensor of the call is refused, naming both, before anything is written
(it was a data race: different results from identical runs). Tensors only read may overlap."""
import random

import pytest
import torch

import lift_ext

HP = dict(lr=1e-3, temperature=1.0, seed=3, offset=4)


def fresh(n=6, k=3):
    return [torch.randn(n) for _ in range(k)]


def _aliased_calls():
    buf = torch.randn(40)
    p, g = fresh(), fresh()
    return [
        (dict(params=[p[0], p[1], p[0]], grads=g), r"params\[0\] and params\[2\] share memory"),
        (dict(params=p, grads=[g[0], p[1], g[2]]), r"params\[1\] and grads\[1\] share memory"),
        (dict(params=[buf[:10], buf[8:18], p[2]], grads=[torch.randn(10), torch.randn(10), g[2]]),
         r"params\[0\] and params\[1\] share memory"),
        (dict(params=p, grads=g, prior_mean=fresh(), accum=[torch.randn(6), g[0], torch.randn(6)]),
         r"grads\[0\] and accum\[1\] share memory"),
        (dict(params=p, grads=g, square_avg=[torch.rand(6), torch.rand(6), p[1]]),
         r"params\[1\] and square_avg\[2\] share memory"),
        (dict(params=p[:2], grads=g[:2], prior_mean=[g[0], g[1]], accum=[torch.randn(6), p[0].view(2, 3).view(6)]),
         r"params\[0\] and accum\[1\] share memory"),  # another view object of the same memory
        (dict(params=p[0], grads=p[0]), r"params and grads share memory"),  # single tensors: no index
        (dict(params=[torch.zeros(0), p[0], torch.zeros(0), p[1], p[0]],
              grads=[torch.zeros(0), g[0], torch.zeros(0), g[1], g[2]]),
         r"params\[1\] and params\[4\] share memory"),  # empty tensors keep the indices right
    ]


@pytest.mark.parametrize("case", range(len(_aliased_calls())))
@pytest.mark.parametrize("form", ["list", "rng_state", "table"])
def test_written_tensor_sharing_memory_is_refused_untouched(case, form):
    kwargs, message = _aliased_calls()[case]
    kwargs = dict(kwargs)
    if form == "table" and isinstance(kwargs["params"], torch.Tensor):
        pytest.skip("a table takes lists")
    everything = [t for v in kwargs.values() for t in (v if isinstance(v, list) else [v])]
    before = [t.clone() for t in everything]
    gen = torch.Generator().manual_seed(0)
    gen_before = gen.get_state()
    with pytest.raises(RuntimeError, match=message):
        if form == "table":
            names = {"prior_mean": "prior_means", "accum": "accums", "square_avg": "square_avgs"}
            lift_ext.TensorTable(kwargs.pop("params"), kwargs.pop("grads"),
                                 **{names[k]: v for k, v in kwargs.items()})
        elif form == "rng_state":
            lift_ext.sgld_step(**kwargs, lr=1e-3, rng_state=torch.tensor([1, 2]))
        else:
            lift_ext.sgld_step(**kwargs, lr=1e-3, generator=gen)
    assert all(torch.equal(a, b) for a, b in zip(everything, before))
    assert torch.equal(gen.get_state(), gen_before)


def test_tensors_only_read_may_overlap():
    """One grad for two params, the prior mean equal to the grad, adjacent views of one buffer:
    all allowed, and the same result as with separate copies."""
    buf = torch.randn(20)
    params = [buf[:10], buf[10:]]  # adjacent, not overlapping
    grad = torch.randn(10)
    copies = [t.clone() for t in params]
    lift_ext.sgld_step(params, [grad, grad], prior_mean=[grad, grad], prior_precision=0.5, **HP)
    lift_ext.sgld_step(copies, [grad.clone(), grad.clone()], prior_mean=[grad.clone(), grad.clone()],
                       prior_precision=0.5, **HP)
    assert torch.equal(buf, torch.cat(copies))


def test_roles_interleaved_in_memory():
    """params and grads alternating in one buffer (their address spans interleave): disjoint
    passes, and a grad reaching into the next param is found."""
    buf = torch.zeros(4 * 200)
    params = [buf[8 * i:8 * i + 4] for i in range(100)]
    grads = [buf[8 * i + 4:8 * i + 8] for i in range(100)]
    lift_ext.sgld_step(params, grads, lr=1.0, temperature=0.0)
    grads[37] = buf[8 * 37 + 5:8 * 37 + 9]
    with pytest.raises(RuntimeError, match=r"params\[38\] and grads\[37\] share memory"):
        lift_ext.sgld_step(params, grads, lr=1.0, temperature=0.0)


@pytest.mark.parametrize("order", ["ascending", "descending", "shuffled", "nearly"])
def test_long_lists_in_any_address_order(order):
    """Many views of one buffer (so addresses are known): disjoint ones pass in any order, and
    one overlapping pair hidden among them is found and named."""
    n, width = 3000, 4
    buf, grads = torch.zeros(n * width + 2), torch.zeros(n * width + 2)
    index = list(range(n))
    if order == "descending":
        index.reverse()
    elif order == "shuffled":
        random.Random(0).shuffle(index)
    elif order == "nearly":  # in order but for a few tensors moved far away
        for k in range(5, n, 97):
            index.insert(random.Random(k).randrange(n), index.pop(k))
    params = [buf[i * width:(i + 1) * width] for i in index]
    grad_list = [grads[i * width:(i + 1) * width] for i in index]
    lift_ext.sgld_step(params, grad_list, lr=1.0, temperature=0.0)
    assert torch.equal(buf, torch.zeros_like(buf))  # zero grads: nothing moved, but it ran
    culprit = index.index(1000)
    params[culprit] = buf[1000 * width + 2:1001 * width + 2]  # overlaps its neighbour's
    neighbour = index.index(1001)
    first, second = sorted((culprit, neighbour))
    with pytest.raises(RuntimeError, match=rf"params\[{first}\] and params\[{second}\] share memory"):
        lift_ext.sgld_step(params, grad_list, lr=1.0, temperature=0.0)
