"""benchmarks/duke_cv.py --quick --pretrain mim: every code path of the nested CV (pretraining an
encoder into the workdir, the inner CVs of both variants, single / ensemble / TTA / post-processing
scores on the held-back subject, the paired summary, the JSON), on the real Duke and Kermany data;
skipped without ../shared."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_duke_cv_quick_with_a_pretrained_encoder(tmp_path, shared_data, one_thread, capsys):
    sys.path.insert(0, str(ROOT))
    from benchmarks.duke_cv import KINDS, main

    out, work = tmp_path / "cv.json", tmp_path / "w"
    assert main(["--quick", "--threads", "1", "--shared", str(shared_data), "--workdir", str(work),
                 "--out", str(out), "--pretrain", "mim", "--select", "last"]) == 0
    printed = capsys.readouterr().out
    assert "QUICK SMOKE TEST" in printed and "mim - scratch" in printed
    f = json.loads(out.read_text())["figures"]
    assert f["quick"] is True and f["settings"]["select"] == "last"
    assert f["settings"]["variants"] == {"scratch": "none", "mim": str(work / "encoders" / "mim.pth")}
    enc = f["settings"]["pretraining"]["mim"]
    assert enc["objective"] == "mim" and enc["steps"] == 2 and enc["data"][0]["n_bscans"] == 8
    assert [(r["variant"], r["subject"]) for r in f["per_subject"]] == [("scratch", "S02"), ("mim", "S02")]
    assert all(0.0 <= r["scores"][k] <= 1.0 for r in f["per_subject"] for k in KINDS)
    assert f["summary"]["mim - scratch"]["ensemble"]["n"] == 1
    trained = [r["train_seconds"] for r in f["per_subject"]]  # the 4 inner runs' own training time
    assert all(t > 0 for t in trained)
    assert f["train_minutes_per_variant"] == {"scratch": trained[0] / 60, "mim": trained[1] / 60}
    mtime = (work / "encoders" / "mim.pth").stat().st_mtime_ns
    assert main(["--quick", "--threads", "1", "--shared", str(shared_data), "--workdir", str(work),
                 "--out", str(out), "--pretrain", "mim", "--select", "last", "--variants", "mim"]) == 0
    assert (work / "encoders" / "mim.pth").stat().st_mtime_ns == mtime  # reused, as the folds are
    assert "reusing" in capsys.readouterr().out
    again = json.loads(out.read_text())["figures"]["per_subject"][0]
    assert again["train_seconds"] == trained[1]  # the reused runs' own time, not this run's
