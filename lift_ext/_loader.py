"""Loads the compiled kernels (`lift_ext._C`) and says what to do when they are missing."""
import torch  # the torch libraries must be loaded before _C

MIN_TORCH = (2, 10)  # older torch.load(weights_only=True) has published code-execution and memory bugs


def _torch_version() -> tuple:
    return tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])


if _torch_version() < MIN_TORCH:
    raise ImportError(f"lift_ext needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} (found {torch.__version__}): "
                      "its checkpoint loading relies on fixes to torch.load in that release")

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
