"""A battery of bad inputs over every public entry point: `lift_ext.__all__` (sgld_step,
TensorTable, philox_normal, the ops, optim.SGLD, gmm.OnlineGMM) and the public classes and
functions of `lift_ext.lift`. Each case must raise a clear error (ValueError, TypeError, the
RuntimeError of a kernel's named check, or FloatingPointError for a gradient that is not
finite; never a ZeroDivisionError, KeyError, AttributeError, NotImplementedError, ...) AND leave every tensor it was given or holds bitwise as it was,
version counters and torch's default generator included. Bad inputs: wrong dtype, layout
(non-contiguous), shape, device (meta), aliasing (a written tensor shared with another
argument, duplicates in a list), out-of-range and non-finite scalars, huge values (beyond
float32), wrong types. `lift_ext.reference` is left out: it is the pure-PyTorch oracle of the
kernels (no state, no checks by design)."""
from typing import Any, Callable, Dict, List, Tuple

import pytest
import torch

import lift_ext
from lift_ext import ops, validate
from lift_ext.gmm import OnlineGMM
from lift_ext.lift import (ChainStart, LangevinConfig, LiFT, FlatParams, MapConfig, MixtureHierarchy, MixturePrior,
                           PaperHierarchy, SamplingConfig, SGLDGibbs, ShardedLiFT, ShardedSGLDGibbs, TensorTask,
                           adapt, mean_loss_grad)
from lift_ext.optim import SGLD

CLEAR = (ValueError, TypeError, RuntimeError, FloatingPointError)
CASES: List[Tuple[str, Callable[[], Tuple[Any, Callable[[], Any]]]]] = []


def case(name: str):
    """Register make() -> (state, call): `state` holds every tensor / object the call may touch."""
    def register(make):
        CASES.append((name, make))
        return make
    return register


# ---- snapshots: every tensor reachable from the state, bitwise, with its version ------------

def _walk(obj, path: str, out: Dict[str, Any], seen: set) -> None:
    if isinstance(obj, torch.Tensor):
        out[path] = (obj.dtype, tuple(obj.shape), obj._version,
                     obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).clone()
                     if obj.device.type != "meta" else None)
        return
    if isinstance(obj, (int, float, str, bool, type(None))):
        out[path] = obj
        return
    if id(obj) in seen or callable(obj) and not isinstance(obj, torch.nn.Module):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Generator):
        out[path] = obj.get_state().clone()
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _walk(value, f"{path}[{key!r}]", out, seen)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _walk(value, f"{path}[{i}]", out, seen)
    else:
        fields = dict(getattr(obj, "__dict__", {}))
        for slot in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, slot):
                fields[slot] = getattr(obj, slot)
        for key, value in fields.items():
            _walk(value, f"{path}.{key}", out, seen)


def snapshot(state) -> Dict[str, Any]:
    out: Dict[str, Any] = {"default_generator": torch.default_generator.get_state()}
    _walk(state, "state", out, set())
    return out


def assert_same(before: Dict[str, Any], after: Dict[str, Any], name: str) -> None:
    assert before.keys() == after.keys(), f"{name}: the state's structure changed"
    for key, old in before.items():
        new = after[key]
        if isinstance(old, torch.Tensor):
            assert torch.equal(old, new), f"{name}: {key} changed"
        elif isinstance(old, tuple) and len(old) == 4:
            same = old[:3] == new[:3] and (old[3] is None or torch.equal(old[3], new[3]))
            assert same, f"{name}: tensor {key} changed (dtype, shape, version or values)"
        else:
            same = old == new or (isinstance(old, float) and old != old and new != new)  # NaN
            assert same, f"{name}: {key} changed from {old!r} to {new!r}"


# ---- tensor perturbations --------------------------------------------------------------------

def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """A tensor with t's shape, dtype and values (1-D or 2-D, more than one element) whose
    layout is not contiguous: every other element of a wider buffer."""
    if t.dim() == 1:
        out = torch.zeros(2 * t.numel(), dtype=t.dtype)[::2]
    else:
        out = torch.zeros(t.shape[0], 2 * t.shape[1], dtype=t.dtype)[:, ::2]
    out.copy_(t)
    assert not out.is_contiguous()
    return out


def other_dtype(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32 if t.dtype == torch.float64 else torch.float64 if t.is_floating_point()
                else torch.int32)


PERTURB = {
    "dtype": other_dtype,
    "int": lambda t: t.to(torch.int64) if t.is_floating_point() else t.to(torch.float32),
    "layout": noncontiguous,
    "shape": lambda t: torch.zeros(t.numel() + 1, dtype=t.dtype) if t.dim() == 1
    else torch.zeros(t.shape[0], t.shape[1] + 1, dtype=t.dtype),
    "meta": lambda t: torch.empty(t.shape, dtype=t.dtype, device="meta"),
    "not-a-tensor": lambda t: 3.0,
}

BAD_FLOATS = {"nan": float("nan"), "inf": float("inf"), "negative": -1.0, "huge": 1e39,
              "string": "0.1", "none": None}
BAD_INTS = {"negative": -1, "too-big": 2**63, "float": 1.5, "string": "1", "bool": True}


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ---- SGLD: lists, single tensors, tables, the ops, the optimizer ------------------------------

LIST_NAMES = ("params", "grads", "prior_means", "accums", "square_avgs")
SGLD_HP = dict(lr=1e-3, temperature=0.5, prior_precision=2.0, alpha=0.9, eps=1e-6)


def sgld_lists(n: int = 2, size: int = 6) -> Dict[str, List[torch.Tensor]]:
    return {name: [_randn(size, seed=10 * k + i).abs() if name == "square_avgs" else _randn(size, seed=10 * k + i)
                   for i in range(n)] for k, name in enumerate(LIST_NAMES)}


def _public_kwargs(lists):
    return dict(prior_mean=lists["prior_means"], accum=lists["accums"], square_avg=lists["square_avgs"])


def _op_list_call(lists, **scalars):
    hp = {**SGLD_HP, "seed": 1, "offset": 2, **scalars}
    return ops.sgld_step_list_(*(lists[n] for n in LIST_NAMES), **hp)


def _sgld_entry_points():
    """name -> call(lists, **scalar overrides), each a way to step the same lists."""
    return {
        "sgld_step(list)": lambda lists, **kw: lift_ext.sgld_step(
            lists["params"], lists["grads"], **_public_kwargs(lists), **{**SGLD_HP, "seed": 1, **kw}),
        "sgld_step(list, generator)": lambda lists, **kw: lift_ext.sgld_step(
            lists["params"], lists["grads"], **_public_kwargs(lists), **{**SGLD_HP, **kw}),
        "TensorTable": lambda lists, **kw: lift_ext.TensorTable(
            lists["params"], lists["grads"], prior_means=lists["prior_means"], accums=lists["accums"],
            square_avgs=lists["square_avgs"]),
        "ops.sgld_step_list_": _op_list_call,
        "ops.check_sgld_lists": lambda lists, **kw: ops.check_sgld_lists(*(lists[n] for n in LIST_NAMES)),
        "ops.sgld_step_list_(rng_state)": lambda lists, **kw: ops.sgld_step_list_(
            *(lists[n] for n in LIST_NAMES), rng_state=torch.tensor([1, 2]), **SGLD_HP),
    }


def _add_sgld_tensor_cases():
    for entry, call in _sgld_entry_points().items():
        for name in LIST_NAMES:
            for kind, perturb in PERTURB.items():
                if name == "grads" and kind == "dtype":
                    continue  # float64 grads: covered by "int" (bf16 / fp16 are accepted)
                if entry == "ops.check_sgld_lists" and kind in ("not-a-tensor",):
                    continue

                @case(f"{entry} {name}[1] {kind}")
                def make(call=call, name=name, perturb=perturb):
                    lists = sgld_lists()
                    lists[name][1] = perturb(lists[name][1])
                    return lists, lambda: call(lists)
            for alias in ("params", "accums", "square_avgs"):  # a written tensor shared
                if alias == name or entry == "ops.check_sgld_lists":  # metadata only: no addresses
                    continue

                @case(f"{entry} {name}[1] is {alias}[1]")
                def make(call=call, name=name, alias=alias):
                    lists = sgld_lists()
                    lists[name][1] = lists[alias][1]
                    return lists, lambda: call(lists)

        if entry == "ops.check_sgld_lists":
            continue

        @case(f"{entry} duplicate params")
        def make(call=call):
            lists = sgld_lists()
            lists["params"][1] = lists["params"][0]
            return lists, lambda: call(lists)

        @case(f"{entry} overlapping params")
        def make(call=call):
            lists = sgld_lists()
            base = _randn(12)
            lists["params"][0], lists["params"][1] = base[:6], base[3:9]
            return (lists, base), lambda: call(lists)

        @case(f"{entry} one grad too few")
        def make(call=call):
            lists = sgld_lists()
            lists["grads"].pop()
            return lists, lambda: call(lists)

        @case(f"{entry} empty lists")
        def make(call=call):
            lists = {name: [] for name in LIST_NAMES}
            return lists, lambda: call(lists)


def _add_sgld_scalar_cases():
    scalar_entries = {k: v for k, v in _sgld_entry_points().items()
                      if k not in ("TensorTable", "ops.check_sgld_lists", "ops.sgld_step_list_(rng_state)")}
    table_call = lambda lists, **kw: lift_ext.sgld_step(  # noqa: E731
        lift_ext.TensorTable(lists["params"], lists["grads"], prior_means=lists["prior_means"],
                             accums=lists["accums"], square_avgs=lists["square_avgs"]),
        **{**SGLD_HP, "seed": 1, **kw})
    scalar_entries["sgld_step(table)"] = table_call
    for entry, call in scalar_entries.items():
        for hp in ("lr", "temperature", "prior_precision", "alpha", "eps"):
            for kind, value in BAD_FLOATS.items():
                if hp == "prior_precision" and kind == "huge":
                    value = 1e300

                @case(f"{entry} {hp}={kind}")
                def make(call=call, hp=hp, value=value):
                    lists = sgld_lists()
                    return lists, lambda: call(lists, **{hp: value})
        for kind, value in {"alpha=1": ("alpha", 1.0), "eps=0": ("eps", 0.0), "eps tiny": ("eps", 1e-50)}.items():
            @case(f"{entry} {kind}")
            def make(call=call, value=value):
                lists = sgld_lists()
                return lists, lambda: call(lists, **{value[0]: value[1]})
        if entry.startswith("sgld_step(list, generator)"):
            for kind, value in {"int": 5, "string": "gen"}.items():
                @case(f"{entry} generator={kind}")
                def make(call=call, value=value):
                    lists = sgld_lists()
                    return lists, lambda: call(lists, generator=value)
            continue
        for which in ("seed", "offset"):
            for kind, value in BAD_INTS.items():
                if kind == "bool" and entry.startswith("ops."):
                    continue  # the op takes Python ints, and True is one; the public API refuses it
                @case(f"{entry} {which}={kind}")
                def make(call=call, which=which, value=value):
                    lists = sgld_lists()
                    return lists, lambda: call(lists, **{which: value})


def _add_rng_state_cases():
    bad = {"int32": lambda: torch.tensor([1, 2], dtype=torch.int32), "shape": lambda: torch.tensor([1, 2, 3]),
           "layout": lambda: noncontiguous(torch.tensor([1, 2])), "negative seed": lambda: torch.tensor([-1, 2]),
           "negative offset": lambda: torch.tensor([1, -2]), "offset at 2^63 - 1": lambda: torch.tensor([1, 2**63 - 1]),
           "meta": lambda: torch.empty(2, dtype=torch.int64, device="meta"), "list": lambda: [1, 2]}
    for kind, state in bad.items():
        for form in ("list", "table"):
            @case(f"sgld_step({form}, rng_state {kind})")
            def make(form=form, state=state):
                lists = sgld_lists()
                rng = state()
                if form == "table":
                    table = lift_ext.TensorTable(lists["params"], lists["grads"])
                    return (lists, rng), lambda: lift_ext.sgld_step(table, lr=1e-3, rng_state=rng)
                return (lists, rng), lambda: lift_ext.sgld_step(lists["params"], lists["grads"], lr=1e-3,
                                                                rng_state=rng)


def _add_optimizer_cases():
    def model():
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 2)
        for p in net.parameters():
            p.grad = torch.randn_like(p)
        return net

    for hp, values in {"lr": BAD_FLOATS, "temperature": BAD_FLOATS, "prior_precision": BAD_FLOATS,
                       "alpha": {"one": 1.0, "nan": float("nan")}, "eps": {"zero": 0.0, "tiny": 1e-50},
                       "preconditioned": {"int": 1}, "seed": BAD_INTS}.items():
        for kind, value in values.items():
            @case(f"optim.SGLD({hp}={kind})")
            def make(hp=hp, value=value):
                net = model()
                return net, lambda: SGLD(net.parameters(), **{"lr": 1e-3, "preconditioned": True, hp: value})

    for kind, grad in {"layout": lambda p: noncontiguous(p.grad) if p.dim() == 2 else p.grad,
                       "shared": None}.items():
        @case(f"optim.SGLD.step grad {kind}")
        def make(grad=grad):
            net = model()
            opt = SGLD(net.parameters(), lr=1e-3, preconditioned=True, seed=1)
            opt.step()
            if grad is None:  # the bias's grad is the weight's memory, which the step writes
                net.bias.grad = net.weight.data.view(-1)[:2]
            else:
                net.weight.grad = grad(net.weight)
            return (net, opt), opt.step

    @case("optim.SGLD.step second group bad lr")
    def make():
        net = model()
        opt = SGLD([{"params": [net.weight]}, {"params": [net.bias], "lr": 2e-3}], lr=1e-3, seed=1)
        opt.param_groups[1]["lr"] = float("nan")
        return (net, opt), opt.step

    for kind, spoil in {"no rng": lambda s: s.pop("rng"), "float seed": lambda s: s["rng"].update(seed=2.5),
                        "negative offset": lambda s: s["rng"].update(offset=-1),
                        "lr nan": lambda s: s["param_groups"][0].update(lr=float("nan")),
                        "square_avg NaN": lambda s: s["state"][0].update(square_avg=torch.full((2, 3), float("nan"))),
                        "square_avg shape": lambda s: s["state"][0].update(square_avg=torch.zeros(3)),
                        "groups": lambda s: s.update(param_groups=5)}.items():
        @case(f"optim.SGLD.load_state_dict {kind}")
        def make(spoil=spoil):
            net = model()
            opt = SGLD(net.parameters(), lr=1e-3, preconditioned=True, seed=1)
            opt.step()
            saved = opt.state_dict()
            saved = {**saved, "rng": dict(saved["rng"]), "state": {k: dict(v) for k, v in saved["state"].items()},
                     "param_groups": [dict(g) for g in saved["param_groups"]]}
            spoil(saved)
            return (net, opt), lambda: opt.load_state_dict(saved)


# ---- noise, phi and the mixture ops -----------------------------------------------------------

def _add_noise_cases():
    for kind, kwargs in {"numel -1": dict(numel=-1), "numel float": dict(numel=2.0), "seed -1": dict(seed=-1),
                         "offset 2^63": dict(offset=2**63), "seed string": dict(seed="1"),
                         "device": dict(device="nope")}.items():
        @case(f"philox_normal {kind}")
        def make(kwargs=kwargs):
            return None, lambda: lift_ext.philox_normal(**{"numel": 4, "seed": 1, "offset": 0, **kwargs})
    for kind, perturb in PERTURB.items():
        if kind in ("shape", "meta"):  # any shape is fine; a meta out is a meta call
            continue

        @case(f"ops.philox_normal_ out {kind}")
        def make(perturb=perturb):
            out = perturb(torch.zeros(3, 4))
            return out, lambda: ops.philox_normal_(out, seed=1, offset=0)
    for kind, perturb in PERTURB.items():
        if kind in ("shape", "meta"):  # any multiple of 4 is fine; a meta out is a meta call
            continue

        @case(f"ops.fill_normals_on_ out {kind}")
        def make(perturb=perturb):
            out = perturb(torch.zeros(3, 4))
            return out, lambda: ops.fill_normals_on_(out, isa="generic", seed=1, offset=0, first_group=0)
    for kind, kwargs in {"isa": dict(isa="sse9"), "seed -1": dict(seed=-1), "offset 2^64": dict(offset=2**64),
                         "first_group float": dict(first_group=1.5), "numel 6": dict(out=torch.zeros(6))}.items():
        @case(f"ops.fill_normals_on_ {kind}")
        def make(kwargs=kwargs):
            out = kwargs.get("out", torch.zeros(8))
            words = {k: v for k, v in kwargs.items() if k != "out"}
            return out, lambda: ops.fill_normals_on_(out, **{"isa": "generic", "seed": 1, "offset": 0,
                                                             "first_group": 0, **words})
    for kind, (counters, keys) in {
            "int32": (torch.zeros(2, 4, dtype=torch.int32), torch.zeros(2, 2, dtype=torch.int64)),
            "shape": (torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 2, dtype=torch.int64)),
            "rows": (torch.zeros(2, 4, dtype=torch.int64), torch.zeros(3, 2, dtype=torch.int64)),
            "layout": (noncontiguous(torch.zeros(2, 4, dtype=torch.int64)), torch.zeros(2, 2, dtype=torch.int64))}.items():
        @case(f"ops.philox4x32_10 {kind}")
        def make(counters=counters, keys=keys):
            return (counters, keys), lambda: ops.philox4x32_10(counters, keys)


PHI_KW = dict(lr=1e-3, temperature=1.0, sigma=1.0, beta=0.5, num_tasks=3, gibbs=False, seed=0, offset=0)


def _add_phi_cases():
    def tensors():
        return {"phi": _randn(5, seed=1), "task_sum": _randn(5, seed=2), "prior_mean": _randn(5, seed=3)}

    def call(t, **kw):
        return ops.phi_step_(t["phi"], t["task_sum"], t["prior_mean"], **{**PHI_KW, **kw})

    for name in ("phi", "task_sum", "prior_mean"):
        for kind, perturb in PERTURB.items():
            @case(f"ops.phi_step_ {name} {kind}")
            def make(name=name, perturb=perturb):
                t = tensors()
                t[name] = perturb(t[name])
                return t, lambda: call(t)
    for name in ("task_sum", "prior_mean"):
        @case(f"ops.phi_step_ {name} is phi (shifted)")
        def make(name=name):
            base = _randn(6)
            t = tensors()
            t["phi"], t[name] = base[:5], base[1:]
            return (t, base), lambda: call(t)
    for hp, values in {"lr": BAD_FLOATS, "temperature": BAD_FLOATS, "sigma": {**BAD_FLOATS, "tiny": 1e-30},
                       "beta": {**BAD_FLOATS, "tiny": 1e-30}, "num_tasks": {"negative": -1},
                       "seed": {"negative": -1}}.items():
        for kind, value in values.items():
            @case(f"ops.phi_step_ {hp}={kind}")
            def make(hp=hp, value=value):
                t = tensors()
                return t, lambda: call(t, **{hp: value})


def _mixture_tensors(k=2, d=3, b=4):
    return {"x": _randn(b, d, seed=1), "means": _randn(k, d, seed=2), "m2": _randn(k, d, seed=3).abs(),
            "counts": torch.tensor([3.0, 2.0], dtype=torch.float64),
            "resp": torch.full((b, k), 0.5, dtype=torch.float64),
            "grad": _randn(d, seed=4), "theta": _randn(d, seed=5), "resp1": torch.tensor([0.5, 0.5], dtype=torch.float64)}


MIXTURE_OPS = {
    "ops.gmm_estep": (("x", "means", "m2", "counts"),
                      lambda t, **kw: ops.gmm_estep(t["x"], t["means"], t["m2"], t["counts"], **{"reg": 1e-3, **kw})),
    "ops.gmm_mstep_": (("means", "m2", "counts", "x", "resp"),
                       lambda t, **kw: ops.gmm_mstep_(t["means"], t["m2"], t["counts"], t["x"], t["resp"])),
    "ops.gmm_prior_grad_": (("grad", "theta", "means", "m2", "counts", "resp1"),
                            lambda t, **kw: ops.gmm_prior_grad_(t["grad"], t["theta"], t["means"], t["m2"], t["counts"],
                                                                t["resp1"], **{"reg": 1e-3, "scale": 1.0, **kw})),
}


def _add_mixture_op_cases():
    for entry, (names, call) in MIXTURE_OPS.items():
        for name in names:
            for kind, perturb in PERTURB.items():
                @case(f"{entry} {name} {kind}")
                def make(name=name, perturb=perturb, call=call):
                    t = _mixture_tensors()
                    t[name] = perturb(t[name])
                    return t, lambda: call(t)
        for kind, value in {"zero": 0.0, "nan": float("nan"), "tiny": 1e-50, "huge": 1e39, "string": "1"}.items():
            if entry == "ops.gmm_mstep_":
                continue

            @case(f"{entry} reg={kind}")
            def make(value=value, call=call):
                t = _mixture_tensors()
                return t, lambda: call(t, reg=value)

    aliases = {"ops.gmm_mstep_": [("m2", "means"), ("counts", "resp"), ("x", "means")],
               "ops.gmm_prior_grad_": [("theta", "grad")]}
    for entry, pairs in aliases.items():
        for name, alias in pairs:
            @case(f"{entry} {name} is {alias}")
            def make(entry=entry, name=name, alias=alias):
                t = _mixture_tensors()
                if (name, alias) == ("counts", "resp"):
                    t["counts"] = t["resp"][0]
                elif (name, alias) == ("x", "means"):
                    t["x"] = t["means"][:1]
                    t["resp"] = t["resp"][:1]
                else:
                    t[name] = t[alias]
                return t, lambda: MIXTURE_OPS[entry][1](t)

    @case("ops.gmm_prior_grad_ scale=nan")
    def make():
        t = _mixture_tensors()
        return t, lambda: MIXTURE_OPS["ops.gmm_prior_grad_"][1](t, scale=float("nan"))

    values = {"ops.gmm_estep counts all 0": ("counts", lambda c: c.zero_()),
              "ops.gmm_estep counts nan": ("counts", lambda c: c.fill_(float("nan"))),
              "ops.gmm_mstep_ resp nan": ("resp", lambda r: r[1, 0].fill_(float("nan"))),
              "ops.gmm_mstep_ resp negative": ("resp", lambda r: r[2, 1].fill_(-0.5)),
              "ops.gmm_prior_grad_ resp1 nan": ("resp1", lambda r: r[0].fill_(float("nan"))),
              "ops.gmm_prior_grad_ resp1 negative": ("resp1", lambda r: r[1].fill_(-1.0))}
    for name, (key, spoil) in values.items():
        @case(name)
        def make(entry=name.split()[0], key=key, spoil=spoil):
            t = _mixture_tensors()
            spoil(t[key])
            return t, lambda: MIXTURE_OPS[entry][1](t)


def _add_online_gmm_cases():
    def fitted():
        gmm = OnlineGMM(2, 3, warmup=2)
        gmm.update(_randn(4, 3, seed=7))
        return gmm

    for kind, kwargs in {"k=0": dict(n_components=0), "dim float": dict(dim=3.0), "reg nan": dict(reg_covar=float("nan")),
                         "reg tiny": dict(reg_covar=1e-50), "reg huge": dict(reg_covar=1e39),
                         "warmup < k": dict(warmup=1), "device": dict(device="nope")}.items():
        @case(f"OnlineGMM({kind})")
        def make(kwargs=kwargs):
            return None, lambda: OnlineGMM(**{"n_components": 2, "dim": 3, **kwargs})
    bad_x = {"nan": torch.tensor([[0.0, float("nan"), 1.0]]), "inf": torch.tensor([0.0, float("inf"), 1.0]),
             "huge float64": torch.tensor([[1e300, 0.0, 0.0]], dtype=torch.float64), "shape": torch.zeros(2, 4),
             "3-D": torch.zeros(1, 1, 3), "list": [0.0, 1.0, 2.0], "complex": torch.zeros(3, dtype=torch.complex64),
             "meta": torch.empty(1, 3, device="meta"), "far": torch.tensor([[1e20, 0.0, 0.0]])}
    for method in ("update", "log_prob", "responsibilities", "predict"):
        for kind, x in bad_x.items():

            @case(f"OnlineGMM.{method}(x {kind})")
            def make(method=method, x=x):
                gmm = fitted()
                return (gmm, x), lambda: getattr(gmm, method)(x)

    @case("OnlineGMM.update(far sample)")
    def make():  # finite but so far from every component that every density underflows
        gmm = fitted()
        far = torch.full((1, 3), 3e38)
        try:
            gmm.update(far)
        except ValueError:
            pass
        else:  # accepted: the mixture must stay finite (checked, then a refused call follows)
            assert all(bool(torch.isfinite(t).all()) for t in (gmm.means, gmm.variances, gmm.weights))
        return gmm, lambda: gmm.update(torch.tensor([[float("nan"), 0.0, 0.0]]))

    for kind, kwargs in {"n -1": dict(n=-1), "n float": dict(n=2.0), "generator": dict(n=2, generator=5)}.items():
        @case(f"OnlineGMM.sample({kind})")
        def make(kwargs=kwargs):
            gmm = fitted()
            return gmm, lambda: gmm.sample(**kwargs)

    for kind, (grad, theta, beta) in {
            "grad float64": (torch.zeros(3, dtype=torch.float64), torch.zeros(3), 0.5),
            "theta shape": (torch.zeros(3), torch.zeros(4), 0.5), "beta -1": (torch.zeros(3), torch.zeros(3), -1.0),
            "beta nan": (torch.zeros(3), torch.zeros(3), float("nan")),
            "theta nan": (torch.zeros(3), torch.tensor([0.0, float("nan"), 0.0]), 0.5),
            "theta far": (torch.zeros(3), torch.tensor([1e20, 0.0, 0.0]), 0.5),
            "grad is theta": (None, None, 0.5)}.items():
        @case(f"OnlineGMM.add_prior_grad_ {kind}")
        def make(grad=grad, theta=theta, beta=beta):
            gmm = fitted()
            if grad is None:
                grad = theta = torch.zeros(3)
            return (gmm, grad, theta), lambda: gmm.add_prior_grad_(grad, theta, beta=beta)

    for kind, spoil in {"keys": lambda s: s.pop("m2"), "means nan": lambda s: s["means"].fill_(float("nan")),
                        "counts negative": lambda s: s["counts"].fill_(-1.0),
                        "reg tiny": lambda s: s.update(reg_covar=torch.tensor(1e-50, dtype=torch.float64)),
                        "shape": lambda s: s.update(means=torch.zeros(3, 3)), "not a dict": None,
                        "means 1e300 float64": lambda s: s.update(means=torch.full((2, 3), 1e300, dtype=torch.float64)),
                        "m2 1e300 float64": lambda s: s.update(m2=torch.full((2, 3), 1e300, dtype=torch.float64)),
                        "counts 1e-320": lambda s: s["counts"][0].fill_(1e-320),
                        "counts 1e-300": lambda s: s["counts"][0].fill_(1e-300),
                        "counts two 1e308": lambda s: s["counts"].fill_(1e308)}.items():
        @case(f"OnlineGMM.load_state_dict {kind}")
        def make(spoil=spoil):
            gmm = fitted()
            state = gmm.state_dict()
            if spoil is None:
                state = [1, 2]
            else:
                spoil(state)
            return gmm, lambda: gmm.load_state_dict(state)


# ---- lift_ext.lift -------------------------------------------------------------------------------

def _grad_fn(i, theta):
    return theta - float(i)


SAMPLER_KW = dict(langevin=LangevinConfig(lr=1e-3),
                  hierarchy=PaperHierarchy(sigma=1.0, beta=0.5, phi_update="langevin"), seed=0)


def _add_sampler_cases():
    # a config refuses a bad field on construction: these are built inside the call
    bad_configs = {
        "sigma 0": lambda: dict(hierarchy=PaperHierarchy(sigma=0.0, beta=0.5, phi_update="langevin")),
        "sigma huge": lambda: dict(hierarchy=PaperHierarchy(sigma=1e39, beta=0.5, phi_update="langevin")),
        "sigma tiny": lambda: dict(hierarchy=PaperHierarchy(sigma=1e-50, beta=0.5, phi_update="langevin")),
        "beta nan": lambda: dict(hierarchy=PaperHierarchy(sigma=1.0, beta=float("nan"), phi_update="langevin")),
        "lr string": lambda: dict(langevin=LangevinConfig(lr="0.1")),
        "lr inf": lambda: dict(langevin=LangevinConfig(lr=float("inf"))),
        "temperature -1": lambda: dict(langevin=LangevinConfig(lr=1e-3, temperature=-1.0)),
        "eps 0": lambda: dict(langevin=LangevinConfig(lr=1e-3, eps=0.0, preconditioned=True)),
        "alpha 1": lambda: dict(langevin=LangevinConfig(lr=1e-3, alpha=1.0)),
        "thin 0": lambda: dict(hierarchy=PaperHierarchy(sigma=1.0, beta=0.5, phi_update="langevin", thin=0)),
        "burn_in -1": lambda: dict(hierarchy=PaperHierarchy(sigma=1.0, beta=0.5, phi_update="langevin", burn_in=-1)),
        "gmm_components 0": lambda: dict(hierarchy=PaperHierarchy(sigma=1.0, beta=0.5, phi_update="langevin",
                                                                  gmm_components=0)),
        "tasks_per_step": lambda: dict(langevin=LangevinConfig(lr=1e-3, tasks_per_step=5)),
        "phi_update": lambda: dict(hierarchy=PaperHierarchy(sigma=1.0, beta=0.5, phi_update="nope")),
        "preconditioned int": lambda: dict(langevin=LangevinConfig(lr=1e-3, preconditioned=1))}
    # the other arguments are built before the call, so that the snapshot covers their tensors
    bad_arguments = {
        "seed float": lambda: dict(seed=1.5), "hierarchy": lambda: dict(hierarchy="nope"),
        "langevin dict": lambda: dict(langevin=dict(lr=1e-3)),
        "start.thetas nan": lambda: dict(start=ChainStart(thetas=torch.full((3,), float("nan")))),
        "start.thetas shape": lambda: dict(start=ChainStart(thetas=torch.zeros(4))),
        "start.prior_mean inf": lambda: dict(start=ChainStart(prior_mean=torch.full((3,), float("inf")))),
        "start.prior_mean list": lambda: dict(start=ChainStart(prior_mean=[0.0, 0.0, 0.0])),
        "start.thetas float64 1e300": lambda: dict(start=ChainStart(thetas=torch.full((3,), 1e300,
                                                                                       dtype=torch.float64))),
        "start.thetas rows float64 1e300": lambda: dict(start=ChainStart(thetas=torch.full((4, 3), 1e300,
                                                                                            dtype=torch.float64))),
        "start.prior_mean float64 1e300": lambda: dict(start=ChainStart(prior_mean=torch.full((3,), 1e300,
                                                                                               dtype=torch.float64))),
        "device": lambda: dict(device="nope")}
    for kind, config_kwargs in bad_configs.items():
        for cls in (SGLDGibbs, ShardedSGLDGibbs):
            @case(f"{cls.__name__}({kind})")
            def make(config_kwargs=config_kwargs, cls=cls):
                return None, lambda: cls(4, 3, _grad_fn, **{**SAMPLER_KW, **config_kwargs()})
    for kind, arguments in bad_arguments.items():
        for cls in (SGLDGibbs, ShardedSGLDGibbs):
            @case(f"{cls.__name__}({kind})")
            def make(arguments=arguments, cls=cls):
                kwargs = arguments()
                return kwargs, lambda: cls(4, 3, _grad_fn, **{**SAMPLER_KW, **kwargs})
    for kind, grad_fn in {"shape": lambda i, t: torch.zeros(4), "list": lambda i, t: [0.0] * 3,
                          "meta": lambda i, t: torch.empty(3, device="meta"),
                          "raises": lambda i, t: (_ for _ in ()).throw(ValueError("grad_fn failed")),
                          "nan": lambda i, t: torch.full((3,), float("nan")),
                          "inf": lambda i, t: torch.tensor([0.0, float("inf"), 0.0])}.items():
        for burn_in in (0, 100):  # 100: no phi sample reaches the OnlineGMM
            @case(f"SGLDGibbs.step grad_fn {kind} burn_in={burn_in}")
            def make(grad_fn=grad_fn, burn_in=burn_in):
                sampler = SGLDGibbs(4, 3, _grad_fn, langevin=LangevinConfig(lr=1e-3, preconditioned=True),
                                    hierarchy=PaperHierarchy(sigma=1.0, beta=0.5, phi_update="langevin",
                                                             burn_in=burn_in), seed=0)
                sampler.run(3, progress=False)
                sampler.grad_fn = grad_fn
                return sampler, sampler.step

    for kind, value in {"negative": -1, "float": 1.0, "string": "3"}.items():
        @case(f"SGLDGibbs.run(num_steps {kind})")
        def make(value=value):
            sampler = SGLDGibbs(4, 3, _grad_fn, **SAMPLER_KW)
            return sampler, lambda: sampler.run(value, progress=False)


def _tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))


def _add_flat_and_prior_cases():
    for kind, select in {"unknown name": ["nope"], "nothing": [], "int buffer": "int"}.items():
        @case(f"FlatParams(select {kind})")
        def make(select=select):
            model = _tiny_model()
            if select == "int":
                model.register_parameter("count", torch.nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False))
                select = ["0.weight", "count"]
            return model, lambda: FlatParams(model, select)
    for kind, theta in {"nan": "nan", "shape": torch.zeros(3), "list": [0.0], "string": "theta"}.items():
        for method in ("load_", "views", "call"):
            if method != "load_" and kind == "nan":
                continue

            @case(f"FlatParams.{method}(theta {kind})")
            def make(theta=theta, method=method):
                model = _tiny_model()
                flat = FlatParams(model)
                value = torch.full((flat.dim,), float("nan")) if isinstance(theta, str) and theta == "nan" else theta
                return (model, flat), lambda: getattr(flat, method)(value)

    def prior_parts():
        return {"means": _randn(2, 3), "variances": _randn(2, 3).abs(),
                "weights": torch.tensor([0.25, 0.75], dtype=torch.float64), "beta": 0.5}

    for kind, spoil in {"means nan": lambda p: p["means"].fill_(float("nan")),
                        "variances negative": lambda p: p["variances"].fill_(-1.0),
                        "weights sum": lambda p: p["weights"].fill_(0.25),
                        "weights zero": lambda p: p["weights"].copy_(torch.tensor([0.0, 1.0])),
                        "beta 0": lambda p: p.update(beta=0.0), "beta huge": lambda p: p.update(beta=1e39),
                        "means 1-D": lambda p: p.update(means=torch.zeros(3)),
                        "weights shape": lambda p: p.update(weights=torch.ones(3, dtype=torch.float64) / 3)}.items():
        @case(f"MixturePrior({kind})")
        def make(spoil=spoil):
            parts = prior_parts()
            spoil(parts)
            return parts, lambda: MixturePrior(**parts)
    for kind, (grad, theta) in {"grad float64": (torch.zeros(3, dtype=torch.float64), torch.zeros(3)),
                                "theta shape": (torch.zeros(3), torch.zeros(4)), "grad is theta": (None, None),
                                "grad layout": (noncontiguous(torch.zeros(3)), torch.zeros(3))}.items():
        @case(f"MixturePrior.add_prior_grad_ {kind}")
        def make(grad=grad, theta=theta):
            prior = MixturePrior(**prior_parts())
            if grad is None:
                grad = theta = torch.zeros(3)
            return (prior, grad, theta), lambda: prior.add_prior_grad_(grad, theta)
    for method in ("log_prob", "responsibilities"):
        @case(f"MixturePrior.{method}(theta shape)")
        def make(method=method):
            prior = MixturePrior(**prior_parts())
            theta = torch.zeros(4)
            return (prior, theta), lambda: getattr(prior, method)(theta)


def _add_adapt_cases():
    def setup():
        model = _tiny_model()
        flat = FlatParams(model)
        task = TensorTask(_randn(8, 3), torch.zeros(8, dtype=torch.int64), batch_size=4)
        return model, flat, task

    def loss_fn(call, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(call(x), y)

    # a config refuses a bad field on construction: these are built inside the call
    bad_configs = {"steps -1": lambda: MapConfig(steps=-1), "lr string": lambda: MapConfig(steps=2, lr="0.1"),
                   "lr huge": lambda: MapConfig(steps=2, lr=1e39), "thin 0": lambda: SamplingConfig(steps=2, thin=0),
                   "patience 0": lambda: MapConfig(steps=2, patience=0),
                   "eval_every 0": lambda: MapConfig(steps=2, eval_every=0),
                   "tol nan": lambda: MapConfig(steps=2, tol=float("nan")),
                   "temperature -1": lambda: SamplingConfig(steps=2, temperature=-1.0),
                   "preconditioned int": lambda: MapConfig(steps=2, preconditioned=1),
                   "burn_in -1": lambda: SamplingConfig(steps=2, burn_in=-1)}
    for kind, config in bad_configs.items():
        @case(f"adapt({kind})")
        def make(config=config):
            model, flat, task = setup()
            start = flat.vector.clone()
            return (model, flat, task, start), lambda: adapt(flat, task, loss_fn, start=start, config=config())
    # the other arguments are built before the call, so that the snapshot covers their tensors
    bad_arguments = {"config": lambda flat: dict(config="nope"), "start": lambda flat: dict(start="nope"),
                     "seed float": lambda flat: dict(seed=1.5),
                     "start nan": lambda flat: dict(start=torch.full((flat.dim,), float("nan"))),
                     "start shape": lambda flat: dict(start=torch.zeros(2)),
                     "start best_component without a prior": lambda flat: dict(start="best_component"),
                     "prior type": lambda flat: dict(prior=5),
                     "prior OnlineGMM": lambda flat: dict(prior=OnlineGMM(1, flat.dim))}
    for kind, arguments in bad_arguments.items():
        @case(f"adapt({kind})")
        def make(arguments=arguments):
            model, flat, task = setup()
            args = {"start": flat.vector.clone(), "config": MapConfig(steps=2), **arguments(flat)}
            return (model, flat, task, args), lambda: adapt(flat, task, loss_fn, **args)


def _add_trainer_cases():
    def loss_fn(call, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(call(x), y)

    # a config refuses a bad field on construction: these are built inside the call
    bad_configs = {
        "sigma 0": lambda: dict(hierarchy=PaperHierarchy(sigma=0.0)),
        "beta nan": lambda: dict(hierarchy=PaperHierarchy(beta=float("nan"))),
        "lr string": lambda: dict(langevin=LangevinConfig(lr="0.1")),
        "lr huge": lambda: dict(langevin=LangevinConfig(lr=1e300)),
        "gmm_components 0": lambda: dict(hierarchy=PaperHierarchy(gmm_components=0)),
        "lr 1e39": lambda: dict(langevin=LangevinConfig(lr=1e39)),
        "lr_phi string": lambda: dict(hierarchy=PaperHierarchy(phi_update="langevin", lr_phi="0.1")),
        "sigma 1e-20": lambda: dict(hierarchy=PaperHierarchy(sigma=1e-20)),
        "shift_lr -1": lambda: dict(hierarchy=MixtureHierarchy(shift_lr=-1.0)),
        "z_update nope": lambda: dict(hierarchy=MixtureHierarchy(z_update="nope")),
        "likelihood with paper": lambda: dict(hierarchy=PaperHierarchy(z_update="likelihood"))}
    # the other arguments are built before the call, so that the snapshot covers their tensors
    bad_arguments = {
        "start.prior_mean string": lambda: dict(start=ChainStart(prior_mean="nope")), "no tasks": "no tasks",
        "start.thetas nan": lambda: dict(start=ChainStart(thetas=torch.full((3, 26), float("nan")))),
        "unknown option": lambda: dict(nope=1), "langevin missing": lambda: dict(langevin=None),
        "hierarchy string": lambda: dict(hierarchy="paper")}

    def model_and_tasks():
        model = _tiny_model()
        tasks = [TensorTask(_randn(8, 3, seed=i), torch.zeros(8, dtype=torch.int64), batch_size=4) for i in range(3)]
        return model, tasks

    for kind, config_kwargs in bad_configs.items():
        for cls in (LiFT, ShardedLiFT):
            @case(f"{cls.__name__}({kind})")
            def make(config_kwargs=config_kwargs, cls=cls):
                model, tasks = model_and_tasks()
                return (model, tasks), lambda: cls(model, tasks, loss_fn, **{"langevin": LangevinConfig(lr=1e-3),
                                                                            **config_kwargs()})
    for kind, arguments in bad_arguments.items():
        for cls in (LiFT, ShardedLiFT):
            @case(f"{cls.__name__}({kind})")
            def make(arguments=arguments, cls=cls):
                model, tasks = model_and_tasks()
                if arguments == "no tasks":
                    tasks, kwargs = [], dict(langevin=LangevinConfig(lr=1e-3))
                else:
                    kwargs = {"langevin": LangevinConfig(lr=1e-3), **arguments()}
                return (model, tasks, kwargs), lambda: cls(model, tasks, loss_fn, **kwargs)


def _add_task_cases():
    for kind, (tensors, kwargs) in {"none": ((), {}), "rows differ": ((torch.zeros(3, 2), torch.zeros(4)), {}),
                                    "batch_size 0": ((torch.zeros(3, 2),), dict(batch_size=0)),
                                    "examples_per_row 0": ((torch.zeros(3, 2),), dict(examples_per_row=0)),
                                    "empty": ((torch.zeros(0, 2),), {})}.items():
        @case(f"TensorTask({kind})")
        def make(tensors=tensors, kwargs=kwargs):
            return tensors, lambda: TensorTask(*tensors, **kwargs)
    for kind, sizes in {"zero": [3, 0], "negative": [-1]}.items():
        @case(f"mean_loss_grad(task_sizes {kind})")
        def make(sizes=sizes):
            return sizes, lambda: mean_loss_grad(_grad_fn, sizes)


for _add in (_add_sgld_tensor_cases, _add_sgld_scalar_cases, _add_rng_state_cases, _add_optimizer_cases,
             _add_noise_cases, _add_phi_cases, _add_mixture_op_cases, _add_online_gmm_cases, _add_sampler_cases,
             _add_flat_and_prior_cases, _add_adapt_cases, _add_trainer_cases, _add_task_cases):
    _add()


def test_battery_covers_every_public_entry_point():
    names = " ".join(name for name, _ in CASES)
    public = [f"ops.{name}" for name in ops.__all__] + ["sgld_step(", "TensorTable", "philox_normal ",
                                                        "optim.SGLD(", "optim.SGLD.step", "optim.SGLD.load_state_dict"]
    public += [f"OnlineGMM.{m}" for m in ("update", "log_prob", "responsibilities", "predict", "sample",
                                          "add_prior_grad_", "load_state_dict")] + ["OnlineGMM("]
    public += ["SGLDGibbs(", "ShardedSGLDGibbs(", "SGLDGibbs.step", "FlatParams(", "FlatParams.load_",
               "MixturePrior(", "MixturePrior.add_prior_grad_", "adapt(", "TensorTask(", "mean_loss_grad(",
               "LiFT(", "ShardedLiFT("]
    missing = [p for p in public if p not in names and p not in ("ops.sgld_step_", "ops.sgld_step_table_")]
    assert not missing, missing
    assert len(CASES) >= 500, len(CASES)


@pytest.mark.parametrize("name,make", CASES, ids=[name for name, _ in CASES])
def test_bad_input_raises_and_leaves_everything_untouched(name, make):
    torch.manual_seed(1234)
    state, call = make()
    before = snapshot(state)
    with pytest.raises(CLEAR):
        call()
    assert_same(before, snapshot(state), name)


@pytest.mark.parametrize("value", [1e-20, 0.0, float("nan"), 1e39])
def test_validate_scale_refuses_a_precision_beyond_float32(value):
    """validate.scale: a standard deviation whose 1 / value^2 overflows float32 is refused."""
    with pytest.raises(ValueError, match="sigma must be"):
        validate.scale("sigma", value)
    assert validate.scale("sigma", 1e-19) == 1e-19
