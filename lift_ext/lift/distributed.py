"""`ShardedSGLDGibbs`: the SGLD-Gibbs chain of `SGLDGibbs` with its N task vectors sharded
over the ranks of a torch.distributed process group (docs/distributed.md).

Layout and schedule (lift_ext.lift.shards): S = `num_shards` shards of contiguous tasks; a
rank of a world of P holds S / P of them (P must divide S) and only their thetas, as `thetas`
with global indices `task_ids`. The prior's state (phi or phi_k, S_k, z, n, pi, the OnlineGMM,
the pSGLD average v) is replicated: every rank keeps the same bits. A step takes the next B =
`tasks_per_step` visits of EVERY shard (S B tasks in all, in shard order), by the step code of
`SGLDGibbs.step` with this rank's shards and the `AllReduce` reduction (lift_ext.lift.reduction):
  1. each rank computes the gradients of its shards' tasks (one batched grad_fn.many call per
     shard when grad_fn has it) and steps each shard's rows with one fused list launch, shard s
     at Philox offset 2t + s 2^40 (even: never a phi_k offset 2t + 1 + k 2^40), row b at
     element b D + j (shard 0 is exactly SGLDGibbs's theta step);
  2. mixture, after warm-up: z of its rows from their conditionals (the Gumbel uniforms of all
     S B rows are drawn on every rank from the step's keyed generator, each rank uses its rows');
  3. ONE all-reduce (sum) of [dS (K x D float32) | the new z of the S B tasks (mixture) |
     sum of the rows' pSGLD averages (D, preconditioned only) | with shift_lr > 0, the sums
     (K x D) and counts (K) of the step's gradients per new component | one status slot per rank]:
     dS_k = per shard, sum over its rows in order of theta_new - theta_old into S_{z_old}, and of
     the z moves (-theta from the old component, +theta into the new), shards summed in shard
     order; every rank then adds dS to S, applies the z, recounts n (S_k = 0 for empty k) and
     sets v to the mean of the averages;
  4. every rank draws phi / phi_k and pi itself (same inputs, same Philox offsets and keyed
     generator: same bits, no broadcast), makes the shift moves (lift_ext.lift.noncentred, the
     mean gradients from step 3; each rank shifts its own rows), feeds the OnlineGMM, and
     k-means at the end of a mixture warm-up runs on the gathered thetas (an all-gather of
     N x D floats, once a run).

Equivalence: the chain is a function of (seed, S, B) only, not of P: a P-rank run equals the
one-process run (`Sharding(process_group=None)`, the same num_shards, tasks_per_step = B per shard,
S B tasks per step) bitwise when P <= 2 (the all-reduce of two partials is a + b, the sum
the one process forms), and within float32 rounding of dS (1e-6 relative) for P > 2, whose
all-reduce adds the partials in another order. With S = 1 it is SGLDGibbs's own schedule and
noise, bitwise equal to SGLDGibbs for B = 1 and equal up to the order in which the B deltas
are added to S for B > 1 (SGLDGibbs's LocalReduction adds them one by one into S).

Faults (lift_ext.lift.collective): a grad_fn that raises, or a diverged z draw (or, with one
component, a stepped row that is not finite), still joins
the step's all-reduce with its status; every rank then restores its rows (the step is undone
everywhere) and raises: the failing rank its own error, the others RankFailure (or
FloatingPointError for a divergence) naming it. A killed rank makes the collective fail on
the others, which restore their rows and raise RankFailure naming it, within the process
group's timeout. Checkpoints: a set of files, one per shard plus the shared state, made
complete by a manifest written last (lift_ext.lift.shard_checkpoint).
"""
import dataclasses
from typing import Dict, Optional

import torch
import torch.distributed as dist

from lift_ext import validate
from lift_ext.lift import sampler_state, shard_checkpoint
from lift_ext.lift.collective import Collective, group_rank_and_size
from lift_ext.lift.config import LangevinConfig, MixtureHierarchy, PaperHierarchy, check_type
from lift_ext.lift.reduction import AllReduce
from lift_ext.lift.sampler import ChainStart, SGLDGibbs
from lift_ext.lift.shards import ShardedOrder, held_shards, local_task_ids, shard_bounds
from lift_ext.types import GradFn


@dataclasses.dataclass(frozen=True)
class Sharding:
    """How a chain's tasks are spread over processes. process_group: the torch.distributed group
    (None: one process holding every shard); num_shards S (None: the world size; a multiple of
    it lets the chain resume on other world sizes later); fault_grace: the seconds a surviving
    rank waits to find out which rank is gone."""

    process_group: object = None
    num_shards: Optional[int] = None
    fault_grace: float = 5.0

    def __post_init__(self):
        if self.num_shards is not None:
            validate.integer("num_shards", self.num_shards, 1)
        validate.number("fault_grace", self.fault_grace)


def _group_device(process_group) -> Optional[torch.device]:
    """The current CUDA device for an NCCL group (whose collectives need GPU buffers), else None."""
    if process_group is not None and dist.is_initialized() and dist.get_backend(process_group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


class ShardedSGLDGibbs(SGLDGibbs):
    """SGLDGibbs with its tasks sharded as `sharding` says (module docstring): the same problem,
    configs (langevin.tasks_per_step = B per shard), start and seed. The chain lives on the
    device of start's tensors, else the current CUDA device for an NCCL group, else the CPU.
    A separate class rather than an option of SGLDGibbs: its schedule (per shard) and its sum of
    the deltas (per shard, then over shards) make it another chain for B > 1, while SGLDGibbs's
    one-process chain stays exactly as it is."""

    def __init__(self, num_tasks: int, dim: int, grad_fn: GradFn, *, langevin: LangevinConfig,
                 hierarchy: "PaperHierarchy | MixtureHierarchy" = PaperHierarchy(),
                 sharding: Optional[Sharding] = None, start: Optional[ChainStart] = None, seed: int = 0):
        num_tasks = validate.integer("num_tasks", num_tasks, 1)
        sharding = Sharding() if sharding is None else check_type("sharding", sharding, Sharding)
        if isinstance(hierarchy, MixtureHierarchy) and hierarchy.z_update != "distance":
            raise ValueError("ShardedSGLDGibbs does not make the assignment draw by likelihood "
                             "(z_update='likelihood'); run it with SGLDGibbs in one process")
        comm = Collective(sharding.process_group, sharding.fault_grace)
        num_shards = comm.world_size if sharding.num_shards is None else \
            validate.integer("num_shards", sharding.num_shards, 1, num_tasks)
        self.comm, self.num_shards = comm, num_shards
        self._shards = held_shards(num_shards, comm.world_size, comm.rank)
        local = local_task_ids(num_tasks, num_shards, comm.world_size, comm.rank)
        self._lo, self._hi = local.start, local.stop
        self._first_task = self._lo
        has_tensors = start is not None and (start.thetas is not None or start.prior_mean is not None)
        super().__init__(num_tasks, dim, grad_fn, langevin=langevin, hierarchy=hierarchy, start=start, seed=seed,
                         device=None if has_tensors else _group_device(sharding.process_group))

    def _tasks_per_step_limit(self, num_tasks: int) -> int:
        return min(hi - lo for lo, hi in shard_bounds(num_tasks, self.num_shards))

    def _new_order(self, state: Optional[dict] = None) -> ShardedOrder:
        if state is None:
            return ShardedOrder(self.seed, self.num_tasks, self.num_shards)
        return ShardedOrder(self.seed, self.num_tasks, self.num_shards, state["epochs"], state["positions"])

    # ---- what this rank holds --------------------------------------------------------------
    @property
    def task_ids(self) -> range:
        """The global indices of the tasks this rank holds (rows of `thetas`, in order)."""
        return range(self._lo, self._hi)

    @property
    def thetas(self) -> torch.Tensor:
        """The vectors of this rank's tasks [len(task_ids), D] (the live buffer)."""
        return self._thetas

    @property
    def _draws_bar(self) -> bool:
        """run()'s bar is drawn on rank 0 only; the diagnostics it shows are a collective, so
        every rank must pass run() the same `progress`."""
        return self.comm.rank == 0

    @property
    def shards(self) -> range:
        """The shards this rank holds."""
        return self._shards

    def _held_rows(self, start: torch.Tensor) -> torch.Tensor:
        return super()._held_rows(start[self._lo:self._hi])

    def all_thetas(self) -> torch.Tensor:
        """Every task's vector [N, D], gathered from all ranks (a collective: every rank must
        call it; N x D floats on each)."""
        world = self.comm.world_size
        counts = [len(local_task_ids(self.num_tasks, self.num_shards, world, r)) for r in range(world)]
        return self.comm.gather_rows(self._thetas, counts, "the gather of all thetas")

    def _assign_by_kmeans(self, thetas: Optional[torch.Tensor] = None) -> None:
        super()._assign_by_kmeans(self.all_thetas() if thetas is None else thetas)

    # ---- the step's layout and reduction (SGLDGibbs.step runs it) ------------------------------
    _undoes_divergence = True

    def _peek(self):
        """(the next step's tasks of every shard, and the shards' positions after them)."""
        return self._order.peek(self.langevin.tasks_per_step)

    def _held_shards(self) -> range:
        return self._shards

    def _reduction(self, num_tasks: int, labelled: bool) -> AllReduce:
        """The all-reduce of the step's shared updates over the ranks (lift_ext.lift.reduction)."""
        return AllReduce(self.comm, self._components, self._square_avg, dim=self.dim, num_tasks=num_tasks,
                         labelled=labelled, shifting=self._shift_lr > 0.0, device=self.device,
                         what=f"step {self.step_count}")

    # ---- reports and checkpoints --------------------------------------------------------------
    def diagnostics(self) -> Dict[str, float]:
        """As SGLDGibbs.diagnostics, over all ranks (one all-reduce: every rank must call it)."""
        comps = self._components
        centers = comps.phis.index_select(0, comps.assignments[self._lo:self._hi].to(self.device))
        buffer = self.comm.buffer(1, torch.float64, self.device)
        buffer[0] = (self._thetas - centers).double().pow(2).sum()
        self.comm.raise_failures(self.comm.sum_(buffer, "diagnostics"), "diagnostics")
        out = {"phi_rms": float(comps.phis.pow(2).mean().sqrt()),
               "theta_spread": float((buffer[0] / (self.num_tasks * self.dim)).sqrt()),
               "gmm_samples": float(self.num_gmm_samples)}
        if self._mixture:
            out["components_used"] = float(sum(n > 0 for n in comps.counts))
        return out

    def config(self) -> Dict[str, object]:
        """SGLDGibbs's config plus num_shards (tasks_per_step is per shard)."""
        return dict(super().config(), num_shards=self.num_shards)

    @classmethod
    def from_config(cls, config: Dict[str, object], grad_fn: GradFn,
                    sharding: Optional[Sharding] = None) -> "ShardedSGLDGibbs":
        """A new chain with the settings of `config` on `sharding`'s group (its num_shards is the config's)."""
        sharding = dataclasses.replace(sharding or Sharding(), num_shards=config["num_shards"])
        return cls(config["num_tasks"], config["dim"], grad_fn, sharding=sharding, **cls.settings_of(config))

    def save(self, path: str) -> None:
        """Write the chain to directory `path` as a checkpoint set (every rank must call it;
        lift_ext.lift.shard_checkpoint)."""
        shard_checkpoint.save(self, path)

    @classmethod
    def load(cls, path: str, grad_fn: GradFn, sharding: Optional[Sharding] = None) -> "ShardedSGLDGibbs":
        """The chain saved in directory `path`, on `sharding`'s group (any world size that
        divides its num_shards: each rank reads its shards); it continues the exact chain."""
        sharding = Sharding() if sharding is None else check_type("sharding", sharding, Sharding)
        rank, world_size = group_rank_and_size(sharding.process_group)
        state = shard_checkpoint.read_state(path, rank, world_size)
        with sampler_state.refusing_inconsistency(path):
            sampler = sampler_state.quietly(cls.from_config, state["config"], grad_fn, sharding)
            sampler.load_state_dict(state)
        return sampler
