"""`ShardedLiFT`: the LiFT trainer with its tasks sharded over a torch.distributed process
group (its chain is a `ShardedSGLDGibbs`, docs/distributed.md).

Every rank runs the same program with the same model, settings and seed. A rank needs the
data of its own tasks only: `ShardedLiFT.local_task_ids(num_tasks, sharding)` says which, and
`tasks` is a sequence of all N tasks in which the others' entries may be None. The mean task
size n_ref that sets the sampler's lr is summed over the ranks (one all-reduce at
construction). tasks_per_step is per shard; everything else is as for `LiFT`, and `save(path)`
/ `ShardedLiFT.load(path, ...)` write and read a checkpoint set directory (every rank calls
them).
"""
from typing import Optional, Sequence

import torch

from lift_ext import validate
from lift_ext.checkpoint import CheckpointError
from lift_ext.lift import shard_checkpoint
from lift_ext.lift.collective import Collective, group_rank_and_size
from lift_ext.lift.config import Hierarchy, LangevinConfig, PaperHierarchy, check_type
from lift_ext.lift.distributed import ShardedSGLDGibbs, Sharding
from lift_ext.lift.sampler import ChainStart
from lift_ext.lift.shards import local_task_ids
from lift_ext.lift.tasks import Task
from lift_ext.lift.trainer import LiFT, ModelLike, check_task_sequence, restore, task_sizes
from lift_ext.types import LossFn


class ShardedLiFT(LiFT):
    """LiFT over the N = len(tasks) tasks sharded as `sharding` says (module docstring).
    Arguments as LiFT's, plus `sharding` (lift_ext.lift.Sharding)."""

    def __init__(self, model: ModelLike, tasks: Sequence[Optional[Task]], loss_fn: LossFn, *,
                 langevin: LangevinConfig, hierarchy: Hierarchy = PaperHierarchy(),
                 sharding: Optional[Sharding] = None, start: Optional[ChainStart] = None, seed: int = 0):
        self.sharding = Sharding() if sharding is None else check_type("sharding", sharding, Sharding)
        super().__init__(model, tasks, loss_fn, langevin=langevin, hierarchy=hierarchy, start=start, seed=seed)

    def _new_sampler(self, langevin: LangevinConfig, hierarchy: Hierarchy, start: ChainStart) -> ShardedSGLDGibbs:
        return ShardedSGLDGibbs(self.num_tasks, self.flat.dim, self.grads, langevin=langevin, hierarchy=hierarchy,
                                sharding=self.sharding, start=start, seed=self.seed)

    @staticmethod
    def local_task_ids(num_tasks: int, sharding: Optional[Sharding] = None) -> range:
        """The global indices of the tasks this rank will hold: the ones whose data it needs."""
        sharding = Sharding() if sharding is None else check_type("sharding", sharding, Sharding)
        rank, world_size = group_rank_and_size(sharding.process_group)
        shards = world_size if sharding.num_shards is None else sharding.num_shards
        return local_task_ids(validate.integer("num_tasks", num_tasks, 1), shards, world_size, rank)

    def _bind(self, model: ModelLike, tasks: Sequence[Optional[Task]], loss_fn: LossFn) -> None:
        """As LiFT's, with this rank's tasks only and n_ref summed over the ranks."""
        check_task_sequence(tasks)
        n = len(tasks)
        local = self.local_task_ids(n, self.sharding)
        missing = [i for i in local if tasks[i] is None]
        if missing:
            raise ValueError(f"tasks must hold this rank's tasks {local.start}..{local.stop - 1} of the "
                             f"{n}; missing {missing[:5]}")
        self._sizes = dict(zip(local, task_sizes([tasks[i] for i in local])))
        comm = Collective(self.sharding.process_group)
        device = (model.vector if hasattr(model, "vector") else next(model.parameters())).device
        total = comm.buffer(1, torch.float64, device)  # NCCL needs a GPU buffer
        total[0] = float(sum(self._sizes.values()))
        comm.raise_failures(comm.sum_(total, "the sum of the task sizes"), "construction")
        self.num_tasks, self.reference_size = n, float(total[0]) / n
        self._attach(model, list(tasks), loss_fn)

    def save(self, path: str) -> None:
        """Write the chain to directory `path` as a checkpoint set, with this trainer's config
        (every rank must call it; lift_ext.lift.shard_checkpoint)."""
        shard_checkpoint.save(self.sampler, path, owner=self.config())

    @classmethod
    def load(cls, path: str, model: ModelLike, tasks: Sequence[Optional[Task]], loss_fn: LossFn,
             sharding: Optional[Sharding] = None) -> "ShardedLiFT":
        """The chain of the checkpoint set at `path` on `sharding`'s group (any world size dividing
        its num_shards, which comes from the set), over `model`'s adapter and this rank's `tasks`
        (as in the constructor)."""
        sharding = Sharding() if sharding is None else check_type("sharding", sharding, Sharding)
        owner = shard_checkpoint.read_owner(path)
        if not isinstance(owner, dict):
            raise CheckpointError(f"checkpoint set {path!r} was not written by a ShardedLiFT (it holds no LiFT config)")
        rank, world_size = group_rank_and_size(sharding.process_group)
        state = shard_checkpoint.read_state(path, rank, world_size)
        sharding = Sharding(sharding.process_group, state["config"]["num_shards"], sharding.fault_grace)
        return restore(cls, path, owner, state, model, tasks, loss_fn, sharding=sharding)
