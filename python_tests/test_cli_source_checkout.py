"""Importing lift_ext from a source checkout without a built `_C` says so and what to run."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lift_ext

PACKAGE = Path(lift_ext.__file__).resolve().parent


def test_unbuilt_checkout_says_what_to_run(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "lift_ext",
                    ignore=shutil.ignore_patterns("_C*.so", "_C*.pyd", "__pycache__"))
    (tmp_path / "CMakeLists.txt").write_text("")
    (tmp_path / "csrc").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", "import lift_ext"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    message = res.stderr[res.stderr.index("ImportError: lift_ext was imported"):]
    assert f"source checkout {tmp_path}" in message and "no compiled kernels" in message, message
    assert "tools/build_inplace.sh" in message and "another directory" in message
