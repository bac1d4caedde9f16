"""The benchmark under a launcher: `torchrun --nproc-per-node P -m lift_ext.cli meta-train ...`
runs LiFT's chains sharded over the P ranks (docs/distributed.md section 10).

A process is launched when the environment says WORLD_SIZE > 1 (torchrun sets WORLD_SIZE,
RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT). Every rank then reads the same config and
checks it (`lift_methods.check_launch`) BEFORE any collective, so a config error stops every rank with the same
line. `joined` initialises the default process group (gloo for a CPU device, NCCL for CUDA,
each rank on GPU LOCAL_RANK); every LiFT chain is then a `ShardedLiFT` over the world with
`lift_shards` shards (config; 0: one per rank), each rank binding only its tasks.

Roles: rank 0 does everything a one-process run does (data, backbone, baselines, chains,
stage files, progress bars, then adapt / evaluate for `demo`); the other ranks load the data
and the backbone after rank 0 has (`rank0_first`: rank 0 alone pre-trains into the cache),
take part in the chains and exit 0 without writing anything. They wait for rank 0 in the
collectives (at most `TIMEOUT`, the process group's timeout, while rank 0 pre-trains a
backbone or meta-trains the baselines).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch

from lift_ext.shakespeare.config import BenchConfig, ConfigError

TIMEOUT = datetime.timedelta(minutes=30)  # the process group's bound on every wait

# What rank 0 tells the others at the gate (`rank0_first`): go on, nothing to do (a reused
# stage file), or it stopped with a user error (exit 2) or another error (exit 1).
GO, SKIP, USER_ERROR, FAILED = 0, 1, 2, 3


class RankStopped(RuntimeError):
    """Rank 0 stopped before the chains (its own error says why); `exit_code` is this rank's."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class World:
    """This process's place in the launch: rank, size, the collectives' backend and group
    (None in a world of one process)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    group: object = None

    @property
    def main(self) -> bool:
        """Whether this rank writes files and draws progress bars (rank 0)."""
        return self.rank == 0

    def record(self) -> dict:
        """What a stage file says about the processes its chains ran on."""
        return {"world_size": self.size, "backend": self.backend}


ONE = World()


def _env_int(name: str, default: int, low: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if number < low:
        raise ConfigError(f"environment variable {name}={value!r} must be an integer >= {low} "
                          "(set by torchrun; unset it to run in one process)")
    return number


def from_environment() -> World:
    """The world torchrun describes in the environment (not joined yet); ONE without it."""
    size = _env_int("WORLD_SIZE", 1, 1)
    if size == 1:
        return ONE
    rank, local = _env_int("RANK", 0, 0), _env_int("LOCAL_RANK", 0, 0)
    if rank >= size:
        raise ConfigError(f"environment variable RANK={rank} must be below WORLD_SIZE={size}")
    return World(rank=rank, size=size, local_rank=local)


def shards(cfg: BenchConfig, world: World) -> int:
    """The number of shards of the LiFT chains: ``lift_shards``, or one per rank when 0 (0 in
    one process: the unsharded `LiFT` chain)."""
    return cfg.lift_shards or (world.size if world.size > 1 else 0)


def _device(cfg: BenchConfig, world: World) -> torch.device:
    dev = torch.device(cfg.device)
    if dev.type == "cuda":
        torch.cuda.set_device(world.local_rank if dev.index is None else dev.index)
        return torch.device("cuda", torch.cuda.current_device())
    return dev


def join(cfg: BenchConfig, world: World) -> World:
    """Initialise the default process group of ``world`` (gloo on CPUs, NCCL on GPUs; cuda is
    GPU LOCAL_RANK of this node) and return the joined world."""
    if world.size == 1:
        return world
    import torch.distributed as dist
    backend = "nccl" if _device(cfg, world).type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=TIMEOUT)
    except ValueError as exc:  # env:// without MASTER_ADDR / MASTER_PORT
        raise ConfigError(f"torch.distributed cannot start ({exc}): launch with torchrun, or unset "
                          "WORLD_SIZE to run in one process") from None
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=world.local_rank,
                 backend=backend, group=dist.group.WORLD)


def leave(world: World) -> None:
    """Destroy the default process group ``join`` made (nothing in a world of one)."""
    if world.group is not None:
        import torch.distributed as dist
        dist.destroy_process_group()


class Gate:
    """Where the other ranks wait for rank 0 before the chains: rank 0 loads the data and
    pre-trains the backbone into the cache when it is not there yet (so one process writes
    it), then `open`s the gate (go: the chains run; no go: a reused stage file, nothing to
    do) or, after an error, `fail`s it; the others `wait` (one all-reduce) and then load what
    rank 0 cached. In a world of one every call returns at once."""

    def __init__(self, world: World, device):
        self.world, self.device, self.done = world, device, world.size == 1

    def _report(self, code: int) -> int:
        from lift_ext.lift.collective import Collective
        self.done = True
        comm = Collective(self.world.group)
        return comm.sum_(comm.buffer(0, torch.float64, self.device), "the start of the launch", code)[0]

    def open(self, go: bool) -> None:
        """Rank 0: the chains run (go) or not."""
        if not self.done:
            self._report(GO if go else SKIP)

    def fail(self, exc: BaseException, user_errors: tuple) -> None:
        """Rank 0 stopped with ``exc`` before opening the gate: the others stop too, with exit
        code 2 when ``exc`` is one of ``user_errors`` (else 1). A no-op once the gate is open."""
        if self.done:
            return
        try:
            self._report(USER_ERROR if isinstance(exc, user_errors) else FAILED)
        except Exception:  # noqa: BLE001 - rank 0's own error is the one to raise
            pass

    def wait(self) -> bool:
        """The other ranks: whether the chains run; RankStopped when rank 0 failed."""
        code = self._report(GO)
        if code in (USER_ERROR, FAILED):
            raise RankStopped(f"rank 0 stopped before the chains (its error is above); rank {self.world.rank} "
                              "stops too", 2 if code == USER_ERROR else 1)
        return code == GO
