"""Two-stage semi-supervised benchmark variants: a method fine-tuned from an encoder that
``octseg pretrain`` trained on the B-scans of every training volume without their labels (the
labelled volumes' images too; never a validation or test volume), once per workdir and shared by
every seed. The objective is the name's suffix (``supervised_mim``: masked-image modelling)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks._common import method_overrides

POOL_PRETRAINED = {"supervised_mim": ("supervised", "mim"), "fixmatch_mim": ("fixmatch", "mim"),
                   "unimatch_mim": ("unimatch", "mim"), "supervised_denoise": ("supervised", "denoise")}
POOL_PRETRAIN = {"steps": 1000, "batch": 8}
QUICK_PRETRAIN = {"steps": 2, "batch": 2}


def pool_encoder(workdir: Path, ds, train_vols: list, objective: str, size, net, quick: bool) -> Path:
    """The encoder file of ``objective`` for ``net`` (the runs' ``ModelConfig``), pretrained at ``size`` on the
    training volumes' B-scans of the prepared dataset ``ds`` (images only), made once per workdir."""
    from PIL import Image

    from benchmarks.pretrain_objectives import pretrain_encoder

    pool = workdir / "pretrain-pool"
    done = pool / "done.json"
    if not done.is_file():  # the training volumes' prepared B-scans as an image folder octseg reads
        train = set(train_vols)
        rows = [i for i, s in enumerate(ds.slices) if s.volume in train]
        (pool / "images").mkdir(parents=True, exist_ok=True)
        for i in rows:
            Image.fromarray(np.asarray(ds.images[i])).save(pool / "images" / f"{ds.slices[i].id}.png")
        done.write_text(json.dumps({"volumes": sorted(train), "bscans": len(rows)}))
    n = QUICK_PRETRAIN if quick else POOL_PRETRAIN
    model = {"encoder": net.encoder, "encoder_depth": net.encoder_depth,
             "decoder_channels": list(net.decoder_channels or (256, 128, 64, 32, 16))}  # (smp's default decoder)
    out = workdir / "encoders" / f"pool-{objective}.pth"
    pretrain_encoder(objective, out, pool / "images", size, model, n["steps"], n["batch"], 0, 1,
                     workdir / "pretrain-cache")
    return out


def overrides_of(method: str, encoders: dict) -> list:
    """``key=value`` overrides of a benchmark method: a registered method, a variant, or a pool-pretrained one."""
    if method in POOL_PRETRAINED:
        base, objective = POOL_PRETRAINED[method]
        return [*method_overrides(base), f"model.encoder_weights={encoders[objective]}"]
    return method_overrides(method)
