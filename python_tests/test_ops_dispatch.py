"""The SGLD list op as Python reaches it (`ops.sgld_step_list_` -> torch.ops): the same results
as a direct torch.ops call, Parameters and subclasses alike, the op's errors,
__torch_function__ modes seeing it, and the GIL released while the kernel runs."""
import pytest
import torch

from lift_ext import ops

from conftest import DEVICES

HP = dict(lr=1e-3, temperature=0.5, prior_precision=2.0, alpha=0.9, eps=1e-3, seed=5, offset=9)
ORDER = ("lr", "temperature", "prior_precision", "alpha", "eps", "seed", "offset")


def lists(device, sizes=(3, 4097, 0, 64), seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda: [torch.randn(n, generator=g).to(device) for n in sizes]  # noqa: E731
    return make(), make(), make(), make(), [torch.rand(n, generator=g).to(device) for n in sizes]


@pytest.mark.parametrize("device", DEVICES)
def test_wrapper_equals_torch_ops_bitwise(device):
    a, b = lists(device), lists(device)
    ops.sgld_step_list_(*a, **HP)
    torch.ops.lift_ext.sgld_step_list_(*b, *(HP[k] for k in ORDER))
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            assert torch.equal(u, v)


def test_parameters_and_subclasses_step_alike():
    plain = [torch.randn(5) for _ in range(2)]
    params = [torch.nn.Parameter(p.clone()) for p in plain]

    class Tagged(torch.Tensor):
        pass

    tagged = [p.clone().as_subclass(Tagged) for p in plain]
    grads = [torch.randn(5) for _ in range(2)]
    with torch.no_grad():  # Parameters: leaves that require grad
        for ps in (plain, params, tagged):
            ops.sgld_step_list_(ps, grads, [], [], [], **HP)
    for p, q, t in zip(plain, params, tagged):
        assert torch.equal(p, q) and torch.equal(p, t.as_subclass(torch.Tensor))


def test_errors_are_the_ops_errors():
    params, grads = [torch.randn(4), torch.randn(4)], [torch.randn(4), torch.randn(4).double()]
    before = [p.clone() for p in params]
    with pytest.raises(RuntimeError, match=r"grads\[1\] must be float32, bfloat16 or float16"):
        ops.sgld_step_list_(params, grads, [], [], [], **HP)
    assert all(torch.equal(p, q) for p, q in zip(params, before))


def test_torch_function_modes_see_the_op():
    seen = []

    class Record(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    p, g = [torch.randn(4)], [torch.randn(4)]
    with Record():
        ops.sgld_step_list_(p, g, [], [], [], **HP)
    assert any("sgld_step_list_" in str(f) for f in seen)


def progress_during(make_call):
    """True when another Python thread ran while a call was inside its kernel. make_call(n)
    returns a call that steps n elements on one CPU thread; n doubles from 2^22 until a call
    takes over 60 ms. Only the middle of the call counts: a thread switch can happen just
    before or after it (within sys.getswitchinterval())."""
    import sys
    import threading
    import time

    margin = 2 * sys.getswitchinterval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n = 1 << 22
        while True:
            call = make_call(n)
            start = time.perf_counter()
            call()
            if time.perf_counter() - start > 0.06 or n >= 1 << 26:
                break
            n *= 2
        stamps, stop = [], threading.Event()

        def count():
            while not stop.is_set():
                stamps.append(time.perf_counter())

        worker = threading.Thread(target=count)
        worker.start()
        try:
            while not stamps:  # the worker is running
                time.sleep(0.001)
            start = time.perf_counter()
            call()
            end = time.perf_counter()
        finally:
            stop.set()
            worker.join()
    finally:
        torch.set_num_threads(threads)
    assert end - start > 3 * margin, f"the call took {end - start:.3f} s: too short to tell"
    return any(start + margin < t < end - margin for t in stamps)


def test_list_step_releases_the_gil():
    """Another Python thread makes progress while a long CPU step runs."""
    def make_call(n):
        p, g = [torch.zeros(n)], [torch.zeros(n)]
        return lambda: ops.sgld_step_list_(p, g, [], [], [], lr=1e-3, temperature=1.0, prior_precision=0.0,
                                           alpha=0.99, eps=1e-8, seed=1, offset=1)

    assert progress_during(make_call)
