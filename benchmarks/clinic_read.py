"""Reading speed of a clinic file: a 49-B-scan Heidelberg ``.vol`` (496 x 512, Spectralis's macular
cube) written byte by byte from the published layout, read with ``octseg.io.vendor.read`` (header
checks + eyepy). Target: <= 1 s per volume (issue 13). Cold = the first read in the process (eyepy
imported then), warm = the best of ``--repeats`` later reads.

    python benchmarks/clinic_read.py            # writes benchmarks/results/clinic_read.json
    python benchmarks/clinic_read.py --quick    # smoke run (a 3-B-scan file), *_quick.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import print_table, write_results  # noqa: E402

TARGET_S = 1.0


def main(argv=None) -> int:
    from tests._clinic_files import synthetic_stack, write_heyex_vol

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    n = 3 if a.quick else 49
    stack = synthetic_stack(n, 496, 512, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_heyex_vol(Path(tmp) / "spectralis.vol", stack)
        t = time.perf_counter()
        from octseg.io import vendor

        (scan,) = vendor.read(path)
        cold = time.perf_counter() - t
        warm = []
        for _ in range(max(1, a.repeats)):
            t = time.perf_counter()
            (scan,) = vendor.read(path)
            warm.append(time.perf_counter() - t)
    if not np.array_equal(scan.bscans, stack):
        raise SystemExit("the B-scans read back differ from those written")
    figures = {"bscans": n, "shape": [496, 512], "cold_seconds": round(cold, 3),
               "warm_best_seconds": round(min(warm), 3), "warm_median_seconds": round(float(np.median(warm)), 3),
               "target_seconds": TARGET_S, "met": bool(min(warm) <= TARGET_S), "quick": a.quick}
    print_table(["file", "cold (s, incl. import)", "warm best (s)", "warm median (s)", f"target <= {TARGET_S} s"],
                [[f".vol, {n} B-scans", figures["cold_seconds"], figures["warm_best_seconds"],
                  figures["warm_median_seconds"], "met" if figures["met"] else "NOT met"]])
    out = a.out or REPO / "benchmarks" / "results" / f"clinic_read{'_quick' if a.quick else ''}.json"
    print(f"wrote {write_results(out, 'clinic_read', figures)}")
    return 0 if figures["met"] or a.quick else 1


if __name__ == "__main__":
    sys.exit(main())
