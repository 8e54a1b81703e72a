"""Real data: does semi-supervision pay on Duke DME? 1 or 2 labelled subjects, real unlabelled OCT,
scored on held-back subjects by rotation.

Data (``--shared``, default ``<repo>/../shared/data``; the benchmark skips, exit 0, without it):
``duke-dme-train`` (55 annotated B-scans, subjects S01-S05, 0 = background, 1 = fluid), the whole
subject-1 volume ``duke-subject01-unlabeled`` (61 B-scans) and ``kermany-oct2017-test`` (1,000
Spectralis B-scans of 633 patients, no masks; Kermany et al., Cell 2018, CC BY 4.0).

Rotations (``--rotations``, default all 5): the subjects in a ring S01..S05; rotation k tests on
subject k, selects checkpoints on subject k+1 (validation: never the scored subject), labels
subject k+2 (regime ``1s``) or subjects k+2 and k+3 (regime ``2s``); the remaining training
subjects' annotated B-scans are unlabelled, with the subject-1 volume (unless subject 1 tests or
validates: its volume holds those B-scans; when it trains, its annotated B-scans come with the
volume) and the Kermany pool. Regime ``all`` (a reference): supervised on all three training
subjects. Every method of ``octseg.methods`` plus ``supervised_strong`` (supervised with the strong
augmentation) runs on the same split, seed and labelled augmentation (paired runs); each is
compared with the better supervised baseline of its regime, chosen on validation Dice (mean over
rotations), never on the test subject. ``self_training[@ENCODER]`` learns from a frozen teacher: the same
rotation's ``supervised[@ENCODER]`` run, added to the plan and trained before it;
``self_training_weak_ens@ENCODER`` from the ensemble of that run and ``supervised@scratch`` (their mean probability).

Recipe: ``configs/duke.yaml`` (2 classes, dice+CE, AdamW cosine, flips and small affine) with its own
ResNet18 U-Net (the label-efficiency benchmark's ``MODEL`` overrides, none today) at ``--size``
(default 128x192, the B-scans' aspect ratio) for ``--epochs`` x ``--steps-per-epoch`` steps, validated
every epoch on the validation subject (``best.ckpt``, the checkpoint's default network: the teacher
for mean_teacher and bcp).

Scores: predictions at the native 496x768 (class probabilities resized, then argmax) against the
original masks, as ``octseg evaluate`` scores raw data; fluid Dice pooled over the test subject's
B-scans (headline), and, secondary, the same with columns outside the reference fluid's extent
+- ``--band-margin`` ignored (the graders annotated a central band only; outside it "0" means "not
annotated"). Statistics per regime and method: mean ± sd over rotations; paired difference to the
best supervised baseline, its mean and 95 % t-interval over rotations.

Targets (printed with the measured figures): best semi-supervised (chosen on validation) >= best
supervised + 0.05 fluid Dice at 1 labelled subject, + 0.03 at 2; Mean Teacher above supervised.

    python benchmarks/duke.py                         # 5 rotations x (2 regimes x 8 methods + 1): ~10 h on 2 cores
    python benchmarks/duke.py --rotations 1 2 --methods fixmatch
    python benchmarks/duke.py --quick                 # smoke run (figures mean nothing)

Encoders (``--encoder-weights NAME=PATH``, files written by ``octseg pretrain``): a method named
``METHOD@NAME`` starts from that encoder, ``METHOD@scratch`` from random weights, a bare ``METHOD`` from
the recipe's (and the overrides') ``model.encoder_weights``, and is classified by that file. Learning
from unlabelled B-scans is what is measured, whether it happens while training or before it: a
variant counts as semi-supervised when its method uses the unlabelled pool or its encoder was
pretrained on unlabelled B-scans (objective
``mim`` or ``denoise``, read from the file); a supervised method on an encoder pretrained on synthetic
volumes with their exact masks (objective ``synthetic``) or on weights of unknown origin is a
supervised baseline. So "pretrain on the pool, then fine-tune" competes as a semi-supervised method,
and each semi-supervised variant on a pretrained encoder is also compared with supervised training
on the same encoder (column "vs same enc."), which isolates what training on the pool adds:

    python benchmarks/duke.py --regimes 1s --encoder-weights mim=enc-mim.pth --encoder-weights synthetic=enc-syn.pth \\
        --methods supervised@scratch supervised_strong@scratch supervised@synthetic supervised@mim fixmatch@mim
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import (ENSEMBLE_TEACHERS, SUPERVISED, TEACHER_OF, add_keep_last, all_methods,  # noqa: E402
                                base_method, ci_text, encoder_variants, fmt, mean_sd, mean_teacher_target,
                                method_overrides, named_methods, paired, print_table, prune_last, quiet_lightning, rank_key,
                                run_training, save_split, spread, supervised_only, teacher_override,
                                validation_ties, write_results)
from benchmarks._plots import gain_figure, replot  # noqa: E402
from benchmarks.label_efficiency import MODEL  # noqa: E402

RECIPE = "duke"
SUBJECTS = ["S01", "S02", "S03", "S04", "S05"]
REGIMES = {"1s": 1, "2s": 2}
REFERENCE = "all"
TARGET_GAIN = {"1s": 0.05, "2s": 0.03}
SIZE = (128, 192)
EPOCHS, STEPS = 10, 30
PUBLISHED = {"method": "ReLayNet (Roy et al. 2017)", "fluid_dice": 0.77,
             "protocol": "trained on Duke subjects 1-5, tested on subjects 6-10 (not the protocol here)"}
QUICK = {"size": [64, 96], "epochs": 1, "steps_per_epoch": 2, "rotations": [2],
         "methods": ["supervised", "supervised_strong", "fixmatch"], "kermany": 40}


#: Pretraining objectives of ``octseg pretrain`` that learn from unlabelled B-scans.
UNLABELLED_OBJECTIVES = ("mim", "denoise")


def split_variant(name: str) -> tuple[str, str | None]:
    """``METHOD@ENCODER`` as (method, encoder name); a bare method name has encoder None."""
    method, sep, encoder = name.partition("@")
    return method, (encoder if sep else None)


def teachers_of(name: str) -> tuple:
    """The benchmark methods whose runs (same rotation and labels) teach ``name``, () for none:
    ``self_training@mim`` learns from ``supervised@mim``, a bare ``self_training`` from ``supervised``; a variant of
    ``ENSEMBLE_TEACHERS`` (``self_training_weak_ens@synthetic``) from the ensemble of that and
    ``supervised@scratch``."""
    method, encoder = split_variant(name)
    teacher = TEACHER_OF.get(base_method(method))
    if teacher is None:
        return ()
    own = teacher if encoder is None else f"{teacher}@{encoder}"
    scratch = f"{teacher}@scratch"
    return (own, scratch) if method in ENSEMBLE_TEACHERS and encoder not in (None, "scratch") else (own,)


def pretrained_on_unlabelled(path: Path) -> bool:
    """Whether an encoder file was pretrained on unlabelled B-scans (its ``octseg pretrain`` metadata
    names an unlabelled objective); files without that metadata count as supervised weights."""
    from octseg.models import read_weights_file

    meta = read_weights_file(path)[1] or {}
    return meta.get("objective") in UNLABELLED_OBJECTIVES


def unlabelled_use(name: str, unlabelled_encoders, bare_pretrained: bool = False) -> str:
    """'-', 'pretraining', 'training' or 'both': where variant ``name`` learns from unlabelled B-scans
    (``bare_pretrained``: a bare method name's encoder, from the overrides, was pretrained on them)."""
    method, encoder = split_variant(name)
    pre = bare_pretrained if encoder is None else encoder in unlabelled_encoders
    train = not supervised_only(method)  # supervised_fda uses the pool too
    return {(False, False): "-", (True, False): "pretraining", (False, True): "training",
            (True, True): "both"}[(pre, train)]


def rotation(k: int) -> dict:
    """Rotation ``k`` (1-based): test, validation, labelled (per regime) and unlabelled subjects."""
    ring = SUBJECTS[k - 1:] + SUBJECTS[:k - 1]
    test, val, rest = ring[0], ring[1], ring[2:]
    return {"test": test, "val": val, "train": sorted(rest),
            "labelled": {r: sorted(rest[:n]) for r, n in REGIMES.items()} | {REFERENCE: sorted(rest)}}


def write_split(ds, name: str, labelled, unlabelled, val: str, test: str, note: str) -> str:
    by_subject: dict[str, list[str]] = {}
    for s in ds.slices:
        by_subject.setdefault(s.volume, []).append(s.id)
    parts = {"labelled": [i for v in labelled for i in by_subject[v]],
             "unlabelled": [i for v in unlabelled for i in by_subject[v]],
             "val": list(by_subject[val]), "test": list(by_subject[test])}
    volumes = {"labelled": list(labelled), "unlabelled": list(unlabelled), "val": [val], "test": [test],
               "train": sorted([*labelled, *unlabelled])}
    return save_split(ds, name, parts, volumes, note, seed=0)


def subject_folder(train_dir: Path, workdir: Path, subject: str) -> Path:
    """WORKDIR/subject-SXX/{images,masks}: links to one subject's raw files, for `octseg evaluate`."""
    out = workdir / f"subject-{subject}"
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


def band_masks(gt: np.ndarray, margin: int) -> np.ndarray:
    """gt with 255 (ignored) outside [first fluid column - margin, last + margin] of the subject."""
    from octseg.data.label_band import unlabel_outside_fluid_band

    return unlabel_outside_fluid_band(gt, range(len(gt)), ["subject"] * len(gt), margin)[0]


def score(ckpt: Path, subjects: dict) -> dict:
    """Fluid Dice of the checkpoint's default network at native size, per subject part
    (``subjects``: part -> (ids, images, masks, band masks))."""
    from octseg.checkpoint import load_networks
    from octseg.metrics import score_networks, segmentation_report

    nets, meta = load_networks(ckpt)
    default = meta["default_weights"]
    names = ["background", "fluid"]
    out = {"weights": default}
    for part, (ids, images, gt, gt_band) in subjects.items():
        reps, preds = score_networks({default: nets[default]}, meta, images, gt, volumes="subject",
                                     class_names=names, batch=8, return_predictions=True)
        rep = reps[default]
        band = segmentation_report(gt_band, preds[default], 2, class_names=names, volumes="subject", tables=False)
        out[part] = {"fluid_dice": rep["pooled"]["dice"]["fluid"],
                     "fluid_dice_per_bscan": rep["per_bscan"]["dice"]["fluid"],
                     "precision": rep["pooled"]["precision"]["fluid"], "recall": rep["pooled"]["recall"]["fluid"],
                     "band_fluid_dice": band["pooled"]["dice"]["fluid"]}
    return out


def plot_results(png: Path, figures: dict) -> None:
    """The figure of a result (``figures`` of its JSON): each method's held-back-subject fluid Dice per regime
    (mean ± sd over rotations, each rotation faint), the all-training-subjects reference as a band, and each
    method's paired difference to the best supervised baseline against the regime's target."""
    s, summary = figures["settings"], figures["summary"]
    regimes = [r for r in s["regimes"] if r in summary]
    test = lambda r, m: summary[r][m]["test"]["fluid_dice"]  # noqa: E731
    ref = (figures.get("reference_all_training_subjects") or {}).get("test") or {}
    gain_figure(png, regimes, list(s["methods"]), score=lambda r, m: (test(r, m)["mean"], test(r, m)["sd"]),
                pairs=lambda m: [(r["regime"], r["scores"]["test"]["fluid_dice"]) for r in figures["runs"]
                                 if r["method"] == m],
                gain=lambda r, m: summary[r][m].get("vs_best_supervised"),
                target={r: TARGET_GAIN[r] for r in regimes if r in TARGET_GAIN},
                ticks=[f"{r}\n({REGIMES[r]} labelled subject{'s' if REGIMES[r] > 1 else ''})" for r in regimes],
                ylabel="test fluid Dice (pooled, native 496x768)", xlabel="regime",
                title="Duke DME, held-back subject (mean ± sd over rotations)"
                      + (" — quick smoke run" if s.get("quick") else ""),
                diff_title="Gain per method: mean, 95 % interval, each rotation",
                reference=(ref.get("mean"), ref.get("sd")), reference_label="supervised, all 3 training subjects",
                dashed=lambda m: s["unlabelled_use"].get(m) == "-")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data",
                    help="folder holding duke-dme-train/, duke-subject01-unlabeled/, kermany-oct2017-test/")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/duke.json)")
    ap.add_argument("--workdir", type=Path, default=None, help="prepared data and runs (default runs/bench-duke)")
    ap.add_argument("--rotations", type=int, nargs="+", default=None,
                    help="which of the 5 rotations (1-5: the test subject's number; default all)")
    ap.add_argument("--regimes", nargs="+", default=None, help=f"default {list(REGIMES)}")
    ap.add_argument("--methods", nargs="+", default=None,
                    help="default: every method + supervised_strong; METHOD@ENCODER starts from an encoder of "
                         "--encoder-weights (or @scratch)")
    ap.add_argument("--encoder-weights", action="append", default=[], metavar="NAME=PATH",
                    help="an encoder file (octseg pretrain) that METHOD@NAME variants start from (repeatable)")
    ap.add_argument("--no-reference", action="store_true", help="skip the all-training-subjects supervised run")
    ap.add_argument("--no-kermany", action="store_true", help="leave the Kermany pool out of the unlabelled data")
    ap.add_argument("--size", type=int, nargs=2, default=None, help=f"training input H W (default {SIZE})")
    ap.add_argument("--epochs", type=int, default=None, help=f"default {EPOCHS}")
    ap.add_argument("--steps-per-epoch", type=int, default=None, help=f"default {STEPS}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=30.0, help="per-run wall-clock cap (a safety net)")
    ap.add_argument("--band-margin", type=int, default=32,
                    help="columns (native pixels) either side of the reference fluid's extent for the band Dice")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    add_keep_last(ap)
    ap.add_argument("--plot", type=Path, default=None, help="figure (default: the JSON's name with .png)")
    ap.add_argument("--replot", type=Path, default=None, metavar="JSON",
                    help="only re-render the figure of a written result; trains and scores nothing")
    ap.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = ap.parse_args(argv)
    if args.replot is not None:
        return replot(ap, args.replot, args.plot, "duke", plot_results)

    train_dir = args.shared / "duke-dme-train"
    vol_dir = args.shared / "duke-subject01-unlabeled"
    kermany_dir = args.shared / "kermany-oct2017-test"
    missing = [p for p in (train_dir, vol_dir) + (() if args.no_kermany else (kermany_dir,)) if not p.is_dir()]
    if missing:
        print(f"SKIP duke benchmark: {', '.join(map(str, missing))} not found (the data lives in ../shared/data "
              f"beside the checkout; pass --shared PATH)")
        return 0
    q = args.quick
    rotations = args.rotations or (QUICK["rotations"] if q else list(range(1, 6)))
    if any(k not in range(1, 6) for k in rotations):
        ap.error(f"--rotations {rotations}: choose among 1..5")
    regimes = args.regimes or list(REGIMES)
    if any(r not in REGIMES for r in regimes):
        ap.error(f"--regimes {regimes}: choose among {list(REGIMES)}")
    known = named_methods()
    try:
        encoders = {"scratch": None} | encoder_variants(args.encoder_weights)
    except ValueError as exc:
        ap.error(str(exc))
    methods = list(dict.fromkeys(args.methods or (QUICK["methods"] if q else all_methods())))
    methods = list(dict.fromkeys([*(t for m in methods for t in teachers_of(m)), *methods]))  # teachers train first
    for m in methods:
        method, encoder = split_variant(m)
        if method not in known:
            ap.error(f"--methods {m}: choose among {known}")
        if encoder is not None and encoder not in encoders:
            ap.error(f"--methods {m}: no encoder {encoder!r}; name it with --encoder-weights {encoder}=PATH "
                     f"(known: {', '.join(encoders)})")
    unlabelled_encoders = {n for n, path in encoders.items() if path is not None and pretrained_on_unlabelled(path)}

    from octseg.config import config_to_dict, load_config

    bare = load_config(RECIPE, [*MODEL, *args.overrides]).model.encoder_weights  # what a bare method name starts from
    bare_pretrained = Path(bare).is_file() and pretrained_on_unlabelled(Path(bare))
    use = {m: unlabelled_use(m, unlabelled_encoders, bare_pretrained) for m in methods}
    if not any(use[m] == "-" for m in methods):  # every variant needs a supervised baseline to be compared with
        added = [f"{m}@scratch" for m in SUPERVISED]
        methods = [*added, *methods]
        use |= {m: "-" for m in added}
    baselines = [m for m in methods if use[m] == "-"]
    semi = [m for m in methods if use[m] != "-"]
    size = args.size or (QUICK["size"] if q else list(SIZE))
    epochs = args.epochs or (QUICK["epochs"] if q else EPOCHS)
    steps = args.steps_per_epoch or (QUICK["steps_per_epoch"] if q else STEPS)

    import torch

    torch.set_num_threads(args.threads)
    quiet_lightning()
    from octseg.data.prepare import ensure_prepared

    sfx = "_quick" if q else ""
    out_json = args.out or REPO / "benchmarks" / "results" / f"duke{sfx}.json"
    workdir = (args.workdir or Path("runs") / f"bench-duke{sfx.replace('_', '-')}").absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    cache = workdir / "prepared"
    ds = ensure_prepared(train_dir, tuple(size), cache_dir=cache, progress=False)
    vol = ensure_prepared(vol_dir, tuple(size), cache_dir=cache, progress=False)
    pool = []
    if not args.no_kermany:
        if q:  # a small pool for the smoke run: the first few files of each class folder, linked
            small = workdir / "kermany-small"
            for sub in sorted(p for p in kermany_dir.iterdir() if p.is_dir()):
                (small / sub.name).mkdir(parents=True, exist_ok=True)
                for src in sorted(sub.glob("*.jpeg"))[:QUICK["kermany"] // 4]:
                    if not (small / sub.name / src.name).exists():
                        (small / sub.name / src.name).symlink_to(src.resolve())
            kermany_dir = small
        pool.append(ensure_prepared(kermany_dir, tuple(size), cache_dir=cache, progress=False))
    print(f"Duke DME: {len(ds)} annotated B-scans of {SUBJECTS}; unlabelled pool: subject-1 volume ({len(vol)} "
          f"B-scans)" + (f" + Kermany ({len(pool[0])} B-scans)" if pool else "") + f"; prepared at {size[0]}x{size[1]}")

    native = {}
    for s in SUBJECTS:
        ids, images, gt = load_native(subject_folder(train_dir, workdir, s))
        native[s] = (ids, images, gt, band_masks(gt, args.band_margin))

    plan = [(k, r, m) for k in rotations for r in regimes for m in methods]
    if not args.no_reference:
        plan += [(k, REFERENCE, "supervised") for k in rotations]
    print(f"{len(plan)} runs of {epochs} x {steps} steps: rotations {rotations}, regimes {regimes}, methods {methods}")
    per_run = []
    for i, (k, regime, method) in enumerate(plan, 1):
        rot = rotation(k)
        lab = rot["labelled"][regime]
        unl = [s for s in rot["train"] if s not in lab and s != "S01"]  # S01's annotated frames come with the volume
        uses_vol = "S01" in rot["train"]
        split = write_split(ds, f"duke-r{k}-{regime}", lab, unl, rot["val"], rot["test"],
                            f"rotation {k}: test {rot['test']}, validation {rot['val']}, labelled {lab}")
        extra = [str(p.path) for p in ([vol] if uses_vol else []) + pool]
        run_dir = workdir / f"r{k}-{regime}" / method
        method_name, encoder = split_variant(method)
        weights = [] if encoder is None else [f"model.encoder_weights={encoders[encoder] or 'none'}"]
        teachers = [run_dir.parent / t for t in teachers_of(method)]
        if teachers:
            weights.append(teacher_override(teachers))
        cfg = load_config(RECIPE, [f"data.path={ds.path}", f"data.size=[{size[0]},{size[1]}]", f"data.split={split}",
                                   *MODEL, *method_overrides(method_name), f"seed={args.seed}",
                                   f"data.extra_unlabelled=[{','.join(extra)}]",
                                   f"trainer.max_epochs={epochs}", f"trainer.steps_per_epoch={steps}",
                                   "trainer.val_every_n_epochs=1", "trainer.progress=false",
                                   f"trainer.max_minutes={args.minutes}",
                                   f"name=duke-r{k}-{regime}-{method.replace('@', '-')}",
                                   f"method.mean_teacher.consistency_rampup_epochs={max(1, round(epochs / 4))}",
                                   *args.overrides, *weights])
        print(f"\n[{i}/{len(plan)}] rotation {k} (test {rot['test']}, val {rot['val']}), {regime}: labelled {lab}, "
              f"{method} -> {run_dir}", flush=True)
        t0 = time.time()
        ckpt, _, info = run_training(cfg, run_dir)
        scores = score(ckpt, {"val": native[rot["val"]], "test": native[rot["test"]]})
        prune_last(run_dir, args.keep_last)
        per_run.append({"rotation": k, "regime": regime, "method": method, "test_subject": rot["test"],
                        "val_subject": rot["val"], "labelled": lab, "unlabelled": unl + (["S01 volume"] if uses_vol
                                                                                       else []),
                        "run_dir": str(run_dir), "checkpoint": str(ckpt), "train": info,
                        "sec_per_step": (info.get("train_seconds") or 0) / max(1, info.get("global_step") or 1),
                        "scores": scores, "config": config_to_dict(cfg)})
        print(f"  {time.time() - t0:.0f} s; fluid Dice ({scores['weights']}): val {scores['val']['fluid_dice']:.3f}, "
              f"test {scores['test']['fluid_dice']:.3f} | elapsed {(time.time() - t_all) / 60:.1f} min")

    # ------------------------------------------------------------------ aggregate
    def runs_of(regime, method):
        return {r["rotation"]: r for r in per_run if r["regime"] == regime and r["method"] == method}

    def test_gain(mine: dict, ref: dict) -> dict:
        """``paired`` test fluid-Dice differences of two methods' runs, over the rotations both have."""
        return paired([mine[k]["scores"]["test"]["fluid_dice"] - ref[k]["scores"]["test"]["fluid_dice"]
                       for k in rotations if k in mine and k in ref])

    summary, baseline, best_semi = {}, {}, {}
    for regime in regimes:
        summary[regime] = {m: {part: {key: spread([r["scores"][part][key] for r in runs_of(regime, m).values()])
                                      for key in ("fluid_dice", "band_fluid_dice")} for part in ("val", "test")}
                           for m in methods}
        val_of = lambda m: rank_key(summary[regime][m]["val"]["fluid_dice"])  # noqa: E731
        baseline[regime] = max(baselines, key=val_of)   # chosen on validation, never on test
        best_semi[regime] = max(semi, key=val_of) if semi else None
        base = runs_of(regime, baseline[regime])
        for m in methods:
            mine = runs_of(regime, m)
            summary[regime][m]["vs_best_supervised"] = test_gain(mine, base)
            summary[regime][m]["sec_per_step"] = spread([r["sec_per_step"] for r in mine.values()])
            summary[regime][m]["unlabelled"] = use[m]
            encoder = split_variant(m)[1]
            same = "supervised" + ("" if encoder is None else f"@{encoder}")
            if use[m] != "-" and same != m and same in methods:  # what training on the pool adds to its encoder
                summary[regime][m]["vs_supervised_same_encoder"] = {"reference": same,
                                                                    **test_gain(mine, runs_of(regime, same))}
    reference = ({part: spread([r["scores"][part]["fluid_dice"] for r in runs_of(REFERENCE, "supervised").values()])
                  for part in ("val", "test")} if not args.no_reference else {})

    rows = []
    for regime in regimes:
        for m in methods:
            s = summary[regime][m]
            p = s["vs_best_supervised"]
            same = s.get("vs_supervised_same_encoder")
            rows.append([regime, m + (" *" if m == baseline[regime] else ""), use[m], mean_sd(s["val"]["fluid_dice"]),
                         mean_sd(s["test"]["fluid_dice"]), mean_sd(s["test"]["band_fluid_dice"]),
                         "-" if m == baseline[regime] else fmt(p["mean"], sign=True),
                         "-" if m == baseline[regime] else ci_text(p),
                         f"{fmt(same['mean'], sign=True)} {ci_text(same)}" if same else "",
                         fmt(s["sec_per_step"]["mean"], 2)])
    if reference:
        rows.append([REFERENCE, "supervised (3 subjects labelled)", "", mean_sd(reference["val"]),
                     mean_sd(reference["test"]), "", "", "", "", ""])
    print(f"\nFluid Dice on Duke DME at native 496x768 (pooled over the test subject's B-scans; mean ± sd over "
          f"rotations {rotations}); {epochs} x {steps} steps at {size[0]}x{size[1]}, seed {args.seed}; "
          f"* = the best supervised baseline (chosen on validation); diff = paired difference to it; unlabelled = "
          f"where a variant learns from unlabelled B-scans; vs same enc. = paired difference to supervised training "
          f"from the same encoder:")
    print_table(["regime", "method", "unlabelled", "val", "test", "test band*", "diff", "95 % CI", "vs same enc.",
                 "s/step"], rows)
    print(f"band*: secondary, columns outside the reference fluid's extent +-{args.band_margin} px ignored. "
          f"Context: {PUBLISHED['method']} {PUBLISHED['fluid_dice']} ({PUBLISHED['protocol']}).")

    targets = {}
    for regime in regimes:
        b = best_semi[regime]
        if b is None:
            continue
        p = summary[regime][b]["vs_best_supervised"]
        met = bool(p["mean"] is not None and p["mean"] >= TARGET_GAIN[regime])
        targets[f"semi_gain_at_{regime}"] = {"target": f">= {TARGET_GAIN[regime]}", "best_semi": b,
                                             "baseline": baseline[regime], "gain": p["mean"], "ci95": p["ci95"],
                                             "met": met}
        print(f"Target: best semi-supervised ({b}, chosen on validation) >= best supervised ({baseline[regime]}) + "
              f"{TARGET_GAIN[regime]} at {regime} -> {'met' if met else 'NOT met'} (gain {fmt(p['mean'], sign=True)}, "
              f"CI {ci_text(p)})")
        validation_ties(summary[regime], b, semi, "fluid_dice", targets[f"semi_gain_at_{regime}"])
    teachers = [m for m in methods if base_method(split_variant(m)[0]) == "mean_teacher"]
    if teachers:
        targets["mean_teacher_above_supervised"] = mean_teacher_target(summary, regimes, teachers, "fluid_dice")
    if q:
        print("(--quick: a smoke run; these figures mean nothing)")

    figures = {
        "settings": {"recipe": RECIPE, "model": MODEL, "size": size, "epochs": epochs, "steps_per_epoch": steps,
                     "seed": args.seed, "rotations": {k: rotation(k) for k in rotations}, "regimes": regimes,
                     "methods": methods, "encoders": {n: str(p) if p else None for n, p in encoders.items()},
                     "unlabelled_use": use, "kermany": not args.no_kermany, "band_margin_px": args.band_margin,
                     "threads": args.threads, "quick": q, "overrides": args.overrides, "workdir": str(workdir),
                     "checkpoint": "best.ckpt selected on the validation subject; the checkpoint's default network",
                     "metric": "fluid Dice of hard masks at native 496x768, pooled over the test subject's B-scans",
                     "interval": "paired per-rotation differences, mean ± t(0.975, n-1) sd / sqrt(n)"},
        "best_supervised": baseline, "best_semi_supervised": best_semi, "summary": summary,
        "reference_all_training_subjects": reference, "targets": targets, "published": PUBLISHED,
        "runs": per_run, "total_seconds": round(time.time() - t_all, 1)}
    png = args.plot or out_json.with_suffix(".png")
    plot_results(png, figures)
    path = write_results(out_json, "duke", figures)
    print(f"\nwrote {path} and {png} ({(time.time() - t_all) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
