"""Real data: fluid segmentation on the Duke DME B-scans, scored on a subject never trained on.

Data (``--shared``, default ``<repo>/../shared/data``; the benchmark skips, exit 0, without it):
``duke-dme-train`` (55 annotated B-scans, subjects 1-5, 0 = background, 1 = fluid) and
``duke-subject01-unlabeled`` (all 61 B-scans of subject 1, no masks). Recipe: ``configs/duke.yaml``
(U-Net ResNet18 from scratch, 256x384, dice+CE, AdamW cosine, 30 x 25 steps).

Protocol (one fold per ``--test-subject``, default subject 5):

* Split by subject, never by B-scan. The held-out subject (11 B-scans) is the test set; the
  other four subjects train. Subject 1 must train (its annotated B-scans are frames of the
  unlabelled volume), so it cannot be the test subject.
* Regime A: all 44 training B-scans labelled, supervised.
* Regime B: two training subjects labelled (``--labelled-subjects``; default: the first and last
  training subject other than 1, i.e. 2 and 4 for test subject 5); supervised on those, against
  Mean Teacher with the same labels plus, unlabelled, the remaining training subjects and the
  whole subject-1 volume (``data.extra_unlabelled``; subject 1's annotated B-scans are then left
  out of the split's unlabelled part, as the volume already contains them).
* Checkpoint: no selection on the test subject. With five subjects a separate validation
  subject would cost a quarter of the training labels, so instead the engine's validation part is
  the held-out subject but validation runs only once, after the final epoch
  (``trainer.val_every_n_epochs = max_epochs``): ``best.ckpt`` is written then and holds the same
  weights as ``last.ckpt``, the last-epoch model. Every figure below is of ``last.ckpt``; nothing
  was tuned on the held-out subject by this script (the recipe's settings are fixed beforehand).
* Scoring: the checkpoint's predictions at the native 496x768 (resized back with nearest
  neighbour), against the original masks, exactly as ``octseg evaluate`` scores raw data; the
  script writes ``WORKDIR/heldout-SXX/`` (links to that subject's images and masks) so
  ``octseg evaluate RUN/checkpoints/last.ckpt WORKDIR/heldout-SXX`` reproduces the figures.
  Fluid Dice pooled over the subject's B-scans (headline) and the mean over B-scans (B-scans
  with no fluid in reference or prediction are excluded). Secondary, clearly labelled: the
  graders annotated only a central band of each B-scan, and outside it "0" means "not
  annotated"; a second Dice ignores the columns outside the horizontal extent of the subject's
  reference fluid +- ``--band-margin`` pixels (a proxy for that band).

Reference: ReLayNet (Roy et al., Biomed. Opt. Express 8(8), 2017) reports fluid Dice ~0.77 on
Duke, trained on subjects 1-5 and tested on subjects 6-10 at full resolution with their own
training recipe: a different protocol (other test subjects, 55 training B-scans), so it is context,
not a like-for-like comparison. Data: Chiu et al., Biomed. Opt. Express 6(4), 2015.

    python benchmarks/duke.py                       # ~25 min on 2 idle CPU cores (see --help)
    python benchmarks/duke.py --test-subject 2 3 4 5   # leave-one-subject-out over subjects 2-5
    python benchmarks/duke.py --quick               # smoke run: tiny steps, small size, ~20 s
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import run_training, save_split, print_table, write_results  # noqa: E402

RECIPE = "duke"
PUBLISHED = {"method": "ReLayNet (Roy et al. 2017)", "fluid_dice": 0.77,
             "protocol": "trained on Duke subjects 1-5, tested on subjects 6-10 (not the protocol here)"}
TARGET_ALL_LABELS = 0.75   # fluid Dice, pooled, with all training labels (regime A)
TARGET_MT_GAIN = 0.03      # Mean Teacher (teacher) over supervised on the same labels (regime B)
QUICK = {"size": [128, 192], "max_epochs": 1, "steps_per_epoch": 3}


def _quiet() -> None:
    """Keep the console to octseg's own lines: Lightning sets its loggers to INFO when imported."""
    import lightning.pytorch  # noqa: F401

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


def subject_id(n) -> str:
    return f"S{int(n):02d}"


# ----------------------------------------------------------------------------- splits


def write_split(ds, name: str, labelled_subjects, unlabelled_subjects, test_subject: str, note: str) -> str:
    """A make_split-compatible PREPARED/splits/NAME.json; val = test = the held-out subject."""
    by_subject: dict[str, list[str]] = {}
    for s in ds.slices:
        by_subject.setdefault(s.volume, []).append(s.id)
    parts = {
        "labelled": [i for v in sorted(labelled_subjects) for i in by_subject[v]],
        "unlabelled": [i for v in sorted(unlabelled_subjects) for i in by_subject[v]],
        "val": list(by_subject[test_subject]),
        "test": list(by_subject[test_subject]),
    }
    train = sorted(set(labelled_subjects) | set(unlabelled_subjects))
    volumes = {"labelled": sorted(labelled_subjects), "unlabelled": sorted(unlabelled_subjects),
               "val": [test_subject], "test": [test_subject], "train": train}
    return save_split(ds, name, parts, volumes, note, seed=0)


def heldout_folder(train_dir: Path, workdir: Path, subject: str) -> Path:
    """WORKDIR/heldout-SXX/{images,masks}: links to one subject's raw files, for `octseg evaluate`."""
    out = workdir / f"heldout-{subject}"
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for src in sorted((train_dir / sub).glob(f"{subject}_*.png")):
            dst = out / sub / src.name
            if dst.is_symlink() or dst.exists():
                continue
            try:
                dst.symlink_to(src.resolve())
            except OSError:
                shutil.copy2(src, dst)
    return out


def load_native(folder: Path):
    from PIL import Image

    names = sorted(p.name for p in (folder / "images").glob("*.png"))
    images = np.stack([np.asarray(Image.open(folder / "images" / n).convert("L")) for n in names])
    masks = np.stack([np.asarray(Image.open(folder / "masks" / n)) for n in names])
    return [Path(n).stem for n in names], images, masks


def band_masks(gt: np.ndarray, margin: int) -> tuple[np.ndarray, list[int]]:
    """gt with 255 (ignored) outside [first fluid column - margin, last + margin] of the subject."""
    cols = np.flatnonzero((gt == 1).any(axis=(0, 1)))
    out = gt.copy()
    if len(cols) == 0:
        return out, [0, gt.shape[2] - 1]
    lo, hi = max(0, int(cols[0]) - margin), min(gt.shape[2] - 1, int(cols[-1]) + margin)
    out[:, :, :lo] = 255
    out[:, :, hi + 1:] = 255
    return out, [lo, hi]


# ----------------------------------------------------------------------------- runs


def score(ckpt: Path, ids, images, gt, gt_band, subject: str) -> dict:
    """Fluid Dice of every network in the checkpoint at native size (pooled and per B-scan)."""
    from octseg.checkpoint import load_networks
    from octseg.metrics import score_networks, segmentation_report

    nets, meta = load_networks(ckpt)
    names = ["background", "fluid"]
    vols = [subject] * len(ids)
    # predicted at native size (gt's), as the reference masks are
    reports, preds = score_networks(nets, meta, images, gt, volumes=vols, class_names=names, batch=4, tables=True,
                                    return_predictions=True)
    out = {}
    for weights, rep in reports.items():
        # the same predictions against the band-limited reference (see band_masks)
        band = segmentation_report(gt_band, preds[weights], 2, class_names=names, volumes=vols, tables=False)
        out[weights] = {
            "fluid_dice_pooled": rep["pooled"]["dice"]["fluid"],
            "fluid_dice_per_bscan": rep["per_bscan"]["dice"]["fluid"],
            "per_bscan_counted": (rep["per_bscan"].get("counted") or {}).get("fluid"),
            "fluid_precision_pooled": rep["pooled"]["precision"]["fluid"],
            "fluid_recall_pooled": rep["pooled"]["recall"]["fluid"],
            "band_fluid_dice_pooled": band["pooled"]["dice"]["fluid"],
            "band_fluid_dice_per_bscan": band["per_bscan"]["dice"]["fluid"],
            "per_bscan": {i: r["dice"]["fluid"] for i, r in zip(ids, rep.get("per_bscan_table") or [])},
            "default": weights == meta["default_weights"],
        }
    return out


def run_one(cfg, run_dir: Path) -> tuple[Path, dict]:
    """Train (or reuse/resume) one run; the last checkpoint is the one scored."""
    best, last, info = run_training(cfg, run_dir)
    return last, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data",
                    help="folder holding duke-dme-train/ and duke-subject01-unlabeled/ "
                         "(default: <repo>/../shared/data)")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/duke.json; "
                    "duke_quick.json with --quick)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="prepared data and run folders (default runs/bench-duke; runs/bench-duke-quick with --quick)")
    ap.add_argument("--test-subject", type=int, nargs="+", default=[5],
                    help="held-out subject(s), one fold each (2..5; subject 1 must train). Default 5")
    ap.add_argument("--labelled-subjects", type=int, nargs=2, default=None,
                    help="regime B's two labelled subjects (default: first and last training subject other than 1)")
    ap.add_argument("--minutes", type=float, default=20.0,
                    help="per-run wall-clock cap (trainer.max_minutes), a safety net: the default schedule "
                         "takes ~5.5 min supervised and ~14 min Mean Teacher on 2 idle cores (default 20)")
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's trainer.max_epochs (30)")
    ap.add_argument("--steps-per-epoch", type=int, default=None, help="override trainer.steps_per_epoch (25)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--band-margin", type=int, default=32,
                    help="columns (native pixels) either side of the reference fluid's extent for the secondary Dice")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    ap.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = ap.parse_args(argv)

    train_dir, unl_dir = args.shared / "duke-dme-train", args.shared / "duke-subject01-unlabeled"
    missing = [p for p in (train_dir, unl_dir) if not p.is_dir()]
    if missing:
        print(f"SKIP duke benchmark: {', '.join(map(str, missing))} not found (the Duke data lives in "
              f"../shared/data beside the checkout; pass --shared PATH)")
        return 0
    bad = [s for s in args.test_subject if s not in (2, 3, 4, 5)]
    if bad:
        ap.error(f"--test-subject {bad}: choose among 2..5 (subject 1 must train: its volume is the unlabelled data)")

    import torch

    torch.set_num_threads(args.threads)
    _quiet()
    from octseg.config import config_to_dict, load_config
    from octseg.data.prepare import ensure_prepared

    out_json = args.out or REPO / "benchmarks" / "results" / ("duke_quick.json" if args.quick else "duke.json")
    workdir = (args.workdir or Path("runs") / ("bench-duke-quick" if args.quick else "bench-duke")).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    base = load_config(RECIPE)
    size = QUICK["size"] if args.quick else list(base.data.size)
    epochs = args.epochs or (QUICK["max_epochs"] if args.quick else base.trainer.max_epochs)
    steps = args.steps_per_epoch or (QUICK["steps_per_epoch"] if args.quick else base.trainer.steps_per_epoch)

    t_all = time.time()
    cache = workdir / "prepared"
    ds = ensure_prepared(train_dir, tuple(size), cache_dir=cache, progress=False)
    unl = ensure_prepared(unl_dir, tuple(size), cache_dir=cache, progress=False)
    subjects = sorted({s.volume for s in ds.slices})
    print(f"Duke DME: {len(ds)} annotated B-scans of {subjects}, + {len(unl)} unlabelled B-scans of subject 1; "
          f"prepared at {size[0]}x{size[1]} in {cache}")

    common = [f"data.path={ds.path}", f"data.size=[{size[0]},{size[1]}]", f"seed={args.seed}",
              f"trainer.max_epochs={epochs}", f"trainer.steps_per_epoch={steps}",
              f"trainer.val_every_n_epochs={epochs}", "trainer.progress=false",
              f"trainer.max_minutes={args.minutes}", *args.overrides]
    folds: dict = {}
    for t in args.test_subject:
        test = subject_id(t)
        train_subj = [s for s in subjects if s != test]
        if args.labelled_subjects:
            lab_b = [subject_id(s) for s in args.labelled_subjects]
        else:
            others = [s for s in train_subj if s != "S01"]
            lab_b = [others[0], others[-1]]
        if any(s not in train_subj for s in lab_b) or len(set(lab_b)) != 2:
            ap.error(f"--labelled-subjects {lab_b}: two distinct training subjects (not {test})")
        unl_b = [s for s in train_subj if s not in lab_b and s != "S01"]  # S01's frames come with the volume
        split_a = write_split(ds, f"duke-A-test{test}", train_subj, [], test,
                              f"regime A: all training subjects labelled; val = test = {test} (validated once, "
                              f"after the last epoch: no checkpoint selection on it)")
        split_b = write_split(ds, f"duke-B-test{test}-lab{''.join(s[1:] for s in lab_b)}", lab_b, unl_b, test,
                              f"regime B: {lab_b} labelled, {unl_b} + the subject-1 volume unlabelled; "
                              f"val = test = {test} (validated once, after the last epoch)")
        heldout = heldout_folder(train_dir, workdir, test)
        ids, images, gt = load_native(heldout)
        gt_band, band_cols = band_masks(gt, args.band_margin)
        runs_plan = [
            ("A", "supervised", split_a, []),
            ("B", "supervised", split_b, []),
            ("B", "mean_teacher", split_b, [f"data.extra_unlabelled=[{unl.path}]"]),
        ]
        fold = {"test_subject": test, "train_subjects": train_subj, "regime_B_labelled": lab_b,
                "regime_B_unlabelled": unl_b + ["subject-1 volume (61 B-scans)"],
                "heldout_folder": str(heldout), "band_columns_native": band_cols,
                "n_test_bscans": len(ids), "runs": {}}
        for regime, method, split, extra in runs_plan:
            key = f"{regime}-{method}"
            run_dir = workdir / f"test{test}" / key
            cfg = load_config(RECIPE, common + [f"data.split={split}", f"method.name={method}", *extra])
            cfg = dataclasses.replace(cfg, name=f"duke-{key}-test{test}")
            print(f"\n== fold test={test} | regime {regime} | {method} | split {split} -> {run_dir}")
            t0 = time.time()
            ckpt, info = run_one(cfg, run_dir)
            planned = epochs * steps
            if info.get("global_step", planned) < planned:
                print(f"  WARNING: stopped by the {args.minutes} min cap after {info.get('global_step')} of "
                      f"{planned} steps (the cosine schedule did not finish)")
            scores = score(ckpt, ids, images, gt, gt_band, test)
            best = run_dir / "checkpoints" / "best.ckpt"
            fold["runs"][key] = {
                "regime": regime, "method": method, "split": split, "run_dir": str(run_dir),
                "checkpoint_scored": str(ckpt), "best_ckpt_same_weights": best.is_file(),
                "planned_steps": planned, "train": info, "wall_seconds_incl_scoring": round(time.time() - t0, 1),
                "scores": scores, "config": config_to_dict(cfg),
            }
            print(f"  {time.time() - t0:.0f} s; fluid Dice on {test} (pooled): " + ", ".join(
                f"{w} {s['fluid_dice_pooled']:.3f}" for w, s in scores.items()))
        folds[test] = fold

    # ------------------------------------------------------------------ table and targets
    def fig(fold, key, weights, metric):
        s = fold["runs"][key]["scores"]
        s = s.get(weights) or s.get("student")
        v = s[metric]
        return float("nan") if v is None else v

    rows = []
    for test, fold in folds.items():
        for key, r in fold["runs"].items():
            for weights, s in r["scores"].items():
                lab = (f"all {len(fold['train_subjects'])} subjects" if r["regime"] == "A"
                       else "+".join(fold["regime_B_labelled"]))
                unl_txt = ("-" if r["method"] == "supervised"
                           else "+".join(fold["regime_B_unlabelled"][:-1] + ["S01 vol"]))
                f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
                rows.append([test, r["regime"], r["method"], weights, lab, unl_txt, f(s["fluid_dice_pooled"]),
                             f(s["fluid_dice_per_bscan"]), f(s["band_fluid_dice_pooled"]),
                             f"{r['train'].get('wall_seconds', r['train'].get('train_seconds', 0)) / 60:.1f}"])
    rows.append(["S06-S10", "-", PUBLISHED["method"], "-", "S01-S05 (55)", "-", f"{PUBLISHED['fluid_dice']:.2f}",
                 "-", "-", "-"])
    print(f"\nFluid Dice on the held-out subject(s), native 496x768, hard masks ({epochs} x {steps} steps, "
          f"input {size[0]}x{size[1]}, seed {args.seed}, last checkpoint):")
    print_table(["test", "regime", "method", "weights", "labelled", "unlabelled", "Dice pooled", "Dice per-B-scan",
                 "band Dice*", "train min"], rows)
    print(f"* secondary: columns outside the subject's reference fluid extent +-{args.band_margin} px ignored "
          f"(outside the graders' central band '0' means 'not annotated', so false positives there may be real "
          f"fluid). Published row: {PUBLISHED['protocol']}; a different protocol, context only.")

    mean = lambda xs: float(np.nanmean(xs)) if len(xs) else float("nan")  # noqa: E731
    a = mean([fig(f, "A-supervised", "student", "fluid_dice_pooled") for f in folds.values()])
    b_sup = mean([fig(f, "B-supervised", "student", "fluid_dice_pooled") for f in folds.values()])
    b_mt = mean([fig(f, "B-mean_teacher", "teacher", "fluid_dice_pooled") for f in folds.values()])
    b_mt_s = mean([fig(f, "B-mean_teacher", "student", "fluid_dice_pooled") for f in folds.values()])
    targets = {
        "all_labels_fluid_dice": {"target": f">= {TARGET_ALL_LABELS}", "value": a, "met": bool(a >= TARGET_ALL_LABELS)},
        "mean_teacher_gain": {"target": f"teacher >= supervised + {TARGET_MT_GAIN} (regime B)",
                              "value": b_mt - b_sup, "teacher": b_mt, "student": b_mt_s, "supervised": b_sup,
                              "met": bool(b_mt - b_sup >= TARGET_MT_GAIN)},
    }
    over = f" (mean over {len(folds)} folds)" if len(folds) > 1 else ""
    print(f"\nTarget: fluid Dice >= {TARGET_ALL_LABELS} with all labels{over}: {a:.3f} -> "
          f"{'met' if targets['all_labels_fluid_dice']['met'] else 'NOT met'}")
    print(f"Target: Mean Teacher >= supervised + {TARGET_MT_GAIN} on the same labels{over}: teacher {b_mt:.3f} vs "
          f"supervised {b_sup:.3f} ({b_mt - b_sup:+.3f}; student {b_mt_s:.3f}) -> "
          f"{'met' if targets['mean_teacher_gain']['met'] else 'NOT met'}")
    if args.quick:
        print("(--quick: a smoke run of a few steps; these figures mean nothing)")

    print("\nCheckpoints (best.ckpt = last.ckpt: validated once, after the final epoch); to re-score one:")
    for test, fold in folds.items():
        for key, r in fold["runs"].items():
            print(f"  octseg evaluate {r['checkpoint_scored']} {fold['heldout_folder']} --json /tmp/e.json")

    figures = {
        "settings": {
            "recipe": RECIPE, "overrides": common, "size": size, "epochs": epochs, "steps_per_epoch": steps,
            "minutes_cap": args.minutes, "seed": args.seed, "threads": args.threads, "quick": args.quick,
            "band_margin_px": args.band_margin, "test_subjects": [subject_id(t) for t in args.test_subject],
            "workdir": str(workdir), "shared": str(args.shared.resolve()),
            "protocol": "split by subject; val = test = held-out subject, validated only after the last epoch; "
                        "figures of last.ckpt at native 496x768",
        },
        "folds": folds,
        "summary": {"A_supervised": a, "B_supervised": b_sup, "B_mean_teacher_teacher": b_mt,
                    "B_mean_teacher_student": b_mt_s},
        "targets": targets,
        "published": PUBLISHED,
        "caveat": "Duke graders annotated a central band of each B-scan; outside it 0 means 'not annotated'. "
                  "band_* figures ignore columns outside the reference fluid's extent +- margin (secondary).",
        "total_seconds": round(time.time() - t_all, 1),
    }
    path = write_results(out_json, "duke", figures)
    print(f"\nwrote {path} ({(time.time() - t_all) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
