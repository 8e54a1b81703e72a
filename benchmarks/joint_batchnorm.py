"""Does one joint BatchNorm batch of labelled and unlabelled B-scans hurt? A paired experiment.

An earlier version of octseg saw the Mean Teacher student validate far below supervised (0.20 vs
0.62 mean foreground Dice at 5 % labels) when labelled and unlabelled B-scans went through the
network as one batch, even with the consistency weight at 0; methods have used separate batches
since. FixMatch, UniMatch and BCP are published with joint batches, so the cause matters.

The experiment isolates the BatchNorm batch: FixMatch with the unlabelled weight at 0 trains on the
labelled loss only, yet its strong unlabelled views still pass through the student in train mode.
``method.fixmatch.joint_batch`` decides whether they share the labelled views' BatchNorm batch
(joint) or form their own (separate); nothing else differs (same seed, labels, augmentation,
batches). The same pair with the weight at 1 shows whether the answer changes once the unlabelled
loss acts. Data, splits, recipe and scoring are those of ``label_efficiency.py`` (synthetic, fixed
validation/test volumes, ``--regime`` labelled volumes per seed), with shorter runs by default
(``EPOCHS`` x ``STEPS``); ``--arms`` adds supervised and the weight-1 pair.

    python benchmarks/joint_batchnorm.py              # 3 seeds x (w0-separate, w0-joint) at 2 labelled volumes
    python benchmarks/joint_batchnorm.py --arms supervised w0-separate w0-joint w1-separate w1-joint
    python benchmarks/joint_batchnorm.py --quick      # smoke run (figures mean nothing)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks import label_efficiency as le  # noqa: E402
from benchmarks._common import (add_keep_last, ci_text, fmt, mean_sd, paired, print_table,  # noqa: E402
                                prune_last, quiet_lightning, run_training, spread, write_results)

ARMS = {  # name -> overrides
    "supervised": ["method.name=supervised"],
    "w0-separate": ["method.name=fixmatch", "method.fixmatch.weight=0"],
    "w0-joint": ["method.name=fixmatch", "method.fixmatch.weight=0", "method.fixmatch.joint_batch=true"],
    "w1-separate": ["method.name=fixmatch"],
    "w1-joint": ["method.name=fixmatch", "method.fixmatch.joint_batch=true"],
}
DEFAULT_ARMS = ["w0-separate", "w0-joint"]   # the question; --arms adds the others
EPOCHS, STEPS = 5, 30   # the collapse reported was large (0.62 -> 0.20): a short run shows it
def recalibrated(net, images, norm: dict, batch: int = 16):
    """A copy of ``net`` whose BatchNorm running statistics are recomputed (a plain average) from clean
    training B-scans: if a joint batch hurt through the statistics it left behind rather than through
    the weights it learned, this recovers the difference."""
    import copy

    import torch
    from torch import nn

    from octseg.transforms import to_model_input

    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            net(to_model_input(torch.from_numpy(np.asarray(images[i:i + batch])), norm))
    return net.eval()


def score_recalibrated(ckpt, ds, split: str) -> dict:
    """Test mean foreground Dice of the checkpoint's default network after :func:`recalibrated` on the
    split's labelled and unlabelled B-scans."""
    from octseg.checkpoint import load_networks
    from octseg.data.splits import load_split, split_indices
    from octseg.metrics import score_networks

    idx = split_indices(ds, load_split(ds, split))
    nets, meta = load_networks(ckpt)
    train_rows = np.sort(np.concatenate([idx["labelled"], idx.get("unlabelled", np.zeros(0, np.int64))]))
    net = recalibrated(nets[meta["default_weights"]], ds.images[train_rows], meta["normalization"])
    out = {}
    for part in ("val", "test"):
        rows = np.sort(idx[part])
        rep = score_networks({"net": net}, meta, np.asarray(ds.images[rows]), np.asarray(ds.masks[rows]),
                             volumes=[ds.slices[r].volume for r in rows], class_names=list(ds.classes), batch=32)
        out[part] = {"mean_foreground": rep["net"]["mean_foreground_dice"]["pooled"]}
    return out


PAIRS = [("w0-joint", "w0-separate"), ("w1-joint", "w1-separate"), ("w0-separate", "supervised"),
         ("w1-separate", "supervised")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS),
                    help=f"default {DEFAULT_ARMS}")
    ap.add_argument("--regime", default="2v", help="labelled volumes, as in label_efficiency.py (default 2v)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--quick: 0)")
    ap.add_argument("--epochs", type=int, default=None, help=f"default {EPOCHS}")
    ap.add_argument("--steps-per-epoch", type=int, default=None, help=f"default {STEPS}")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="prepared data and runs (default runs/bench-label-efficiency: the same data and runs)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--minutes", type=float, default=30.0, help="per-run wall-clock cap (a safety net)")
    ap.add_argument("--quick", action="store_true")
    add_keep_last(ap)
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    quiet_lightning()
    q = args.quick
    seeds = args.seeds if args.seeds is not None else ([0] if q else [0, 1, 2])
    epochs = args.epochs or (le.QUICK["epochs"] if q else EPOCHS)
    steps = args.steps_per_epoch or (le.QUICK["steps_per_epoch"] if q else STEPS)
    workdir = (args.workdir or Path("runs") / f"bench-label-efficiency{'-quick' if q else ''}").absolute()
    out_json = args.out or REPO / "benchmarks" / "results" / f"joint_batchnorm{'_quick' if q else ''}.json"
    workdir.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    ds = le.prepare(workdir, le.QUICK["volumes"] if q else le.SYNTH["volumes"])
    vendor_of = {s.volume: s.vendor or "" for s in ds.slices}
    complete = le.complete_volumes(ds)
    train_vols, val_vols, test_vols = le.heldout(ds, *((le.QUICK["n_val"], le.QUICK["n_test"]) if q
                                                       else (le.N_VAL, le.N_TEST)))
    n = le.n_labelled(args.regime, len(train_vols))
    runs = []
    for seed in seeds:
        lab = le.labelled_order(train_vols, vendor_of, seed, complete)[:n]
        split = le.write_split(ds, f"le-n{n}-s{seed}", lab, train_vols, val_vols, test_vols,
                               f"label efficiency: {n} of {len(train_vols)} training volumes labelled (seed {seed})")
        for arm in args.arms:
            run = f"jbn{epochs * steps}-{arm}"
            run_dir = workdir / f"n{n}-s{seed}" / run
            cfg = le.run_config(ds, split, ARMS[arm], seed, epochs, steps, f"le-n{n}-s{seed}-{run}",
                                [f"trainer.max_minutes={args.minutes}", *args.overrides])
            print(f"\nseed {seed}, {args.regime} ({n} labelled), {arm} -> {run_dir}", flush=True)
            ckpt, _, info = run_training(cfg, run_dir)
            scores = le.score(ckpt, ds, split)
            recal = score_recalibrated(ckpt, ds, split)
            prune_last(run_dir, args.keep_last)
            runs.append({"seed": seed, "arm": arm, "run_dir": str(run_dir), "train": info, "scores": scores,
                         "scores_bn_recalibrated": recal})
            print(f"  val {scores['val']['mean_foreground']:.3f}, test {scores['test']['mean_foreground']:.3f}; "
                  f"BatchNorm statistics recomputed on clean training B-scans: test "
                  f"{recal['test']['mean_foreground']:.3f}")

    def dice(arm, part, key="scores"):
        return {r["seed"]: r[key][part]["mean_foreground"] for r in runs if r["arm"] == arm}

    summary = {arm: {part: spread(list(dice(arm, part).values())) for part in ("val", "test")} for arm in args.arms}
    for arm in args.arms:
        summary[arm]["test_bn_recalibrated"] = spread(list(dice(arm, "test", "scores_bn_recalibrated").values()))
    pairs = {}
    for a, b in [p for p in PAIRS if set(p) <= set(args.arms)]:
        for key, label in (("scores", ""), ("scores_bn_recalibrated", " (BN recomputed)")):
            da, db = dice(a, "test", key), dice(b, "test", key)
            pairs[f"{a} - {b}{label}"] = paired([da[s] - db[s] for s in seeds if s in da and s in db])
    print(f"\nMean foreground Dice (pooled), {args.regime} = {n} labelled volume(s), {epochs} x {steps} steps, "
          f"seeds {seeds}:")
    print_table(["arm", "val", "test", "test, BN statistics recomputed"],
                [[a, mean_sd(s["val"]), mean_sd(s["test"]), mean_sd(s["test_bn_recalibrated"])]
                 for a, s in summary.items()])
    print()
    print_table(["paired difference (test)", "mean", "95 % CI", "per seed"],
                [[k, fmt(p["mean"], sign=True), ci_text(p), " ".join(f"{d:+.3f}" for d in p["diffs"])]
                 for k, p in pairs.items()])
    if q:
        print("(--quick: a smoke run; these figures mean nothing)")
    path = write_results(out_json, "joint_batchnorm", {
        "settings": {"regime": args.regime, "labelled_volumes": n, "seeds": seeds, "epochs": epochs,
                     "steps_per_epoch": steps, "recipe": le.RECIPE, "model": le.MODEL,
                     "arms": {a: ARMS[a] for a in args.arms},
                     "overrides": args.overrides, "quick": q, "workdir": str(workdir)},
        "summary": summary, "paired": pairs, "runs": runs, "total_seconds": round(time.time() - t_all, 1)})
    print(f"wrote {path} ({(time.time() - t_all) / 60:.1f} min)")
    return 0 if np.isfinite([r["scores"]["test"]["mean_foreground"] for r in runs]).all() else 1


if __name__ == "__main__":
    sys.exit(main())
