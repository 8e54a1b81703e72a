"""The original project's own measures, kept for comparison only: NOT headline figures.

``original_dice`` / ``original_iou`` reproduce the original project's flawed measures so that old tables can be
set beside octseg's honest ones (:mod:`octseg.metrics.report`). Nothing in octseg reports
them as results.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from octseg.constants import IGNORE_INDEX
from octseg.metrics.functional import _to_numpy, confusion_per_image, scores_from_confusion

__all__ = ["original_dice", "original_iou"]


def original_dice(probs, gt_onehot, smooth: float = 0.0) -> np.ndarray:
    """The original project's "soft" Dice, per class, background included: for comparison only.

    ``2*sum(p*g) / (sum p + sum g)`` summed over batch and pixels, per class
    (probs, gt_onehot: (N,K,H,W)); the original project's table reported the mean over
    classes. Flawed: soft probabilities, background dominates the mean, and
    pooling hides per-B-scan failures. Kept only to set results beside the original project's.
    """
    p = _to_numpy(probs).astype(np.float64)
    g = _to_numpy(gt_onehot).astype(np.float64)
    if p.shape != g.shape or p.ndim < 2:
        raise ValueError(f"probs and gt_onehot must be (N,K,...) of equal shape, got {p.shape} and {g.shape}")
    axes = (0,) + tuple(range(2, p.ndim))
    inter = (p * g).sum(axes)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (2 * inter + smooth) / (p.sum(axes) + g.sum(axes) + smooth)


def original_iou(pred, gt, num_classes: int, ignore_index: Optional[int] = IGNORE_INDEX) -> np.ndarray:
    """The original project's IoU per class: per B-scan, absent-in-both scored 1, then averaged.

    For comparison only: scoring absent-absent as 1 rewards predicting nothing on the
    many fluid-free B-scans. Kept only for comparison with the original project's table.
    """
    conf = confusion_per_image(gt, pred, num_classes, ignore_index)
    iou = scores_from_confusion(conf)["iou"]
    return np.where(np.isnan(iou), 1.0, iou).mean(0)
