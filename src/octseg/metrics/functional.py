"""Pure metric functions on hard label maps: confusion counts and the scores derived from them.

The bottom of :mod:`octseg.metrics` (torchmetrics' "functional" half): stateless functions
that turn label maps into numbers. Reports, the accumulator and the RETOUCH metrics are all
aggregations of :func:`confusion_per_image` and :func:`hd95_per_image`, so every figure is
counted one way. Also home of the on-device pooled confusion and Dice
(:func:`confusion_matrix_torch`, :func:`dice_from_confusion_torch`) that training validation
uses, so that validation and evaluation count pixels the same way.

NumPy throughout; torch is imported only when a torch tensor is passed in.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from scipy import ndimage

from octseg.constants import IGNORE_INDEX
from octseg.records import Spacing

__all__ = [
    "confusion_per_image",
    "scores_from_confusion",
    "pool_by_group",
    "hd95",
    "hd95_per_image",
    "roc_auc",
    "confusion_matrix_torch",
    "dice_from_confusion_torch",
    "HD95_DEFINITION",
]

HD95_DEFINITION = (
    "95th percentile (numpy linear interpolation) of the union of both directed "
    "surface-distance sets (medpy hd95); surface = mask XOR its 4-connected erosion"
)
_CHUNK_PIXELS = 1 << 22  # pixels per chunk: bounds temporary memory to a few MB


# ----------------------------------------------------------------------------- inputs


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _to_numpy(x) -> np.ndarray:
    if _is_torch(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_labels(x: np.ndarray, what: str) -> np.ndarray:
    if x.dtype == bool:
        return x.view(np.uint8)
    if x.dtype.kind not in "iu":
        raise ValueError(f"{what} must hold integer class labels (e.g. argmax of logits), got dtype {x.dtype}")
    return x


def _as_batch(gt, pred):
    """(H,W) or (N,H,W) numpy/torch -> two (N,H,W) arrays (or tensors for CUDA)."""
    if _is_torch(gt) and _is_torch(pred) and gt.is_cuda and pred.is_cuda:
        if gt.is_floating_point() or pred.is_floating_point():
            raise ValueError("gt and pred must hold integer class labels (e.g. argmax of logits)")
    else:
        gt, pred = _check_labels(_to_numpy(gt), "gt"), _check_labels(_to_numpy(pred), "pred")
    if gt.ndim == 2:
        gt = gt[None]
    if pred.ndim == 2:
        pred = pred[None]
    if gt.ndim != 3 or tuple(gt.shape) != tuple(pred.shape):
        raise ValueError(f"gt and pred must both be (H,W) or (N,H,W) of equal shape, got {tuple(gt.shape)} and {tuple(pred.shape)}")
    return gt, pred


def _spacing_list(spacing, n: int) -> list:
    """One Spacing / (row, col[, slice]) / None for all n B-scans, or one per B-scan -> list of n."""
    if spacing is None or isinstance(spacing, Spacing):
        return [spacing] * n
    seq = list(spacing)
    if seq and all(isinstance(v, (int, float, np.number)) for v in seq):  # one (row, col[, slice])
        return [Spacing(*map(float, seq))] * n
    if len(seq) != n:
        raise ValueError(f"spacing: expected one value or {n}, got {len(seq)}")
    return [v if (v is None or isinstance(v, Spacing)) else Spacing(*map(float, v)) for v in seq]


def _str_list(values, n: int, what: str) -> list:
    """One name / None for all n B-scans, or one per B-scan -> list of n str-or-None."""
    if values is None or isinstance(values, str):
        return [values] * n
    seq = list(values)
    if len(seq) != n:
        raise ValueError(f"{what}: expected one value or {n}, got {len(seq)}")
    return [None if v is None else str(v) for v in seq]


# ------------------------------------------------------------------------- confusion


def confusion_per_image(gt, pred, num_classes: int, ignore_index: Optional[int] = IGNORE_INDEX) -> np.ndarray:
    """Per-B-scan confusion counts, int64 (N, K, K), rows = gt, cols = pred.

    Pixels where ``gt == ignore_index`` are left out. CUDA tensors are counted on
    the device (only the small result is copied back); everything else goes
    through numpy, one ``bincount`` of ``gt*K + pred`` per B-scan in small chunks.
    """
    K = int(num_classes)
    if K < 1:
        raise ValueError("num_classes must be >= 1")
    gt, pred = _as_batch(gt, pred)
    if not isinstance(gt, np.ndarray):
        return _confusion_torch(gt, pred, K, ignore_index)

    n = gt.shape[0]
    hw = int(np.prod(gt.shape[1:]))
    out = np.zeros((n, K, K), np.int64)
    if n == 0 or hw == 0:
        return out
    S = K * K + 1  # the last code collects ignored pixels and is dropped
    cdt = np.uint8 if S <= 256 else (np.uint16 if S <= 65536 else np.int64)

    pmin, pmax = int(pred.min()), int(pred.max())
    if pmin < 0 or pmax >= K:
        raise ValueError(f"pred holds labels outside 0..{K - 1} (min {pmin}, max {pmax})")
    gmin, gmax = int(gt.min()), int(gt.max())
    has_ignore = ignore_index is not None and (gmin <= ignore_index <= gmax)
    if gmin < 0 or gmax >= K:
        bad = (gt < 0) | (gt >= K)
        if ignore_index is not None:
            bad &= gt != ignore_index
        if bad.any():
            raise ValueError(f"gt holds labels outside 0..{K - 1} that are not ignore_index={ignore_index}: {np.unique(gt[bad])[:10].tolist()}")

    step = max(1, _CHUNK_PIXELS // hw)
    flat = out.reshape(n, K * K)
    for s in range(0, n, step):
        g = gt[s : s + step].reshape(-1, hw)
        code = g.astype(cdt) * cdt(K) + pred[s : s + step].reshape(-1, hw).astype(cdt)
        if has_ignore:
            np.putmask(code, g == ignore_index, K * K)
        for i in range(code.shape[0]):
            flat[s + i] = np.bincount(code[i], minlength=S)[: K * K]
    return out


def _confusion_torch(gt, pred, K: int, ignore_index: Optional[int]) -> np.ndarray:
    """The device path of :func:`confusion_per_image`: one offset ``torch.bincount`` per chunk."""
    import torch

    n = gt.shape[0]
    hw = int(np.prod(tuple(gt.shape[1:])))
    if n == 0 or hw == 0:
        return np.zeros((n, K, K), np.int64)
    pmin, pmax = int(pred.min()), int(pred.max())
    if pmin < 0 or pmax >= K:
        raise ValueError(f"pred holds labels outside 0..{K - 1} (min {pmin}, max {pmax})")
    S = K * K + 1
    res = []
    step = max(1, (1 << 24) // hw)
    for s in range(0, n, step):
        g = gt[s : s + step].reshape(-1, hw).long()
        p = pred[s : s + step].reshape(-1, hw).long()
        ign = (g == ignore_index) if ignore_index is not None else torch.zeros_like(g, dtype=torch.bool)
        if bool(((g < 0) | (g >= K))[~ign].any()):
            raise ValueError(f"gt holds labels outside 0..{K - 1} that are not ignore_index={ignore_index}")
        code = torch.where(ign, torch.full_like(g, K * K), g * K + p)
        code += torch.arange(g.shape[0], device=g.device)[:, None] * S
        cnt = torch.bincount(code.reshape(-1), minlength=g.shape[0] * S).reshape(-1, S)[:, : K * K]
        res.append(cnt.cpu())
    return torch.cat(res).numpy().astype(np.int64).reshape(n, K, K)


def confusion_matrix_torch(gt, pred, num_classes: int, ignore_index: Optional[int] = IGNORE_INDEX):
    """Pooled confusion counts of label tensors, on their device: LongTensor (K, K), rows = gt.

    For training validation: the sum over B-scans of :func:`confusion_per_image`, counted
    by one ``torch.bincount`` of ``gt*K + pred`` over the pixels where ``gt != ignore_index``
    (``None``: all pixels). Any equal shapes. Labels are not range-checked (that would
    synchronise with the device); one outside 0..K-1 makes the reshape fail.
    """
    import torch

    k = int(num_classes)
    if tuple(gt.shape) != tuple(pred.shape):
        raise ValueError(f"gt and pred must have equal shapes, got {tuple(gt.shape)} and {tuple(pred.shape)}")
    gt, pred = gt.long(), pred.long()
    if ignore_index is not None:
        valid = gt != ignore_index
        gt, pred = gt[valid], pred[valid]
    idx = (gt * k + pred).flatten()
    return torch.bincount(idx, minlength=k * k).view(k, k)


def dice_from_confusion_torch(conf):
    """Per-class Dice (float64, K) from a pooled (K, K) confusion tensor; NaN where the class
    is absent in both reference and prediction. Equals ``scores_from_confusion(conf)["dice"]``."""
    import torch

    conf = conf.double()
    tp = conf.diag()
    denom = conf.sum(0) + conf.sum(1)
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.full_like(tp, float("nan")))


def scores_from_confusion(conf) -> dict[str, np.ndarray]:
    """Dice, IoU, precision, recall per class from confusion counts (..., K, K).

    Returns arrays of shape (..., K): NaN where a score is undefined (Dice/IoU:
    class absent in both; precision: nothing predicted; recall: nothing in gt).
    Also returns ``gt_pixels`` / ``pred_pixels`` (..., K).
    """
    conf = np.asarray(conf)
    gt_i, pr_i = conf.sum(-1), conf.sum(-2)
    conf = conf.astype(np.float64)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    gt_n, pr_n = gt_i.astype(np.float64), pr_i.astype(np.float64)
    fp, fn = pr_n - tp, gt_n - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "dice": 2 * tp / (2 * tp + fp + fn),
            "iou": tp / (tp + fp + fn),
            "precision": tp / pr_n,
            "recall": tp / gt_n,
            "gt_pixels": gt_i,
            "pred_pixels": pr_i,
        }


def pool_by_group(conf: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum per-B-scan confusions (N, K, K) by integer group code (N,); -1 = no group.

    Returns (the codes present, ascending; their pooled confusions (G, K, K)), e.g. the
    3-D confusion of each volume.
    """
    groups = np.asarray(groups)
    keep = groups >= 0
    ids, inv = np.unique(groups[keep], return_inverse=True)
    out = np.zeros((ids.size,) + conf.shape[1:], np.int64)
    np.add.at(out, inv.reshape(-1), conf[keep])
    return ids, out


def _nanmean(x: np.ndarray, axis=0):
    """Mean over ``axis`` of the finite values, and how many there were (NaN where none)."""
    ok = np.isfinite(x)
    cnt = ok.sum(axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, x, 0.0).sum(axis) / cnt, cnt


# ------------------------------------------------------------------------------ HD95

_CROSS = ndimage.generate_binary_structure(2, 1)


def _sampling(spacing) -> tuple[float, float]:
    if spacing is None:
        return (1.0, 1.0)
    if isinstance(spacing, Spacing):
        return (float(spacing.row), float(spacing.col))
    return (float(spacing[0]), float(spacing[1]))


def hd95(gt_mask, pred_mask, spacing=None) -> float:
    """Symmetric 95th-percentile Hausdorff distance between two 2-D binary masks.

    Definition: ``HD95_DEFINITION`` (medpy's hd95: percentile of the union of the
    two directed distance sets, not the max of two directed percentiles).
    Distances use ``edt(sampling=(row, col))`` so anisotropic pixels count in mm;
    with ``spacing=None`` the unit is pixels. NaN if either mask is empty. The
    masks are cropped to their joint bounding box first: distances between
    surface pixels do not depend on the crop, and it makes the EDT cheap.
    """
    a = np.asarray(_to_numpy(gt_mask), dtype=bool)
    b = np.asarray(_to_numpy(pred_mask), dtype=bool)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"hd95 needs two 2-D masks of equal shape, got {a.shape} and {b.shape}")
    if not a.any() or not b.any():
        return math.nan
    u = a | b
    rows, cols = np.flatnonzero(u.any(1)), np.flatnonzero(u.any(0))
    sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    a, b = a[sl], b[sl]
    # border_value=0: pixels on the crop edge are surface, as they would be in the
    # full image (nothing of either mask lies outside the crop).
    sa = a & ~ndimage.binary_erosion(a, structure=_CROSS, border_value=0)
    sb = b & ~ndimage.binary_erosion(b, structure=_CROSS, border_value=0)
    samp = _sampling(spacing)
    d_ab = ndimage.distance_transform_edt(~sb, sampling=samp)[sa]
    d_ba = ndimage.distance_transform_edt(~sa, sampling=samp)[sb]
    return float(np.percentile(np.concatenate([d_ab, d_ba]), 95))


def hd95_per_image(gt, pred, num_classes: int, spacing=None, ignore_index: Optional[int] = IGNORE_INDEX) -> np.ndarray:
    """HD95 per B-scan and foreground class, float (N, K).

    Column 0 (background) is NaN: its surface is the whole fluid boundary plus the
    image edge, which says nothing useful. NaN also where either mask is empty.
    ``spacing``: one Spacing / (row, col) for all, a sequence per B-scan, or None
    (pixels). Predicted pixels under ``ignore_index`` in gt are ignored.
    """
    gt, pred = _as_batch(gt, pred)
    gt, pred = _to_numpy(gt), _to_numpy(pred)
    n = gt.shape[0]
    sp = _spacing_list(spacing, n)
    out = np.full((n, int(num_classes)), np.nan)
    for i in range(n):
        g, p = gt[i], pred[i]
        valid = (g != ignore_index) if ignore_index is not None else True
        for c in range(1, int(num_classes)):
            a, b = g == c, (p == c) & valid
            if a.any() and b.any():
                out[i, c] = hd95(a, b, sp[i])
    return out


# ----------------------------------------------------------------------------- AUC


def roc_auc(labels, scores) -> float:
    """ROC AUC by the Mann-Whitney U statistic with mid-ranks for ties.

    Equals the probability that a random positive scores above a random negative
    (ties count one half). NaN when only one label kind is present.
    """
    y = np.asarray(labels, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    ranks = np.empty(len(s))
    # mid-rank of each tie group: mean of ranks first..last (1-based)
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    ends = np.r_[starts[1:], len(s)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
