"""What does training below the native resolution cost before any learning? The resize round trip
of the reference masks on Duke DME.

A network trained at H x W predicts at H x W; ``octseg predict`` / ``evaluate`` bring that back to
the B-scan's native size. The best such a network can do is to predict the downsized reference
exactly, so the Dice of the native reference against ``up(down(reference))`` is the ceiling a
training size puts on the native-size score. Measured two ways per size:

* ``nearest``: labels down and back up with nearest neighbour (``resize_labels``: how the prepared
  masks are made, and how octseg brought predictions back before November 2026);
* ``soft``: what octseg does now (``resize_scores``) — the reference's one-hot maps area-averaged
  down (a perfectly calibrated prediction at H x W), bilinearly up, then the arg-max.

Data (``--shared``, default ``<repo>/../shared/data``; skips, exit 0, without it): ``duke-dme-train``
(55 annotated B-scans of 496x768, 0 = background, 1 = fluid). Fluid Dice pooled over all B-scans
(headline) and the mean and worst per subject.

    python benchmarks/resize_round_trip.py                  # sizes 128x192 256x384 372x576 496x768
    python benchmarks/resize_round_trip.py --sizes 192x288  # others
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import print_table, write_results  # noqa: E402

SIZES = ["128x192", "256x384", "372x576", "496x768"]


def round_trips(gt: np.ndarray, size) -> dict:
    """(N, H, W) uint8 reference -> {"nearest": labels, "soft": labels} back at native size."""
    import torch

    from octseg.transforms import resize_labels, resize_scores

    y = torch.from_numpy(gt.astype(np.int64))
    native = tuple(gt.shape[-2:])
    nearest = resize_labels(resize_labels(y, size), native)
    onehot = torch.nn.functional.one_hot(y, int(gt.max()) + 1).permute(0, 3, 1, 2).float()
    soft = resize_scores(resize_scores(onehot, size), native).argmax(1)
    return {"nearest": nearest.numpy().astype(np.uint8), "soft": soft.numpy().astype(np.uint8)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--sizes", nargs="+", default=SIZES, help="HxW training sizes")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "resize_round_trip.json")
    args = ap.parse_args(argv)
    train_dir = args.shared / "duke-dme-train"
    if not train_dir.is_dir():
        print(f"SKIP resize_round_trip benchmark: {train_dir} not found (pass --shared PATH)")
        return 0
    try:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
        assert all(len(s) == 2 and min(s) > 0 for s in sizes)
    except (ValueError, AssertionError):
        ap.error(f"--sizes {args.sizes}: give HxW, e.g. 256x384")
    from benchmarks.duke import load_native
    from benchmarks.duke_cv import fluid_dice

    t0 = time.time()
    ids, _, gt = load_native(train_dir)
    subjects = np.array([i.split("_")[0] for i in ids])
    rows, figures = [], {}
    for size in sizes:
        trips = round_trips(gt, size)
        fig = {}
        for kind, pred in trips.items():
            per = {s: fluid_dice(gt[subjects == s], pred[subjects == s]) for s in sorted(set(subjects))}
            fig[kind] = {"pooled": fluid_dice(gt, pred), "per_subject": per,
                         "subject_mean": float(np.nanmean(list(per.values()))),
                         "subject_min": float(np.nanmin(list(per.values())))}
        figures[f"{size[0]}x{size[1]}"] = fig
        rows.append([f"{size[0]}x{size[1]}", *(f"{fig[k][m]:.4f}" for k in ("nearest", "soft")
                                                for m in ("pooled", "subject_mean", "subject_min"))])
    print(f"Duke DME, {len(gt)} B-scans at {gt.shape[1]}x{gt.shape[2]}: fluid Dice of the reference against its "
          f"round trip through the training size (the ceiling of a perfect network):")
    print_table(["size", "nearest pooled", "mean/subject", "worst subject", "soft pooled", "mean/subject",
                 "worst subject"], rows)
    path = write_results(args.out, "resize_round_trip", {
        "data": "duke-dme-train", "n_bscans": int(len(gt)), "native": list(gt.shape[1:]), "sizes": figures,
        "total_seconds": round(time.time() - t0, 1)})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
