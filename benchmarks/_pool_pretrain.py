"""Encoders pretrained with ``octseg pretrain`` for the benchmarks: ``pretrain_encoder`` (any objective,
reused when made with the same settings), and the two-stage semi-supervised benchmark variants: a
method fine-tuned from an encoder pretrained on the B-scans of every training volume without their
labels (the labelled volumes' images too; never a validation or test volume), once per workdir and
shared by every seed. The name says the encoder (``supervised_mim``: masked-image modelling, ``POOL_PRETRAIN`` steps;
``supervised_mim3k``: the same objective for three times as many steps; ``unimatch_mim_t0.8``: the variant
``unimatch_t0.8`` from the ``mim`` encoder). Self-training variants also name the run(s) that teach them
(``teachers_of``; several: an ensemble teacher), which train first (``with_teachers``, ``teacher_depth``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from benchmarks._common import ENSEMBLE_TEACHERS, SUPERVISED, TEACHER_OF, base_method, method_overrides

# variant -> (method or variant it fine-tunes, encoder key of POOL_ENCODERS)
POOL_PRETRAINED = {"supervised_mim": ("supervised", "mim"), "fixmatch_mim": ("fixmatch", "mim"),
                   "unimatch_mim": ("unimatch", "mim"), "supervised_denoise": ("supervised", "denoise"),
                   "unimatch_mim_t0.8": ("unimatch_t0.8", "mim"), "supervised_mim3k": ("supervised", "mim3k"),
                   "fixmatch_t0.6_mim3k": ("fixmatch_t0.6", "mim3k"),
                   "fixmatch_t0.6_mim": ("fixmatch_t0.6", "mim"), "selftrain_mim": ("self_training_strong", "mim"),
                   "selftrain_weak_mim": ("self_training_weak", "mim"),
                   "selftrain2_weak_mim": ("self_training_weak", "mim"),
                   "selftrain_ens_weak_mim": ("self_training_weak_ens", "mim"),
                   "mean_teacher_cutmix_mim": ("mean_teacher_cutmix", "mim")}
# variant -> the variants whose runs (same seed and labels) teach it, where that is not TEACHER_OF's choice: a second
# round of self-training learns from the first round's student (Noisy Student's iteration). (An ENSEMBLE_TEACHERS
# variant, selftrain_ens_weak_mim, is taught by the seed's supervised models from the pool encoder and from scratch,
# both trained anyway as baselines, so the ensemble costs no extra training run.)
POOL_TEACHERS = {"selftrain2_weak_mim": ("selftrain_weak_mim",)}
POOL_PRETRAIN = {"steps": 1000, "batch": 8}
# encoder key -> (``octseg pretrain`` objective, its steps; the quick run takes QUICK_PRETRAIN's whatever the key)
POOL_ENCODERS = {"mim": ("mim", POOL_PRETRAIN["steps"]), "denoise": ("denoise", POOL_PRETRAIN["steps"]),
                 "mim3k": ("mim", 3 * POOL_PRETRAIN["steps"])}
QUICK_PRETRAIN = {"steps": 2, "batch": 2}


def small_kermany(src: Path, workdir: Path, n: int) -> Path:
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
    """Pretrain ``model``'s encoder (``{encoder, encoder_depth, decoder_channels}``; channels None: smp's
    default decoder) with ``objective`` on ``kermany`` (mim, denoise) or ``volumes`` synthetic volumes
    (synthetic) into ``out``; an existing file made with the same settings is reused."""
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
                         encoder=model["encoder"], encoder_depth=model["encoder_depth"],
                         decoder_channels=model["decoder_channels"] and list(model["decoder_channels"]),
                         size=tuple(size), steps=steps, batch=batch, seed=seed, cache_dir=cache,
                         checkpoint_every=max(1, steps // 5), overwrite=True, progress=False)
    t0 = time.time()
    res = pretrain(cfg)
    print(f"  {objective}: loss {res.meta['first_loss']:.4f} -> {res.meta['final_loss']:.4f} in "
          f"{time.time() - t0:.0f} s")
    return res.meta


def pool_encoder(workdir: Path, ds, train_vols: list, key: str, size, net, quick: bool) -> Path:
    """The encoder file ``key`` (of ``POOL_ENCODERS``: objective and steps) for ``net`` (the runs' ``ModelConfig``),
    pretrained at ``size`` on the training volumes' B-scans of the prepared dataset ``ds`` (images only), made once
    per workdir."""
    from PIL import Image

    pool = workdir / "pretrain-pool"
    done = pool / "done.json"
    if not done.is_file():  # the training volumes' prepared B-scans as an image folder octseg reads
        train = set(train_vols)
        rows = [i for i, s in enumerate(ds.slices) if s.volume in train]
        (pool / "images").mkdir(parents=True, exist_ok=True)
        for i in rows:
            Image.fromarray(np.asarray(ds.images[i])).save(pool / "images" / f"{ds.slices[i].id}.png")
        done.write_text(json.dumps({"volumes": sorted(train), "bscans": len(rows)}))
    objective, steps = POOL_ENCODERS[key]
    n = QUICK_PRETRAIN if quick else {**POOL_PRETRAIN, "steps": steps}
    model = {"encoder": net.encoder, "encoder_depth": net.encoder_depth,
             "decoder_channels": list(net.decoder_channels or (256, 128, 64, 32, 16))}  # (smp's default decoder)
    out = workdir / "encoders" / f"pool-{key}.pth"
    pretrain_encoder(objective, out, pool / "images", size, model, n["steps"], n["batch"], 0, 1,
                     workdir / "pretrain-cache")
    return out


def overrides_of(method: str, encoders: dict) -> list:
    """``key=value`` overrides of a benchmark method: a registered method, a variant, or a pool-pretrained one."""
    if method in POOL_PRETRAINED:
        base, key = POOL_PRETRAINED[method]
        return [*method_overrides(base), f"model.encoder_weights={encoders[key]}"]
    return method_overrides(method)


def trained_method(method: str) -> str:
    """The registered method a benchmark method name trains (``mean_teacher_cutmix_mim`` -> ``mean_teacher``)."""
    return base_method(POOL_PRETRAINED.get(method, (method, None))[0])


def teachers_of(method: str) -> tuple:
    """The benchmark methods whose runs (same seed, same labelled volumes) teach ``method``, () for none:
    ``self_training`` learns from ``supervised``, ``selftrain_mim`` from ``supervised_mim`` (same encoder), a second
    round as ``POOL_TEACHERS`` says; an ``ENSEMBLE_TEACHERS`` variant from its encoder's teacher and the one from
    scratch together."""
    if method in POOL_TEACHERS:
        return POOL_TEACHERS[method]
    base, key = POOL_PRETRAINED.get(method, (method, None))
    teacher = TEACHER_OF.get(base_method(base))
    if teacher is None:
        return ()
    if key is None:
        return (teacher,)
    own = next(m for m, (b, k) in POOL_PRETRAINED.items() if b == teacher and k == key)
    return (own, teacher) if base in ENSEMBLE_TEACHERS else (own,)


def teacher_depth(method: str) -> int:
    """0 for a method without a teacher, else one more than its deepest teacher's: the stage it trains in."""
    return max((1 + teacher_depth(t) for t in teachers_of(method)), default=0)


def with_teachers(methods: list) -> list:
    """``methods`` with the supervised baselines and every teacher (and teacher's teacher) they need, teachers
    before their students, the order kept otherwise."""
    while any(t not in methods for m in methods for t in teachers_of(m)):
        methods = list(dict.fromkeys([*(t for m in methods for t in teachers_of(m)), *methods]))
    return sorted(dict.fromkeys([*SUPERVISED, *methods]), key=teacher_depth)
