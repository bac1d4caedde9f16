"""lift_ext.TensorTable: the lists of a step checked once; a step through the table is the list
step, bitwise, on every device, grad dtype and combination of optional arrays."""
import copy
import pickle

import pytest
import torch

import lift_ext
from lift_ext import ops

from conftest import DEVICES, requires_cuda

SIZES = [3, 0, 4097, 1, 64, 5, 1000]  # odd sizes, an empty tensor, borders inside 4-groups
HP = dict(lr=1e-3, temperature=0.7, prior_precision=2.0, alpha=0.9, eps=1e-2)
OPTIONAL = ("prior_means", "accums", "square_avgs")
LIST_NAME = {"prior_means": "prior_mean", "accums": "accum", "square_avgs": "square_avg"}
PRESENT = [(), ("prior_means",), ("accums",), ("square_avgs",), OPTIONAL]


def make(sizes, device, grad_dtype=torch.float32, seed=0):
    """Lists for a step; every 3rd square average and every 5th grad exactly 0."""
    g = torch.Generator().manual_seed(seed)
    t = lambda n: torch.randn(n, generator=g).to(device)  # noqa: E731
    lists = dict(params=[t(n) for n in sizes], grads=[t(n) for n in sizes],
                 prior_means=[t(n) for n in sizes], accums=[t(n) for n in sizes],
                 square_avgs=[torch.rand(n, generator=g).to(device) for n in sizes])
    for grad, avg in zip(lists["grads"], lists["square_avgs"]):
        grad[::5] = 0.0
        avg[::3] = 0.0
    lists["grads"] = [x.to(grad_dtype) for x in lists["grads"]]
    return lists


def clone(lists):
    return {k: [x.clone() for x in v] for k, v in lists.items()}


def assert_written_equal(a, b, present):
    for key in ("params",) + tuple(k for k in present if k != "prior_means"):
        for i, (x, y) in enumerate(zip(a[key], b[key])):
            assert torch.equal(x, y), f"{key}[{i}]"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("present", PRESENT)
def test_table_step_is_the_list_step_bitwise(device, grad_dtype, present):
    a = make(SIZES, device, grad_dtype)
    b = clone(a)
    table = lift_ext.TensorTable(a["params"], a["grads"], **{k: a[k] for k in present})
    for step in range(3):
        lift_ext.sgld_step(table, seed=7, offset=step, **HP)
        lift_ext.sgld_step(b["params"], b["grads"], seed=7, offset=step,
                           **{LIST_NAME[k]: b[k] for k in present}, **HP)
    assert_written_equal(a, b, present)
    assert not torch.equal(a["params"][2], make(SIZES, device)["params"][2]), "the step moved params"


@pytest.mark.parametrize("device", DEVICES)
def test_rng_state_and_generator_forms_equal_the_list_forms(device):
    a = make(SIZES, device)
    b = clone(a)
    table = lift_ext.TensorTable(a["params"], a["grads"], prior_means=a["prior_means"],
                                 square_avgs=a["square_avgs"])
    state_a = torch.tensor([5, 2**33], dtype=torch.int64, device=device)
    state_b = state_a.clone()
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(2):
        lift_ext.sgld_step(table, rng_state=state_a, **HP)
        lift_ext.sgld_step(b["params"], b["grads"], prior_mean=b["prior_means"],
                           square_avg=b["square_avgs"], rng_state=state_b, **HP)
        lift_ext.sgld_step(table, generator=gen_a, **HP)
        lift_ext.sgld_step(b["params"], b["grads"], prior_mean=b["prior_means"],
                           square_avg=b["square_avgs"], generator=gen_b, **HP)
    assert_written_equal(a, b, ("square_avgs",))
    assert state_a.tolist() == state_b.tolist() == [5, 2**33 + 2]
    assert torch.equal(gen_a.get_state(), gen_b.get_state())
    before = gen_a.get_state()
    lift_ext.sgld_step(table, generator=gen_a, **{**HP, "temperature": 0.0})
    assert torch.equal(gen_a.get_state(), before), "no noise, no draw"


@pytest.mark.parametrize("device", DEVICES)
def test_a_table_of_empty_tensors_steps_nothing_and_advances_rng_state(device):
    table = lift_ext.TensorTable([torch.zeros(0, device=device), torch.zeros(0, device=device)],
                                 [torch.zeros(0, device=device), torch.zeros(0, device=device)])
    state = torch.tensor([3, 4], dtype=torch.int64, device=device)
    lift_ext.sgld_step(table, seed=1, offset=2, **HP)
    lift_ext.sgld_step(table, rng_state=state, **HP)
    assert state.tolist() == [3, 5]


def test_parameters_and_attributes():
    params = [torch.nn.Parameter(torch.randn(5)) for _ in range(3)]
    for p in params:
        p.grad = torch.randn(5)
    table = lift_ext.TensorTable(params, [p.grad for p in params])
    assert len(table) == 3 and table.device == torch.device("cpu") and not table.preconditioned
    assert table.params == tuple(params) and table.prior_means == () and "3 params" in repr(table)
    assert len(table.handle) == 3


def _bad_builds():
    p, g = [torch.randn(4), torch.randn(6)], [torch.randn(4), torch.randn(6)]
    buf = torch.randn(10)
    return [
        (dict(params=p, grads=[g[0], g[1].double()]), RuntimeError, r"grads\[1\] must be float32, bfloat16"),
        (dict(params=p, grads=[g[0], g[1].half()]), RuntimeError, r"all grads must share one dtype"),
        (dict(params=p, grads=g, prior_means=[torch.randn(4), torch.randn(5)]), RuntimeError,
         r"prior_mean\[1\] must have the shape"),
        (dict(params=[p[0], torch.randn(6, 2).t()], grads=[g[0], torch.randn(2, 6)]), RuntimeError,
         r"params\[1\] must be contiguous"),
        (dict(params=[p[0], p[0]], grads=[g[0], g[0].clone()]), RuntimeError,
         r"params\[0\] and params\[1\] share memory"),
        (dict(params=[buf[:6], buf[4:]], grads=[torch.randn(6), torch.randn(6)]), RuntimeError,
         r"params\[0\] and params\[1\] share memory"),
        (dict(params=p, grads=g, accums=[g[0], torch.randn(6)]), RuntimeError,
         r"grads\[0\] and accum\[0\] share memory"),
        (dict(params=[], grads=[]), RuntimeError, "at least one param"),
        (dict(params=p, grads=g[:1]), ValueError, "grads must have one tensor per param"),
        (dict(params=p, grads=None), TypeError, "grads must be a list"),
        (dict(params=p[0], grads=g[0]), TypeError, "params must be a list"),
        (dict(params=p, grads=[g[0], 3.0]), TypeError, r"grads\[1\] must be a Tensor"),
        (dict(params=[torch.nn.parameter.UninitializedParameter()], grads=[torch.randn(1)]), TypeError,
         "no subclass"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_builds())))
def test_bad_lists_are_refused_by_name(case):
    kwargs, error, message = _bad_builds()[case]
    with pytest.raises(error, match=message):
        lift_ext.TensorTable(**kwargs)


def test_table_step_refuses_lists_and_bad_scalars_untouched():
    a = make([5, 7], "cpu")
    table = lift_ext.TensorTable(a["params"], a["grads"], square_avgs=a["square_avgs"])
    before = clone(a)
    for kwargs, error, message in [
            (dict(grads=a["grads"]), ValueError, "grads must be None when params is a TensorTable"),
            (dict(prior_mean=a["prior_means"]), ValueError, "prior_mean must be None"),
            (dict(lr=-1.0), ValueError, "lr must be"), (dict(alpha=1.0), ValueError, "alpha must be"),
            (dict(seed=-1), ValueError, "seed must be"),
            (dict(rng_state=torch.tensor([1, -2])), RuntimeError, "rng_state offset must be in"),
            (dict(rng_state=torch.tensor([1, 2], dtype=torch.int32)), RuntimeError, "rng_state must be int64")]:
        with pytest.raises(error, match=message):
            lift_ext.sgld_step(table, **{**HP, **kwargs})
    assert_written_equal(a, before, ("square_avgs",))
    with pytest.raises(TypeError, match="table must be a torch.classes.lift_ext.TensorTable"):
        ops.sgld_step_table_(object(), seed=0, offset=0, **HP)
    with pytest.raises(RuntimeError, match="rng_state must be on the device of the table"):
        ops.sgld_step_table_(table.handle, rng_state=torch.tensor([1, 2], device="meta"), **HP)
    with pytest.raises(RuntimeError, match="seed and offset must be left at 0"):
        ops.sgld_step_table_(table.handle, seed=1, rng_state=torch.tensor([1, 2]), **HP)
    assert_written_equal(a, before, ("square_avgs",))


def test_the_table_op_is_in_the_dispatcher():
    a = make([5, 7], "cpu")
    b = clone(a)
    table = lift_ext.TensorTable(a["params"], a["grads"])
    torch.ops.lift_ext.sgld_step_table_(table.handle, 1e-3, 1.0, 2.0, 0.9, 1e-2, 4, 5)
    lift_ext.sgld_step(b["params"], b["grads"], seed=4, offset=5, **{**HP, "temperature": 1.0})
    assert_written_equal(a, b, ())
    with torch.autograd.profiler.profile() as prof:
        lift_ext.sgld_step(table, seed=1, offset=1, **HP)
    names = {e.name for e in prof.function_events}
    assert {"lift_ext::sgld_step_table_", "lift_ext::sgld_cpu_kernel"} <= names, names


def test_opcheck_of_what_applies():
    """The table op takes no tensor but the table (whose writes a class argument cannot
    declare), so of opcheck's tests the registration and fake-tensor ones apply; test_schema
    cannot iterate a TorchBind object and test_aot_dispatch_dynamic cannot trace one."""
    a = make([5, 1, 7], "cpu")
    table = lift_ext.TensorTable(a["params"], a["grads"], prior_means=a["prior_means"])
    tests = ("test_autograd_registration", "test_faketensor")
    op = torch.ops.lift_ext.sgld_step_table_.default
    torch.library.opcheck(op, (table.handle, 1e-3, 1.0, 2.0, 0.99, 1e-8, 3, 4), test_utils=tests)
    torch.library.opcheck(op, (table.handle, 1e-3, 1.0, 2.0, 0.99, 1e-8), test_utils=tests)
    state = torch.tensor([3, 4])
    torch.library.opcheck(op, (table.handle, 1e-3, 1.0, 2.0, 0.99, 1e-8, 0, 0, state), test_utils=tests)
    # Another lr: fake mode caches calls by their arguments, and a cache hit compares the
    # table with ==, which a TorchBind object does not define.
    torch.library.opcheck(op, (table.handle, 2e-3, 1.0, 2.0, 0.99, 1e-8), {"rng_state": state},
                          test_utils=tests)


def test_torch_function_modes_see_the_table_op():
    seen = []

    class Record(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    a = make([4], "cpu")
    b = clone(a)
    table = lift_ext.TensorTable(a["params"], a["grads"])
    with Record():
        lift_ext.sgld_step(table, seed=2, offset=3, **HP)
    lift_ext.sgld_step(b["params"], b["grads"], seed=2, offset=3, **HP)
    assert any("sgld_step_table_" in f for f in seen), seen
    assert_written_equal(a, b, ())


def test_torch_compile_traces_the_list_op():
    def step(table, seed):
        lift_ext.sgld_step(table, lr=1e-3, prior_precision=2.0, seed=seed, offset=0)
        return table.params[0] * 1.0

    a = make([513, 7], "cpu")
    b = clone(a)
    table = lift_ext.TensorTable(a["params"], a["grads"], prior_means=a["prior_means"])
    out = torch.compile(step, fullgraph=True)(table, 9)
    lift_ext.sgld_step(b["params"], b["grads"], prior_mean=b["prior_means"], lr=1e-3,
                       prior_precision=2.0, seed=9, offset=0)
    assert torch.equal(out, b["params"][0])
    assert_written_equal(a, b, ())


def test_copies_are_new_tables_over_copied_tensors():
    a = make([5, 3], "cpu")
    table = lift_ext.TensorTable(a["params"], a["grads"], accums=a["accums"])
    for twin in (copy.deepcopy(table), pickle.loads(pickle.dumps(table))):
        assert len(twin) == 2 and twin.params[0] is not table.params[0]
        assert all(torch.equal(x, y) for x, y in zip(twin.params, table.params))
        before = [p.clone() for p in table.params]
        lift_ext.sgld_step(twin, seed=0, offset=0, **HP)
        assert all(torch.equal(x, y) for x, y in zip(table.params, before))
        assert not torch.equal(twin.params[0], before[0])


def _replacements():
    """change(params, grads) functions: each makes a table built before it stale."""
    def data(ps, gs):
        ps[0].data = ps[0].data.clone()

    def dtype(ps, gs):
        ps[1].data = ps[1].data.double()

    def grad(ps, gs):
        ps[1].grad = torch.zeros_like(ps[1])

    def resized(ps, gs):
        ps[0].data.resize_(4096)  # beyond the storage: reallocated in place

    def storage(ps, gs):
        gs[1].untyped_storage().resize_(0)

    def transposed(ps, gs):
        ps[1].data = ps[1].data.view(2, 3).t()

    return [data, dtype, grad, resized, storage, transposed]


@pytest.mark.parametrize("change", _replacements(), ids=lambda f: f.__name__)
def test_is_current_notices_replacements(change):
    params = [torch.nn.Parameter(torch.randn(6)) for _ in range(2)]
    for p in params:
        p.grad = torch.randn(6)
    table = lift_ext.TensorTable(params, [p.grad for p in params])
    assert table.is_current()
    with torch.no_grad():
        params[0].add_(1.0)  # in place: still current
        params[1].grad.mul_(2.0)
    with torch.no_grad():  # Parameters: leaves that require grad
        lift_ext.sgld_step(table, seed=0, offset=0, **HP)
    assert table.is_current() and table.is_current(params)
    with pytest.raises(RuntimeError, match="use_count"):  # torch refuses to swap a held tensor
        torch.utils.swap_tensors(params[0], torch.nn.Parameter(torch.randn(6)))
    change(params, [p.grad for p in params])
    assert not table.is_current()


def test_is_current_with_a_group():
    """The optimizer's question: are the group's params that have a grad exactly the table's?"""
    params = [torch.nn.Parameter(torch.randn(3)) for _ in range(4)]
    for p in params[:3]:
        p.grad = torch.randn(3)
    table = lift_ext.TensorTable(params[:3], [p.grad for p in params[:3]])
    assert table.is_current(params) and table.is_current(iter(params))  # params[3]: no grad
    assert not table.is_current(params[::-1]) and not table.is_current(params[:2])
    params[3].grad = torch.randn(3)
    assert not table.is_current(params) and table.is_current()
    params[3].grad = None
    params[0].grad = None
    assert not table.is_current(params) and not table.is_current()
    explicit = lift_ext.TensorTable(params[1:3], [torch.randn(3), torch.randn(3)])
    params[1].grad = torch.randn(3)  # grads given apart from .grad are not tied to it
    assert explicit.is_current() and not explicit.is_current(params[1:3])


def test_table_step_releases_the_gil():
    """Another Python thread runs while a long CPU step through a table is in its kernel."""
    from test_ops_dispatch import progress_during

    def make_call(n):
        table = lift_ext.TensorTable([torch.zeros(n)], [torch.zeros(n)])
        return lambda: ops.sgld_step_table_(table.handle, lr=1e-3, temperature=1.0, prior_precision=0.0,
                                            alpha=0.99, eps=1e-8, seed=1, offset=1)

    assert progress_during(make_call)


@requires_cuda
def test_cuda_table_agrees_with_the_cpu_on_thousands_of_tensors():
    """One launch over 4096 tensors (the list op needs 10): every tensor matches the CPU."""
    sizes = [(i * 37) % 23 for i in range(4096)]
    cpu = make(sizes, "cpu", torch.bfloat16, seed=5)
    gpu = {k: [t.cuda() for t in v] for k, v in cpu.items()}
    for lists in (cpu, gpu):
        table = lift_ext.TensorTable(lists["params"], lists["grads"], prior_means=lists["prior_means"],
                                     accums=lists["accums"], square_avgs=lists["square_avgs"])
        lift_ext.sgld_step(table, seed=2, offset=5, **HP)
    for key in ("params", "accums", "square_avgs"):
        for a, b in zip(cpu[key], gpu[key]):
            assert torch.equal(a, b.cpu()), key


@requires_cuda
def test_cuda_graph_replays_of_a_table_step_draw_fresh_noise():
    """Capture one table step with rng_state; k replays equal k eager list steps at offsets
    offset .. offset + k - 1, and a table cannot be built during capture."""
    a = make([6144, 6144, 1001, 3], "cuda")
    b = clone(a)
    start = clone(a)
    table = lift_ext.TensorTable(a["params"], a["grads"], prior_means=a["prior_means"])
    state = torch.tensor([21, 7], dtype=torch.int64, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream: the table's other-stream path
        lift_ext.sgld_step(table, rng_state=state, **HP)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        lift_ext.sgld_step(table, rng_state=state, **HP)
        with pytest.raises(RuntimeError, match="cannot be built during CUDA-graph capture"):
            lift_ext.TensorTable(b["params"], b["grads"])
    for p, p0 in zip(a["params"], start["params"]):
        p.copy_(p0)
    state.copy_(torch.tensor([21, 7]))
    for i in range(3):
        graph.replay()
        lift_ext.sgld_step(b["params"], b["grads"], prior_mean=b["prior_means"], seed=21, offset=7 + i, **HP)
        torch.cuda.synchronize()
        assert_written_equal(a, b, ())
    assert state.tolist() == [21, 10]
