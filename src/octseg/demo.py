"""`octseg demo`: synthetic data -> supervised and Mean Teacher on the same labels -> held-out Dice.

Everything runs on CPU within minutes, from nothing but this package: the synthetic generator
makes a small RETOUCH-like dataset (48 volumes of 6 B-scans, three vendor styles), which is
prepared at 96x96 and split by volume (labelled / unlabelled / validation / test). Both methods
train from the recipe ``configs/demo_cpu.yaml`` with the same seed and labelled subset; both are
scored with hard label maps on the test volumes they never saw.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

from octseg.config import load_config

SYNTH = dict(volumes=48, slices=6, scale=0.5, fluid_free_fraction=0.1)
SIZE = (96, 96)
METHODS = ("supervised", "mean_teacher")
#: A seconds-long version of the same pipeline, for tests (`run_demo(..., quick=True)`).
QUICK_SYNTH = dict(volumes=12, slices=2, scale=0.2, fluid_free_fraction=0.0)
QUICK_SIZE = (64, 64)
QUICK_OVERRIDES = ["trainer.max_epochs=2", "trainer.steps_per_epoch=3", "model.encoder=tu-resnet10t",
                   "model.encoder_depth=3", "model.decoder_channels=[32,16,8]", "data.labelled_batch=2",
                   "data.unlabelled_batch=2", "trainer.precision=32"]


def _prepare(out: Path, seed: int, synth: dict = SYNTH, size=SIZE) -> Path:
    from octseg.data.prepare import prepare_dataset
    from octseg.data.prepared import is_prepared
    from octseg.data.synthetic import write_synthetic_dataset

    prepared = out / "prepared"
    if is_prepared(prepared):
        print(f"reusing {prepared}")
        return prepared
    # the demo folder is the demo's: an interrupted synth there is replaced, not kept beside a new one
    summary = write_synthetic_dataset(out / "synthetic", fmt="mhd", seed=seed, preview=out / "synthetic_preview.png",
                                      overwrite=True, **synth)
    print(summary["text"])
    ds = prepare_dataset(out / "synthetic", prepared, size=size)
    print(f"prepared {len(ds)} B-scans at {size[0]}x{size[1]} -> {prepared}")
    return prepared


def _train(cfg, run_dir: Path):
    from octseg.training.run import train

    if (run_dir / "metrics.json").is_file():
        print(f"reusing the finished run in {run_dir}")
        return run_dir / "checkpoints" / "best.ckpt"
    resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
    return train(cfg, out_dir=run_dir, resume=resume).best


def _table(results: dict, classes) -> str:
    fg = list(classes[1:])
    head = f"{'method':<14}{'weights':<9}" + "".join(f"{c:>8}" for c in fg) + f"{'mean fg':>9}{'per-vol':>9}"
    lines = [head, "-" * len(head)]
    for method, by_w in results.items():
        for weights, r in by_w.items():
            cells = "".join(f"{r['dice'][c]:>8.3f}" if r["dice"][c] is not None else f"{'n/a':>8}" for c in fg)
            lines.append(f"{method:<14}{weights:<9}{cells}{r['mean_foreground']:>9.3f}"
                         f"{r['mean_foreground_per_volume']:>9.3f}")
    return "\n".join(lines)


def _figure(path: Path, data, predictions: dict, classes, n: int = 4) -> None:
    """Test B-scans (most fluid classes first): scan, reference and each method's prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from octseg.overlay import class_colours, overlay_rgb

    rows = data.parts["test"]
    gt = np.asarray(data.masks[rows])
    k = len(classes)
    n_classes = np.array([len(np.unique(m[m > 0])) for m in gt])
    area = (gt > 0).reshape(len(gt), -1).sum(1)
    order = np.lexsort((-area, -n_classes))
    picks = []
    for i in order:  # one B-scan per volume, so the figure shows variety
        if data.volumes[rows[i]] not in {data.volumes[rows[j]] for j in picks}:
            picks.append(i)
        if len(picks) == n:
            break
    cols = [("scan", None), ("reference", gt)] + [(name, pred) for name, pred in predictions.items()]
    fig, axes = plt.subplots(len(picks), len(cols), figsize=(2.6 * len(cols), 2.5 * len(picks)), squeeze=False)
    for r, i in enumerate(picks):
        img = np.asarray(data.images[rows[i]])
        for c, (title, labels) in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(img if labels is None else overlay_rgb(img, labels[i], k), cmap="gray")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
        axes[r, 0].set_ylabel(data.volumes[rows[i]], fontsize=8)
    colours = class_colours(k) / 255.0
    fig.legend(handles=[Patch(color=colours[c], label=classes[c]) for c in range(1, k)], loc="lower center",
               ncol=k - 1, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(out="runs/demo", minutes: Optional[float] = None, seed: int = 0, quick: bool = False,
             precision: str = "auto") -> dict:
    """Run the whole demo into ``out``; returns method -> weights -> scores on the test volumes.

    ``quick`` runs the same pipeline on a tiny dataset and model in seconds (for tests); its
    figures mean nothing. ``out`` must be new, empty or an earlier demo's folder (reused).
    ``precision``: ``trainer.precision`` of both runs (``auto``: bf16 where the CPU does it natively;
    ``32`` times the demo as a CPU without bf16 runs it).
    """
    from octseg.io.outputs import OutputFolder

    out = Path(out)
    legacy = lambda p: (p / "prepared" / "dataset.json").is_file()  # noqa: E731 - a demo folder of octseg <= 0.1
    with OutputFolder(out, "demo", whole=True, legacy=legacy):
        # a non-default precision is part of the settings: runs trained at another one are not reused
        _check_settings(out, {"seed": int(seed), "quick": bool(quick),
                              **({"precision": precision} if precision != "auto" else {})})
        return _run_demo(out, minutes, seed, quick, precision)


def _check_settings(out: Path, settings: dict) -> None:
    """A demo folder reuses its data and runs only for the seed (and size) it was made with."""
    from octseg.errors import DataError
    from octseg.io.outputs import atomic_write_text

    path = out / "demo_settings.json"
    if path.is_file():
        try:
            earlier = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(path, f"cannot read the demo's settings ({exc})") from None
        if earlier != settings:
            raise DataError(out, f"holds the demo made with {earlier}, not {settings}; choose another --out "
                                 f"(e.g. {out}-seed{settings['seed']})")
    elif (out / "prepared" / "dataset.json").is_file() and settings != {"seed": 0, "quick": False}:
        raise DataError(out, f"holds a demo of an earlier octseg (seed 0); choose another --out for {settings}")
    atomic_write_text(path, json.dumps(settings) + "\n")


def _run_demo(out: Path, minutes: Optional[float], seed: int, quick: bool, precision: str = "auto") -> dict:
    from octseg.checkpoint import load_networks
    from octseg.io.outputs import atomic_write_text
    from octseg.metrics import score_networks
    from octseg.training.data import load_train_data
    from octseg.training.run import resolve_precision

    t0 = time.time()
    prepared = _prepare(out, seed, QUICK_SYNTH, QUICK_SIZE) if quick else _prepare(out, seed)
    overrides = [f"data.path={prepared}", f"seed={seed}"] + (QUICK_OVERRIDES if quick else [])
    if minutes:
        overrides.append(f"trainer.max_minutes={minutes}")
    if precision != "auto":
        overrides.append(f"trainer.precision={precision}")
    base = load_config("demo_cpu", overrides)
    data = None
    results: dict = {}
    predictions: dict = {}
    for method in METHODS:
        cfg = dataclasses.replace(base, name=f"demo-{method}", method=dataclasses.replace(base.method, name=method))
        print(f"\n== training {method} ==")
        best = _train(cfg, out / method)
        data = data or load_train_data(cfg)
        rows = data.parts["test"]
        images, gt = np.asarray(data.images[rows]), np.asarray(data.masks[rows])
        volumes = [data.volumes[r] for r in rows]
        results[method] = {}
        nets, meta = load_networks(best)
        reports, preds = score_networks(nets, meta, images, gt, volumes=volumes, class_names=list(data.classes),
                                        batch=16, return_predictions=True)
        for weights, rep in reports.items():
            results[method][weights] = {
                "dice": rep["pooled"]["dice"],
                "mean_foreground": rep["mean_foreground_dice"]["pooled"],
                "mean_foreground_per_volume": rep["mean_foreground_dice"]["per_volume"],
                "per_bscan_dice": rep["per_bscan"]["dice"],
            }
        default = meta["default_weights"]
        if default in preds:
            predictions[f"{method} ({default})"] = preds[default]
    table = _table(results, data.classes)
    n = {p: len(v) for p, v in data.parts.items()}
    print(f"\nHeld-out synthetic test set: {n['test']} B-scans in {len(set(data.volumes[r] for r in data.parts['test']))} "
          f"volumes; trained on {n['labelled']} labelled (+{n.get('unlabelled', 0)} unlabelled for Mean Teacher) B-scans.")
    print("Dice per class (hard masks, pooled over the test B-scans), mean foreground Dice, and its per-volume mean:")
    print(table)
    _figure(out / "demo_predictions.png", data, predictions, list(data.classes))
    flat = {m: {w: {**{c: v for c, v in r["dice"].items()}, "mean_foreground": r["mean_foreground"]}
                for w, r in by_w.items()} for m, by_w in results.items()}
    atomic_write_text(out / "demo_results.json", json.dumps(flat, indent=2))
    details = {
        "results": results,
        "classes": list(data.classes),
        "split_counts": n,
        "seconds": round(time.time() - t0, 1),
        "synthetic": QUICK_SYNTH if quick else SYNTH,
        "size": list(QUICK_SIZE if quick else SIZE),
        "seed": seed,
        "precision": resolve_precision(base.trainer.precision, base.trainer.accelerator),
    }
    atomic_write_text(out / "demo_details.json", json.dumps(details, indent=2))
    print(f"\nwrote {out / 'demo_results.json'} (method -> weights -> class -> Dice), {out / 'demo_predictions.png'} "
          f"and the runs in {out}/<method>/ ({details['seconds'] / 60:.1f} min)")
    return results
