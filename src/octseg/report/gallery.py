"""A training run's validation gallery: its worst and best validation B-scans, reference and prediction
side by side.

The run's best checkpoint (its default network) is scored on the run's validation B-scans with
:func:`octseg.metrics.score_networks`, the one scoring loop training itself uses, so the Dice shown
is the per-B-scan Dice of the validation tables. A B-scan's figure is its mean foreground Dice: the
mean over the fluid classes that have a Dice there (a class absent from both reference and
prediction has none); a B-scan without any (no fluid in either) is left out of the ranking.

The gallery needs the run's dataset. Whatever stops it (the dataset moved or deleted, a checkpoint
that cannot be read, a split that no longer matches) becomes one line in the page, never a failed
report.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from octseg.constants import IGNORE_INDEX
from octseg.report.html import esc, png_uri

#: B-scans shown at each end of the ranking (so at most twice this many in all).
N_EACH = 4
#: Tiles wider (or taller) than this are shrunk for the page; the Dice is computed at full size.
MAX_TILE_PX = 512

GALLERY_CSS = """
.gallery figure { margin: 0 0 14px; }
.gallery .pair { display: flex; gap: 6px; flex-wrap: wrap; align-items: flex-start; }
.gallery .pair img { max-width: 100%; image-rendering: auto; }
.gallery figcaption { color: #ccc; margin-top: 2px; }
"""


@dataclass
class GalleryItem:
    """One ranked validation B-scan."""

    slice_id: str
    volume: Optional[str]
    dice: float
    image: np.ndarray  # uint8 (H, W)
    reference: np.ndarray  # uint8 (H, W) label map
    prediction: np.ndarray  # uint8 (H, W) label map


@dataclass
class Gallery:
    """What the gallery shows: ranked items and where they come from."""

    items: list  # GalleryItem, worst to best
    classes: list
    weights: str  # the network scored (the checkpoint's default)
    n_val: int  # validation B-scans scored
    note: str = ""


class GalleryUnavailable(Exception):
    """Why there is no gallery, in one line for the page."""


def mean_foreground_dice(row_dice: dict, classes: Sequence[str]) -> Optional[float]:
    """Mean Dice over the foreground classes (all but the first) that have one; None when none has."""
    vals = [row_dice.get(c) for c in list(classes)[1:]]
    vals = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else None


def pick_worst_and_best(scores: Sequence[Optional[float]], n_each: int = N_EACH) -> list[int]:
    """Indices of the ``n_each`` lowest and ``n_each`` highest defined scores, ordered worst to best
    (each index once; ties keep the B-scans' order)."""
    ranked = sorted((i for i, s in enumerate(scores) if s is not None), key=lambda i: scores[i])
    if len(ranked) <= 2 * n_each:
        return ranked
    return ranked[:n_each] + ranked[-n_each:]


def _val_rows(run_dir: Path, data) -> tuple[list, np.ndarray, str]:
    """(slice ids, row indices, note) of the run's validation B-scans: those of the run's own
    split.json when it has them (the split it trained on), else the dataset's split."""
    from octseg.data.prepared import PreparedDataset

    saved_path = run_dir / "split.json"
    saved = None
    if saved_path.is_file():
        try:
            saved = json.loads(saved_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            saved = None
    saved_val = saved.get("parts", {}).get("val") if isinstance(saved, dict) and isinstance(saved.get("parts"),
                                                                                          dict) else None
    data_val = list(data.split.get("parts", {}).get("val", []))
    if isinstance(saved_val, list) and saved_val:
        if saved_val == data_val:
            return data_val, np.asarray(data.parts["val"], dtype=np.int64), ""
        rows = PreparedDataset(data.dataset_path).indices(saved_val)
        return (list(saved_val), rows, "the dataset's split file has changed since this run; "
                                       "the gallery uses the run's own split.json")
    return data_val, np.asarray(data.parts["val"], dtype=np.int64), ""


def collect_gallery(run_dir, device: str = "cpu", n_each: int = N_EACH) -> Gallery:
    """The gallery of a run folder (items worst to best); raises
    :class:`GalleryUnavailable` saying why when there can be none."""
    from octseg.config import load_config

    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    if not (run_dir / "config.yaml").is_file():
        raise GalleryUnavailable("the run has no config.yaml")
    if not ckpt.is_file():
        raise GalleryUnavailable("the run has no checkpoints/best.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # renamed keys of an older recipe: irrelevant to a report
        cfg = load_config(run_dir / "config.yaml")
    data_path = Path(cfg.data.path).expanduser() if cfg.data.path else None
    if data_path is None or not data_path.exists():
        raise GalleryUnavailable(f"the run's dataset {cfg.data.path or '(data.path is empty)'} no longer exists")

    from octseg.checkpoint import load_networks
    from octseg.metrics import score_networks
    from octseg.training.data import load_train_data

    cfg.data.in_memory = False  # memory-map: only the validation rows are read
    cfg.data.extra_unlabelled = []  # extra unlabelled pools add nothing to validation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_train_data(cfg)
    ids, rows, note = _val_rows(run_dir, data)
    if len(rows) == 0:
        raise GalleryUnavailable("the run's split has no validation B-scans")
    nets, meta = load_networks(ckpt, device)
    name = meta["default_weights"]
    classes = list(meta["classes"])
    images = np.asarray(data.images[rows])
    gt = np.asarray(data.masks[rows])
    volumes = [data.volumes[r] for r in rows]
    reports, preds = score_networks({name: nets[name]}, meta, images, gt, volumes=volumes, device=device,
                                    tables=True, return_predictions=True)
    table = reports[name]["per_bscan_table"]
    scores = [mean_foreground_dice(r["dice"], classes) for r in table]
    items = [GalleryItem(str(ids[i]) if i < len(ids) else str(int(rows[i])), volumes[i], float(scores[i]),
                         images[i], gt[i], preds[name][i])
             for i in pick_worst_and_best(scores, n_each)]
    if not items:
        raise GalleryUnavailable(f"no validation B-scan has a defined Dice (no fluid in reference or prediction "
                                 f"in any of {len(rows)})")
    return Gallery(items, classes, name, len(rows), note)


def _shrunk(image: np.ndarray, labels: np.ndarray, max_px: int = MAX_TILE_PX) -> tuple[np.ndarray, np.ndarray]:
    """Image (area filter) and labels (nearest) shrunk to fit ``max_px`` on both sides; as they are when they fit."""
    from PIL import Image

    h, w = image.shape
    f = min(1.0, max_px / max(h, w))
    if f >= 1.0:
        return image, labels
    size = (max(1, round(w * f)), max(1, round(h * f)))
    img = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.BOX))
    lab = np.asarray(Image.fromarray(np.ascontiguousarray(labels)).resize(size, Image.NEAREST))
    return img, lab


def _tile_uri(image: np.ndarray, labels: np.ndarray, classes: Sequence[str], caption: str) -> str:
    from octseg.overlay import overlay_image

    labels = np.where(labels == IGNORE_INDEX, 0, labels).astype(np.uint8)  # unlabelled pixels: not drawn
    img, lab = _shrunk(image, labels)
    return png_uri(np.asarray(overlay_image(img, lab, classes, caption=caption)))


def gallery_html(gallery: Gallery) -> str:
    """The gallery's HTML (every name escaped): per B-scan, reference and prediction overlays and a caption."""
    items, classes, n_val, weights, note = gallery.items, gallery.classes, gallery.n_val, gallery.weights, gallery.note
    split = len(items) == 2 * N_EACH  # the N_EACH worst, then the N_EACH best
    parts = [f'<p class="muted">{len(items)} of {n_val} validation B-scans, ranked by mean foreground Dice '
             f"(B-scans with no fluid in reference and prediction are not ranked)"
             + (f"; network: {esc(weights)}" if weights else "") + "</p>"]
    if note:
        parts.append(f'<p class="note">{esc(note)}</p>')
    parts.append('<div class="gallery">')
    for k, it in enumerate(items):
        if k == 0:
            parts.append(f"<h3>{N_EACH} worst</h3>" if split else "<h3>Worst to best</h3>")
        elif split and k == N_EACH:
            parts.append(f"<h3>{N_EACH} best</h3>")
        cap = f"{it.slice_id} · volume {it.volume if it.volume is not None else '?'} · Dice {it.dice:.3f}"
        ref = _tile_uri(it.image, it.reference, classes, "reference")
        pred = _tile_uri(it.image, it.prediction, classes, "prediction")
        parts.append(f'<figure class="gallery-item" data-dice="{it.dice:.6f}"><div class="pair">'
                     f'<img class="gallery-ref" alt="reference: {esc(it.slice_id)}" src="{ref}">'
                     f'<img class="gallery-pred" alt="prediction: {esc(it.slice_id)}" src="{pred}">'
                     f"</div><figcaption>{esc(cap)}</figcaption></figure>")
    parts.append("</div>")
    return "".join(parts)


def run_gallery_section(run_dir, device: Optional[str] = None) -> str:
    """The "Validation gallery" section of a run's page; a one-line note instead when there can be none.

    Never raises for a run folder's state: whatever goes wrong is said in the note."""
    head = "<h2>Validation gallery</h2>"
    try:
        from octseg.inference.predictor import resolve_device

        dev = resolve_device(device or "auto")
        return head + gallery_html(collect_gallery(run_dir, device=dev))
    except GalleryUnavailable as exc:
        return head + f'<p class="note">validation gallery unavailable: {esc(exc)}</p>'
    except Exception as exc:  # noqa: BLE001 - a report must not fail for the gallery's sake
        msg = " ".join(str(exc).split()) or type(exc).__name__
        return head + f'<p class="note">validation gallery unavailable: {esc(msg)}</p>'
