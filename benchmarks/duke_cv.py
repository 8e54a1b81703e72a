"""Cross-validation on Duke DME: single model vs fold ensemble, TTA off/on, from scratch vs a
pretrained encoder, with ``octseg.cv`` (what ``octseg cv`` runs).

Data (``--shared``, default ``<repo>/../shared/data``; the benchmark skips, exit 0, without it):
``duke-dme-train`` (55 annotated B-scans, subjects S01-S05, 0 = background, 1 = fluid).

Design: **nested** cross-validation, because an honest score of a fold ensemble on a subject needs
models that never saw it. Outer loop: each subject s of S01..S05 in turn (``--subjects``) is held
back (the recipe's test volume: in no inner fold). Inner loop: ``run_cv`` with K = 4 folds over the
other four subjects (``--select best``: inner fold j scores one subject, picks ``best.ckpt`` on the
next, trains on the remaining two). The four inner models never saw s, so on s we score

* **single model**: each inner model alone (its default network), mean over the four;
* **fold ensemble**: the four models' mean class probability (each model with its own intensity
  normalisation), argmax;
* both with flip TTA off and on, and the ensemble with the post-processing the inner CV chose on its
  own out-of-fold predictions (never on s; sizes scaled from the training size to native pixels);
* and, as the usual CV figure, the inner CV's out-of-fold Dice on the other four subjects.

Variants: ``scratch`` (``model.encoder_weights=none``) and, with ``--encoder-weights PATH``,
``pretrained`` (``model.encoder_weights=PATH``: an encoder file for ``MODEL``'s encoder, e.g. from
``octseg pretrain``); both run on the same folds and seed (paired).

Scores: fluid Dice of hard masks at the native 496x768 (nearest-neighbour resize), pooled over the
held-back subject's 11 B-scans (headline; secondary, ``<kind>_band``: the same with columns outside
the subject's reference fluid extent +- ``--band-margin`` ignored, as benchmarks/duke.py); mean ± sd
over outer subjects, and paired differences (ensemble - single, TTA on - off, pretrained - scratch)
with their 95 % t-interval over subjects.

Cost: 5 outer subjects x 4 inner folds = 20 training runs per variant, each ``--epochs`` x
``--steps-per-epoch`` at ``--size`` (the recipe's ResNet18 U-Net at 128x192: 0.64 s a step on 2 CPU cores,
~4 min a run).

    python benchmarks/duke_cv.py                                  # scratch only, all 5 subjects
    python benchmarks/duke_cv.py --encoder-weights runs/pretrain/encoder.pt
    python benchmarks/duke_cv.py --quick                          # smoke run (figures mean nothing)
    # two processes on one workdir (one variant each), then one run that re-scores both and pairs them:
    python benchmarks/duke_cv.py --variants scratch --threads 1 & \
    python benchmarks/duke_cv.py --variants pretrained --encoder-weights ENC --threads 1; wait
    python benchmarks/duke_cv.py --encoder-weights ENC
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import (ci_text, fmt, mean_sd, paired, print_table, quiet_lightning, save_split,  # noqa: E402
                                spread, write_results)
from benchmarks.duke import SUBJECTS, band_masks, load_native, subject_folder  # noqa: E402
from benchmarks.label_efficiency import MODEL  # noqa: E402

RECIPE = "duke"
INNER_FOLDS = 4
SIZE = (128, 192)
EPOCHS, STEPS = 10, 30
NAMES = ["background", "fluid"]
QUICK = {"size": [64, 96], "epochs": 1, "steps_per_epoch": 2, "subjects": ["S02"]}
KINDS = ("single", "single_tta", "ensemble", "ensemble_tta", "ensemble_tta_pp")
BAND_KINDS = tuple(f"{k}_band" for k in KINDS)  # secondary: columns outside the graders' estimated band ignored
VARIANTS = ("scratch", "pretrained")


def fluid_dice(gt: np.ndarray, pred: np.ndarray) -> float:
    from octseg.metrics import segmentation_report

    rep = segmentation_report(gt, pred, 2, class_names=NAMES, hd95="off", tables=False)
    return rep["pooled"]["dice"]["fluid"]


def score_subject(cv_dir: Path, cv: dict, images: np.ndarray, gt: np.ndarray, train_size, device: str,
                  gt_band: np.ndarray) -> dict:
    """Fluid Dice on the held-back subject of every inner model, of their ensemble, TTA off/on; each
    also as ``<kind>_band`` against ``gt_band`` (columns outside the graders' estimated band ignored)."""
    from octseg.checkpoint import load_network
    from octseg.inference.postprocess import remove_small_components, scale_min_sizes
    from octseg.inference.predictor import Predictor

    members = [load_network(cv_dir / c, device=device) for c in cv["checkpoints"]]
    out: dict = {}
    for tta in (False, True):
        probs = [Predictor(net, meta, device=device, tta=tta).predict_proba(images) for net, meta in members]
        labels = [p.argmax(1).astype(np.uint8) for p in probs]
        single = [fluid_dice(gt, lab) for lab in labels]
        ens = np.mean(probs, axis=0).argmax(1).astype(np.uint8)
        sfx = "_tta" if tta else ""
        out["single" + sfx] = float(np.mean(single))
        out["single_members" + sfx] = single
        out["single" + sfx + "_band"] = float(np.mean([fluid_dice(gt_band, lab) for lab in labels]))
        out["ensemble" + sfx] = fluid_dice(gt, ens)
        out["ensemble" + sfx + "_band"] = fluid_dice(gt_band, ens)
        if tta:
            sizes = scale_min_sizes({int(c): s for c, s in cv["postprocessing"]["min_sizes"].items()},
                                    train_size, gt.shape)  # training pixels -> native pixels
            pp = remove_small_components(ens, sizes) if sizes else ens
            out["ensemble_tta_pp"], out["ensemble_tta_pp_band"] = fluid_dice(gt, pp), fluid_dice(gt_band, pp)
            out["min_sizes_native"] = sizes
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data",
                    help="folder holding duke-dme-train/")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/duke_cv.json)")
    ap.add_argument("--workdir", type=Path, default=None, help="prepared data and CV folders "
                                                               "(default runs/bench-duke-cv)")
    ap.add_argument("--subjects", nargs="+", default=None, help=f"outer held-back subjects (default all of "
                                                                f"{SUBJECTS})")
    ap.add_argument("--encoder-weights", type=Path, default=None,
                    help="also run the 'pretrained' variant with model.encoder_weights=PATH")
    ap.add_argument("--variants", nargs="+", default=None, choices=VARIANTS,
                    help="default: scratch, and pretrained with --encoder-weights (one variant per process lets two "
                         "processes share a --workdir; a last run with both re-scores the finished folds)")
    ap.add_argument("--band-margin", type=int, default=32,
                    help="columns (native pixels) either side of the reference fluid's extent for the band Dice")
    ap.add_argument("--method", default="supervised", help="method.name of every run (default supervised)")
    ap.add_argument("--size", type=int, nargs=2, default=None, help=f"training input H W (default {SIZE})")
    ap.add_argument("--epochs", type=int, default=None, help=f"default {EPOCHS}")
    ap.add_argument("--steps-per-epoch", type=int, default=None, help=f"default {STEPS}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="device for scoring (training: the recipe's accelerator)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    ap.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = ap.parse_args(argv)

    train_dir = args.shared / "duke-dme-train"
    if not train_dir.is_dir():
        print(f"SKIP duke_cv benchmark: {train_dir} not found (the data lives in ../shared/data beside the "
              f"checkout; pass --shared PATH)")
        return 0
    if args.encoder_weights is not None and not args.encoder_weights.is_file():
        ap.error(f"--encoder-weights {args.encoder_weights}: no such file")
    q = args.quick
    subjects = args.subjects or (QUICK["subjects"] if q else SUBJECTS)
    if any(s not in SUBJECTS for s in subjects):
        ap.error(f"--subjects {subjects}: choose among {SUBJECTS}")
    size = args.size or (QUICK["size"] if q else list(SIZE))
    epochs = args.epochs or (QUICK["epochs"] if q else EPOCHS)
    steps = args.steps_per_epoch or (QUICK["steps_per_epoch"] if q else STEPS)
    variants = {"scratch": "none"}
    if args.encoder_weights is not None:
        variants["pretrained"] = str(args.encoder_weights.resolve())
    if args.variants is not None:
        if "pretrained" in args.variants and args.encoder_weights is None:
            ap.error("--variants pretrained needs --encoder-weights PATH")
        variants = {v: w for v, w in variants.items() if v in args.variants}

    import torch

    torch.set_num_threads(args.threads)
    quiet_lightning()
    from octseg.config import load_config
    from octseg.data.prepare import ensure_prepared
    from octseg.inference.predictor import resolve_device
    from octseg.cv import run_cv

    sfx = "_quick" if q else ""
    out_json = args.out or REPO / "benchmarks" / "results" / f"duke_cv{sfx}.json"
    workdir = (args.workdir or Path("runs") / f"bench-duke-cv{sfx.replace('_', '-')}").absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    t_all = time.time()
    ds = ensure_prepared(train_dir, tuple(size), cache_dir=workdir / "prepared", progress=False)
    ids_of: dict[str, list[str]] = {}
    for s in ds.slices:
        ids_of.setdefault(s.volume, []).append(s.id)
    native = {s: load_native(subject_folder(train_dir, workdir, s)) for s in subjects}
    print(f"Duke DME: {len(ds)} annotated B-scans of {SUBJECTS} at {size[0]}x{size[1]}; outer subjects {subjects}, "
          f"inner {INNER_FOLDS}-fold CV; variants {list(variants)}; {epochs} x {steps} steps, {args.method}")

    per_subject = []
    for variant, weights in variants.items():
        for s in subjects:
            others = [v for v in SUBJECTS if v != s]
            split = save_split(ds, f"dukecv-outer-{s}", {"labelled": [i for v in others for i in ids_of[v]],
                                                         "unlabelled": [], "val": [], "test": list(ids_of[s])},
                               {"labelled": others, "unlabelled": [], "val": [], "test": [s], "train": others},
                               f"duke_cv outer fold: {s} held back from the inner CV", seed=args.seed)
            cfg = load_config(RECIPE, [f"data.path={ds.path}", f"data.size=[{size[0]},{size[1]}]",
                                       f"data.split={split}", *MODEL, f"method.name={args.method}",
                                       f"model.encoder_weights={weights}", f"seed={args.seed}",
                                       f"trainer.max_epochs={epochs}", f"trainer.steps_per_epoch={steps}",
                                       "trainer.progress=false", f"name=duke-cv-{variant}-{s}",
                                       *(["trainer.precision=32"] if q else []), *args.overrides])
            cv_dir = workdir / variant / f"outer-{s}"
            print(f"\n{variant}, {s} held back -> {cv_dir}", flush=True)
            t0 = time.time()
            res = run_cv(cfg, cv_dir, folds=INNER_FOLDS, recipe=RECIPE, resume=True, device=device)
            assert s in res.cv["test_volumes"] and all(s not in f for f in res.cv["fold_volumes"])
            ids, images, gt = native[s]
            scores = score_subject(cv_dir, res.cv, images, gt, size, device, band_masks(gt, args.band_margin))
            inner = res.summary["raw"]["mean"]["dice"]["fluid"]
            per_subject.append({"variant": variant, "subject": s, "cv_dir": str(cv_dir),
                                "inner_cv_fluid_dice": inner, "inner_cv": res.summary, "scores": scores,
                                "seconds": round(time.time() - t0, 1)})
            print(f"  {time.time() - t0:.0f} s; fluid Dice on {s}: single {scores['single']:.3f} "
                  f"(TTA {scores['single_tta']:.3f}), ensemble {scores['ensemble']:.3f} "
                  f"(TTA {scores['ensemble_tta']:.3f}); inner CV {fmt(inner)}")

    def of(variant, key):
        return {r["subject"]: (r["scores"][key] if key in r["scores"] else r[key]) for r in per_subject
                if r["variant"] == variant}

    summary, rows = {}, []
    for variant in variants:
        v = {k: spread(of(variant, k).values()) for k in ("inner_cv_fluid_dice", *KINDS, *BAND_KINDS)}
        pairs = {"ensemble - single": ("ensemble", "single"), "ensemble_tta - single_tta": ("ensemble_tta", "single_tta"),
                 "ensemble_tta - ensemble": ("ensemble_tta", "ensemble"), "single_tta - single": ("single_tta", "single"),
                 "ensemble_tta_pp - ensemble_tta": ("ensemble_tta_pp", "ensemble_tta")}
        v["paired"] = {name: paired([of(variant, a)[s] - of(variant, b)[s] for s in subjects])
                       for name, (a, b) in pairs.items()}
        summary[variant] = v
        rows += [[variant, k, mean_sd(v[k])] for k in ("inner_cv_fluid_dice", *KINDS, *BAND_KINDS)]
        rows += [[variant, name, f"{fmt(p['mean'], sign=True)} {ci_text(p)}"] for name, p in v["paired"].items()]
    if {"pretrained", "scratch"} <= set(variants):
        summary["pretrained - scratch"] = {k: paired([of("pretrained", k)[s] - of("scratch", k)[s] for s in subjects])
                                           for k in KINDS}
        rows += [["pretrained - scratch", k, f"{fmt(p['mean'], sign=True)} {ci_text(p)}"]
                 for k, p in summary["pretrained - scratch"].items()]
    print(f"\nFluid Dice on the held-back Duke subject at native 496x768 (pooled over its B-scans; mean ± sd over "
          f"subjects {subjects}); inner {INNER_FOLDS}-fold CV per subject; {epochs} x {steps} steps at "
          f"{size[0]}x{size[1]}, seed {args.seed}; differences paired by subject with 95 % t-interval:")
    print_table(["variant", "figure", "value"], rows)
    if q:
        print("QUICK SMOKE TEST: a smoke run; these figures mean nothing")

    path = write_results(out_json, "duke_cv", {
        "quick": q,
        "settings": {"recipe": RECIPE, "model": MODEL, "size": size, "epochs": epochs, "steps_per_epoch": steps,
                     "seed": args.seed, "method": args.method, "subjects": subjects, "inner_folds": INNER_FOLDS,
                     "band_margin_px": args.band_margin,
                     "variants": variants, "overrides": args.overrides, "workdir": str(workdir),
                     "design": "nested CV: the held-back subject is in no inner fold; each inner model selects "
                               "best.ckpt on another inner fold; the ensemble averages the 4 inner models' "
                               "probabilities (each with its own normalisation)",
                     "metric": "fluid Dice of hard masks at native 496x768, pooled over the held-back subject's "
                               "B-scans"},
        "summary": summary, "per_subject": per_subject, "total_seconds": round(time.time() - t_all, 1)})
    print(f"\nwrote {path} ({(time.time() - t_all) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
