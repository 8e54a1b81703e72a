"""Speed of octseg.metrics: the full report on 10,000 B-scans, and HD95.

    python benchmarks/metrics_speed.py [--n 10000] [--hd95-n 200] [--out PATH]

Random label maps (4 classes, 256x256). Confusion counting does not depend on the
content; HD95 does, so it is timed on blob-shaped masks (a few ellipses per class)
rather than on pixel noise, which would be all boundary.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from benchmarks._common import print_table, write_results  # noqa: E402
from octseg.records import Spacing  # noqa: E402
from octseg.metrics import MetricAccumulator, confusion_per_image, segmentation_report  # noqa: E402

TARGET_S = 10.0


def blobs(rng, n, size=256, k=4, per_class=2):
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for c in range(1, k):
            for _ in range(per_class):
                cy, cx = rng.uniform(20, size - 20, 2)
                ry, rx = rng.uniform(4, 25, 2)
                out[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = c
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--hd95-n", type=int, default=200)
    ap.add_argument("--batch", type=int, default=500, help="batch size of the streaming run")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "metrics_speed.json"))
    a = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    K, H = 4, 256
    t = time.perf_counter()
    gt = rng.integers(0, K, (a.n, H, H), dtype=np.uint8)
    pred = gt.copy()
    for s in range(0, a.n, 1000):  # about 20% of pixels re-drawn at random, in chunks
        p = pred[s : s + 1000]
        np.copyto(p, rng.integers(0, K, p.shape, dtype=np.uint8), where=rng.integers(0, 5, p.shape, dtype=np.uint8) == 0)
    print(f"generated {a.n} B-scan pairs in {time.perf_counter() - t:.1f} s (not timed below)")
    volumes = [f"v{i // 49:04d}" for i in range(a.n)]
    vendors = [("cirrus", "spectralis", "topcon")[(i // 49) % 3] for i in range(a.n)]

    rows, figures = [], {"n_bscans": a.n, "shape": [H, H], "num_classes": K}

    t = time.perf_counter()
    confusion_per_image(gt, pred, K)
    t_conf = time.perf_counter() - t

    t = time.perf_counter()
    rep = segmentation_report(gt, pred, K, volumes=volumes, vendors=vendors, hd95="off")
    t_report = time.perf_counter() - t

    t = time.perf_counter()
    acc = MetricAccumulator(K, hd95="off")
    for s in range(0, a.n, a.batch):
        acc.update(gt[s : s + a.batch], pred[s : s + a.batch], volumes=volumes[s : s + a.batch],
                   vendors=vendors[s : s + a.batch])
    rep2 = acc.compute()
    t_stream = time.perf_counter() - t
    assert rep2["pooled"] == rep["pooled"]

    mpix = a.n * H * H / 1e6
    rows.append(["confusion_per_image", a.n, f"{t_conf:.2f}", f"{mpix / t_conf:.0f}"])
    rows.append(["segmentation_report (one shot, tables)", a.n, f"{t_report:.2f}", f"{mpix / t_report:.0f}"])
    rows.append([f"MetricAccumulator (batches of {a.batch})", a.n, f"{t_stream:.2f}", f"{mpix / t_stream:.0f}"])
    figures.update(confusion_s=t_conf, report_s=t_report, stream_s=t_stream, stream_batch=a.batch)
    del gt, pred

    bg = blobs(rng, a.hd95_n)
    bp = np.roll(bg, (3, -2), axis=(1, 2))
    t = time.perf_counter()
    rep_hd = segmentation_report(bg, bp, K, spacing=Spacing(0.0039, 0.0117), tables=False)
    t_hd = time.perf_counter() - t
    n_pairs = sum(rep_hd["hd95"]["counted"].values())
    rows.append(["segmentation_report with HD95 (blobs)", a.hd95_n, f"{t_hd:.2f}", "-"])
    figures.update(hd95_n_bscans=a.hd95_n, hd95_s=t_hd, hd95_ms_per_bscan=1000 * t_hd / a.hd95_n,
                   hd95_pairs=n_pairs)

    print_table(["what", "B-scans", "seconds", "Mpixel/s"], rows)
    met = t_report < TARGET_S
    figures.update(target_s=TARGET_S, target_met=met)
    print(f"\nHD95: {1000 * t_hd / a.hd95_n:.1f} ms per B-scan ({n_pairs} class pairs)")
    print(f"target: {a.n} B-scans in < {TARGET_S:.0f} s (one-shot report): {'met' if met else 'NOT met'} ({t_report:.2f} s)")
    path = write_results(a.out, "metrics_speed", figures)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
