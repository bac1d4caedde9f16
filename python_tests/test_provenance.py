"""lift_ext.provenance: the commit and CPU every results file names."""
import subprocess

import pytest

from lift_ext import provenance


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """provenance reading ``tmp_path`` as its source tree, its cache cleared before and after."""
    monkeypatch.setattr(provenance, "CHECKOUT", tmp_path)
    monkeypatch.delenv("LIFT_EXT_COMMIT", raising=False)
    provenance.source_commit.cache_clear()
    yield tmp_path
    provenance.source_commit.cache_clear()


def _git(path, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=path, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_commit_of_a_checkout_and_its_local_changes(checkout):
    _git(checkout, "init", "-q")
    (checkout / "a.txt").write_text("one")
    _git(checkout, "add", "a.txt")
    _git(checkout, "commit", "-q", "-m", "first")
    head = _git(checkout, "rev-parse", "HEAD")
    assert provenance.source_commit() == head
    assert provenance.short_commit() == head[:7]
    (checkout / "a.txt").write_text("two")
    assert provenance.source_commit() == head  # read once per process
    provenance.source_commit.cache_clear()
    assert provenance.source_commit() == head + "+dirty"
    assert provenance.short_commit() == head[:7] + "+dirty"


def test_a_tree_without_git_history(checkout, monkeypatch):
    assert provenance.source_commit() is None and provenance.short_commit() == "unknown"
    monkeypatch.setenv("LIFT_EXT_COMMIT", "0123456789abcdef")
    provenance.source_commit.cache_clear()
    assert provenance.source_commit() == "0123456789abcdef" and provenance.short_commit() == "0123456"


def test_cpu_description():
    from lift_ext.harness import report
    assert provenance.cpu_model().strip()
    assert report.machine()["cpu_isa"] in ("avx512", "avx2", "generic")
