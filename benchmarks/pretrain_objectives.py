"""Which ``octseg pretrain`` objective helps fine-tuning on Duke DME, and by how much?

Without internet there are no ImageNet weights; ``octseg pretrain`` offers three objectives that
need none (``synthetic``: supervised 4-class segmentation of ``octseg synth`` volumes with their
exact masks; ``mim``: masked-image modelling; ``denoise``: reconstructing speckle-noised B-scans).
This benchmark pretrains the encoder with each objective for the same number of steps, then
fine-tunes the ``duke`` recipe (supervised) from scratch and from each encoder on the same splits
and seeds (paired runs), and scores pooled fluid Dice on a held-out subject.

Data (``--shared``, default ``<repo>/../shared/data``; the benchmark skips, exit 0, without it):
``duke-dme-train`` (55 annotated B-scans of subjects S01-S05) and ``kermany-oct2017-test`` (1,000
Spectralis B-scans, no masks; Kermany et al., Cell 2018, CC BY 4.0), the unlabelled pool of ``mim``
and ``denoise``. The Duke B-scans themselves are never used for pretraining (the test subject stays
unseen); ``synthetic`` uses ``--synthetic-volumes`` generated volumes.

Light setting (stated; what 2 CPU cores allow in ~30-45 min): the label-efficiency benchmark's
network (Unet, timm ResNet10-T encoder, decoder 64-32-16-8-4) at ``--size`` (default 128x192);
pretraining ``--pretrain-steps`` (default 300) steps of 8 B-scans, lr 1e-3, cosine (synthetic: 48
volumes x 12 B-scans); fine-tuning regime ``1s`` of ``benchmarks/duke.py`` (rotation k: test
subject k, validation subject k+1, ONE labelled subject k+2; default rotation 2: test S02,
validation S03, labelled S04) for ``--epochs`` x ``--steps-per-epoch`` (default 8 x 20) steps of 4
B-scans, seeds ``--seeds`` (default 0 1): 3 pretrainings and 8 fine-tuning runs.

Cost (estimated, not measured on an idle machine): a pretraining step is ~33 GFLOP (forward +
backward at batch 8), a fine-tuning step half that; at the ~25 GFLOP/s in float32 that 2 CPU cores
give this small network, ~20 min of pretraining and ~15 min of fine-tuning and scoring. More
pairs: ``--rotations 2 4`` (about +15 min per rotation); shorter: ``--pretrain-steps``, ``--seeds``.

Scores as benchmarks/duke.py: the checkpoint chosen on the validation subject, predictions at the
native 496x768 against the original masks; headline: fluid Dice pooled over the test subject's
B-scans. The winner is chosen on validation Dice; its paired gain over scratch on the test subject
is reported with a 95 % t-interval over (rotation, seed) pairs.

    python benchmarks/pretrain_objectives.py            # ~35-40 min on 2 cores (estimate)
    python benchmarks/pretrain_objectives.py --quick    # smoke run (< 1 min; figures mean nothing)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import (ci_text, fmt, mean_sd, paired, print_table, quiet_lightning, rank_key,  # noqa: E402
                                run_training, spread, write_results)

OBJECTIVES = ["synthetic", "mim", "denoise"]
SIZE = (128, 192)
MODEL = {"encoder": "tu-resnet10t", "encoder_depth": 5, "decoder_channels": [64, 32, 16, 8, 4]}
DEFAULTS = {"pretrain_steps": 300, "pretrain_batch": 8, "synthetic_volumes": 48, "synthetic_slices": 12,
            "epochs": 8, "steps_per_epoch": 20, "rotations": [2], "seeds": [0, 1]}
QUICK = {"size": [32, 48], "pretrain_steps": 2, "pretrain_batch": 2, "synthetic_volumes": 2, "synthetic_slices": 2,
         "epochs": 1, "steps_per_epoch": 1, "rotations": [2], "seeds": [0], "kermany": 8,
         "model": {"encoder": "tu-resnet10t", "encoder_depth": 3, "decoder_channels": [16, 8, 4]}}


def _model_overrides(model: dict) -> list[str]:
    return [f"model.encoder={model['encoder']}", f"model.encoder_depth={model['encoder_depth']}",
            f"model.decoder_channels=[{','.join(map(str, model['decoder_channels']))}]"]


def _small_kermany(src: Path, workdir: Path, n: int) -> Path:
    """The first few files of each class folder, linked (the smoke run's pool)."""
    small = workdir / "kermany-small"
    subs = sorted(p for p in src.iterdir() if p.is_dir())
    for sub in subs:
        (small / sub.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(sub.glob("*.jpeg"))[:max(1, n // len(subs))]:
            if not (small / sub.name / f.name).exists():
                (small / sub.name / f.name).symlink_to(f.resolve())
    return small


def pretrain_encoder(objective: str, out: Path, kermany: Path, size, model: dict, steps: int, batch: int,
                     volumes: int, slices: int, cache: Path, seed: int = 0) -> dict:
    """One encoder file per objective, reused when it already holds the same settings."""
    from octseg.checkpoint import safe_load
    from octseg.training.pretrain import PretrainConfig, pretrain

    want = {"objective": objective, "steps": steps, "size": list(size), "encoder": model["encoder"],
            "encoder_depth": model["encoder_depth"], "batch": batch, "seed": seed}
    if out.is_file():
        meta = safe_load(out).get("octseg_encoder", {})
        if all(meta.get(k) == v for k, v in want.items()):
            print(f"  reusing {out}")
            return meta
    cfg = PretrainConfig(out=out, objective=objective, data=[] if objective == "synthetic" else [kermany],
                         synthetic_volumes=volumes if objective == "synthetic" else 0, synthetic_slices=slices,
                         encoder=model["encoder"],
                         encoder_depth=model["encoder_depth"], decoder_channels=list(model["decoder_channels"]),
                         size=tuple(size), steps=steps, batch=batch, seed=seed, cache_dir=cache,
                         checkpoint_every=max(1, steps // 5), overwrite=True, progress=False)
    t0 = time.time()
    res = pretrain(cfg)
    print(f"  {objective}: loss {res.meta['first_loss']:.4f} -> {res.meta['final_loss']:.4f} in "
          f"{time.time() - t0:.0f} s")
    return res.meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data",
                    help="folder holding duke-dme-train/ and kermany-oct2017-test/")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON (default benchmarks/results/pretrain_objectives.json)")
    ap.add_argument("--workdir", type=Path, default=None, help="encoders, prepared data and runs "
                                                               "(default runs/bench-pretrain)")
    ap.add_argument("--objectives", nargs="+", default=OBJECTIVES, choices=OBJECTIVES)
    ap.add_argument("--size", type=int, nargs=2, default=None, help=f"H W (default {SIZE})")
    for k, v in DEFAULTS.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, nargs="+" if isinstance(v, list) else None,
                        default=None, help=f"default {v}")
    ap.add_argument("--minutes", type=float, default=30.0, help="per-run wall-clock cap (a safety net)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    args = ap.parse_args(argv)

    train_dir = args.shared / "duke-dme-train"
    kermany_dir = args.shared / "kermany-oct2017-test"
    missing = [p for p in (train_dir, kermany_dir) if not p.is_dir()]
    if missing:
        print(f"SKIP pretrain_objectives benchmark: {', '.join(map(str, missing))} not found (the data lives in "
              f"../shared/data beside the checkout; pass --shared PATH)")
        return 0
    q = args.quick
    pick = lambda key: getattr(args, key) or (QUICK if q else DEFAULTS)[key]  # noqa: E731
    size = args.size or (QUICK["size"] if q else list(SIZE))
    model = QUICK["model"] if q else MODEL
    p_steps, p_batch, volumes = pick("pretrain_steps"), pick("pretrain_batch"), pick("synthetic_volumes")
    slices = pick("synthetic_slices")
    epochs, steps, rotations, seeds = pick("epochs"), pick("steps_per_epoch"), pick("rotations"), pick("seeds")

    import torch

    torch.set_num_threads(args.threads)
    quiet_lightning()
    from benchmarks.duke import band_masks, load_native, rotation, score, subject_folder, write_split
    from octseg.config import config_to_dict, load_config
    from octseg.data.prepare import ensure_prepared

    sfx = "_quick" if q else ""
    out_json = args.out or REPO / "benchmarks" / "results" / f"pretrain_objectives{sfx}.json"
    workdir = (args.workdir or Path("runs") / f"bench-pretrain{sfx.replace('_', '-')}").absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    cache = workdir / "prepared"
    t_all = time.time()
    if q:
        kermany_dir = _small_kermany(kermany_dir, workdir, QUICK["kermany"])

    print(f"pretraining {args.objectives} for {p_steps} steps of {p_batch} at {size[0]}x{size[1]} "
          f"({model['encoder']}); fine-tuning duke (supervised, 1 labelled subject) {epochs} x {steps} steps, "
          f"rotations {rotations}, seeds {seeds}", flush=True)
    encoders, pre_meta = {}, {}
    for obj in args.objectives:
        t0 = time.time()
        enc = workdir / "encoders" / f"{obj}.pth"
        meta = pretrain_encoder(obj, enc, kermany_dir, size, model, p_steps, p_batch, volumes, slices, cache)
        encoders[obj] = enc
        pre_meta[obj] = {k: meta.get(k) for k in ("objective", "steps", "batch", "data", "first_loss", "final_loss",
                                                   "seconds", "normalisation")}
        pre_meta[obj]["wall_seconds"] = round(time.time() - t0, 1)

    ds = ensure_prepared(train_dir, tuple(size), cache_dir=cache, progress=False)
    native = {}
    arms = ["scratch", *args.objectives]
    per_run = []
    plan = [(k, s, arm) for k in rotations for s in seeds for arm in arms]
    for i, (k, seed, arm) in enumerate(plan, 1):
        rot = rotation(k)
        lab = rot["labelled"]["1s"]
        for subj in (rot["val"], rot["test"]):
            if subj not in native:
                ids, images, gt = load_native(subject_folder(train_dir, workdir, subj))
                native[subj] = (ids, images, gt, band_masks(gt, 32))
        split = write_split(ds, f"pretrain-r{k}-1s", lab, [], rot["val"], rot["test"],
                            f"rotation {k}: test {rot['test']}, validation {rot['val']}, labelled {lab}")
        weights = "none" if arm == "scratch" else str(encoders[arm])
        run_dir = workdir / f"r{k}" / f"seed{seed}" / arm
        cfg = load_config("duke", [f"data.path={ds.path}", f"data.size=[{size[0]},{size[1]}]", f"data.split={split}",
                                   *_model_overrides(model), f"model.encoder_weights={weights}",
                                   "method.name=supervised", f"seed={seed}", f"trainer.max_epochs={epochs}",
                                   f"trainer.steps_per_epoch={steps}", "trainer.val_every_n_epochs=1",
                                   "trainer.progress=false", f"trainer.max_minutes={args.minutes}",
                                   f"name=pretrain-r{k}-s{seed}-{arm}"])
        print(f"\n[{i}/{len(plan)}] rotation {k} (test {rot['test']}, val {rot['val']}, labelled {lab}), seed {seed}, "
              f"{arm} -> {run_dir}", flush=True)
        t0 = time.time()
        ckpt, _, info = run_training(cfg, run_dir)
        scores = score(ckpt, {"val": native[rot["val"]], "test": native[rot["test"]]})
        per_run.append({"rotation": k, "seed": seed, "arm": arm, "test_subject": rot["test"],
                        "val_subject": rot["val"], "labelled": lab, "run_dir": str(run_dir), "train": info,
                        "scores": scores, "config": config_to_dict(cfg)})
        print(f"  {time.time() - t0:.0f} s; fluid Dice: val {scores['val']['fluid_dice']:.3f}, test "
              f"{scores['test']['fluid_dice']:.3f} | elapsed {(time.time() - t_all) / 60:.1f} min", flush=True)

    def runs_of(arm):
        return {(r["rotation"], r["seed"]): r for r in per_run if r["arm"] == arm}

    summary = {}
    base = runs_of("scratch")
    for arm in arms:
        mine = runs_of(arm)
        summary[arm] = {part: {key: spread([r["scores"][part][key] for r in mine.values()])
                               for key in ("fluid_dice", "band_fluid_dice")} for part in ("val", "test")}
        summary[arm]["vs_scratch"] = paired([mine[key]["scores"]["test"]["fluid_dice"]
                                             - base[key]["scores"]["test"]["fluid_dice"]
                                             for key in mine if key in base])
    winner = max(args.objectives, key=lambda a: rank_key(summary[a]["val"]["fluid_dice"]))  # on validation
    rows = []
    for arm in arms:
        s = summary[arm]
        p = s["vs_scratch"]
        rows.append([arm + (" *" if arm == winner else ""), mean_sd(s["val"]["fluid_dice"]),
                     mean_sd(s["test"]["fluid_dice"]), mean_sd(s["test"]["band_fluid_dice"]),
                     "-" if arm == "scratch" else fmt(p["mean"], sign=True),
                     "-" if arm == "scratch" else ci_text(p),
                     "-" if arm == "scratch" else f"{pre_meta[arm]['final_loss']:.4f}"])
    if q:
        print("\nQUICK SMOKE TEST: the figures below mean nothing")
    print(f"\nFine-tuning duke (supervised, 1 labelled subject) from scratch and from each pretrained encoder; "
          f"{len(rotations)} rotation(s) x {len(seeds)} seed(s); * = best objective on validation")
    print_table(["encoder", "val fluid Dice", "test fluid Dice", "test band Dice", "gain vs scratch (test)",
                 "95% CI", "pretrain loss"], rows)
    gain = summary[winner]["vs_scratch"]
    print(f"\nWinner (chosen on validation): {winner}, test fluid Dice {fmt(gain['mean'], sign=True)} vs scratch "
          f"{ci_text(gain)}")
    figures = {
        "quick": bool(q),
        "settings": {"size": list(size), "model": model, "pretrain_steps": p_steps, "pretrain_batch": p_batch,
                     "synthetic_volumes": volumes, "synthetic_slices": slices,
                     "pretrain_data": {"mim": "kermany-oct2017-test", "denoise": "kermany-oct2017-test",
                                       "synthetic": f"octseg synth, {volumes} volumes x {slices} B-scans"},
                     "finetune": {"recipe": "duke", "method": "supervised", "regime": "1 labelled subject",
                                  "epochs": epochs, "steps_per_epoch": steps, "rotations": rotations,
                                  "seeds": seeds, "threads": args.threads}},
        "pretraining": pre_meta,
        "summary": summary,
        "winner_on_validation": winner,
        "winner_gain_vs_scratch": gain,
        "runs": per_run,
        "total_seconds": round(time.time() - t_all, 1),
    }
    path = write_results(out_json, "pretrain_objectives", figures)
    print(f"results written to {path} ({(time.time() - t_all) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
