"""2.5D input on synthetic OCT: does a B-scan's neighbours as extra channels help, IRF especially?

Why: small IRF cysts continue across neighbouring B-scans, so the B-scans beside the one being
segmented may tell a cyst from speckle (``model.context_slices``, :mod:`octseg.data.context`).

Data: the synthetic RETOUCH-like generator (``octseg.data.synthetic``), 30 volumes x 8 B-scans at
scale 0.5 (10 per vendor style; the generator keeps each vendor's slice spacing, so the 8 B-scans
are neighbours around the fovea and fluid blobs continue across them), generator seed fixed (0),
prepared at 96x96. Fixed held-out volumes shared by every run: 3 validation and 9 test volumes
(1 + 3 per vendor, drawn once with a fixed seed); the other 18 volumes train, all labelled.

Runs: ``supervised`` with 2-D input (k = 0) and 2.5D input (k = 1; ``--ks 0 1 2`` adds k = 2), each with the same seeds (default 0 1 2): the run seed (initialisation, batch
order, augmentation) is the same for every k, so the runs are paired by seed. Recipe:
``configs/demo_cpu.yaml`` and its ResNet18 U-Net (the light network that label_efficiency.py used
first underfits), ``--epochs`` x ``--steps-per-epoch`` (default 8 x 30 =
240 steps). The checkpoint scored is ``best.ckpt`` (chosen on validation); scores are Dice of hard
label maps pooled over the test B-scans, per class (IRF, SRF, PED) and their mean, the test
B-scans' neighbours taken from their volumes as in training.

Statistics: mean ± sd (ddof = 1) over seeds per k; the paired per-seed difference k − 0 per class
and for the mean, with its 95 % t-interval (df = n_seeds − 1).

Time on 2 CPU cores (float32): 6 runs of 240 steps plus validation and scoring, estimated at the
start from ``SEC_PER_STEP``. Finished run folders are reused.
``--quick`` (9 small volumes at 64x64, k 0 and 1, one seed, 2 x 2 steps) is a smoke test of a
few seconds.

    python benchmarks/context_slices.py            # the comparison (6 runs of 240 steps)
    python benchmarks/context_slices.py --quick    # smoke run, writes context_slices_quick.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import (add_keep_last, ci_text, fmt, mean_sd, paired, print_table,  # noqa: E402
                                prune_last, quiet_lightning, run_training, save_split, spread, write_results)

RECIPE = "demo_cpu"
MODEL: list = []  # the recipe's ResNet18 U-Net: the light one of label_efficiency.py underfits in 300 steps
DATA_SEED, HELDOUT_SEED = 0, 12345
FULL = {"volumes": 30, "slices": 8, "scale": 0.5, "size": (96, 96), "n_val": 3, "n_test": 9, "epochs": 8,
        "steps": 30, "seeds": [0, 1, 2], "ks": [0, 1]}
QUICK = {"volumes": 9, "slices": 4, "scale": 0.2, "size": (64, 64), "n_val": 3, "n_test": 3, "epochs": 2,
         "steps": 2, "seeds": [0], "ks": [0, 1]}
SEC_PER_STEP, RUN_S, EPOCH_S = 0.45, 10.0, 4.0  # 2 idle cores, float32, ResNet18 U-Net at 96x96, batch 4 (demo: 0.41 s)


def prepare(workdir: Path, plan: dict):
    from octseg.data.prepare import prepare_dataset
    from octseg.data.prepared import PreparedDataset, is_prepared
    from octseg.data.synthetic import write_synthetic_dataset

    prepared = workdir / "prepared"
    if is_prepared(prepared):
        return PreparedDataset(prepared)
    write_synthetic_dataset(workdir / "synthetic", plan["volumes"], fmt="mhd", slices=plan["slices"],
                            scale=plan["scale"], seed=DATA_SEED, fluid_free_fraction=0.1, progress=False)
    return prepare_dataset(workdir / "synthetic", prepared, size=plan["size"], progress=False)


def make_split(ds, n_val: int, n_test: int) -> str:
    """Fixed validation and test volumes (an equal number per vendor style); every other volume trains,
    all labelled. One split for every run."""
    vendor_of = {s.volume: s.vendor or "" for s in ds.slices}
    rng = np.random.default_rng(HELDOUT_SEED)
    vendors = sorted(set(vendor_of.values()))
    val, test = set(), set()
    for v in vendors:
        vols = sorted(x for x, g in vendor_of.items() if g == v)
        vols = [vols[i] for i in rng.permutation(len(vols))]
        nv, nt = max(1, n_val // len(vendors)), max(1, n_test // len(vendors))
        val |= set(vols[:nv])
        test |= set(vols[nv:nv + nt])
    parts = {"labelled": [], "unlabelled": [], "val": [], "test": []}
    for s in ds.slices:
        parts["val" if s.volume in val else "test" if s.volume in test else "labelled"].append(s.id)
    train = sorted(set(vendor_of) - val - test)
    return save_split(ds, "context-slices", parts, {"labelled": train, "unlabelled": [], "val": sorted(val),
                                                    "test": sorted(test), "train": train},
                      "2.5D benchmark: fixed val/test volumes, every training volume labelled")


def score(ckpt: Path, ds, split: str) -> dict:
    """Per-class Dice pooled over the test B-scans, each with its neighbours from its volume."""
    from octseg.checkpoint import context_slices, load_networks
    from octseg.data.context import context_rows, stack_context
    from octseg.data.splits import load_split, split_indices
    from octseg.metrics import score_networks

    nets, meta = load_networks(ckpt)
    default = meta["default_weights"]
    rows = np.sort(split_indices(ds, load_split(ds, split))["test"])
    k = context_slices(meta)
    images = (np.asarray(ds.images[rows]) if k == 0 else
              stack_context(ds.images, context_rows([s.volume for s in ds.slices],
                                                    [s.slice_index for s in ds.slices], k), rows))
    rep = score_networks({default: nets[default]}, meta, images, np.asarray(ds.masks[rows]),
                         volumes=[ds.slices[r].volume for r in rows], class_names=list(ds.classes), batch=32)[default]
    return {"dice": {c: rep["pooled"]["dice"][c] for c in ds.classes[1:]},
            "mean_foreground": rep["mean_foreground_dice"]["pooled"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON (default benchmarks/results/context_slices.json; _quick with --quick)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="data and run folders (default runs/bench-context-slices[-quick])")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    ap.add_argument("--ks", type=int, nargs="+", default=None, help="context slices to compare (default 0 1)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--steps-per-epoch", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    add_keep_last(ap)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    quiet_lightning()
    from octseg.config import load_config

    plan = dict(QUICK if args.quick else FULL)
    seeds = args.seeds or plan["seeds"]
    ks = sorted(set([0, *(args.ks or plan["ks"])]))  # 2-D input is the baseline of every comparison
    epochs, steps = args.epochs or plan["epochs"], args.steps_per_epoch or plan["steps"]
    suffix = "_quick" if args.quick else ""
    out_json = args.out or REPO / "benchmarks" / "results" / f"context_slices{suffix}.json"
    workdir = (args.workdir or Path("runs") / f"bench-context-slices{'-quick' if args.quick else ''}").absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.quick:
        print("QUICK SMOKE TEST: tiny data and runs; the figures mean nothing")

    t_all = time.time()
    ds = prepare(workdir, plan)
    split = make_split(ds, plan["n_val"], plan["n_test"])
    runs = [(seed, k) for seed in seeds for k in ks]
    est = len(runs) * (SEC_PER_STEP * epochs * steps + RUN_S + EPOCH_S * epochs)
    print(f"synthetic data: {len(ds)} B-scans in {plan['volumes']} volumes at {ds.size[0]}x{ds.size[1]}; "
          f"{len(runs)} supervised runs of {epochs} x {steps} steps (k = {ks}, seeds {seeds}); estimated "
          f"{est / 60:.0f} min on 2 idle CPU cores")
    model = MODEL if not args.quick else ["model.encoder=tu-resnet10t", "model.encoder_depth=3",
                                          "model.decoder_channels=[16,8,4]"]
    per_run = []
    for i, (seed, k) in enumerate(runs, 1):
        run_dir = workdir / f"k{k}-s{seed}"
        cfg = load_config(RECIPE, [f"data.path={ds.path}", f"data.split={split}", *model, "method.name=supervised",
                                   f"model.context_slices={k}", f"seed={seed}", f"trainer.max_epochs={epochs}",
                                   f"trainer.steps_per_epoch={steps}", "trainer.progress=false",
                                   f"name=context-k{k}-s{seed}"] + (["data.labelled_batch=2", "trainer.precision=32"]
                                                                   if args.quick else []))
        print(f"[{i}/{len(runs)}] k={k} ({2 * k + 1} input channels), seed {seed} -> {run_dir}", flush=True)
        t0 = time.time()
        ckpt, _, info = run_training(cfg, run_dir)
        s = score(ckpt, ds, split)
        prune_last(run_dir, args.keep_last)
        per_run.append({"seed": seed, "context_slices": k, "checkpoint": str(ckpt), "scores": s,
                        "wall_seconds": round(time.time() - t0, 1), "global_step": info.get("global_step")})
        print(f"  {time.time() - t0:.0f} s; test Dice " + ", ".join(f"{c} {fmt(v)}" for c, v in s["dice"].items())
              + f", mean {fmt(s['mean_foreground'])}", flush=True)

    classes = list(ds.classes[1:])
    keys = [*classes, "mean_foreground"]

    def value(r, key):
        return r["scores"]["mean_foreground"] if key == "mean_foreground" else r["scores"]["dice"][key]

    by = {(r["seed"], r["context_slices"]): r for r in per_run}
    summary = {}
    for k in ks:
        mine = [by[(s, k)] for s in seeds]
        summary[k] = {"test": {key: spread([value(r, key) for r in mine]) for key in keys}}
        if k:
            summary[k]["vs_2d"] = {key: paired([None if value(by[(s, k)], key) is None or value(by[(s, 0)], key) is None
                                                else value(by[(s, k)], key) - value(by[(s, 0)], key) for s in seeds])
                                   for key in keys}
    print(f"\nTest Dice (pooled over {plan['n_test']} test volumes' B-scans), mean ± sd over seeds {seeds}:")
    print_table(["input", *keys], [[f"k={k} ({2 * k + 1} ch)", *(mean_sd(summary[k]["test"][key]) for key in keys)]
                                   for k in ks])
    print("\nPaired difference to 2-D input (k - 0), mean and 95 % interval:")
    print_table(["input", *keys], [[f"k={k}", *(f"{fmt(summary[k]['vs_2d'][key]['mean'], sign=True)} "
                                                f"{ci_text(summary[k]['vs_2d'][key])}" for key in keys)]
                                   for k in ks if k])
    figures = {"quick": bool(args.quick), "data": {**{k: plan[k] for k in ("volumes", "slices", "scale")},
                                                   "size": list(ds.size), "split": split},
               "epochs": epochs, "steps_per_epoch": steps, "seeds": seeds, "context_slices": ks,
               "summary": {str(k): v for k, v in summary.items()}, "runs": per_run,
               "seconds": round(time.time() - t_all, 1)}
    print(f"\nwrote {write_results(out_json, 'context_slices', figures)} ({(time.time() - t_all) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
