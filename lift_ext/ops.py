"""The op contract of lift_ext: one typed wrapper per registered op (`torch.ops.lift_ext.*`,
schemas in csrc/registration.cpp), each followed by its fake kernel.

Families, in the order below:

    SGLD     sgld_step_list_; sgld_step_ (the list step on one tensor); sgld_step_table_ (the
             list step on a TensorTable); each takes seed and offset, or rng_state
    noise    philox_normal_, fill_normals_on_, philox4x32_10
    phi      phi_step_
    mixture  gmm_estep, gmm_mstep_, gmm_prior_grad_

The fakes mirror the C++ checks that can be decided from metadata alone (shapes, dtypes,
devices), so `torch.compile(fullgraph=True)` and `torch.library.opcheck` see the same
contract as the kernels. Algorithm code calls these wrappers, never `torch.ops` directly.
"""
from typing import List, Optional, Sequence, Tuple

import torch

from lift_ext import _loader, validate  # noqa: F401  - _loader registers the ops

# ---- SGLD ---------------------------------------------------------------------------------

_GRAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Why params must be float32 (the C++ checks say the same): the fix a mixed-precision user needs.
MASTER_WEIGHTS = (" (the step keeps float32 master weights: keep the parameters float32, e.g. model.float(), "
                  "and run the forward in bfloat16 / float16 under torch.autocast; such gradients are accepted)")


def _check_companion(t: torch.Tensor, param: torch.Tensor, name: str, low_precision: bool) -> None:
    torch._check(t.device == param.device, lambda: f"{name} must be on the same device as params")
    if low_precision:
        torch._check(t.dtype in _GRAD_DTYPES, lambda: f"{name} must be float32, bfloat16 or float16, got {t.dtype}")
    else:
        torch._check(t.dtype == torch.float32, lambda: f"{name} must be float32, got {t.dtype}")
    torch._check(t.shape == param.shape, lambda: f"{name} must have the shape of params {tuple(param.shape)}, got {tuple(t.shape)}")
    torch._check(t.is_contiguous(), lambda: f"{name} must be contiguous")


def check_sgld_lists(params, grads, prior_means, accums, square_avgs) -> None:
    """The SGLD list op's checks on its tensors (dtype, device, shape, layout), as its fake
    runs them; callers use it to refuse a call before changing anything else."""
    n = len(params)
    torch._check(len(grads) == n, lambda: f"grads must have one tensor per param ({n}), got {len(grads)}")
    for name, lst in (("prior_mean", prior_means), ("accum", accums), ("square_avg", square_avgs)):
        torch._check(len(lst) in (0, n), lambda: f"{name} must be empty or have one tensor per param ({n})")
    for i, p in enumerate(params):
        torch._check(p.dtype == torch.float32, lambda: f"params[{i}] must be float32, got {p.dtype}{MASTER_WEIGHTS}")
        torch._check(p.is_contiguous(), lambda: f"params[{i}] must be contiguous")
        torch._check(p.device == params[0].device, lambda: "all params must be on one device")
        _check_companion(grads[i], p, f"grads[{i}]", True)
        torch._check(grads[i].dtype == grads[0].dtype, lambda: f"all grads must share one dtype: grads[{i}] is {grads[i].dtype}, grads[0] is {grads[0].dtype}")
        for name, lst in (("prior_mean", prior_means), ("accum", accums), ("square_avg", square_avgs)):
            if lst:
                _check_companion(lst[i], p, f"{name}[{i}]", False)


def sgld_step_list_(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                    prior_means: Sequence[torch.Tensor], accums: Sequence[torch.Tensor],
                    square_avgs: Sequence[torch.Tensor], *, lr: float, temperature: float,
                    prior_precision: float, alpha: float, eps: float, seed: int = 0,
                    offset: int = 0, rng_state: Optional[torch.Tensor] = None) -> None:
    """In-place SGLD step on a list of float32 tensors in one pass; empty lists mean absent
    (the update: `lift_ext.sgld_step`). The noise is that of (seed, offset), or, with
    `rng_state` (an int64 tensor [seed, offset] on the params' device; seed and offset then
    stay 0), of the pair read from it when the step runs, after which its offset is advanced
    in place (offset += 1, on the device): the CUDA-graph-safe form. An empty params is
    refused (ValueError): the op dispatches on its tensors and there are none."""
    _require_params(params)
    try:
        torch.ops.lift_ext.sgld_step_list_(list(params), list(grads), list(prior_means),
                                           list(accums), list(square_avgs), lr, temperature,
                                           prior_precision, alpha, eps, seed, offset, rng_state)
    except OverflowError:
        raise _seed_offset_error(seed, offset) from None


def _require_params(params) -> None:
    if len(params) == 0:
        raise ValueError("params must hold at least one tensor (an empty list: nothing to step)")


def _seed_offset_error(seed, offset) -> ValueError:
    """The error for an int the op cannot take (Python raises a nameless OverflowError)."""
    return ValueError(f"seed and offset must be ints in [0, 2^63 - 1], got seed={seed!r}, offset={offset!r}")


def _check_rng_state(rng_state, device: Optional[torch.device], owner: str) -> None:
    """rng_state's form, as the kernels check it; `device`: where `owner` (the params, the
    table) lives, None when unknown."""
    torch._check(rng_state.dtype == torch.int64, lambda: f"rng_state must be int64 [seed, offset], got {rng_state.dtype}")
    torch._check(rng_state.dim() == 1 and rng_state.shape[0] == 2,
                 lambda: f"rng_state must have shape [2] ([seed, offset]), got {tuple(rng_state.shape)}")
    if device is not None:
        torch._check(rng_state.device == device, lambda: f"rng_state must be on the device of {owner} ({device}), "
                                                         f"got {rng_state.device}")


@torch.library.register_fake("lift_ext::sgld_step_list_")
def _sgld_step_list_fake(params, grads, prior_means, accums, square_avgs, lr, temperature,
                         prior_precision, alpha, eps, seed=0, offset=0, rng_state=None):
    if rng_state is not None:
        _check_rng_state(rng_state, params[0].device if len(params) > 0 else None, "params")
    check_sgld_lists(params, grads, prior_means, accums, square_avgs)


def sgld_step_table_(table: torch.ScriptObject, *, lr: float, temperature: float,
                     prior_precision: float, alpha: float, eps: float, seed: int = 0,
                     offset: int = 0, rng_state: Optional[torch.Tensor] = None) -> None:
    """sgld_step_list_ over the tensors of `table` (a torch.classes.lift_ext.TensorTable, the
    handle of `lift_ext.TensorTable`), bitwise, with O(1) host work besides the version bump of
    each tensor it writes: its tensors were checked when it was built. seed, offset and
    rng_state (on the table's device) as in sgld_step_list_. Not for tracing: the tensors it
    writes are inside the table, where the schema cannot mark them; traced code calls
    sgld_step_list_ on the table's lists."""
    if not isinstance(table, torch.ScriptObject):
        raise TypeError("table must be a torch.classes.lift_ext.TensorTable (lift_ext.TensorTable.handle), "
                        f"got {type(table).__name__}")
    try:
        torch.ops.lift_ext.sgld_step_table_(table, lr, temperature, prior_precision, alpha, eps,
                                            seed, offset, rng_state)
    except OverflowError:
        raise _seed_offset_error(seed, offset) from None


@torch.library.register_fake("lift_ext::sgld_step_table_")
def _sgld_step_table_fake(table, lr, temperature, prior_precision, alpha, eps, seed=0, offset=0,
                          rng_state=None):
    # The table's tensors were checked at its build. A real rng_state on another device than
    # the table (meta) reaches this kernel instead of the table's: refused here.
    if rng_state is not None:
        _check_rng_state(rng_state, torch.device(table.device()), "the table")


def sgld_step_(param: torch.Tensor, grad: torch.Tensor, prior_mean: Optional[torch.Tensor],
               accum: Optional[torch.Tensor], square_avg: Optional[torch.Tensor], *, lr: float,
               temperature: float, prior_precision: float, alpha: float, eps: float, seed: int,
               offset: int) -> None:
    """In-place SGLD step on one flat float32 tensor (see `lift_ext.sgld_step`): the list step
    with a list of one (None means absent). A composite, so no op and no fake of its own."""
    sgld_step_list_([param], [grad], [] if prior_mean is None else [prior_mean],
                    [] if accum is None else [accum], [] if square_avg is None else [square_avg],
                    lr=lr, temperature=temperature, prior_precision=prior_precision, alpha=alpha,
                    eps=eps, seed=seed, offset=offset)


# ---- noise --------------------------------------------------------------------------------

def philox_normal_(out: torch.Tensor, *, seed: int, offset: int) -> None:
    """Fill float32 `out` with the standard normals of elements 0..numel-1 for (seed, offset)."""
    torch.ops.lift_ext.philox_normal_(out, seed, offset)


@torch.library.register_fake("lift_ext::philox_normal_")
def _philox_normal_fake(out, seed, offset):
    torch._check(out.dtype == torch.float32, lambda: f"out must be float32, got {out.dtype}")


def fill_normals_on_(out: torch.Tensor, *, isa: str, seed: int, offset: int, first_group: int) -> None:
    """Fill `out` (float32, contiguous, CPU, numel a multiple of 4) with the normals of element
    groups first_group .. first_group + numel / 4 - 1 for (seed, offset), drawn on the CPU
    path `isa` (one of `lift_ext._C.cpu_isas()`). seed, offset and first_group are ints in
    [0, 2^64 - 1] (the kernels' 64-bit words; the op takes their bits as int64).
    Verification: every path gives the same bits."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a Tensor, got {type(out).__name__}")
    words = [validate.integer(name, value, 0, 2**64 - 1)
             for name, value in (("seed", seed), ("offset", offset), ("first_group", first_group))]
    torch.ops.lift_ext.fill_normals_on_(out, isa, *(w - 2**64 if w >= 2**63 else w for w in words))


@torch.library.register_fake("lift_ext::fill_normals_on_")
def _fill_normals_on_fake(out, isa, seed, offset, first_group):
    torch._check(out.dtype == torch.float32, lambda: f"out must be float32, got {out.dtype}")
    torch._check(out.numel() % 4 == 0, lambda: f"out's numel must be a multiple of 4, got {out.numel()}")


def philox4x32_10(counters: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Raw Philox4x32-10 words: int64 counters [N, 4], keys [N, 2] (uint32 words) -> int64 [N, 4]."""
    return torch.ops.lift_ext.philox4x32_10(counters, keys)


@torch.library.register_fake("lift_ext::philox4x32_10")
def _philox_words_fake(counters, keys):
    torch._check(counters.dim() == 2 and counters.shape[1] == 4, lambda: "counters must have shape [N, 4]")
    torch._check(keys.dim() == 2 and keys.shape[1] == 2, lambda: "keys must have shape [N, 2]")
    return counters.new_empty((counters.shape[0], 4))


# ---- phi ----------------------------------------------------------------------------------

def phi_step_(phi: torch.Tensor, task_sum: torch.Tensor, prior_mean: Optional[torch.Tensor], *,
              lr: float, temperature: float, sigma: float, beta: float, num_tasks: int,
              gibbs: bool, seed: int, offset: int) -> None:
    """In-place SGLD-Gibbs update of phi from S = sum_i theta_i (see csrc/include/lift_ext/phi.h).

    Langevin: phi <- phi - lr ((phi - mu0)/sigma^2 - (S - N phi)/beta^2) + sqrt(2 lr T) xi.
    Gibbs:    phi <- v (mu0/sigma^2 + S/beta^2) + sqrt(T v) xi,  v = 1/(1/sigma^2 + N/beta^2).
    num_tasks N >= 0 (N = 0 with S = 0: a draw from the prior N(mu0, T sigma^2)).
    """
    torch.ops.lift_ext.phi_step_(phi, task_sum, prior_mean, lr, temperature, sigma, beta,
                                 num_tasks, gibbs, seed, offset)


@torch.library.register_fake("lift_ext::phi_step_")
def _phi_step_fake(phi, task_sum, prior_mean, lr, temperature, sigma, beta, num_tasks, gibbs, seed, offset):
    torch._check(phi.dtype == torch.float32, lambda: f"phi must be float32, got {phi.dtype}")
    for name, t in (("task_sum", task_sum), ("prior_mean", prior_mean)):
        if t is not None:
            torch._check(t.shape == phi.shape, lambda: f"{name} must have the shape of phi")
            torch._check(t.device == phi.device, lambda: f"{name} must be on the device of phi")


# ---- mixture ------------------------------------------------------------------------------

def _check_mixture(means, m2, counts) -> None:
    torch._check(means.dim() == 2, lambda: f"means must be 2-D [K, D], got shape {tuple(means.shape)}")
    torch._check(means.dtype == torch.float32, lambda: f"means must be float32, got {means.dtype}")
    torch._check(m2.dtype == torch.float32, lambda: f"m2 must be float32, got {m2.dtype}")
    torch._check(m2.shape == means.shape, lambda: f"m2 must have the shape of means {tuple(means.shape)}, got {tuple(m2.shape)}")
    torch._check(counts.dtype == torch.float64, lambda: f"counts must be float64, got {counts.dtype}")
    torch._check(counts.shape == means.shape[:1], lambda: f"counts must have shape [K], got {tuple(counts.shape)}")
    for name, t in (("m2", m2), ("counts", counts)):
        torch._check(t.device == means.device, lambda: f"{name} must be on the same device as means")


def _check_samples(x, means) -> None:
    torch._check(x.dim() == 2 and x.shape[1] == means.shape[1],
                 lambda: f"x must have shape [B, {means.shape[1]}] (D of means), got {tuple(x.shape)}")
    torch._check(x.dtype == torch.float32, lambda: f"x must be float32, got {x.dtype}")
    torch._check(x.device == means.device, lambda: "x must be on the same device as means")


def _check_resp(resp, shape, means) -> None:
    torch._check(resp.dtype == torch.float64, lambda: f"resp must be float64, got {resp.dtype}")
    torch._check(tuple(resp.shape) == tuple(shape), lambda: f"resp must have shape {list(shape)}, got {tuple(resp.shape)}")
    torch._check(resp.device == means.device, lambda: "resp must be on the same device as means")


def gmm_estep(x: torch.Tensor, means: torch.Tensor, m2: torch.Tensor, counts: torch.Tensor, *,
              reg: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mixture E-step: (loglik, resp), both float64 [B, K].

    loglik_bk = log alpha_k - 1/2 sum_d [(x_bd - mu_kd)^2 / var_kd + log var_kd + log 2 pi],
    var_kd = m2_kd / n_k + reg, alpha_k = n_k / sum n; resp = softmax_k(loglik). x [B, D],
    means, m2 [K, D] float32; counts n [K] float64; reg > 0 (units of x squared).
    Sums over d are float64 in a fixed order (deterministic). n_k <= 0 gives loglik -inf;
    counts must be finite with at least one n_k > 0 (refused otherwise). A sample whose
    float32 quadratic form overflows in every component gets NaN resp (callers check).
    """
    return torch.ops.lift_ext.gmm_estep(x, means, m2, counts, reg)


@torch.library.register_fake("lift_ext::gmm_estep")
def _gmm_estep_fake(x, means, m2, counts, reg):
    _check_mixture(means, m2, counts)
    _check_samples(x, means)
    shape = (x.shape[0], means.shape[0])
    return x.new_empty(shape, dtype=torch.float64), x.new_empty(shape, dtype=torch.float64)


def gmm_mstep_(means: torch.Tensor, m2: torch.Tensor, counts: torch.Tensor, x: torch.Tensor,
               resp: torch.Tensor) -> None:
    """Mini-batch online-EM M-step in place: merges the resp-weighted batch x [B, D] into
    (means, m2, counts) with Chan's formula (Welford's for B = 1); resp [B, K] float64 should
    come from `gmm_estep` at the parameters of batch start (finite and >= 0, refused
    otherwise). Components with sum_b resp = 0 are untouched."""
    torch.ops.lift_ext.gmm_mstep_(means, m2, counts, x, resp)


@torch.library.register_fake("lift_ext::gmm_mstep_")
def _gmm_mstep_fake(means, m2, counts, x, resp):
    _check_mixture(means, m2, counts)
    _check_samples(x, means)
    _check_resp(resp, (x.shape[0], means.shape[0]), means)


def gmm_prior_grad_(grad: torch.Tensor, theta: torch.Tensor, means: torch.Tensor,
                    m2: torch.Tensor, counts: torch.Tensor, resp: torch.Tensor, *, reg: float,
                    scale: float) -> None:
    """grad += scale * sum_k resp_k (theta - mu_k) / (m2_k / n_k + reg), in place on grad [D].

    With reg = reg_covar + beta^2 and resp the E-step responsibilities of theta under the same
    reg, this is -d/dtheta log sum_k alpha_k N(theta; mu_k, var_k + beta^2)."""
    torch.ops.lift_ext.gmm_prior_grad_(grad, theta, means, m2, counts, resp, reg, scale)


@torch.library.register_fake("lift_ext::gmm_prior_grad_")
def _gmm_prior_grad_fake(grad, theta, means, m2, counts, resp, reg, scale):
    _check_mixture(means, m2, counts)
    for name, t in (("grad", grad), ("theta", theta)):
        torch._check(t.dtype == torch.float32, lambda: f"{name} must be float32, got {t.dtype}")
        torch._check(t.shape == means.shape[1:], lambda: f"{name} must have shape [D] of means, got {tuple(t.shape)}")
        torch._check(t.device == means.device, lambda: f"{name} must be on the same device as means")
    _check_resp(resp, (means.shape[0],), means)


__all__: List[str] = ["sgld_step_list_", "check_sgld_lists", "sgld_step_table_", "sgld_step_",
                      "philox_normal_", "fill_normals_on_", "philox4x32_10", "phi_step_", "gmm_estep", "gmm_mstep_", "gmm_prior_grad_"]
