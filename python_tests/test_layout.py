"""The layering rule (docs/architecture.md): the library core never imports the benchmark
applications (the Shakespeare, text and vision suites), works without the applications'
optional extra, and no module grows past 400 lines."""
import ast
import subprocess
import sys
from pathlib import Path

import lift_ext

PACKAGE = Path(lift_ext.__file__).parent
APPLICATIONS = ("lift_ext.shakespeare", "lift_ext.text", "lift_ext.vision")
# The entry point dispatches to the application's commands; everything else is core.
NOT_CORE = {PACKAGE / "cli.py"}


def _core_modules():
    folders = {name.split(".")[1] for name in APPLICATIONS}
    return [p for p in sorted(PACKAGE.rglob("*.py"))
            if not folders & set(p.relative_to(PACKAGE).parts) and p not in NOT_CORE]


def _imported_names(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_core_never_imports_the_application():
    modules = _core_modules()
    assert len(modules) >= 10, modules  # the scan sees the package
    offenders = {str(p.relative_to(PACKAGE)): name for p in modules for name in _imported_names(p)
                 if any(name == app or name.startswith(app + ".") for app in APPLICATIONS)}
    assert not offenders, offenders


_BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('transformers', 'peft', 'matplotlib'):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


def _run_without_extra(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCKER + code], capture_output=True, text=True,
                          timeout=300)


def test_core_works_without_the_extra():
    proc = _run_without_extra(
        "import sys, torch, lift_ext, lift_ext.lift, lift_ext.optim, lift_ext.gmm, lift_ext.reference\n"
        "import lift_ext.checkpoint, lift_ext.quickstart\n"
        "assert not [m for m in sys.modules if m.startswith('lift_ext.shakespeare')]\n"
        "p = [torch.zeros(3)]; lift_ext.sgld_step(p, [torch.ones(3)], lr=0.1, temperature=0.0)\n"
        "assert torch.allclose(p[0], torch.full((3,), -0.1))\n"
        "print('ok')")
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_demo_without_the_extra_names_it():
    proc = _run_without_extra("from lift_ext.cli import main\nraise SystemExit(main(['demo', '--quick']))")
    assert proc.returncode == 2, proc.stderr
    assert "lift_ext[shakespeare]" in proc.stderr and "Traceback" not in proc.stderr


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) >= 400}
    assert not long, long
