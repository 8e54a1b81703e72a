"""Peak memory of a cohort's two big jobs: `octseg predict` on a Cirrus volume and `octseg prepare` of
10,000 B-scans, each run as the command a user types, in its own process.

* predict: one synthetic Cirrus-geometry volume (128 B-scans of 1024 x 512, RETOUCH ``.mhd``) through
  a random-weight UNet-ResNet50 checkpoint at 256 x 256 (weights do not change memory), masks as
  ``.mhd``, overlays and CSVs. Target: peak RSS <= 2 GB.
* prepare: 10,000 synthetic B-scans (100 Spectralis-style volumes of 100 B-scans, PNG folders, scale
  0.5: 248 x 256) prepared at 256 x 256. Target: peak RSS <= 2 GB.

Peak RSS is the child's ``ru_maxrss`` (``os.wait4``): the whole process, Python, torch and all.

    python benchmarks/memory.py            # ~5 min on 2 cores
    python benchmarks/memory.py --quick    # smoke run: 4 B-scans per job
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import print_table, write_results  # noqa: E402

TARGET_GB = 2.0
OCTSEG = [sys.executable, "-m", "octseg.cli"]


def peak_rss(cmd: list) -> tuple[float, float, int]:
    """(peak RSS in GB, seconds, exit status) of ``cmd`` run as a child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({code}):\n{err[-2000:]}")
    return usage.ru_maxrss * 1024 / 1e9, time.perf_counter() - t, code   # ru_maxrss is in KiB on Linux


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/memory.json)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny volumes")
    a = ap.parse_args(argv)
    out = a.out or REPO / "benchmarks" / "results" / f"memory{'_quick' if a.quick else ''}.json"

    from benchmarks._speed import MODELS, random_checkpoint

    work = Path(tempfile.mkdtemp(prefix="octseg-memory-"))
    try:
        rows, figures = [], {"target_gb": TARGET_GB, "quick": a.quick, "jobs": {}}
        # predict: one Cirrus volume
        slices = 4 if a.quick else 128
        subprocess.run([*OCTSEG, "synth", str(work / "cirrus"), "--volumes", "1", "--vendors", "cirrus",
                        "--format", "mhd", "--slices", str(slices), "--seed", "0"], check=True,
                       stdout=subprocess.DEVNULL)
        volume = next((work / "cirrus").rglob("oct.mhd"))
        net = "tiny" if a.quick else "resnet50"
        ckpt = random_checkpoint(work / "net.ckpt", MODELS[net], (256, 256))
        gb, sec, _ = peak_rss([*OCTSEG, "predict", str(ckpt), str(volume), str(work / "pred"), "--device", "cpu"])
        figures["jobs"]["predict"] = {"what": f"1 Cirrus volume, {slices} B-scans of 1024x512, UNet-{net} at "
                                              f"256x256", "peak_rss_gb": gb, "seconds": sec}
        rows.append(["octseg predict", figures["jobs"]["predict"]["what"], f"{gb:.2f}", f"{sec:.0f}",
                     "yes" if gb <= TARGET_GB else "NO"])
        # prepare: 10,000 B-scans
        vols, per = (2, 2) if a.quick else (100, 100)
        t = time.perf_counter()
        subprocess.run([*OCTSEG, "synth", str(work / "many"), "--volumes", str(vols), "--vendors", "spectralis",
                        "--format", "png", "--slices", str(per), "--scale", "0.5", "--seed", "0"], check=True,
                       stdout=subprocess.DEVNULL)
        synth_s = time.perf_counter() - t
        gb, sec, _ = peak_rss([*OCTSEG, "prepare", str(work / "many"), str(work / "prepared"), "--size", "256", "256"])
        figures["jobs"]["prepare"] = {"what": f"{vols * per} B-scans (248x256 PNG) at 256x256", "peak_rss_gb": gb,
                                      "seconds": sec, "synth_seconds": synth_s}
        rows.append(["octseg prepare", figures["jobs"]["prepare"]["what"], f"{gb:.2f}", f"{sec:.0f}",
                     "yes" if gb <= TARGET_GB else "NO"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(["job", "input", "peak RSS (GB)", "seconds", f"<= {TARGET_GB} GB"], rows)
    if a.quick:
        print("(--quick: a smoke run; these figures mean nothing)")
    figures["met"] = all(j["peak_rss_gb"] <= TARGET_GB for j in figures["jobs"].values())
    print(f"wrote {write_results(out, 'memory', figures)}")
    return 0 if figures["met"] or a.quick else 1   # the target is asserted here, not in a timed test


if __name__ == "__main__":
    sys.exit(main())
