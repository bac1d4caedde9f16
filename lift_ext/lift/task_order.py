"""The order in which `SGLDGibbs` visits its tasks: a shuffled round-robin.

Epoch e visits the N tasks in the order of a permutation fixed by (seed, e); the visits of a
run are the concatenation of epochs 0, 1, 2, ... . A step takes the next B visits of that
sequence, or fewer when the next visit is a task already taken by the same step (possible
only across an epoch boundary): a step never holds one task twice, and the sequence of visits
is exactly the round-robin whatever B is. The position (epoch, index in the epoch) is the
whole state, so a run resumes exactly from it.
"""
from typing import Dict, List, Tuple

import torch

from lift_ext import validate


def epoch_order(seed: int, epoch: int, num_tasks: int) -> List[int]:
    """The visiting order of epoch `epoch`: a permutation of range(num_tasks) fixed by
    (seed, epoch)."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63 - 1))
    return torch.randperm(num_tasks, generator=gen).tolist()


class TaskOrder:
    """Position in the shuffled round-robin of `num_tasks` tasks. `peek` reads the next
    tasks without moving; `advance` moves to the position `peek` returned, so a caller can
    commit a step only once everything it needs has succeeded."""

    def __init__(self, seed: int, num_tasks: int, epoch: int = 0, position: int = 0):
        self.seed, self.num_tasks = seed, num_tasks
        self.epoch = validate.integer("epoch", epoch)
        self.position = validate.integer("position", position, 0, num_tasks)
        self._order = epoch_order(seed, epoch, num_tasks)

    def peek(self, count: int) -> Tuple[List[int], int, int]:
        """(tasks, epoch, position): the next `count` tasks (fewer if the next one is already
        among them) and the position after them. Changes nothing."""
        tasks: List[int] = []
        epoch, position, order = self.epoch, self.position, self._order
        while len(tasks) < count:
            if position == self.num_tasks:
                epoch, position = epoch + 1, 0
                order = epoch_order(self.seed, epoch, self.num_tasks)
            if order[position] in tasks:
                break
            tasks.append(order[position])
            position += 1
        return tasks, epoch, position

    def advance(self, epoch: int, position: int) -> None:
        """Move to (epoch, position), as returned by `peek`."""
        if epoch != self.epoch:
            self._order = epoch_order(self.seed, epoch, self.num_tasks)
        self.epoch, self.position = epoch, position

    def state_dict(self) -> Dict[str, int]:
        """The position: {epoch, position} (TaskOrder(seed, num_tasks, **state) resumes it)."""
        return {"epoch": self.epoch, "position": self.position}
