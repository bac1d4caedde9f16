"""How a sharded SGLD-Gibbs chain splits its N tasks into shards and visits them.

Layout: S shards of contiguous task ranges, shard s = [floor(s N / S), floor((s + 1) N / S))
(sizes differ by at most one). A world of P ranks, P dividing S, gives rank r the S / P
shards r S / P, ..., (r + 1) S / P - 1, so the tasks a rank holds are one contiguous range.

Order: each shard has its own shuffled round-robin over its tasks (`TaskOrder`, seeded by
`shard_seed(seed, s)`); a step takes the next B visits of every shard (fewer for a shard whose
next visit is already among its B, see TaskOrder), and the step's task list is the shards'
lists in shard order. Shard 0's seed is `seed` itself, so with one shard the order is exactly
SGLDGibbs's. The order is a pure function of (seed, N, S, B) and of the step, whatever P is:
that is what lets a chain resume on another world size.
"""
from typing import Dict, List, Sequence, Tuple

from lift_ext import validate
from lift_ext.lift.mixture import keyed_seed
from lift_ext.lift.task_order import TaskOrder


def shard_bounds(num_tasks: int, num_shards: int) -> List[Tuple[int, int]]:
    """[(first task, one past the last task)] of each of the `num_shards` shards."""
    return [(s * num_tasks // num_shards, (s + 1) * num_tasks // num_shards) for s in range(num_shards)]


def held_shards(num_shards: int, world_size: int, rank: int) -> range:
    """The shards rank `rank` of `world_size` holds (world_size must divide num_shards)."""
    if num_shards % world_size:
        raise ValueError(f"the world size ({world_size}) must divide num_shards ({num_shards})")
    per_rank = num_shards // world_size
    return range(rank * per_rank, (rank + 1) * per_rank)


def local_task_ids(num_tasks: int, num_shards: int, world_size: int, rank: int) -> range:
    """The tasks rank `rank` holds: the union of its shards, one contiguous range. A launcher
    uses it to load only this rank's task data."""
    shards = held_shards(num_shards, world_size, rank)
    bounds = shard_bounds(num_tasks, num_shards)
    return range(bounds[shards[0]][0], bounds[shards[-1]][1])


def shard_seed(seed: int, shard: int) -> int:
    """The seed of shard `shard`'s visiting order: `seed` for shard 0, a hash of (seed, shard)
    for the others."""
    return seed if shard == 0 else keyed_seed("ShardedOrder", seed, shard)


class ShardedOrder:
    """The position of every shard in its round-robin (module docstring). Like TaskOrder,
    `peek` reads the next step's tasks without moving and `advance` commits them."""

    def __init__(self, seed: int, num_tasks: int, num_shards: int,
                 epochs: Sequence[int] = (), positions: Sequence[int] = ()):
        self.bounds = shard_bounds(num_tasks, num_shards)
        epochs = list(epochs) or [0] * num_shards
        positions = list(positions) or [0] * num_shards
        if len(epochs) != num_shards or len(positions) != num_shards:
            raise ValueError(f"epochs and positions need one entry per shard ({num_shards})")
        self._orders = []
        for s, ((lo, hi), epoch, position) in enumerate(zip(self.bounds, epochs, positions)):
            validate.integer(f"epochs[{s}]", epoch)
            validate.integer(f"positions[{s}]", position, 0, hi - lo)
            self._orders.append(TaskOrder(shard_seed(seed, s), hi - lo, epoch, position))

    @property
    def epochs(self) -> List[int]:
        return [order.epoch for order in self._orders]

    @property
    def positions(self) -> List[int]:
        return [order.position for order in self._orders]

    def state_dict(self) -> Dict[str, List[int]]:
        """The position of every shard: {epochs, positions} (ShardedOrder(seed, N, S, **state) resumes it)."""
        return {"epochs": self.epochs, "positions": self.positions}

    def peek(self, count: int) -> Tuple[List[List[int]], List[int], List[int]]:
        """(tasks of each shard as global task ids, epochs, positions after them)."""
        plan, epochs, positions = [], [], []
        for (lo, _), order in zip(self.bounds, self._orders):
            tasks, epoch, position = order.peek(count)
            plan.append([lo + task for task in tasks])
            epochs.append(epoch)
            positions.append(position)
        return plan, epochs, positions

    def advance(self, epochs: Sequence[int], positions: Sequence[int]) -> None:
        """Move every shard to the position `peek` returned."""
        for order, epoch, position in zip(self._orders, epochs, positions):
            order.advance(epoch, position)
