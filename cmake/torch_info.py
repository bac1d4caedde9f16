"""Write the facts CMake needs about the installed torch as a CMake script.

Usage: python torch_info.py OUT.cmake
Exits with status 2 and a readable message when torch cannot be imported.
"""
import sys


def loaded_libstdcxx() -> str:
    """Path of the libstdc++ this process runs on (torch imported), "" where /proc is absent."""
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                fields = line.split(None, 5)
                if len(fields) == 6 and "/libstdc++.so" in fields[5]:
                    return fields[5].strip()
    except OSError:
        pass
    return ""


def main(out_path: str) -> int:
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # noqa: BLE001 - any import failure means the same to the user
        sys.stderr.write(
            "lift_ext: cannot import torch in the build environment ({}).\n"
            "Install torch first, then build without isolation:\n"
            "    pip install torch==2.14.1\n"
            "    pip install --no-build-isolation .\n".format(exc)
        )
        return 2

    def cmake_list(items):
        return ";".join(str(p).replace("\\", "/") for p in items)

    lines = [
        'set(LIFT_TORCH_VERSION "{}")'.format(torch.__version__),
        'set(LIFT_TORCH_CUDA_VERSION "{}")'.format(torch.version.cuda or ""),
        "set(LIFT_TORCH_CUDA_AVAILABLE {})".format(int(torch.cuda.is_available())),
        'set(LIFT_TORCH_INCLUDE_DIRS "{}")'.format(cmake_list(cpp_extension.include_paths())),
        'set(LIFT_TORCH_LIBRARY_DIRS "{}")'.format(cmake_list(cpp_extension.library_paths())),
        "set(LIFT_TORCH_CXX11_ABI {})".format(int(torch._C._GLIBCXX_USE_CXX11_ABI)),
        'set(LIFT_TORCH_LIBSTDCXX "{}")'.format(loaded_libstdcxx()),
    ]
    with open(out_path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
