"""Checkpoint files (lift_ext.checkpoint): checksummed, atomic, refused when damaged; temporary
files of killed writers cleaned up (lift_ext.files)."""
import os
import random
import subprocess
import sys

import pytest
import torch

from lift_ext.checkpoint import CheckpointError, load_checked, save_atomic

FMT = "lift_ext.test"


def _state():
    gen = torch.Generator().manual_seed(0)
    return {"format": FMT, "version": 1, "x": torch.randn(64, generator=gen), "step": 7}


def test_round_trip(tmp_path):
    path = str(tmp_path / "c.pt")
    save_atomic(_state(), path)
    state = load_checked(path, fmt=FMT, version=1, required=("x", "step"))
    assert torch.equal(state["x"], _state()["x"]) and state["step"] == 7


def test_every_flipped_bit_is_refused(tmp_path):
    path = str(tmp_path / "c.pt")
    save_atomic(_state(), path)
    data = open(path, "rb").read()
    rng = random.Random(0)
    positions = rng.sample(range(len(data)), 200) + [0, len(data) - 1]
    for pos in positions:
        damaged = bytearray(data)
        damaged[pos] ^= 1 << rng.randrange(8)
        bad = str(tmp_path / "bad.pt")
        with open(bad, "wb") as fh:
            fh.write(bytes(damaged))
        with pytest.raises(CheckpointError) as info:
            load_checked(bad, fmt=FMT, version=1, required=("x",))
        assert "weights_only" not in str(info.value)


def test_truncated_foreign_and_plain_torch_files_are_refused(tmp_path):
    path = str(tmp_path / "c.pt")
    save_atomic(_state(), path)
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checked(path, fmt=FMT, version=1, required=())
    plain = str(tmp_path / "plain.pt")
    torch.save(_state(), plain)
    with pytest.raises(CheckpointError, match="no checksum header"):
        load_checked(plain, fmt=FMT, version=1, required=())
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checked(str(tmp_path / "none.pt"), fmt=FMT, version=1, required=())


def test_checksummed_pickle_of_arbitrary_objects_is_refused_without_torch_advice(tmp_path):
    path = str(tmp_path / "evil.pt")
    save_atomic({"format": FMT, "version": 1, "obj": CheckpointError("x")}, path)
    with pytest.raises(CheckpointError, match="objects other than tensors") as info:
        load_checked(path, fmt=FMT, version=1, required=())
    assert "weights_only" not in str(info.value)


def test_format_version_and_keys_are_checked(tmp_path):
    path = str(tmp_path / "c.pt")
    save_atomic(_state(), path)
    with pytest.raises(CheckpointError, match="not a other checkpoint"):
        load_checked(path, fmt="other", version=1, required=())
    with pytest.raises(CheckpointError, match="version"):
        load_checked(path, fmt=FMT, version=2, required=())
    with pytest.raises(CheckpointError, match="missing y"):
        load_checked(path, fmt=FMT, version=1, required=("x", "y"))


def test_temp_files_of_killed_writers_are_removed_on_the_next_save(tmp_path):
    path = str(tmp_path / "c.pt")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = tmp_path / f".tmp-c.pt.{int(dead.stdout)}.abc123"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".tmp-c.pt.{os.getppid()}.def456"  # a writer that is still running
    live.write_bytes(b"in progress")
    other = tmp_path / f".tmp-d.pt.{int(dead.stdout)}.ghi789"  # another target's file
    other.write_bytes(b"not ours")
    save_atomic(_state(), path)
    assert not stale.exists() and live.exists() and other.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["c.pt", live.name, other.name])
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
