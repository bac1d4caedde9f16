"""Loads the compiled kernels (`lift_ext._C`) and says what to do when they are missing."""
import torch  # noqa: F401  - the torch libraries must be loaded before _C

try:
    from lift_ext import _C  # noqa: F401  - loading registers torch.ops.lift_ext.*
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "lift_ext's compiled kernels (lift_ext._C) could not be loaded: {}.\n"
        "Build them against the installed torch with:\n"
        "    pip install --no-build-isolation .\n"
        "(from a source checkout; torch must be installed first).".format(exc)
    ) from exc


# An op every build registers for each backend it was compiled with.
PROBE_OP = "lift_ext::sgld_step_list_"


def cuda_kernels_built() -> bool:
    """True when the extension was compiled with its CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(PROBE_OP, "CUDA")
