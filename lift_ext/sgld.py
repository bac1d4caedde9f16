"""`lift_ext.sgld_step` and `lift_ext.philox_normal`: the public entry points of the SGLD kernels.

Convention (one everywhere in lift_ext):

    theta <- theta - lr * G * (g + lam * (theta - c)) + sqrt(2 * lr * T * G) * xi,   xi ~ N(0, I)

lr is half the paper's step size eta (LiFT writes theta + eta/2 grad log p + sqrt(eta) z), T is
the temperature (1 samples the posterior; 0 turns the noise off and gives exactly SGD with
weight decay lam toward c), G = 1 / (sqrt(v) + eps) with v the RMSprop average of g^2 when
`square_avg` is given (pSGLD, Li et al. 2016, without the Gamma correction term; an average
of exactly 0 starts at g^2, see `sgld_step`), else 1.
g is the gradient of the negative log-likelihood SUMMED over the data. If it is the gradient of
a MEAN loss over N examples, pass num_data=N: the step then runs with lam / N and T / N, which
is the summed loss's dynamics at step size lr / N (lr keeps its torch.optim meaning: at T = 0
without a prior the step is exactly SGD on the mean loss).
"""
import warnings
from typing import Optional, Tuple, Union

import torch

from lift_ext import ops, validate
from lift_ext.table import TensorTable, as_tensor_list, check_elements
from lift_ext.types import DeviceLike, TensorOrList

MAX_SEED = 2**63 - 1  # the largest seed and offset (int64)


def draw_seed_offset(generator: Optional[torch.Generator]) -> Tuple[int, int]:
    """Draw a fresh (seed, offset) pair from `generator` (the default CPU generator if None),
    advancing it; two draws give independent noise streams."""
    gen = generator if generator is not None else torch.default_generator
    pair = torch.randint(0, MAX_SEED, (2,), generator=gen, device=gen.device, dtype=torch.int64)
    seed, offset = pair.tolist()
    return int(seed), int(offset)


def check_hyper_parameters(lr: float, temperature: float, prior_precision: float, alpha: float,
                           eps: float, prefix: str = "") -> Tuple[float, float, float, float, float]:
    """(lr, temperature, prior_precision, alpha, eps) as floats, each refused by name (ValueError,
    `prefix` before the name) unless lr, temperature, prior_precision are in [0, F] and
    eps in (0, F], F = float32's largest value (the kernels compute in float32), and alpha is
    in [0, 1)."""
    top = validate.FLOAT32_MAX
    checked = [validate.number(prefix + name, value, inclusive=True, high=top, high_inclusive=True)
               for name, value in (("lr", lr), ("temperature", temperature),
                                   ("prior_precision", prior_precision))]
    checked.append(validate.number(prefix + "alpha", alpha, inclusive=True, high=1.0))
    checked.append(validate.number(prefix + "eps", eps, high=top, high_inclusive=True))
    return tuple(checked)


def resolve_seed_offset(seed: Optional[int], offset: Optional[int],
                        generator: Optional[torch.Generator]) -> Tuple[int, int]:
    """Explicit (seed, offset) if given (offset defaults to 0), else a draw from the generator."""
    if seed is None:
        if offset is not None:
            raise ValueError("offset was given without seed; pass both, or a generator")
        return draw_seed_offset(generator)
    if generator is not None:
        raise ValueError("pass either seed/offset or generator, not both")
    offset = 0 if offset is None else offset
    return validate.integer("seed", seed, 0, MAX_SEED), validate.integer("offset", offset, 0, MAX_SEED)


def per_example(prior_precision: float, temperature: float, num_data: int) -> Tuple[float, float]:
    """(prior_precision / N, temperature / N): the hyper-parameters that give a step on the
    gradient of a MEAN loss over N = num_data examples the dynamics of the summed loss
    (module docstring). num_data must be an int >= 1; 1 leaves both as they are."""
    num_data = validate.integer("num_data", num_data, low=1)
    return prior_precision / num_data, temperature / num_data


def leaf_error(written) -> Optional[RuntimeError]:
    """The error to raise for an in-place step refused by autograd: a RuntimeError naming
    torch.no_grad() when grad mode is on and a tensor the step writes is a leaf (or a view of
    one) that requires grad, else None (then torch's own error stands)."""
    def leaf_requiring_grad(t) -> bool:  # a leaf, or a view of one, that requires grad
        return isinstance(t, torch.Tensor) and t.requires_grad and (t.is_leaf or t._base is not None and t._base.is_leaf)

    if torch.is_grad_enabled() and any(leaf_requiring_grad(t) for t in written):
        return RuntimeError("sgld_step updates params in place, and a tensor that requires grad (a "
                            "Parameter) cannot be written while autograd records: call it inside "
                            "`with torch.no_grad():` (lift_ext.optim.SGLD.step does this itself)")
    return None


def _warn_if_unstable(lr: float, prior_precision: float, preconditioned: bool) -> None:
    if not preconditioned and lr * prior_precision >= 1.0:
        warnings.warn(f"lr * prior_precision = {lr * prior_precision:g} >= 1: the prior pull "
                      "overshoots and the chain is unstable; lower lr", RuntimeWarning, stacklevel=3)


def sgld_step(params: Union[TensorOrList, TensorTable], grads: Optional[TensorOrList] = None, *,
              lr: float, temperature: float = 1.0, prior_mean: Optional[TensorOrList] = None,
              prior_precision: float = 0.0, accum: Optional[TensorOrList] = None,
              square_avg: Optional[TensorOrList] = None, alpha: float = 0.99, eps: float = 1e-8,
              seed: Optional[int] = None, offset: Optional[int] = None,
              generator: Optional[torch.Generator] = None,
              rng_state: Optional[torch.Tensor] = None, num_data: int = 1) -> None:
    """One fused SGLD step, in place on `params` (and `accum`, `square_avg`).

    params: float32 contiguous Tensor, or list of them (one pass over the whole list), or a
    `lift_ext.TensorTable` (then grads, prior_mean, accum and square_avg stay None: the table
    holds them; the same step, bitwise, with host work independent of the number of tensors).
    grads: same structure and shapes; float32, bfloat16 or float16.
    prior_mean (c), accum, square_avg: None or same structure, float32.
    No tensor the step writes (params, accum, square_avg) may share memory with another tensor
    of the call (the same tensor twice, views of one buffer): refused, naming both.
    lr >= 0 (half the paper's eta), temperature T >= 0, prior_precision lam >= 0.
    num_data: N when grads are of a MEAN loss over N examples (the PyTorch habit): the step
    then uses lam / N and T / N, the summed loss's dynamics at step size lr / N (module
    docstring); 1 (default) when grads are of the summed negative log-likelihood.
    Call it inside `torch.no_grad()` when params are Parameters (leaves that require grad).
    accum += theta_new - theta_old. square_avg switches on RMSprop preconditioning, per element:

        v <- g^2                             if v == 0   (no nonzero gradient seen yet)
        v <- alpha v + (1 - alpha) g^2       otherwise
        G  = 1 / (sqrt(v) + eps')            (v in units of g^2, eps in units of g)
        eps' = max(eps, lr * prior_precision)  (the damping)

    so a fresh average (zeros) needs no special first step. Why: from v = 0 the plain rule
    gives v = (1 - alpha) g^2, G = 1 / (sqrt(1 - alpha) |g|) and a step lr |g| G = lr /
    sqrt(1 - alpha) (10 lr at alpha = 0.99) whatever the gradient's scale, decaying only over
    ~1 / (1 - alpha) steps; starting at g^2 makes the first step lr |g| / (|g| + eps) ~ lr.
    The test is per element, so a weight whose first gradients are exactly 0 (LoRA A while
    B = 0) starts when its first nonzero gradient arrives; until then v stays 0 and G = 1/eps'.
    The damping eps' keeps such a weight stable and its noise bounded: the prior pull
    lr G lam <= 1 and the noise variance 2 lr T G <= 2 T / lam (T times twice the prior's
    variance), as in SGLDGibbs; without a prior (lam = 0) eps' = eps.
    Noise: Philox4x32-10 keyed by `seed` at counter (element index // 4, `offset`), element
    indices running over the concatenated list, so a list and the equal flat buffer get the
    same noise. Without seed, (seed, offset) is drawn from `generator` (default: torch's CPU
    generator, so torch.manual_seed reproduces runs), advancing it. With temperature 0 no noise
    is drawn and the generator is not advanced. Bad input raises before anything is written,
    the generator included: a refused call leaves it where it was. Gradient values are not
    checked (as in torch.optim): NaN / Inf propagate, into square_avg for good (docs/design.md section 2).

    rng_state: instead of seed/offset/generator, an int64 tensor [seed, offset] on the params'
    device. The step reads (seed, offset) from it when it runs (on the GPU: in the kernel) and
    then adds 1 to the offset in place (also with temperature 0), so one step captured in a
    torch.cuda.CUDAGraph draws fresh noise on every replay; k calls match k explicit-seed
    steps at offsets offset .. offset + k - 1. Both values must be >= 0: the CPU path refuses
    a negative one; the CUDA path cannot look at device values without a synchronisation and
    reads them as unsigned 64-bit integers.
    """
    table = params if isinstance(params, TensorTable) else None
    if table is not None:
        for name, value in (("grads", grads), ("prior_mean", prior_mean), ("accum", accum),
                            ("square_avg", square_avg)):
            if value is not None:
                raise ValueError(f"{name} must be None when params is a TensorTable (the table holds its tensors)")
        lists = table.lists
        preconditioned = bool(table.square_avgs)
        # A traced call runs the list op: the table op's writes are invisible to the tracer.
        via_table = not torch.compiler.is_compiling()
    else:
        single = isinstance(params, torch.Tensor)
        if not single and not isinstance(params, (list, tuple)):
            raise TypeError(f"params must be a Tensor, a list of Tensors or a TensorTable, got {type(params).__name__}")
        if grads is None:
            raise TypeError("grads must be given: a Tensor or a list of Tensors like params")
        structure = None if single else len(params)
        lists = tuple(as_tensor_list(value, name, structure) for name, value in (
            ("params", params), ("grads", grads), ("prior_mean", prior_mean), ("accum", accum),
            ("square_avg", square_avg)))
        preconditioned = square_avg is not None
        via_table = False
    lr, temperature, prior_precision, alpha, eps = check_hyper_parameters(
        lr, temperature, prior_precision, alpha, eps)
    prior_precision, temperature = per_example(prior_precision, temperature, num_data)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    _warn_if_unstable(lr, prior_precision, preconditioned)
    hyper = dict(lr=lr, temperature=temperature, prior_precision=prior_precision, alpha=alpha, eps=eps)
    # Elements of a list call are checked by the op; check_elements names a non-Tensor one.
    named = None if table is not None or single else zip(
        ("params", "grads", "prior_mean", "accum", "square_avg"), lists)
    drawn_from = None
    if rng_state is not None:
        if seed is not None or offset is not None or generator is not None:
            raise ValueError("pass either rng_state or seed/offset/generator, not both")
        if not isinstance(rng_state, torch.Tensor):
            raise TypeError(f"rng_state must be an int64 Tensor [seed, offset], got {type(rng_state).__name__}")
    elif temperature == 0.0 and seed is None and offset is None:
        seed_val, offset_val = 0, 0  # no noise is drawn: leave the generator alone
    else:
        if seed is None:  # a draw, undone below if the op refuses the call
            drawn_from = generator if generator is not None else torch.default_generator
            before = drawn_from.get_state()
        seed_val, offset_val = resolve_seed_offset(seed, offset, generator)
    noise = dict(rng_state=rng_state) if rng_state is not None else dict(seed=seed_val, offset=offset_val)
    try:
        if via_table:
            ops.sgld_step_table_(table.handle, **noise, **hyper)
        else:
            ops.sgld_step_list_(*lists, **noise, **hyper)
    except Exception as exc:
        if drawn_from is not None:
            drawn_from.set_state(before)
        if named is not None and isinstance(exc, (TypeError, RuntimeError)):
            check_elements(named)  # a non-Tensor element: raise naming it, else the op's error
        refused_by_autograd = leaf_error(lists[0] + lists[3] + lists[4]) if isinstance(exc, RuntimeError) else None
        if refused_by_autograd is not None:  # params, accum or square_avg require grad
            raise refused_by_autograd from exc
        raise


def philox_normal(numel: int, *, seed: int, offset: int, device: DeviceLike = "cpu") -> torch.Tensor:
    """The float32 noise xi that `sgld_step` adds to a flat vector of `numel` elements for
    this (seed, offset), identical on CPU and CUDA (device None: torch's default device)."""
    numel = validate.integer("numel", numel)
    seed, offset = resolve_seed_offset(seed, offset, None)
    out = torch.empty(numel, dtype=torch.float32, device=device)
    ops.philox_normal_(out, seed=seed, offset=offset)
    return out
