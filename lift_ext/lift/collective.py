"""The collectives of a sharded sampler over a torch.distributed process group, and what
happens when a rank fails.

Every collective that can follow a rank's own failure is a SUM with one status slot per rank
at the end of the buffer: a rank whose work failed (its grad_fn raised, its chain diverged)
still joins with its failure code in its slot, so every rank learns in the same collective who
failed and stops with the same error (`RankFailure`, naming the ranks), and nobody waits.

A rank that is killed, or a process that exits, cannot join: the collective then raises on
the others (gloo: at once when the peer's connection closes, otherwise after the process
group's timeout, `init_process_group(timeout=...)`, which bounds every wait). The survivors
then check in under a key of the group's store and wait at most `fault_grace` seconds for
each other; the ranks that never check in are the ones named. The keys carry a name the ranks
agree on when the Collective is made (rank 0 draws it, one all-reduce), so the ranks of two
samplers, or of two runs on one store, never read each other's keys. Without a store (a group this
module cannot find one for) the error names the other rank when there are two, else says
that the failed rank is unknown.

Bitwise: the sum of an all-reduce is computed once and copied to every rank (gloo and NCCL
reduce then broadcast), so every rank gets the same bits; for two ranks a + b = b + a, so it
also equals the one-process sum of the two partials.
"""
import random
import threading
import time
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

from lift_ext import validate

# Failure codes a rank writes into its status slot.
OK, RAISED, DIVERGED = 0, 1, 2


class RankFailure(RuntimeError):
    """One or more other ranks of the process group failed; `ranks` lists them (empty when
    they cannot be told apart)."""

    def __init__(self, message: str, ranks: List[int]):
        super().__init__(message)
        self.ranks = ranks


def _group_store(group) -> Optional[object]:
    """The store `group` was created with (torch keeps it in a private table), or None."""
    try:
        return dist.distributed_c10d._get_process_group_store(group)
    except (AttributeError, KeyError, RuntimeError, ValueError):
        return None


def group_rank_and_size(group) -> Tuple[int, int]:
    """(this process's rank in `group`, its size); (0, 1) for None."""
    if group is None:
        return 0, 1
    if not dist.is_initialized():
        raise ValueError("process_group given, but torch.distributed is not initialised "
                         "(call torch.distributed.init_process_group first)")
    return dist.get_rank(group), dist.get_world_size(group)


def _collective_device(group) -> torch.device:
    """Where `group`'s collectives take their tensors: the current GPU for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Collective:
    """Rank, world size and the checked collectives of `group` (None: a world of one process,
    where every collective is the identity). `bytes_reduced` counts the bytes this rank has
    passed to all-reduces (the buffers' sizes, status slots included; 0 in a world of one)."""

    def __init__(self, group=None, fault_grace: float = 5.0):
        self.fault_grace = validate.number("fault_grace", fault_grace)
        self.group = group
        self.rank, self.world_size = group_rank_and_size(group)
        self._store = None if group is None else _group_store(group)
        self.bytes_reduced = 0
        self._tag = "lift_ext.collective/start"
        if self.world_size > 1:  # a name for this object's store keys, the same on every rank
            nonce = torch.zeros(1, dtype=torch.int64, device=_collective_device(group))
            if self.rank == 0:
                nonce[0] = random.getrandbits(62)
            self._guard(lambda: dist.all_reduce(nonce, group=group), "the start of a sharded sampler")
            self._tag = f"lift_ext.collective/{int(nonce[0]):x}"

    def buffer(self, numel: int, dtype: torch.dtype, device) -> torch.Tensor:
        """A zeroed buffer of `numel` elements plus one status slot per rank, for `sum_`."""
        return torch.zeros(numel + self.world_size, dtype=dtype, device=device)

    def sum_(self, buffer: torch.Tensor, what: str, failure: int = OK) -> List[int]:
        """buffer <- its sum over the ranks, in place; this rank's status slot is set to
        `failure` first. Returns every rank's failure code. A rank that cannot take part
        (killed, exited) raises RankFailure naming it; `what` says which collective it was."""
        status = buffer[buffer.numel() - self.world_size:]
        status.zero_()
        status[self.rank] = failure
        if self.world_size > 1:
            self.bytes_reduced += buffer.numel() * buffer.element_size()
            self._guard(lambda: dist.all_reduce(buffer, group=self.group), what)
        return [int(code) for code in status.tolist()]

    def raise_failures(self, codes: List[int], what: str) -> None:
        """RankFailure naming every OTHER rank whose code is not OK (this rank raises its own)."""
        failed = [rank for rank, code in enumerate(codes) if code != OK and rank != self.rank]
        if failed:
            kinds = sorted({"raised" if codes[r] == RAISED else "diverged" for r in failed})
            raise RankFailure(f"rank {', '.join(map(str, failed))} {' / '.join(kinds)} during {what} "
                              f"(see that rank's own error); rank {self.rank} stopped with its state "
                              "as before the step", failed)

    def gather_rows(self, rows: torch.Tensor, counts: List[int], what: str) -> torch.Tensor:
        """The rows [counts[r], D] of every rank r, concatenated in rank order."""
        if self.world_size == 1:
            return rows
        width = max(counts)
        padded = rows.new_zeros(width, rows.shape[1])
        padded[: rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        self._guard(lambda: dist.all_gather(parts, padded, group=self.group), what)
        return torch.cat([part[:count] for part, count in zip(parts, counts)])

    def _guard(self, collective, what: str) -> None:
        """Run `collective`; if it fails, find out which ranks are gone and raise RankFailure."""
        try:
            collective()
        except Exception as exc:  # noqa: BLE001 - gloo and NCCL raise several types for a lost peer
            gone = self._missing_ranks()
            who = (f"rank {', '.join(map(str, gone))}" if gone else "another rank (which one cannot "
                   "be told: no store answered)")
            raise RankFailure(f"{who} stopped responding during {what} on rank {self.rank}: the process "
                              f"was killed, exited or timed out ({type(exc).__name__}: {str(exc)[:300]})",
                              gone) from exc

    def _missing_ranks(self) -> List[int]:
        """The other ranks that do not check in under this failure's store key within
        fault_grace seconds (module docstring); with no store, the other rank of two."""
        others = [r for r in range(self.world_size) if r != self.rank]
        if self._store is None:
            return others if len(others) == 1 else []
        found: List[List[int]] = []

        def check_in() -> None:
            prefix = f"{self._tag}/alive/"
            try:
                self._store.set(prefix + str(self.rank), "1")
                deadline, missing = time.monotonic() + self.fault_grace, list(others)
                while missing and time.monotonic() < deadline:
                    missing = [r for r in missing if not self._store.check([prefix + str(r)])]
                    if missing:
                        time.sleep(0.05)
            except Exception:  # noqa: BLE001 - a store that fails cannot tell us who is gone
                return
            found.append(missing)

        thread = threading.Thread(target=check_in, daemon=True)  # a dead store must not hang us
        thread.start()
        thread.join(self.fault_grace + 1.0)
        return found[0] if found else []
