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
