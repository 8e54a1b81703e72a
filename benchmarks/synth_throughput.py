"""Speed of the synthetic OCT generator on one CPU core.

    python benchmarks/synth_throughput.py [--slices N] [--out PATH] [--no-pin]

Generates one full-size volume per vendor (RETOUCH geometry: Spectralis 496x512x49, Cirrus
1024x512x128, Topcon 885x512x128) with BLAS/OpenMP threads set to 1 and the process pinned
to one core. The target, 20 B-scans/s, is stated at 496x512; for the taller Cirrus and Topcon
B-scans the rate is also given scaled by pixel count to 496x512.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"  # before numpy is imported

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from benchmarks._common import print_table, write_results  # noqa: E402
from octseg.data.synthetic import GEOMETRY, generate_volume  # noqa: E402
from octseg.constants import VENDORS  # noqa: E402

TARGET = 20.0  # B-scans/s at 496x512, one core
REF_PIXELS = 496 * 512


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=None, help="B-scans per volume (default: the vendor's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "synth_throughput.json")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU core")
    a = ap.parse_args(argv)

    pinned = None
    if not a.no_pin and hasattr(os, "sched_setaffinity"):
        pinned = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {pinned})

    generate_volume("spectralis", np.random.default_rng(0), slices=2, scale=0.25)  # warm-up
    figures, rows = {"target_bscans_per_s_at_496x512": TARGET, "threads": 1, "pinned_cpu": pinned,
                     "vendors": {}}, []
    for i, vendor in enumerate(VENDORS):
        g = GEOMETRY[vendor]
        t0 = time.perf_counter()
        vol = generate_volume(vendor, np.random.default_rng([a.seed, i]), slices=a.slices)
        dt = time.perf_counter() - t0
        S, H, W = vol.image.shape
        rate = S / dt
        rate_ref = rate * H * W / REF_PIXELS
        met = rate_ref >= TARGET
        figures["vendors"][vendor] = {
            "rows": H, "cols": W, "bscans": S, "seconds": round(dt, 3),
            "bscans_per_s": round(rate, 1), "bscans_per_s_at_496x512": round(rate_ref, 1),
            "megapixels_per_s": round(S * H * W / dt / 1e6, 2), "met": bool(met),
            "fluid_pixels": int((vol.labels > 0).sum()),
        }
        assert (H, W) == (g.rows, g.cols)
        rows.append([vendor, f"{H}x{W}x{S}", f"{rate:.1f}", f"{rate_ref:.1f}", f"{TARGET:.0f}",
                     "yes" if met else "no"])
    print_table(["vendor", "geometry", "B-scans/s", "at 496x512", "target", "met"], rows)
    path = write_results(a.out, "synth_throughput", figures)
    print(f"results -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
