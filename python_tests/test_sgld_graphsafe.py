"""sgld_step with rng_state (the CUDA-graph-safe form of the op sgld_step_list_): seed and
offset read from an int64 [seed, offset] tensor on the params' device, offset advanced in place."""
import pytest
import torch

import lift_ext
from lift_ext import ops, reference

from conftest import DEVICES, requires_cuda

HP = dict(lr=1e-3, temperature=0.7, prior_precision=2.0, alpha=0.9, eps=1e-6)


def make_lists(sizes, device, seed=0):
    """params, grads, prior means, square averages; every 5th grad and every 3rd average 0."""
    g = torch.Generator().manual_seed(seed)
    t = lambda n: torch.randn(n, generator=g).to(device)  # noqa: E731
    params, grads, means = [t(n) for n in sizes], [t(n) for n in sizes], [t(n) for n in sizes]
    avgs = [torch.rand(n, generator=g).to(device) for n in sizes]
    for grad, avg in zip(grads, avgs):
        grad[::5] = 0.0
        avg[::3] = 0.0
    return params, grads, means, avgs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preconditioned", [False, True])
def test_matches_reference_and_advances_offset(device, preconditioned):
    sizes = [5, 4097, 0, 64]
    ps, gs, cs, vs = make_lists(sizes, device)
    seed, offset = 11, 40
    flat = lambda ts: torch.cat([t.cpu() for t in ts])  # noqa: E731
    ref_theta, _, ref_sq = reference.sgld_step(
        flat(ps), flat(gs), lift_ext.philox_normal(sum(sizes), seed=seed, offset=offset),
        prior_mean=flat(cs), square_avg=flat(vs) if preconditioned else None, **HP)
    state = torch.tensor([seed, offset], dtype=torch.int64, device=device)
    lift_ext.sgld_step(ps, gs, prior_mean=cs, square_avg=vs if preconditioned else None,
                       rng_state=state, **HP)
    torch.testing.assert_close(flat(ps).double(), ref_theta, rtol=1e-5, atol=1e-6)
    if preconditioned:
        torch.testing.assert_close(flat(vs).double(), ref_sq, rtol=1e-5, atol=1e-7)
    assert state.tolist() == [seed, offset + 1]


@pytest.mark.parametrize("device", DEVICES)
def test_k_steps_equal_explicit_offsets_bitwise(device):
    """k calls with rng_state == k calls with offsets offset .. offset + k - 1; also a single
    tensor, and temperature 0 still advances the offset."""
    k, seed, offset = 4, 3, 2**33
    a = make_lists([1000], device)[0][0]
    b = a.clone()
    g = torch.randn(1000, device=device)
    state = torch.tensor([seed, offset], dtype=torch.int64, device=device)
    for i in range(k):
        lift_ext.sgld_step(a, g, lr=1e-3, rng_state=state)
        lift_ext.sgld_step(b, g, lr=1e-3, seed=seed, offset=offset + i)
    assert torch.equal(a, b)
    lift_ext.sgld_step(a, g, lr=1e-3, temperature=0.0, rng_state=state)
    assert state.tolist() == [seed, offset + k + 1]


def test_bad_rng_state_is_refused_and_params_untouched():
    p, g = torch.randn(8), torch.randn(8)
    before = p.clone()
    bad = [(torch.tensor([1, 2], dtype=torch.int32), "rng_state must be int64"),
           (torch.tensor([1, 2, 3]), r"rng_state must have shape \[2\]"),
           (torch.tensor([-1, 0]), "seed must be >= 0"),
           (torch.tensor([1, -5]), "rng_state offset must be in")]
    for state, msg in bad:
        with pytest.raises(RuntimeError, match=msg):
            lift_ext.sgld_step(p, g, lr=1e-3, rng_state=state)
    with pytest.raises(ValueError, match="either rng_state or seed"):
        lift_ext.sgld_step(p, g, lr=1e-3, rng_state=torch.tensor([1, 2]), seed=1)
    with pytest.raises(TypeError, match="rng_state must be an int64 Tensor"):
        lift_ext.sgld_step(p, g, lr=1e-3, rng_state=[1, 2])
    with pytest.raises(RuntimeError, match="grads must have the shape"):
        lift_ext.sgld_step(p, torch.randn(9), lr=1e-3, rng_state=torch.tensor([1, 2]))
    with pytest.raises(RuntimeError, match="seed and offset must be left at 0 when rng_state is given"):
        ops.sgld_step_list_([p], [g], [], [], [], lr=1e-3, temperature=1.0, prior_precision=0.0, alpha=0.9,
                            eps=1e-8, offset=3, rng_state=torch.tensor([1, 2]))
    with pytest.raises(RuntimeError, match="rng_state must be on the device of params"):
        ops.sgld_step_list_([p], [g], [], [], [], lr=1e-3, temperature=1.0, prior_precision=0.0, alpha=0.9,
                            eps=1e-8, rng_state=torch.tensor([1, 2], device="meta"))
    assert torch.equal(p, before)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    ps, gs, cs, vs = make_lists([5, 1, 7], device)
    acc = [torch.zeros_like(p) for p in ps]
    state = torch.tensor([3, 4], dtype=torch.int64, device=device)
    op = torch.ops.lift_ext.sgld_step_list_.default
    torch.library.opcheck(op, (ps, gs, cs, acc, vs, 1e-3, 1.0, 2.0, 0.99, 1e-8, 0, 0, state))
    torch.library.opcheck(op, (ps, gs, [], [], [], 1e-3, 0.0, 0.0, 0.99, 1e-8), {"rng_state": state})
    torch.library.opcheck(op, (ps, gs, cs, acc, vs, 1e-3, 1.0, 2.0, 0.99, 1e-8, 3, 4))
    torch.library.opcheck(op, (ps, gs, [], [], [], 1e-3, 1.0, 0.0, 0.99, 1e-8))


@requires_cuda
def test_rng_state_on_wrong_device_is_refused():
    p, g = torch.randn(8, device="cuda"), torch.randn(8, device="cuda")
    with pytest.raises(RuntimeError, match="rng_state"):
        lift_ext.sgld_step(p, g, lr=1e-3, rng_state=torch.tensor([1, 2]))


@requires_cuda
def test_cuda_graph_replays_draw_fresh_noise_and_match_eager_steps():
    k, seed, offset = 5, 21, 7
    sizes = [6144] * 3 + [1001]
    ps, gs, cs, _ = make_lists(sizes, "cuda")
    eager = [p.clone() for p in ps]
    state = torch.tensor([seed, offset], dtype=torch.int64, device="cuda")
    step = lambda: lift_ext.sgld_step(ps, gs, lr=1e-3, prior_mean=cs, prior_precision=1.0,  # noqa: E731
                                      rng_state=state)
    # Warm up on a side stream (as torch.cuda.graphs recommends), then restore the inputs.
    start = [p.clone() for p in ps]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    for p, s0 in zip(ps, start):
        p.copy_(s0)
    state.copy_(torch.tensor([seed, offset]))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    # Capture does not run the step: inputs and state are unchanged.
    state.copy_(torch.tensor([seed, offset]))
    for p, s0 in zip(ps, start):
        p.copy_(s0)
    previous = None
    for i in range(k):
        graph.replay()
        lift_ext.sgld_step(eager, gs, lr=1e-3, prior_mean=cs, prior_precision=1.0, seed=seed,
                           offset=offset + i)
        torch.cuda.synchronize()
        for p, e in zip(ps, eager):
            assert torch.equal(p, e)
        snapshot = torch.cat([p.clone() for p in ps])
        if previous is not None:
            assert not torch.equal(snapshot, previous)
        previous = snapshot
    assert state.tolist() == [seed, offset + k]


def test_offset_that_would_wrap_is_refused_with_everything_untouched():
    """offset 2^63 - 1 cannot be advanced in an int64: refused by name (list and table paths),
    params and rng_state as they were."""
    p, g = torch.randn(9), torch.randn(9)
    table = lift_ext.TensorTable([p], [g])
    for target in (dict(params=p, grads=g), dict(params=table)):
        state = torch.tensor([3, 2**63 - 1])
        snapshot = p.clone()
        with pytest.raises(RuntimeError, match="rng_state offset must be in"):
            lift_ext.sgld_step(**target, lr=1e-3, rng_state=state)
        assert torch.equal(p, snapshot) and state.tolist() == [3, 2**63 - 1]
    state = torch.tensor([3, 2**63 - 2])
    lift_ext.sgld_step(p, g, lr=1e-3, rng_state=state)
    assert state.tolist() == [3, 2**63 - 1], "the last offset that can still advance"
