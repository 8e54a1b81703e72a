"""benchmarks/pretrain_objectives.py --quick: every code path of the objective comparison (three
pretrainings, fine-tuning from scratch and from each encoder, scoring, JSON), on the real Duke and
Kermany data; skipped without ../shared."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pretrain_objectives_quick(tmp_path, shared_data, one_thread, capsys):
    sys.path.insert(0, str(ROOT))
    from benchmarks.pretrain_objectives import main

    out = tmp_path / "po.json"
    assert main(["--quick", "--threads", "1", "--shared", str(shared_data), "--workdir", str(tmp_path / "w"),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "QUICK SMOKE TEST" in printed and "Winner (chosen on validation)" in printed
    f = json.loads(out.read_text())["figures"]
    assert f["quick"] is True and set(f["summary"]) == {"scratch", "synthetic", "mim", "denoise"}
    assert f["winner_on_validation"] in ("synthetic", "mim", "denoise")
    assert len(f["runs"]) == 4 and all(0.0 <= r["scores"]["test"]["fluid_dice"] <= 1.0 for r in f["runs"])
    assert {r["config"]["model"]["encoder_weights"].split("/")[-1] for r in f["runs"]} == {
        "none", "synthetic.pth", "mim.pth", "denoise.pth"}
    assert all(f["pretraining"][o]["steps"] == 2 for o in ("synthetic", "mim", "denoise"))
