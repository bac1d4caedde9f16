"""Facts about the built extension module that the kernels' tests cannot see."""
import shutil
import subprocess
import sys

import pytest
import torch

from lift_ext import _loader, ops


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("readelf") is None,
                    reason="needs Linux and readelf")
def test_module_uses_the_shared_cpp_runtime():
    """A module with its own static libstdc++ crashes when an error message formats a number
    (seen with a compiler whose default is a static libstdc++): it must load libstdc++.so."""
    dynamic = subprocess.run(["readelf", "-d", _loader._C.__file__], capture_output=True, text=True,
                             check=True).stdout
    assert "libstdc++.so" in dynamic, f"{_loader._C.__file__} does not link the shared libstdc++"


def test_error_message_with_numbers_is_raised_not_crashed():
    with pytest.raises(RuntimeError, match=r"x must have shape \[B, 6\]"):
        ops.gmm_estep(torch.zeros(2, 5), torch.zeros(3, 6), torch.ones(3, 6),
                      torch.ones(3, dtype=torch.float64), reg=1e-6)


def test_cuda_probe_names_a_registered_op():
    """cuda_kernels_built() asks whether PROBE_OP has a CUDA kernel; the op must exist (with
    its CPU kernel), or the answer would be False on every build."""
    assert torch._C._dispatch_has_kernel_for_dispatch_key(_loader.PROBE_OP, "CPU")
    assert isinstance(_loader.cuda_kernels_built(), bool)
