"""How the updates of one SGLD-Gibbs step reach the state every task shares: the reduction of
`SGLDGibbs.step`, which both samplers run (docs/distributed.md).

The step (lift_ext.lift.sampler) steps the rows of each shard it holds, then hands the
reduction, shard by shard, what changed: the rows' deltas theta_new - theta_old under their
component z_old, the rows' pSGLD averages, the new components of the rows (Gumbel-max draws),
and the gradients for the shift. `finish` then makes the shared state (S_k, z, n, v) what it
must be after the step and returns the shift's mean gradients {k: gbar_k}.

    LocalReduction   one process holding every row (SGLDGibbs): the identity. Each delta goes
                     straight into S_{z_old} and each move into S and z, in task order; v is
                     the mean of the rows' averages (SGLDGibbs's own chain, bitwise as ever).
    AllReduce        a rank of a sharded chain (ShardedSGLDGibbs): each shard's deltas, moves,
                     z, averages and shift sums go into a buffer laid out as
                     [dS (K x D) | z of the step's S B tasks | sum of averages (D) | shift sums
                     (K x D) | shift counts (K) | one status slot per rank], per shard from zero
                     and summed in shard order; ONE all-reduce (sum) of it, after which every
                     rank applies the same sum (lift_ext.lift.collective for the failures).
"""
from typing import Dict, Optional, Sequence

import torch

from lift_ext.lift.collective import DIVERGED, OK, RAISED, Collective
from lift_ext.lift.mixture import Components
from lift_ext.lift.noncentred import member_mean_gradients

ShiftGrads = Optional[Dict[int, torch.Tensor]]


class LocalReduction:
    """The identity reduction of a one-process chain (module docstring). `square_avg` is the
    chain's pSGLD average v (None without preconditioning); `shifting`: whether the step's
    mean gradients per component are wanted."""

    def __init__(self, comps: Components, square_avg: Optional[torch.Tensor], shifting: bool):
        self.comps, self.square_avg, self.shifting = comps, square_avg, shifting

    def add_rows(self, shard: int, labels: Sequence[int], deltas: torch.Tensor,
                 averages: Sequence[torch.Tensor]) -> None:
        """S_{labels[b]} += deltas[b] in order, and v = the mean of the rows' averages."""
        for comp, delta in zip(labels, deltas):
            self.comps.sums[comp].add_(delta)
        if averages:
            self.square_avg.copy_(torch.stack(list(averages)).mean(dim=0))

    def assign(self, shard: int, start: int, tasks: Sequence[int], labels: Sequence[int],
               rows: torch.Tensor, grads: Sequence[torch.Tensor]) -> None:
        """Move each task whose drawn label differs to it (S and n follow, Components.move_)."""
        for task, label, row in zip(tasks, labels, rows):
            if label != int(self.comps.assignments[task]):
                self.comps.move_(task, label, row, row)

    def finish(self, status: int, tasks: Sequence[int], grads: Sequence[torch.Tensor],
               moved: Sequence[int] = ()) -> ShiftGrads:
        """The shift's {k: gbar_k} over the tasks now in each component (None without the shift).
        A DIVERGED status raises FloatingPointError (the state is that of a diverged chain)."""
        if status == DIVERGED:
            raise FloatingPointError("a stepped theta or a phi_k is not finite")
        return member_mean_gradients(self.comps, tasks, grads, moved) if self.shifting else None

    def fail(self) -> None:
        """A gradient failed before anything changed: nothing to tell anyone."""


class AllReduce:
    """The reduction of one rank of a sharded chain over `comm` (module docstring), for a step
    of `num_tasks` tasks (all shards); `labelled`: whether the step draws z."""

    def __init__(self, comm: Collective, comps: Components, square_avg: Optional[torch.Tensor], *, dim: int,
                 num_tasks: int, labelled: bool, shifting: bool, device: torch.device, what: str):
        self.comm, self.comps, self.square_avg, self.what = comm, comps, square_avg, what
        k = comps.k
        self.sizes = (k * dim, num_tasks if labelled else 0, dim if square_avg is not None else 0,
                      k * dim if shifting else 0, k if shifting else 0)
        self.numel, self.dim, self.device = sum(self.sizes), dim, device
        self.buffer = comm.buffer(self.numel, torch.float32, device)
        self._part: Optional[torch.Tensor] = None
        self._first = True

    def _shard_part(self) -> torch.Tensor:
        """The part of the shard being stepped: the buffer itself for the first, a zeroed copy of
        its layout for the others (added to the buffer in `_close_shard`, shard order)."""
        if self._part is None:
            self._part = self.buffer[:self.numel] if self._first else torch.zeros(self.numel, device=self.device)
        return self._part

    def _close_shard(self) -> None:
        if self._part is not None and not self._first:
            self.buffer[:self.numel] += self._part
        self._part, self._first = None, False

    def add_rows(self, shard: int, labels: Sequence[int], deltas: torch.Tensor,
                 averages: Sequence[torch.Tensor]) -> None:
        """A new shard: dS_{labels[b]} += deltas[b] in order, and the rows' averages summed."""
        self._close_shard()
        part, (kd, nz, nv, _, _) = self._shard_part(), self.sizes
        delta = part[:kd].view(self.comps.k, self.dim)
        for comp, row_delta in zip(labels, deltas):
            delta[comp].add_(row_delta)
        if averages:
            total = part[kd + nz:kd + nz + nv]
            for average in averages:
                total.add_(average)

    def assign(self, shard: int, start: int, tasks: Sequence[int], labels: Sequence[int],
               rows: torch.Tensor, grads: Sequence[torch.Tensor]) -> None:
        """The shard's z (slots start.. of the step's tasks), its moves as -row / +row in dS, and
        its shift sums and counts per (new) component."""
        part, (kd, nz, nv, ng, nc) = self._shard_part(), self.sizes
        delta = part[:kd].view(self.comps.k, self.dim)
        for b, (task, label) in enumerate(zip(tasks, labels)):
            previous = int(self.comps.assignments[task])
            if nz:
                part[kd + start + b] = label
            if label != previous:
                delta[label].add_(rows[b])
                delta[previous].sub_(rows[b])
        if ng:
            at = kd + nz + nv
            sums, counts = part[at:at + ng].view(self.comps.k, self.dim), part[at + ng:at + ng + nc]
            for grad, label in zip(grads, labels):
                sums[label].add_(grad)
                counts[label] += 1

    def finish(self, status: int, tasks: Sequence[int], grads: Sequence[torch.Tensor],
               moved: Sequence[int] = ()) -> ShiftGrads:
        """The all-reduce with this rank's `status`, then, when every rank is OK, S += dS, the
        step's z, n recounted, v = the mean of the averages; returns the shift's {k: gbar_k}.
        Otherwise FloatingPointError (a rank diverged) or RankFailure (a rank raised), with the
        shared state unchanged."""
        self._close_shard()
        codes = self.comm.sum_(self.buffer, self.what, status)
        if any(code != OK for code in codes):
            diverged = [r for r, code in enumerate(codes) if code == DIVERGED]
            if diverged:
                raise FloatingPointError(f"a theta or phi_k is not finite (rank {', '.join(map(str, diverged))})")
            self.comm.raise_failures(codes, self.what)
        return self._apply(tasks)

    def _apply(self, tasks: Sequence[int]) -> ShiftGrads:
        comps, buffer, (kd, nz, nv, ng, nc) = self.comps, self.buffer, self.sizes
        comps.sums.add_(buffer[:kd].view(comps.k, self.dim))
        if nz:
            comps.assign_(tasks, buffer[kd:kd + nz].round().long().tolist())
        if nv:
            self.square_avg.copy_(buffer[kd + nz:kd + nz + nv] / len(tasks))
        if not ng:
            return None
        at = kd + nz + nv
        sums, counts = buffer[at:at + ng].view(comps.k, self.dim), buffer[at + ng:at + ng + nc].tolist()
        return {k: sums[k] / counts[k] for k in range(comps.k) if counts[k] > 0}

    def fail(self) -> None:
        """This rank's gradients failed: join the step's collective with RAISED, so the others
        stop too (an error of the collective itself is left to the others to report)."""
        try:
            self.comm.sum_(self.comm.buffer(self.numel, torch.float32, self.device), self.what, RAISED)
        except Exception:  # noqa: BLE001 - the original error is the one to raise
            pass


__all__ = ["LocalReduction", "AllReduce"]
