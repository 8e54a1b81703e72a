"""Cross-validation on Duke DME: single model vs fold ensemble, TTA off/on, from scratch vs a
pretrained encoder, with ``octseg.cv`` (what ``octseg cv`` runs).

Data (``--shared``, default ``<repo>/../shared/data``; the benchmark skips, exit 0, without it):
``duke-dme-train`` (55 annotated B-scans, subjects S01-S05, 0 = background, 1 = fluid).

Design: **nested** cross-validation, because an honest score of a fold ensemble on a subject needs
models that never saw it. Outer loop: each subject s of S01..S05 in turn (``--subjects``) is held
back (the recipe's test volume: in no inner fold). Inner loop: ``run_cv`` with K = 4 folds over the
other four subjects (``--select best``, the default: inner fold j scores one subject, picks
``best.ckpt`` on the next, trains on the remaining two; ``--select last``, as nnU-Net: trains on the
three others and keeps the final weights). The four inner models never saw s, so on s we score

* **single model**: each inner model alone (its default network), mean over the four;
* **fold ensemble**: the four models' mean class probability (each model with its own intensity
  normalisation), argmax;
* both with flip TTA off and on, and the ensemble with the post-processing the inner CV chose on its
  own out-of-fold predictions (never on s; sizes scaled from the training size to native pixels);
* and, as the usual CV figure, the inner CV's out-of-fold Dice on the other four subjects.

Variants: ``scratch`` (``model.encoder_weights=none``) and, per ``--encoder-weights [NAME=]PATH``,
``NAME`` (default ``pretrained``; ``model.encoder_weights=PATH``: an encoder file for the recipe's
encoder, e.g. from ``octseg pretrain``); all run on the same folds and seed (paired). With several
encoders (one per pretraining objective, say) the objective is also **chosen as a user would**:
for each held-back subject, the encoder whose inner CV scored best (never the subject itself), and
that choice's paired difference to scratch (``selected - scratch``).

Scores: fluid Dice of hard masks at the native 496x768 (class probabilities resized, then argmax, as
``octseg predict`` does), pooled over the
held-back subject's 11 B-scans (headline; secondary, ``<kind>_band``: the same with columns outside
the subject's reference fluid extent +- ``--band-margin`` ignored, as benchmarks/duke.py); mean ± sd
over outer subjects, and paired differences (ensemble - single, TTA on - off, NAME - scratch)
with their 95 % t-interval over subjects.

Cost: 5 outer subjects x 4 inner folds = 20 training runs per variant, each ``--epochs`` x
``--steps-per-epoch`` at ``--size`` (the recipe's ResNet18 U-Net at 128x192, 10 x 24 steps: ~80 s a
run with two 1-thread processes on a 2-core CPU with native bf16, so ~14 min of the whole machine per
variant); ``--pretrain`` adds 5-10 min per objective (600 steps). Finished inner runs and encoders
are reused, so an interrupted or extended benchmark (a new variant) only trains what is missing.

    python benchmarks/duke_cv.py --pretrain synthetic mim denoise  # the committed results (~70 min, bf16 CPU)
    python benchmarks/duke_cv.py --pretrain mim --select last      # -> results/duke_cv_select_last.json (~30 min)
    python benchmarks/duke_cv.py                                  # scratch only, all 5 subjects
    python benchmarks/duke_cv.py --encoder-weights runs/pretrain/encoder.pt
    python benchmarks/duke_cv.py --encoder-weights mim=runs/enc-mim.pth --encoder-weights synthetic=runs/enc-syn.pth
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
from benchmarks._common import (ci_text, encoder_variants, fmt, mean_sd, paired, print_table,  # noqa: E402
                                quiet_lightning, save_split, spread, write_results)
from benchmarks._pool_pretrain import pretrain_encoder, small_kermany  # noqa: E402
from benchmarks.duke import SUBJECTS, band_masks, load_native, subject_folder  # noqa: E402
from benchmarks.label_efficiency import MODEL  # noqa: E402

RECIPE = "duke"
INNER_FOLDS = 4
SIZE = (128, 192)
EPOCHS, STEPS = 10, 24  # validation Dice plateaus by epoch 5-8 (measured)
NAMES = ["background", "fluid"]
QUICK = {"size": [64, 96], "epochs": 1, "steps_per_epoch": 2, "subjects": ["S02"]}
OBJECTIVES = ("synthetic", "mim", "denoise")
#: --pretrain: batches of 8 B-scans (mim, denoise: the 1,000 Kermany B-scans; synthetic: 48 octseg synth volumes)
PRETRAIN = {"steps": 600, "batch": 8, "volumes": 48, "slices": 12, "kermany": None}
QUICK_PRETRAIN = {"steps": 2, "batch": 2, "volumes": 2, "slices": 2, "kermany": 8}
KINDS = ("single", "single_tta", "ensemble", "ensemble_tta", "ensemble_tta_pp")
BAND_KINDS = tuple(f"{k}_band" for k in KINDS)  # secondary: columns outside the graders' estimated band ignored


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


def default_paths(quick: bool, select: str) -> tuple[Path, Path]:
    """The results JSON and workdir of a run: smoke runs and ``--select last`` get their own, so neither
    overwrites the committed figures nor meets inner CVs of the other kind (which resume refuses)."""
    sfx = ("_quick" if quick else "") + ("_select_last" if select == "last" else "")
    workdir = Path("runs") / f"bench-duke-cv{sfx.replace('_', '-')}"
    return REPO / "benchmarks" / "results" / f"duke_cv{sfx}.json", workdir


def train_seconds(cv_dir: Path, folds: int) -> float:
    """Seconds the inner runs of ``cv_dir`` spent training (their ``metrics.json``), however long ago they
    ran: a re-scoring run reuses them, so its own wall clock says nothing about the benchmark's cost."""
    from octseg.io.outputs import read_json_object

    docs = [read_json_object(cv_dir / f"fold_{k}" / "metrics.json") or {} for k in range(folds)]
    return float(sum(d.get("train_seconds", 0.0) for d in docs))


def summarise(per_subject: list[dict], variants: list[str], subjects: list[str]) -> tuple[dict, list]:
    """Per variant: mean ± sd over subjects and the paired within-variant differences; per pretrained
    variant its paired difference to scratch; with several, the encoder chosen per subject on its inner CV."""

    def of(variant, key):
        return {r["subject"]: (r["scores"][key] if key in r["scores"] else r[key]) for r in per_subject
                if r["variant"] == variant}

    summary, rows = {}, []
    for variant in variants:
        v = {k: spread(of(variant, k).values()) for k in ("inner_cv_fluid_dice", *KINDS, *BAND_KINDS)}
        pairs = {"ensemble - single": ("ensemble", "single"),
                 "ensemble_tta - single_tta": ("ensemble_tta", "single_tta"),
                 "ensemble_tta - ensemble": ("ensemble_tta", "ensemble"),
                 "single_tta - single": ("single_tta", "single"),
                 "ensemble_tta_pp - ensemble_tta": ("ensemble_tta_pp", "ensemble_tta")}
        v["paired"] = {name: paired([of(variant, a)[s] - of(variant, b)[s] for s in subjects])
                       for name, (a, b) in pairs.items()}
        summary[variant] = v
        rows += [[variant, k, mean_sd(v[k])] for k in ("inner_cv_fluid_dice", *KINDS, *BAND_KINDS)]
        rows += [[variant, name, f"{fmt(p['mean'], sign=True)} {ci_text(p)}"] for name, p in v["paired"].items()]
    pretrained = [v for v in variants if v != "scratch"]
    if "scratch" in variants and pretrained:
        scratch = {k: of("scratch", k) for k in KINDS}
        for v in pretrained:
            summary[f"{v} - scratch"] = {k: paired([of(v, k)[s] - scratch[k][s] for s in subjects]) for k in KINDS}
        if len(pretrained) > 1:  # which encoder, chosen per held-back subject on its inner CV only (nested)
            inner = {v: of(v, "inner_cv_fluid_dice") for v in pretrained}
            chosen = {s: max(pretrained, key=lambda v: inner[v][s]) for s in subjects}
            summary["selected_encoder"] = chosen
            rows.append(["selected encoder", "by inner CV", ", ".join(f"{s}: {v}" for s, v in chosen.items())])
            summary["selected - scratch"] = {k: paired([of(chosen[s], k)[s] - scratch[k][s] for s in subjects])
                                             for k in KINDS}
        rows += [[name, k, f"{fmt(p['mean'], sign=True)} {ci_text(p)}"] for name, diffs in summary.items()
                 if name.endswith(" - scratch") for k, p in diffs.items()]
    return summary, rows


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
    ap.add_argument("--encoder-weights", action="append", default=[], metavar="[NAME=]PATH",
                    help="also run variant NAME (default 'pretrained') with model.encoder_weights=PATH; repeatable, "
                         "e.g. one encoder per octseg pretrain objective")
    ap.add_argument("--pretrain", nargs="+", default=[], choices=OBJECTIVES, metavar="OBJECTIVE",
                    help="also pretrain the recipe's encoder with each octseg pretrain objective (Kermany B-scans "
                         "or synthetic volumes, never Duke) into WORKDIR/encoders/ (reused when made with the same "
                         "settings) and run it as variant OBJECTIVE")
    ap.add_argument("--pretrain-steps", type=int, default=None, help=f"default {PRETRAIN['steps']}")
    ap.add_argument("--variants", nargs="+", default=None, metavar="VARIANT",
                    help="run only these of scratch and the --encoder-weights names (one variant per process lets "
                         "processes share a --workdir; a last run with all of them re-scores the finished folds)")
    ap.add_argument("--band-margin", type=int, default=32,
                    help="columns (native pixels) either side of the reference fluid's extent for the band Dice")
    ap.add_argument("--method", default="supervised", help="method.name of every run (default supervised)")
    ap.add_argument("--size", type=int, nargs=2, default=None, help=f"training input H W (default {SIZE})")
    ap.add_argument("--epochs", type=int, default=None, help=f"default {EPOCHS}")
    ap.add_argument("--steps-per-epoch", type=int, default=None, help=f"default {STEPS}")
    ap.add_argument("--select", choices=["best", "last"], default="best",
                    help="inner folds: best.ckpt chosen on another inner fold (default), or the final weights of "
                         "training on all three other subjects (as octseg cv --select)")
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
    try:
        encoders = encoder_variants(args.encoder_weights)
    except ValueError as e:
        ap.error(str(e))
    q = args.quick
    kermany = args.shared / "kermany-oct2017-test"
    if {"mim", "denoise"} & set(args.pretrain) and not kermany.is_dir():
        ap.error(f"--pretrain mim/denoise pretrain on {kermany}, which is not there")
    if set(args.pretrain) & set(encoders):
        ap.error(f"--pretrain {' '.join(args.pretrain)}: variant names also given to --encoder-weights")
    default_json, default_workdir = default_paths(q, args.select)
    out_json = args.out or default_json
    workdir = (args.workdir or default_workdir).absolute()
    pretrain = {o: workdir / "encoders" / f"{o}.pth" for o in args.pretrain}
    subjects = args.subjects or (QUICK["subjects"] if q else SUBJECTS)
    if any(s not in SUBJECTS for s in subjects):
        ap.error(f"--subjects {subjects}: choose among {SUBJECTS}")
    size = args.size or (QUICK["size"] if q else list(SIZE))
    epochs = args.epochs or (QUICK["epochs"] if q else EPOCHS)
    steps = args.steps_per_epoch or (QUICK["steps_per_epoch"] if q else STEPS)
    variants = {"scratch": "none", **{name: str(path.resolve()) for name, path in {**pretrain, **encoders}.items()}}
    if args.variants is not None:
        unknown = [v for v in args.variants if v not in variants]
        if unknown:
            ap.error(f"--variants {' '.join(unknown)}: not among {list(variants)} (a pretrained variant needs "
                     f"--pretrain OBJECTIVE or --encoder-weights NAME=PATH)")
        variants = {v: w for v, w in variants.items() if v in args.variants}

    import torch

    torch.set_num_threads(args.threads)
    quiet_lightning()
    from octseg.config import load_config
    from octseg.data.prepare import ensure_prepared
    from octseg.inference.predictor import resolve_device
    from octseg.cv import run_cv

    workdir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    t_all = time.time()
    pretraining = {}
    if any(o in variants for o in pretrain):  # the recipe's own network, at the training size
        net = load_config(RECIPE, [*MODEL]).model
        model = {"encoder": net.encoder, "encoder_depth": net.encoder_depth, "decoder_channels": net.decoder_channels}
        n = QUICK_PRETRAIN if q else PRETRAIN
        pool = small_kermany(kermany, workdir, n["kermany"]) if q and kermany.is_dir() else kermany
        for o, path in pretrain.items():
            if o in variants:
                print(f"pretraining the {net.encoder} encoder: {o}, {args.pretrain_steps or n['steps']} steps at "
                      f"{size[0]}x{size[1]}", flush=True)
                pretraining[o] = pretrain_encoder(o, path, pool, size, model, args.pretrain_steps or n["steps"],
                                                  n["batch"], n["volumes"], n["slices"], workdir / "pretrain-cache")
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
            res = run_cv(cfg, cv_dir, folds=INNER_FOLDS, recipe=RECIPE, resume=True, select=args.select,
                         device=device)
            assert s in res.cv["test_volumes"] and all(s not in f for f in res.cv["fold_volumes"])
            ids, images, gt = native[s]
            scores = score_subject(cv_dir, res.cv, images, gt, size, device, band_masks(gt, args.band_margin))
            inner = res.summary["raw"]["mean"]["dice"]["fluid"]
            per_subject.append({"variant": variant, "subject": s, "cv_dir": str(cv_dir),
                                "inner_cv_fluid_dice": inner, "inner_cv": res.summary, "scores": scores,
                                "seconds": round(time.time() - t0, 1),
                                "train_seconds": round(train_seconds(cv_dir, INNER_FOLDS), 1)})
            print(f"  {time.time() - t0:.0f} s; fluid Dice on {s}: single {scores['single']:.3f} "
                  f"(TTA {scores['single_tta']:.3f}), ensemble {scores['ensemble']:.3f} "
                  f"(TTA {scores['ensemble_tta']:.3f}); inner CV {fmt(inner)}")

    summary, rows = summarise(per_subject, list(variants), subjects)
    print(f"\nFluid Dice on the held-back Duke subject at native 496x768 (pooled over its B-scans; mean ± sd over "
          f"subjects {subjects}); inner {INNER_FOLDS}-fold CV per subject; {epochs} x {steps} steps at "
          f"{size[0]}x{size[1]}, select {args.select}, seed {args.seed}; differences paired by subject with 95 % "
          f"t-interval:")
    print_table(["variant", "figure", "value"], rows)
    train_min = {v: sum(r["train_seconds"] for r in per_subject if r["variant"] == v) / 60 for v in variants}
    print("training time (sum of the inner runs' train_seconds, whenever they ran): "
          + ", ".join(f"{v} {m:.1f} min" for v, m in train_min.items())
          + "".join(f"; pretraining {o} {m['seconds'] / 60:.1f} min" for o, m in pretraining.items()
                    if m.get("seconds")))
    if q:
        print("QUICK SMOKE TEST: a smoke run; these figures mean nothing")

    path = write_results(out_json, "duke_cv", {
        "quick": q,
        "settings": {"recipe": RECIPE, "model": MODEL, "size": size, "epochs": epochs, "steps_per_epoch": steps,
                     "seed": args.seed, "method": args.method, "subjects": subjects, "inner_folds": INNER_FOLDS,
                     "select": args.select,
                     "band_margin_px": args.band_margin,
                     "variants": variants, "pretraining": pretraining, "overrides": args.overrides,
                     "workdir": str(workdir),
                     "design": "nested CV: the held-back subject is in no inner fold; each inner model selects "
                               "best.ckpt on another inner fold (select best) or trains on the 3 other inner "
                               "folds and keeps its final weights (select last); the ensemble averages the 4 "
                               "inner models' probabilities (each with its own normalisation)",
                     "metric": "fluid Dice of hard masks at native 496x768, pooled over the held-back subject's "
                               "B-scans"},
        "summary": summary, "per_subject": per_subject, "train_minutes_per_variant": train_min,
        "total_seconds": round(time.time() - t_all, 1)})
    print(f"\nwrote {path} ({(time.time() - t_all) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
