"""The non-centred moves of `SGLDGibbs` (docs/design.md section 12).

Write the hierarchy in its non-centred coordinates, theta_i = phi_{z_i} + beta eta_i with
eta_i ~ N(0, I). Two moves hold every eta fixed:

**Shift** (``shift_lr`` > 0). Moving phi_k moves phi_k and all n_k of its members' theta_i by
the same vector delta. The move is one (p)SGLD step on phi_k in these coordinates, whose
potential (units of the summed task losses) is

    U_k(phi_k) = sum_{i: z_i = k} -log p(D_i | phi_k + beta eta_i) + ||phi_k - mu0||^2 / (2 sigma^2),

with gradient sum_{i: z_i = k} g_i(theta_i) + (phi_k - mu0) / sigma^2. The sum over the
members is estimated by n_k times the mean gbar_k of the gradients of the members stepped in
this step (the evaluations of the theta step, taken at the thetas before it), leaving out a
task the likelihood draw moved in this step: its row was carried by phi_k - phi_k0, and its
gradient, taken at the old row, is not a gradient of U_k. The step size is
lr_shift / n_k on U_k, i.e. lr_shift on the members' mean loss U_k / n_k:

    delta = -lr_shift G (gbar_k + (phi_k - mu0) / (n_k sigma^2)) + sqrt(2 lr_shift T G / n_k) xi,

G = 1 / (sqrt(v') + eps') with v' = alpha v + (1 - alpha) gbar_k^2 from a copy of the sampler's
square average v (pSGLD, the sampler's own v is not changed), or G = 1 without preconditioning.
Then theta_i += delta for the n_k members and S_k += n_k delta.
It is one `ops.sgld_step_` on phi_k at temperature T / n_k with prior precision 1 / (n_k
sigma^2), so the damping eps' follows the kernel's rule.

Why: in the centred chain phi_k follows the mean of its members, and a member moves only when
it is visited (once every N / B steps), so phi_k learns at the pace of one task's visits. The
shift moves phi_k with the gradient of every visit of any member, as a multitask step on the
component's tasks would. Alternating the centred moves (theta steps, exact phi_k draws) with
this non-centred one is the interweaving strategy for hierarchical models (Yu and Meng, 2011).

Noise: Philox with the seed keyed from (seed, "shift") at offset 2t + 1 + k 2^40 (the phi_k
offsets, under another key: independent of every other draw of the chain).

**Assignment by likelihood** (``z_update="likelihood"``). Changing z_i from k0 to k with eta_i
fixed carries theta_i to c_ik = theta_i + phi_k - phi_k0. The prior terms do not depend on z_i
in these coordinates, so its conditional is

    P(z_i = k) ∝ pi_k p(D_i | c_ik)^(1/T),   log p(D_i | c) estimated by -nll_i(c),

nll_i(c) = n_i times the mean loss of task i's minibatch of the step (the grad_fn's
``losses(i, candidates)``, K forward passes). Drawn by Gumbel-max with the step's uniforms; at
T = 0 the component of the lowest nll. Unlike the distance draw (lift_ext.lift.mixture), it
compares how well each component's adapter FITS the task's data, so a task whose vector sits
near the wrong phi_k (its eta_i small, as the shift keeps it) still moves to the component that
fits it. The two draws complement each other: given theta_i (the distance draw, which the
sampler always makes first) a task far from its phi_k moves, given eta_i a task near the wrong
one does; alternating them leaves the posterior unchanged.
"""
from typing import Callable, Dict, List, Optional, Sequence

import torch

from lift_ext import ops
from lift_ext.lift.mixture import Components, keyed_seed


def shift_seed(seed: int) -> int:
    """The Philox seed of the shift moves of a chain with seed `seed`."""
    return keyed_seed("SGLDGibbs.shift", seed)


def member_mean_gradients(comps: Components, tasks: Sequence[int],
                          grads: Sequence[torch.Tensor], moved: Sequence[int] = ()) -> Dict[int, torch.Tensor]:
    """{k: gbar_k}: the mean of `grads` (in the order of `tasks`) over the tasks now in
    component k, for every component with at least one of them (after the z draws); the
    tasks in `moved` (carried to another component by the likelihood draw, their gradients
    taken elsewhere) are left out."""
    members: Dict[int, List[int]] = {}
    for row, task in enumerate(tasks):
        if task not in moved:
            members.setdefault(int(comps.assignments[task]), []).append(row)
    return {comp: torch.stack([grads[r] for r in rows]).mean(dim=0) for comp, rows in members.items()}


def shift_components_(thetas: torch.Tensor, comps: Components, mean_grads: Dict[int, torch.Tensor],
                      square_avg: Optional[torch.Tensor], prior_mean: Optional[torch.Tensor], *,
                      lr: float, temperature: float, sigma: float, alpha: float, eps: float, seed: int,
                      step: int, first_task: int = 0) -> None:
    """The shift move (module docstring) of each component k in `mean_grads` ({k: gbar_k}, see
    `member_mean_gradients`): phi_k moves by delta, so do the rows of `thetas` (the tasks
    first_task, first_task + 1, ...: all N, or one rank's) of its members, and S_k += n_k delta."""
    noise_seed, deltas = shift_seed(seed), {}
    for comp in sorted(mean_grads):
        n_k = comps.counts[comp]
        phi = comps.phis[comp]
        old = phi.clone()
        average = None if square_avg is None else square_avg.clone()
        ops.sgld_step_(phi, mean_grads[comp], prior_mean, None, average, lr=lr, temperature=temperature / n_k,
                       prior_precision=1.0 / (n_k * sigma**2), alpha=alpha, eps=eps, seed=noise_seed,
                       offset=Components.phi_offset(step, comp))
        deltas[comp] = phi - old
        comps.sums[comp].add_(deltas[comp], alpha=float(n_k))
    _add_to_members_(thetas, comps.assignments[first_task:first_task + thetas.shape[0]].tolist(), deltas)


def _add_to_members_(thetas: torch.Tensor, held: Sequence[int], deltas: Dict[int, torch.Tensor]) -> None:
    """theta_i += delta_{z_i} for every row i of `thetas` whose component (held[i]) has a delta:
    one multi-tensor add per component over its members' rows, each row read and written once."""
    members: Dict[int, List[torch.Tensor]] = {comp: [] for comp in deltas}
    for row, comp in zip(thetas.unbind(0), held):
        if comp in members:
            members[comp].append(row)
    for comp, rows in members.items():
        if rows:
            torch._foreach_add_(rows, [deltas[comp]] * len(rows))


def draw_assignments_by_likelihood_(thetas: torch.Tensor, comps: Components, tasks: Sequence[int],
                                    nll: Callable[[int, torch.Tensor], torch.Tensor], *,
                                    temperature: float, generator: torch.Generator) -> List[int]:
    """z_i of each of `tasks` from its non-centred conditional (module docstring), with `nll(i,
    candidates [K, D]) -> [K]`; a moved task's row of `thetas` becomes its candidate and S, n
    follow. Returns the moved tasks (their rows moved). FloatingPointError with nothing moved
    when a score is NaN (the chain diverged)."""
    uniforms = comps.gumbel_uniforms(len(tasks), temperature, generator)
    log_weights = comps.weights.clamp_min(1e-300).log()
    olds = comps.assignments[list(tasks)].tolist()
    index = torch.tensor(list(tasks), dtype=torch.int64, device=thetas.device)
    every = (thetas.index_select(0, index)[:, None, :] + comps.phis).sub_(comps.phis[olds][:, None, :])  # c_ik
    rows = []
    for task, candidates in zip(tasks, every):
        losses = nll(task, candidates).detach()
        if losses.shape != (comps.k,):
            raise ValueError(f"grad_fn.losses({task}, candidates) must return a Tensor [{comps.k}], got "
                             f"{tuple(losses.shape)}")
        rows.append(losses.to(torch.float64))
    losses = torch.stack(rows).cpu()  # [B, K]: every task's scores in one pass of float64 operations
    if temperature > 0.0:
        scores = log_weights - losses / temperature - torch.log(-torch.log(uniforms.clamp_min(1e-300)))
    else:
        scores = -losses
    if bool(scores.isnan().any()) or not bool(torch.isfinite(scores.amax(1)).all()):
        raise FloatingPointError("a stepped theta or a phi_k is not finite")
    moved = []
    for task, old, comp, candidates in zip(tasks, olds, scores.argmax(1).tolist(), every):
        if comp != old:
            comps.move_(task, comp, thetas[task], candidates[comp])
            thetas[task].copy_(candidates[comp])
            moved.append(task)
    return moved


def restore_point(thetas: torch.Tensor, comps: Components, tasks: Sequence[int],
                  square_avg: Optional[torch.Tensor]) -> Callable[[], None]:
    """A function that puts the rows of `tasks`, the components and `square_avg` back as they are
    now (the likelihood draw calls grad_fn.losses after the theta step has changed them)."""
    index = torch.tensor(list(tasks), dtype=torch.int64, device=thetas.device)
    rows, state = thetas.index_select(0, index), comps.state_dict()
    average = None if square_avg is None else square_avg.clone()

    def restore() -> None:
        thetas.index_copy_(0, index, rows)
        comps.load_state_dict(state)
        if average is not None:
            square_avg.copy_(average)
    return restore


__all__ = ["shift_components_", "member_mean_gradients", "shift_seed", "draw_assignments_by_likelihood_",
           "restore_point"]
