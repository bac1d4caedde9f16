"""The benchmark's stage files (``meta_state.pt``, ``adapted.pt``) and the provenance each
carries: the machine, software and wall / CPU seconds of every stage so far, so results.json
can say how and where each stage was run even when the stages ran in separate commands.

A stage file records the fingerprint of the config fields it depends on; a later stage run
with a different config stops with a clear error (StageError) instead of mixing runs, and a
file whose layout is not the one written here (crafted, or from another version) is refused
in one line as well.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Dict, Iterable

import torch

from lift_ext import cpu_isa, provenance
from lift_ext.checkpoint import CheckpointError, load_checked, save_atomic

META_FILE, ADAPT_FILE = "meta_state.pt", "adapted.pt"
FILES = {"meta": META_FILE, "adapt": ADAPT_FILE}
PRODUCER = {"meta": "meta-train", "adapt": "adapt"}  # the command (and fingerprint stage) of each file
_FORMAT = {"meta": "lift_ext.shakespeare.meta_state", "adapt": "lift_ext.shakespeare.adapted"}
_VERSION = 4
META_STATE_KEYS = ("init", "starts", "family_adapters", "priors", "library", "keys", "clusters", "info")
ADAPTED_KEYS = ("lr", "option", "val_scores", "components", "thetas", "wall", "cpu", "start_cpu")


class StageError(RuntimeError):
    """A stage's input is missing, invalid or was made with another config (the message says which)."""


def machine(device: str) -> dict:
    """The software and hardware of this process: lift_ext version and git commit, torch and
    its CUDA, Python, CPU model and core count, torch threads, and the GPU when ``device`` is CUDA."""
    from lift_ext import __version__
    dev = torch.device(device)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" and torch.cuda.is_available() else None
    return {"lift_ext": __version__, "git_commit": provenance.source_commit(), "torch": str(torch.__version__),
            "torch_cuda": torch.version.cuda, "python": platform.python_version(), "cpu": provenance.cpu_model(), "cpu_isa": cpu_isa(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device, "gpu": gpu}


def stage_record(wall: float, cpu: float, device: str) -> dict:
    """What a stage file says about the stage that wrote it: wall and process CPU seconds, when
    it finished (UTC) and :func:`machine`."""
    return {"seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "machine": machine(device)}


def save(kind: str, cfg, payload: dict, path: Path) -> None:
    """Write a stage file of ``kind`` ("meta" or "adapt") for ``cfg`` atomically."""
    save_atomic({"format": _FORMAT[kind], "version": _VERSION, "fingerprint": cfg.fingerprint(PRODUCER[kind]),
                 "config": cfg.to_dict(), **payload}, str(path))


def _require(obj, keys: Iterable, where: str, path: Path, kind: str) -> None:
    missing = [k for k in keys if k not in obj] if isinstance(obj, dict) else list(keys)
    if missing:
        raise StageError(f"{path} is not a valid {FILES[kind]} ({where}: missing {', '.join(map(str, missing))}): "
                         f"rerun `lift-ext {PRODUCER[kind]}` with this config")


def _check_layout(kind: str, state: dict, cfg, path: Path) -> None:
    """StageError unless ``state`` holds everything the next stage reads for ``cfg``."""
    _require(state["seeds"], cfg.seeds, "its seeds", path, kind)
    if kind == "meta":
        for seed in cfg.seeds:
            _require(state["seeds"][seed], ("state", "backbone", "timing"), f"seed {seed}", path, kind)
            _require(state["seeds"][seed]["state"], META_STATE_KEYS, f"seed {seed}'s state", path, kind)
        return
    _require(state, ("meta", "notes"), "the file", path, kind)
    for seed in cfg.seeds:
        _require(state["seeds"][seed], cfg.methods, f"seed {seed}", path, kind)
        _require(state["meta"], (seed,), "its meta-training records", path, kind)
        _require(state["notes"], (seed,), "its method notes", path, kind)
        for method in cfg.methods:
            rec = state["seeds"][seed][method]
            _require(rec, ADAPTED_KEYS, f"seed {seed}'s {method}", path, kind)
            if not isinstance(rec["thetas"], torch.Tensor) or rec["thetas"].dim() != 3:
                raise StageError(f"{path} is not a valid {FILES[kind]} (seed {seed}'s {method} thetas are not "
                                 f"a [roles, samples, D] tensor): rerun `lift-ext {PRODUCER[kind]}`")


def load(kind: str, cfg, output: Path) -> dict:
    """The stage file of ``kind`` in ``output``, checked: it exists, is intact, was made with
    this config's fingerprint and has the layout the next stage reads (StageError otherwise)."""
    path, producer = output / FILES[kind], PRODUCER[kind]
    if not path.exists():
        raise StageError(f"{path} does not exist: run `lift-ext {producer}` with this config and --output first")
    try:
        state = load_checked(str(path), fmt=_FORMAT[kind], version=_VERSION,
                             required=("fingerprint", "seeds", "stages"), map_location="cpu")
    except CheckpointError as exc:
        raise StageError(f"{exc}: rerun `lift-ext {producer}`") from None
    if state["fingerprint"] != cfg.fingerprint(producer):
        raise StageError(f"{path} was made with another config (fingerprint {state['fingerprint']}, "
                         f"this config {cfg.fingerprint(producer)}{_differences(state.get('config'), cfg, producer)}): "
                         f"rerun `lift-ext {producer}` or use another --output directory")
    if not isinstance(state["stages"], dict):
        raise StageError(f"{path} is not a valid {FILES[kind]} (its stage records are not a mapping): "
                         f"rerun `lift-ext {producer}`")
    _check_layout(kind, state, cfg, path)
    return state


def _differences(theirs, cfg, producer: str) -> str:
    """", differing in key (file X, this config Y), ..." for the fingerprinted keys of ``cfg``
    whose value in the file's config ``theirs`` differs (at most 4); "" when none can be told."""
    if not isinstance(theirs, dict):
        return ""
    ours = cfg.fingerprinted(producer)
    diff = [f"{k} (file {json.dumps(theirs[k], default=str)}, this config {json.dumps(ours.get(k, 0))})"
            for k in sorted(set(ours) | {"lift_shards"}) if k in theirs and theirs[k] != ours.get(k, 0)]
    return f"; it differs in {', '.join(diff[:4])}" if diff else ""


def reusable(kind: str, cfg, output: Path) -> Dict[str, object]:
    """Whether the stage file of ``kind`` in ``output`` can stand in for running its stage:
    {"reuse": True, "record": its stage record} for an intact file of this config, else
    {"reuse": False, "why": the reason (None when there is no file)}."""
    if not (output / FILES[kind]).exists():
        return {"reuse": False, "why": None}
    try:
        state = load(kind, cfg, output)
    except StageError as exc:
        return {"reuse": False, "why": str(exc)}
    return {"reuse": True, "record": state["stages"].get(producer_key(kind), {})}


def producer_key(kind: str) -> str:
    """The key of a stage in the stage records ("meta_train", "adapt")."""
    return PRODUCER[kind].replace("-", "_")
