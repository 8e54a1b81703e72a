"""How differently do two teachers label the unlabelled pool? The diagnostic behind the ensemble-teacher result.

For each seed of a finished ``label_efficiency.py`` workdir: the two members' best checkpoints (as the
ensemble teacher uses them: flip-averaged, each with its own normalisation) label the pool's B-scans
(``WORKDIR/pretrain-pool/images``: every training volume's B-scans); printed are the IoU of the two members'
fluid masks, the share of pixels where the ensemble's label differs from the first member's (of all pixels and
of the pixels either member calls fluid), and each class's share of pixels under the first member and the
ensemble. An ensemble whose labels differ from one member's on a fraction of a percent of the pool gives a
student almost the same targets.

    python benchmarks/teacher_agreement.py runs/bench-label-efficiency --labelled 2 --seeds 0 1 2 3 4 5 6 7
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", type=Path, help="a label_efficiency.py --workdir whose runs have finished")
    ap.add_argument("--labelled", type=int, default=2, help="labelled volumes of the regime (run folders nN-sS)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--members", nargs=2, default=["supervised_mim", "supervised"],
                    help="the two teacher runs (default: the pool-encoder and scratch supervised runs)")
    args = ap.parse_args(argv)

    import torch
    from PIL import Image

    from octseg.checkpoint import load_network
    from octseg.methods.self_training import teacher_probabilities

    files = sorted((args.workdir / "pretrain-pool" / "images").glob("*.png"))
    if not files:
        ap.error(f"{args.workdir / 'pretrain-pool' / 'images'}: no B-scans (run a *_mim variant there first)")
    x = torch.from_numpy(np.stack([np.asarray(Image.open(f), dtype=np.float32) / 255 for f in files]))[:, None]

    def probs(run: Path) -> torch.Tensor:
        net, meta = load_network(json.loads((run / "metrics.json").read_text())["best_checkpoint"])
        with torch.no_grad():
            return teacher_probabilities(net, meta["normalization"], x)

    rows = []
    for seed in args.seeds:
        first, second = (probs(args.workdir / f"n{args.labelled}-s{seed}" / m) for m in args.members)
        a, b, ens = first.argmax(1), second.argmax(1), (0.5 * (first + second)).argmax(1)
        fluid = (a > 0) | (b > 0)
        iou = ((a > 0) & (b > 0)).sum().item() / max(1, fluid.sum().item())
        changed = (ens != a).float().mean().item()
        changed_fluid = ((ens != a) & fluid).sum().item() / max(1, fluid.sum().item())
        shares = [[(lab == c).float().mean().item() for c in range(1, first.shape[1])] for lab in (a, ens)]
        rows.append((iou, changed, changed_fluid))
        print(f"seed {seed}: fluid IoU of the members {iou:.3f}; ensemble label != {args.members[0]}'s on "
              f"{100 * changed:.2f} % of pixels, {100 * changed_fluid:.1f} % of the pixels either calls fluid; class "
              f"shares {args.members[0]} {' '.join(f'{v:.4f}' for v in shares[0])}, ensemble "
              f"{' '.join(f'{v:.4f}' for v in shares[1])}")
    r = np.array(rows)
    print(f"mean over {len(rows)} seeds ({len(files)} pool B-scans): fluid IoU {r[:, 0].mean():.3f}; ensemble label "
          f"changed on {100 * r[:, 1].mean():.2f} % of pixels, {100 * r[:, 2].mean():.1f} % of fluid pixels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
