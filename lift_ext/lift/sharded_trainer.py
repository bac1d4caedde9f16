"""`ShardedLiFT`: the LiFT trainer with its tasks sharded over a torch.distributed process
group (its chain is a `ShardedSGLDGibbs`, docs/distributed.md).

Every rank runs the same program with the same model, hyper-parameters and seed. A rank needs
the data of its own tasks only: `ShardedLiFT.local_task_ids(num_tasks, process_group,
num_shards)` says which, and `tasks` may be a mapping {global task index: Task} holding just
those (or a full sequence). The mean task size n_ref that sets the sampler's lr is summed over
the ranks (one all-reduce at construction). tasks_per_step is per shard; everything else is
as for `LiFT`, and `save(path)` / `ShardedLiFT.load(path, ...)` write and read a checkpoint
set directory (every rank calls them).
"""
from typing import Mapping, Optional, Sequence, Union

import torch

from lift_ext import validate
from lift_ext.lift import shard_checkpoint
from lift_ext.lift.collective import Collective, group_rank_and_size
from lift_ext.lift.distributed import ShardedSGLDGibbs
from lift_ext.lift.flat import Selector
from lift_ext.lift.shards import local_task_ids
from lift_ext.lift.tasks import Task
from lift_ext.lift.trainer import LiFT, _task_sizes
from lift_ext.types import LossFn

Tasks = Union[Sequence[Task], Mapping[int, Task]]


class ShardedLiFT(LiFT):
    """LiFT over `num_tasks` tasks sharded over `process_group` (module docstring). Arguments
    as LiFT's, plus num_tasks (N; default len(tasks) when tasks is a full sequence) and
    ShardedSGLDGibbs's process_group, num_shards and fault_grace."""

    _new_sampler = ShardedSGLDGibbs

    def __init__(self, model: torch.nn.Module, tasks: Tasks, loss_fn: LossFn, *,
                 num_tasks: Optional[int] = None, process_group=None, num_shards: Optional[int] = None,
                 **options):
        self._group, self._num_shards, self._declared_tasks = process_group, num_shards, num_tasks
        super().__init__(model, tasks, loss_fn, process_group=process_group, num_shards=num_shards, **options)

    @staticmethod
    def local_task_ids(num_tasks: int, process_group=None, num_shards: Optional[int] = None) -> range:
        """The global indices of the tasks this rank will hold: the ones whose data it needs."""
        rank, world_size = group_rank_and_size(process_group)
        shards = world_size if num_shards is None else validate.integer("num_shards", num_shards, 1)
        return local_task_ids(validate.integer("num_tasks", num_tasks, 1), shards, world_size, rank)

    def _bind(self, model: torch.nn.Module, tasks: Tasks, loss_fn: LossFn, select: Selector, seed: int,
              batched_grads: Optional[bool]) -> None:
        """As LiFT's, with this rank's tasks only and n_ref summed over the ranks."""
        n = self._declared_tasks if self._declared_tasks is not None else \
            (len(tasks) if not isinstance(tasks, Mapping) else None)
        if n is None:
            raise ValueError("num_tasks is needed when tasks is a mapping of this rank's tasks")
        local = self.local_task_ids(n, self._group, self._num_shards)
        missing = [i for i in local if i not in tasks] if isinstance(tasks, Mapping) else \
            ([] if len(tasks) == n else list(local))
        if missing:
            raise ValueError(f"tasks must hold this rank's tasks {local.start}..{local.stop - 1} of "
                             f"num_tasks={n}; missing {missing[:5]}")
        self._sizes = dict(zip(local, _task_sizes([tasks[i] for i in local])))
        comm = Collective(self._group)
        total = comm.buffer(1, torch.float64, next(model.parameters()).device)  # NCCL needs a GPU buffer
        total[0] = float(sum(self._sizes.values()))
        comm.raise_failures(comm.sum_(total, "the sum of the task sizes"), "construction")
        self.num_tasks, self.reference_size = n, float(total[0]) / n
        self._attach(model, tasks, loss_fn, select, seed, batched_grads)

    @classmethod
    def load(cls, path: str, model: torch.nn.Module, tasks: Tasks, loss_fn: LossFn, *,
             select: Selector = None, batched_grads: Optional[bool] = None, num_tasks: Optional[int] = None,
             process_group=None, fault_grace: float = 5.0) -> "ShardedLiFT":
        """The chain of the checkpoint set at `path` on this world (any world size dividing its
        num_shards), over `model`'s adapter and this rank's `tasks` (as in the constructor)."""
        preset = dict(_group=process_group, _num_shards=shard_checkpoint.read_manifest(path)["num_shards"],
                      _declared_tasks=num_tasks)
        return cls._resume(path, model, tasks, loss_fn, select, batched_grads, preset,
                           process_group=process_group, fault_grace=fault_grace)
