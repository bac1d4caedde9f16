"""`lift_ext.gmm.OnlineGMM`: a K-component diagonal Gaussian mixture over flat vectors of
length D, fitted online by mini-batch EM with the fused kernels of `lift_ext.ops`
(docs/design.md sections 4 and 5).

State: counts n_k (float64), means mu_k and centred second moments M2_k ([K, D] float32);
var_k = M2_k / n_k + reg_covar and alpha_k = n_k / sum_j n_j.

One update with a batch x [B, D] (B = 1 is the plain online EM of the paper):
  E-step at the parameters of batch start: q_bk = alpha_k N(x_b; mu_k, var_k) / sum_j (...);
  M-step: the q-weighted batch mean and centred moment of each component are merged into
  (n_k, mu_k, M2_k) with Chan's parallel formula, which for B = 1 is Welford's update
  n' = n + q, mu' = mu + (q/n')(x - mu), M2' = M2 + q (x - mu)(x - mu').
A batch of B samples therefore equals B single-sample updates only when the responsibilities
do not change within the batch ("mini-batch online EM").

Initialisation (deterministic, independent of torch's global RNG): the first `warmup`
samples (default 4 K) are buffered; k-means++ seeding with a private generator of fixed seed
picks K of them as centres; every buffered sample goes to its nearest centre; each component
starts with the count and mean of its samples and the pooled within-cluster variance of the
buffer (a cluster of one sample has no variance of its own). Later samples are EM updates.
"""
from typing import Dict, Optional, Union

import torch

from lift_ext import ops, validate
from lift_ext.kmeans import plus_plus_seeds, squared_distances

DeviceLike = Union[str, torch.device, None]

_INIT_SEED = 0x5EED


def _check_responsibilities(resp: torch.Tensor, name: str) -> None:
    """ValueError naming `name` when a row of E-step responsibilities is not finite: its sample
    lies so far from every component that (x - mu)^2 / var overflows float32 in all of them."""
    if not bool(torch.isfinite(resp).all()):
        raise ValueError(f"{name} lies so far from every component that its squared distance overflows "
                         "float32 (its responsibilities are not defined); nothing was changed")


def _fitted_arrays(means: torch.Tensor, m2: torch.Tensor, counts: torch.Tensor, reg: float):
    """(means, m2 float32, counts float64) of a loaded state, as the kernels will read them,
    checked to stay finite there: means and m2 within float32, sum_k n_k finite (alpha_k =
    n_k / sum), and for every n_k > 0 the kernels' float32 1 / n_k and var = m2 / n_k + reg
    finite (a count below ~2.9e-39, or an m2 / n_k beyond float32, would give an infinite
    variance). ValueError naming the key otherwise."""
    means, m2, counts = means.to(torch.float32), m2.to(torch.float32), counts.to(torch.float64)
    for key, value in (("means", means), ("m2", m2)):
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"state[{key!r}] overflows float32 (the mixture's storage type)")
    if not torch.isfinite(counts.sum()):
        raise ValueError("state['counts'] must have a finite sum in float64 (alpha_k = n_k / sum_j n_j)")
    inv_count = torch.where(counts > 0, 1.0 / counts, torch.zeros_like(counts)).to(torch.float32)
    if not bool(torch.isfinite(inv_count).all()):
        raise ValueError(f"state['counts'] entries must be 0 or >= {1.0 / validate.FLOAT32_MAX:.3g} "
                         "(1 / n_k must be a finite float32)")
    if not bool(torch.isfinite(m2 * inv_count[:, None] + reg).all()):
        raise ValueError("state['m2'] / state['counts'] overflows float32 (the variances would be infinite)")
    return means, m2, counts


class OnlineGMM:
    """Online-EM diagonal Gaussian mixture with `n_components` components over vectors of
    length `dim`; `reg_covar` (> 0, units of x squared) is added to every variance."""

    def __init__(self, n_components: int, dim: int, *, reg_covar: float = 1e-6,
                 device: DeviceLike = None, warmup: Optional[int] = None):
        for name, value in (("n_components", n_components), ("dim", dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        reg_covar = validate.number("reg_covar", reg_covar)
        warmup = 4 * n_components if warmup is None else warmup
        if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < n_components:
            raise ValueError(f"warmup must be an int >= n_components ({n_components}), got {warmup!r}")
        self.n_components = n_components
        self.dim = dim
        self.reg_covar = float(reg_covar)
        self.warmup = warmup
        dev = torch.device("cpu") if device is None else torch.device(device)
        self._means = torch.zeros(n_components, dim, dtype=torch.float32, device=dev)
        self._m2 = torch.zeros_like(self._means)
        self._counts = torch.zeros(n_components, dtype=torch.float64, device=dev)
        self._buffer = torch.empty(0, dim, dtype=torch.float32, device=dev)
        self._warmup_storage: Optional[torch.Tensor] = None  # [warmup, D] rows behind _buffer
        self._fitted = False  # components exist (a host flag: no device read per update)

    # ---- state --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._means.device

    @property
    def initialized(self) -> bool:
        """True once `warmup` samples have been seen and the components exist."""
        return self._fitted

    @property
    def means(self) -> torch.Tensor:
        """mu [K, D] float32 (a copy)."""
        return self._means.clone()

    @property
    def variances(self) -> torch.Tensor:
        """var [K, D] float32 = M2 / n + reg_covar (reg_covar alone where n_k = 0)."""
        n = self._counts[:, None]
        raw = torch.where(n > 0, self._m2.double() / torch.where(n > 0, n, torch.ones_like(n)), 0.0)
        return (raw + self.reg_covar).float()

    @property
    def weights(self) -> torch.Tensor:
        """alpha [K] float64 = n_k / sum_j n_j (zeros before initialisation)."""
        total = self._counts.sum()
        return self._counts / total if bool(total > 0) else torch.zeros_like(self._counts)

    @property
    def counts(self) -> torch.Tensor:
        """n [K] float64: the summed responsibilities each component has absorbed (a copy)."""
        return self._counts.clone()

    # ---- input checks -------------------------------------------------------------------
    def _as_batch(self, x: torch.Tensor, name: str = "x", check_finite: bool = True) -> torch.Tensor:
        """x [D] or [B, D] as a float32 contiguous [B, D] tensor on our device; ValueError
        (nothing changed) for a wrong shape or, with `check_finite`, a NaN / Inf entry."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (1, 2) or x.shape[-1] != self.dim:
            raise ValueError(f"{name} must have shape [{self.dim}] or [B, {self.dim}], "
                             f"got {list(x.shape)}")
        if x.is_complex():
            raise ValueError(f"{name} must be real, got {x.dtype}")
        batch = x.reshape(-1, self.dim).to(device=self.device, dtype=torch.float32).contiguous()
        if check_finite and not bool(torch.isfinite(batch).all()):
            raise ValueError(f"{name} contains NaN or Inf (after conversion to float32); "
                             "the sample was refused and the mixture is unchanged")
        return batch

    def _require_initialized(self) -> None:
        if not self.initialized:
            missing = self.warmup - self._buffer.shape[0]
            raise RuntimeError(f"OnlineGMM is not initialised yet: update() needs {missing} "
                               "more samples")

    # ---- fitting ------------------------------------------------------------------------
    def update(self, x: torch.Tensor) -> None:
        """One online-EM update with x [D] or a mini-batch x [B, D] (see the module doc).
        During warm-up the samples are buffered; the `warmup`-th one initialises the mixture.
        A batch that would make the mixture non-finite (NaN / Inf entries, or a finite sample
        so far from every component that no responsibility can be formed) is refused with a
        ValueError and the mixture is left exactly as it was."""
        batch = self._as_batch(x, check_finite=not self.initialized)
        if not self.initialized:
            filled = self._buffer.shape[0]
            take = min(self.warmup - filled, batch.shape[0])
            self._append_warmup(batch[:take])
            rest = batch[take:]
            if self._buffer.shape[0] < self.warmup:
                return
            before = (self._means, self._m2, self._counts, self._warmup_storage, self._fitted)
            try:
                self._initialize()  # replaces (does not mutate) the arrays saved in `before`
                self._update_fitted(rest)
            except ValueError:
                self._means, self._m2, self._counts, self._warmup_storage, self._fitted = before
                self._buffer = self._warmup_storage[:filled]
                raise
            return
        self._update_fitted(batch)

    def _update_fitted(self, batch: torch.Tensor) -> None:
        if batch.shape[0] == 0:
            return
        _, resp = ops.gmm_estep(batch, self._means, self._m2, self._counts, reg=self.reg_covar)
        if not bool(torch.isfinite(resp).all()):  # the one device read of an update
            raise ValueError("x was refused and the mixture is unchanged: it contains NaN or Inf, or lies "
                             "so far from every component that its responsibilities are not finite")
        ops.gmm_mstep_(self._means, self._m2, self._counts, batch, resp)

    def _append_warmup(self, rows: torch.Tensor) -> None:
        """Append rows to the warm-up buffer, kept in one preallocated [warmup, D] tensor (no
        growing copies: the buffer is the largest transient of the mixture)."""
        filled = self._buffer.shape[0]
        if self._warmup_storage is None:
            self._warmup_storage = self._means.new_empty(self.warmup, self.dim)
            self._warmup_storage[:filled].copy_(self._buffer)
        self._warmup_storage[filled:filled + rows.shape[0]].copy_(rows)
        self._buffer = self._warmup_storage[:filled + rows.shape[0]]

    def _initialize(self) -> None:
        buf, k = self._buffer, self.n_components
        try:
            chosen = plus_plus_seeds(buf, k, torch.Generator().manual_seed(_INIT_SEED))
        except ValueError as exc:
            raise ValueError(f"x was refused and the mixture is unchanged: {exc}") from None
        labels = squared_distances(buf, buf[chosen]).argmin(dim=1)
        resp = torch.nn.functional.one_hot(labels, k).to(torch.float64).contiguous()
        means = buf[chosen].clone()
        m2 = torch.zeros_like(means)
        counts = torch.zeros(k, dtype=torch.float64, device=self.device)
        ops.gmm_mstep_(means, m2, counts, buf, resp)
        pooled = m2.double().sum(0) / buf.shape[0]
        m2 = (counts[:, None] * pooled[None, :]).float()
        if not (bool(torch.isfinite(means).all()) and bool(torch.isfinite(m2).all())):
            raise ValueError("x was refused and the mixture is unchanged: the warm-up samples' spread "
                             "overflows float32 (a sample is too far from the others)")
        self._means = means
        self._m2 = m2
        self._counts = counts
        self._buffer = buf.new_empty(0, self.dim)
        self._warmup_storage = None
        self._fitted = True

    # ---- queries ------------------------------------------------------------------------
    def _estep(self, x: torch.Tensor):
        self._require_initialized()
        batch = self._as_batch(x)
        loglik, resp = ops.gmm_estep(batch, self._means, self._m2, self._counts, reg=self.reg_covar)
        _check_responsibilities(resp, "x")
        return loglik, resp, x.dim() == 1

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = logsumexp_k [log alpha_k + log N(x; mu_k, var_k)] in nats, float64;
        shape [B] for x [B, D], a scalar for x [D]."""
        loglik, _, single = self._estep(x)
        out = torch.logsumexp(loglik, dim=1)
        return out[0] if single else out

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior component probabilities [B, K] (or [K]) float64."""
        _, resp, single = self._estep(x)
        return resp[0] if single else resp

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Most probable component, int64 [B] (or a scalar)."""
        _, resp, single = self._estep(x)
        labels = resp.argmax(dim=1)
        return labels[0] if single else labels

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n draws [n, D] float32 from the mixture: k ~ alpha, x = mu_k + sqrt(var_k) z.
        `generator` (on this mixture's device) makes the draws reproducible; without it
        torch's default generator of the device is used."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        self._require_initialized()
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator) \
            if n > 0 else torch.zeros(0, dtype=torch.int64, device=self.device)
        noise = torch.randn(n, self.dim, device=self.device, generator=generator)
        return self._means[comp] + self.variances[comp].sqrt() * noise

    def add_prior_grad_(self, grad: torch.Tensor, theta: torch.Tensor, *, beta: float,
                        scale: float = 1.0) -> torch.Tensor:
        """Meta-test prior (docs/design.md section 5): p(theta) = sum_k alpha_k N(theta; mu_k,
        var_k + beta^2). Adds scale * (-d log p / d theta) = scale * sum_k r_k (theta - mu_k) /
        (var_k + beta^2) to grad [D] float32 in place, so a following `lift_ext.sgld_step`
        on theta uses it; returns the responsibilities r [K] float64."""
        self._require_initialized()
        reg = self.reg_covar + validate.number("beta", beta, inclusive=True) ** 2
        if isinstance(theta, torch.Tensor) and not bool(torch.isfinite(theta).all()):
            raise ValueError("theta contains NaN or Inf; grad is unchanged")
        _, resp = ops.gmm_estep(theta.reshape(1, -1), self._means, self._m2, self._counts, reg=reg)
        _check_responsibilities(resp, "theta")
        ops.gmm_prior_grad_(grad, theta, self._means, self._m2, self._counts, resp[0], reg=reg,
                            scale=float(scale))
        return resp[0]

    # ---- persistence --------------------------------------------------------------------
    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Copies of the full state: means, m2, counts, the warm-up buffer, reg_covar, warmup."""
        return {
            "means": self._means.clone(),
            "m2": self._m2.clone(),
            "counts": self._counts.clone(),
            "warmup_buffer": self._buffer.clone(),
            "reg_covar": torch.tensor(self.reg_covar, dtype=torch.float64),
            "warmup": torch.tensor(self.warmup, dtype=torch.int64),
        }

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Replaces the state by `state` (from `state_dict` of a mixture with the same
        n_components and dim). Everything is checked first: a ValueError leaves this
        mixture unchanged."""
        k, d = self.n_components, self.dim
        expected = {"means", "m2", "counts", "warmup_buffer", "reg_covar", "warmup"}
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state must be a dict with keys {sorted(expected)}, got {got}")
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"state[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
        shapes = {"means": (k, d), "m2": (k, d), "counts": (k,), "reg_covar": (), "warmup": ()}
        for key, shape in shapes.items():
            if tuple(state[key].shape) != shape:
                raise ValueError(f"state[{key!r}] must have shape {list(shape)}, got {list(state[key].shape)}")
        buf = state["warmup_buffer"]
        warmup = int(state["warmup"])
        reg = float(state["reg_covar"])
        if buf.dim() != 2 or buf.shape[1] != d or buf.shape[0] >= max(warmup, 1):
            raise ValueError(f"state['warmup_buffer'] must have shape [m, {d}] with m < warmup "
                             f"({warmup}), got {list(buf.shape)}")
        if warmup < k:
            raise ValueError(f"state['warmup'] must be >= n_components ({k}), got {warmup}")
        validate.number("state['reg_covar']", reg)
        for key in ("means", "m2", "counts", "warmup_buffer"):
            if not bool(torch.isfinite(state[key]).all()):
                raise ValueError(f"state[{key!r}] contains NaN or Inf")
        if bool((state["counts"] < 0).any()) or bool((state["m2"] < 0).any()):
            raise ValueError("state['counts'] and state['m2'] must be >= 0")
        if buf.shape[0] > 0 and bool((state["counts"] > 0).any()):
            raise ValueError("state has both a warm-up buffer and fitted components")
        means, m2, counts = _fitted_arrays(state["means"], state["m2"], state["counts"], reg)
        if not bool(torch.isfinite(buf.to(torch.float32)).all()):
            raise ValueError("state['warmup_buffer'] overflows float32")
        dev = self.device
        self._means = means.to(dev).contiguous().clone()
        self._m2 = m2.to(dev).contiguous().clone()
        self._counts = counts.to(dev).contiguous().clone()
        self._buffer = buf.to(dev, torch.float32).contiguous().clone()
        self._warmup_storage = None
        self._fitted = buf.shape[0] == 0 and bool((self._counts > 0).any())
        self.reg_covar = reg
        self.warmup = warmup

    def to(self, device: DeviceLike) -> "OnlineGMM":
        """Moves the whole state to `device`; returns self."""
        dev = torch.device(device)
        self._means = self._means.to(dev)
        self._m2 = self._m2.to(dev)
        self._counts = self._counts.to(dev)
        self._buffer = self._buffer.to(dev).clone()
        self._warmup_storage = None
        return self

    def __repr__(self) -> str:
        return (f"OnlineGMM(n_components={self.n_components}, dim={self.dim}, "
                f"reg_covar={self.reg_covar:g}, device={self.device}, "
                f"initialized={self.initialized})")
