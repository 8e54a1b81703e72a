"""How much fluid does each run call, subject by subject? The diagnostic behind the Duke rare-class erosion.

For each run folder of a finished ``duke.py`` rotation (``WORKDIR/rK-REGIME/METHOD``): the share of pixels its
best checkpoint predicts as fluid (flip-averaged argmax at the training size, as self-training's teacher labels
the pool) on every annotated subject of the prepared Duke data and on each unlabelled pool the runs used
(``data.extra_unlabelled`` of the first run's config), beside the graded share of each subject. A self-trained
student that calls less fluid than its teacher where fluid is scarce erodes the rare class.

    python benchmarks/fluid_share.py runs/bench-duke/r3-2s
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def predicted_share(ckpt: str, images) -> float:
    """Share of pixels the checkpoint's default network calls non-background over ``images``, labelled as a
    self-training teacher labels (flip-averaged probabilities)."""
    import torch

    from octseg.checkpoint import load_network
    from octseg.methods.self_training import teacher_probabilities

    net, meta = load_network(ckpt)
    fluid = total = 0
    with torch.no_grad():
        for i in range(0, len(images), 64):
            x = torch.from_numpy(np.asarray(images[i:i + 64], dtype=np.float32) / 255)[:, None]
            p = teacher_probabilities(net, meta["normalization"], x)
            fluid += (p.argmax(1) > 0).sum().item()
            total += p[:, 0].numel()
    return fluid / max(1, total)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rotation", type=Path, help="a duke.py rotation folder holding finished run folders")
    args = ap.parse_args(argv)

    from octseg.config import load_config
    from octseg.constants import IGNORE_INDEX
    from octseg.data.prepared import PreparedDataset

    runs = sorted(d for d in args.rotation.iterdir()
                  if (d / "metrics.json").is_file() and (d / "config.yaml").is_file())
    if not runs:
        ap.error(f"{args.rotation}: no finished run folders (metrics.json and config.yaml)")
    cfg = load_config(runs[0] / "config.yaml")
    ds = PreparedDataset(cfg.data.path)
    subject = np.array([s.volume for s in ds.slices])
    masks = np.asarray(ds.masks)
    fluid = (masks > 0) & (masks != IGNORE_INDEX)  # any fluid class, as the prediction counts it
    parts = {f"{k} (graded {100 * fluid[subject == k].mean():.2f} %)": np.asarray(ds.images)[subject == k]
             for k in sorted(set(subject))}
    parts |= {Path(p).name: PreparedDataset(p).images for p in cfg.data.extra_unlabelled}
    print(f"share of pixels predicted fluid, % ({args.rotation}):")
    for run in runs:
        best = json.loads((run / "metrics.json").read_text())["best_checkpoint"]
        print(f"  {run.name}: " + ", ".join(f"{name} {100 * predicted_share(best, imgs):.2f}"
                                           for name, imgs in parts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
