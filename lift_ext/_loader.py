"""Loads the compiled kernels (`lift_ext._C`) and says what to do when they are missing."""
import os
from pathlib import Path

import torch  # the torch libraries must be loaded before _C

MIN_TORCH = (2, 10)  # older torch.load(weights_only=True) has published code-execution and memory bugs


def _torch_version() -> tuple:
    return tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])


if _torch_version() < MIN_TORCH:
    raise ImportError(f"lift_ext needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} (found {torch.__version__}): "
                      "its checkpoint loading relies on fixes to torch.load in that release")

def _missing_kernels_message(exc: Exception) -> str:
    """What to do when ``lift_ext._C`` does not load: from a source checkout (the package sits
    next to CMakeLists.txt and csrc/, typically because Python put the current directory first
    on sys.path) build in place or import from elsewhere; otherwise reinstall."""
    package = Path(__file__).resolve().parent
    root = package.parent
    built = sorted(p.name for p in package.glob("_C*.so")) + sorted(p.name for p in package.glob("_C*.pyd"))
    if (root / "CMakeLists.txt").exists() and (root / "csrc").is_dir():
        state = (f"its compiled kernels {', '.join(built)} do not load ({exc})" if built else
                 "it has no compiled kernels (no lift_ext/_C*.so is built in the source tree)")
        return (f"lift_ext was imported from the source checkout {root}, and {state}.\n"
                "Either build them in place (CPU kernels; CUDA ones too where a GPU can use them):\n"
                f"    {root / 'tools' / 'build_inplace.sh'}\n"
                "or run from another directory, so that the installed lift_ext is imported "
                "(`pip install --no-build-isolation .` in the checkout installs it).")
    return (f"lift_ext's compiled kernels (lift_ext._C) could not be loaded from {package}: {exc}.\n"
            "Build them against the installed torch with `pip install --no-build-isolation .` from a "
            "source checkout (torch must be installed first).")


try:
    from lift_ext import _C  # noqa: F401  - loading registers torch.ops.lift_ext.*
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(_missing_kernels_message(exc)) from exc


# An op every build registers for each backend it was compiled with.
PROBE_OP = "lift_ext::sgld_step_list_"


def cuda_kernels_built() -> bool:
    """True when the extension was compiled with its CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(PROBE_OP, "CUDA")


# Names the CPU path by hand (csrc/include/lift_ext/cpu_normals.h, kCpuIsaVariable).
CPU_ISA_VARIABLE = "LIFT_EXT_CPU_ISA"


def _check_cpu_isa_request() -> None:
    """Refuse a $LIFT_EXT_CPU_ISA that names no path this machine runs, then fix the choice:
    the kernels read the variable once, here, so setting it later in the process changes
    nothing."""
    requested = os.environ.get(CPU_ISA_VARIABLE, "")
    runnable = _C.cpu_isas()
    if requested and requested not in runnable:
        raise ImportError(f"{CPU_ISA_VARIABLE}={requested!r} names no CPU path this machine runs: "
                          f"set it to one of {', '.join(runnable)}, or unset it for the fastest "
                          f"({runnable[-1]})")
    _C.cpu_isa()


_check_cpu_isa_request()


def cpu_isa() -> str:
    """The instruction set the CPU kernels draw their Philox normals with in this process:
    "avx512", "avx2" or "generic" (portable code), the fastest the CPU supports unless the
    environment variable LIFT_EXT_CPU_ISA named another when lift_ext was imported. Every path
    gives the same bits (docs/design.md section 6)."""
    return _C.cpu_isa()
