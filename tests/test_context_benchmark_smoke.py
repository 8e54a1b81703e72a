"""benchmarks/context_slices.py --quick (2-D vs 2.5D input, supervised, synthetic volumes), run in this
process so the suite pays no second import of torch and Lightning: every path of the script, the
paired statistics and the JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.usefixtures("one_thread")
def test_context_slices_benchmark_quick(tmp_path, capsys):
    import torch

    spec = importlib.util.spec_from_file_location("bench_context_slices", ROOT / "benchmarks" / "context_slices.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--quick", "--threads", "1", "--workdir", str(tmp_path / "w"),
                           "--out", str(tmp_path / "r.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "QUICK SMOKE TEST" in capsys.readouterr().out
    f = json.loads((tmp_path / "r.json").read_text())["figures"]
    assert f["quick"] is True and f["context_slices"] == [0, 1]
    assert {r["context_slices"] for r in f["runs"]} == {0, 1}
    vs = f["summary"]["1"]["vs_2d"]
    assert set(vs) == {"IRF", "SRF", "PED", "mean_foreground"} and vs["IRF"]["n"] == 1
    assert f["summary"]["0"]["test"]["IRF"]["n"] == 1
