"""benchmarks/bench_host.py (host time of one step call, list vs TensorTable vs torch's foreach
and fused optimizers) runs on the CPU kernels too, so it cannot rot between GPU runs."""
import json
import os
import runpy
import sys

import pytest

from conftest import requires_cuda

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_bench_host_reports_every_method(device, monkeypatch, capsys, tmp_path):
    out = tmp_path / "host.json"
    monkeypatch.setattr(sys, "argv", ["bench_host.py", "--device", device, "--cases", "1x16,9x5",
                                      "--rounds", "1", "--json", str(out)])
    monkeypatch.syspath_prepend(BENCHMARKS)
    runpy.run_path(os.path.join(BENCHMARKS, "bench_host.py"), run_name="__main__")
    text = capsys.readouterr().out
    assert "table host" in text and "fused Adam" in text and "is_current" in text
    rows = json.loads(out.read_text())["rows"]
    assert [(r["count"], r["numel"]) for r in rows] == [(1, 16), (9, 5)]
    for r in rows:
        assert set(r["host_us"]) == {"list", "table", "foreach SGD", "fused Adam"}
        assert all(v > 0 for v in r["total_us"].values()) and r["kernel_us"]["table"] >= 0
