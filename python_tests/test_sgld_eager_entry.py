"""The eager entry of the list op (`_C.sgld_step_list_eager`, taken by ops.sgld_step_list_ for
plain tensors outside tracing): the same results as torch.ops, and torch.ops for the rest."""
import pytest
import torch

from lift_ext import _loader, ops

from conftest import DEVICES

HP = dict(lr=1e-3, temperature=0.5, prior_precision=2.0, alpha=0.9, eps=1e-3, seed=5, offset=9)
ORDER = ("lr", "temperature", "prior_precision", "alpha", "eps", "seed", "offset")


def lists(device, sizes=(3, 4097, 0, 64), seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda: [torch.randn(n, generator=g).to(device) for n in sizes]  # noqa: E731
    return make(), make(), make(), make(), [torch.rand(n, generator=g).to(device) for n in sizes]


@pytest.mark.parametrize("device", DEVICES)
def test_eager_entry_equals_torch_ops_bitwise(device):
    a, b = lists(device), lists(device)
    result = _loader._C.sgld_step_list_eager(*a, *(HP[k] for k in ORDER))
    assert result is None
    torch.ops.lift_ext.sgld_step_list_(*b, *(HP[k] for k in ORDER))
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            assert torch.equal(u, v)


def test_parameters_take_the_eager_entry_and_subclasses_do_not():
    params = [torch.nn.Parameter(torch.randn(5)) for _ in range(2)]
    grads = [torch.randn(5) for _ in range(2)]
    with torch.no_grad():  # Parameters: leaves that require grad
        assert _loader._C.sgld_step_list_eager(params, grads, [], [], [], *(HP[k] for k in ORDER)) is None

    class Tagged(torch.Tensor):
        pass

    tagged = [torch.randn(5).as_subclass(Tagged)]
    assert _loader._C.sgld_step_list_eager(tagged, [torch.randn(5)], [], [], [],
                                           *(HP[k] for k in ORDER)) is NotImplemented
    assert _loader._C.sgld_step_list_eager([torch.randn(5)], ["not a tensor"], [], [], [],
                                           *(HP[k] for k in ORDER)) is NotImplemented


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


def test_list_entry_releases_the_gil():
    """Another Python thread makes progress while a long CPU step runs (it did not while the
    entry held the GIL for the whole kernel)."""
    def make_call(n):
        p, g = [torch.zeros(n)], [torch.zeros(n)]
        return lambda: _loader._C.sgld_step_list_eager(p, g, [], [], [], 1e-3, 1.0, 0.0, 0.99, 1e-8, 1, 1)

    assert progress_during(make_call)
