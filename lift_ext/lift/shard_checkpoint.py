"""Checkpoint sets of `ShardedSGLDGibbs`: one file per shard, one for the shared state, and a
manifest, in one directory; every file is a lift_ext.checkpoint file (SHA-256 header,
atomic write).

    shard-<s>-<tag>.pt   written by the rank holding shard s: {shard, tag, thetas [n_s, D]}
    shared-<tag>.pt      written by rank 0: the owner's settings (e.g. ShardedLiFT's config)
                         and the state every rank holds, its state_dict() without thetas (config with num_shards, components, prior_mean, gmm,
                         square_avg, step, order {epochs, positions}; lift_ext.lift.sampler_state)
    MANIFEST             written by rank 0 LAST: {tag, step, num_shards, world_size, shared,
                         shards [file of shard s]}: the set it names is complete.

<tag> = the step and a nonce rank 0 draws for this save, so files of two saves never mix.
Save: nonce (an all-reduce that also starts the save on every rank together), each rank writes
its files, an all-reduce in which a rank whose write failed reports it (then every rank raises
and no manifest names the new set), rank 0 writes MANIFEST, a last all-reduce (every rank
returns only once the set is complete), then each rank removes its own files of older sets.
A rank killed in the middle leaves the previous MANIFEST naming the previous complete set.
Load (`read_state`): every rank reads MANIFEST, the shared file and the files of the shards it
holds (any world size dividing num_shards), and gets the state_dict of its part of the chain:
no collective. The directory must be readable by every rank.
"""
import os
import random
import re
from typing import Optional

import torch

from lift_ext.checkpoint import CheckpointError, load_checked, save_atomic
from lift_ext.lift import sampler_state
from lift_ext.lift.shards import held_shards, shard_bounds

FORMAT = "lift_ext.ShardedSGLDGibbs"
VERSION = 2
MANIFEST = "MANIFEST"
_FILE = re.compile(r"^(shard-(\d+)|shared)-(\d+-[0-9a-f]+)\.pt$")


def save(sampler, path: str, owner: Optional[dict] = None) -> None:
    """Write `sampler`'s chain to directory `path` as a complete set (module docstring);
    `owner`: the settings of what drives the chain (e.g. ShardedLiFT's config), kept in the
    shared file and returned by `read_owner`."""
    comm = sampler.comm
    nonce = comm.buffer(1, torch.int64, sampler.device)
    if comm.rank == 0:
        nonce[0] = random.getrandbits(62)
    comm.raise_failures(comm.sum_(nonce, "the start of a checkpoint save"), "a checkpoint save")
    tag = f"{sampler.step_count}-{int(nonce[0]):x}"
    bounds = shard_bounds(sampler.num_tasks, sampler.num_shards)
    names = {"shared": f"shared-{tag}.pt", "shards": [f"shard-{s}-{tag}.pt" for s in range(sampler.num_shards)]}
    done = comm.buffer(0, torch.int64, sampler.device)
    try:
        state = sampler.state_dict()
        rows, first = state.pop("thetas"), sampler.task_ids.start
        os.makedirs(path, exist_ok=True)
        for s in sampler.shards:
            save_atomic({"format": FORMAT + ".shard", "version": VERSION, "shard": s, "tag": tag,
                         "thetas": rows[bounds[s][0] - first:bounds[s][1] - first].cpu()},
                        os.path.join(path, names["shards"][s]))
        if comm.rank == 0:
            save_atomic({"format": FORMAT + ".shared", "version": VERSION, "tag": tag, "owner": owner, **state},
                        os.path.join(path, names["shared"]))
    except BaseException:
        comm.sum_(done, "the writing of a checkpoint set", 1)
        raise
    comm.raise_failures(comm.sum_(done, "the writing of a checkpoint set"), "a checkpoint save")
    if comm.rank == 0:
        save_atomic({"format": FORMAT, "version": VERSION, "tag": tag, "step": sampler.step_count,
                     "num_shards": sampler.num_shards, "world_size": comm.world_size, **names},
                    os.path.join(path, MANIFEST))
    comm.raise_failures(comm.sum_(done, "the manifest of a checkpoint set"), "a checkpoint save")
    _remove_older(path, tag, sampler.shards, comm.rank == 0)


def _remove_older(path: str, tag: str, shards, shared: bool) -> None:
    """Delete this rank's files (its shards', and the shared ones on rank 0) of other sets."""
    for name in os.listdir(path):
        match = _FILE.match(name)
        if not match or match.group(3) == tag:
            continue
        mine = int(match.group(2)) in shards if match.group(2) is not None else shared
        if mine:
            os.remove(os.path.join(path, name))


def _read(path: str, name, fmt: str, tag: str, required) -> dict:
    if not isinstance(name, str) or os.path.basename(name) != name:
        raise CheckpointError(f"checkpoint set {path!r}: its manifest names a bad file {name!r}")
    state = load_checked(os.path.join(path, name), fmt=fmt, version=VERSION, map_location="cpu",
                         required=("tag",) + tuple(required))
    if state["tag"] != tag:
        raise CheckpointError(f"checkpoint set {path!r}: {name} belongs to another save "
                              f"({state['tag']!r}, the manifest's is {tag!r})")
    return state


def read_manifest(path: str) -> dict:
    """The manifest of the checkpoint set in directory `path` (CheckpointError if there is none)."""
    return load_checked(os.path.join(path, MANIFEST), fmt=FORMAT, version=VERSION,
                        required=("tag", "step", "num_shards", "shared", "shards"))


def read_owner(path: str) -> Optional[dict]:
    """The `owner` settings saved with the set in directory `path` (None if none were)."""
    manifest = read_manifest(path)
    return _read(path, manifest["shared"], FORMAT + ".shared", manifest["tag"], ("owner",))["owner"]


def read_state(path: str, rank: int, world_size: int) -> dict:
    """The state_dict of the part of the chain in directory `path` that rank `rank` of
    `world_size` holds (thetas: the rows of its shards, in order); CheckpointError for a
    missing, incomplete, mixed or damaged set."""
    manifest = read_manifest(path)
    with sampler_state.refusing_inconsistency(path):
        return _read_set(path, manifest, rank, world_size)


def _read_set(path: str, manifest: dict, rank: int, world_size: int) -> dict:
    tag, num_shards = manifest["tag"], manifest["num_shards"]
    state = _read(path, manifest["shared"], FORMAT + ".shared", tag,
                  tuple(key for key in sampler_state.KEYS if key != "thetas"))
    config = state["config"]
    if not isinstance(config, dict) or config.get("num_shards") != num_shards or state["step"] != manifest["step"] \
            or not isinstance(manifest["shards"], list) or len(manifest["shards"]) != num_shards:
        raise CheckpointError(f"checkpoint set {path!r} is inconsistent: its manifest and shared state "
                              "disagree on num_shards or step")
    n, d = sampler_state.check_sizes(state)  # before anything is allocated
    bounds, rows = shard_bounds(n, num_shards), []
    for s in held_shards(num_shards, world_size, rank):
        shard = _read(path, manifest["shards"][s], FORMAT + ".shard", tag, ("shard", "thetas"))
        if shard["shard"] != s:
            raise CheckpointError(f"checkpoint set {path!r}: the file of shard {s} holds shard {shard['shard']!r}")
        lo, hi = bounds[s]
        sampler_state.check_tensor(f"the thetas of shard {s}", shard["thetas"], (hi - lo, d))
        rows.append(shard["thetas"])
    state.pop("owner", None)
    return dict(state, thetas=torch.cat(rows))
