"""Segmentation metrics from hard label maps, reported honestly.

Everything starts from per-B-scan confusion counts (rows = reference, cols =
prediction), so the three aggregations below come from one cheap pass:

* ``pooled``: one confusion matrix summed over the whole set.
* ``per_bscan``: the mean over B-scans of each B-scan's score.
* ``per_volume``: each volume's pooled (3-D) score, averaged over volumes.

A class absent from both reference and prediction in a B-scan (or volume) has
no defined Dice/IoU there: it is *excluded* from the mean, never scored 1 (which
inflates scores on the many fluid-free B-scans) nor 0. Precision is undefined
(NaN, excluded) where nothing is predicted, recall where nothing is in the
reference. NaN becomes ``null`` in the JSON-ready dicts. The headline "mean
foreground Dice" is the mean over classes 1..K-1 that have a value.

``seed_dice`` / ``seed_iou`` reproduce the seed's flawed measures only so old
tables can be compared; they are not headline figures.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage

from octseg.constants import FLUID_CLASSES, IGNORE_INDEX, RETOUCH_CLASSES
from octseg.data.types import Spacing

__all__ = [
    "confusion_per_image",
    "scores_from_confusion",
    "hd95",
    "hd95_per_image",
    "roc_auc",
    "MetricAccumulator",
    "segmentation_report",
    "retouch_volume_metrics",
    "format_table",
    "seed_dice",
    "seed_iou",
    "HD95_DEFINITION",
]

METRICS = ("dice", "iou", "precision", "recall")
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


def _nanmean(x: np.ndarray, axis=0):
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


# ------------------------------------------------------------------------- helpers


def _js(x):
    """NaN/inf -> None, numpy scalars -> Python: the dicts must dump as strict JSON."""
    if x is None:
        return None
    if isinstance(x, (np.integer, int)) and not isinstance(x, bool):
        return int(x)
    x = float(x)
    return x if math.isfinite(x) else None


def _per_class(values, names) -> dict:
    return {n: _js(v) for n, v in zip(names, values)}


def _default_names(k: int) -> tuple[str, ...]:
    if k == len(RETOUCH_CLASSES):
        return RETOUCH_CLASSES
    if k == len(FLUID_CLASSES):
        return FLUID_CLASSES
    return tuple(f"class{i}" for i in range(k))


def _spacing_list(spacing, n: int) -> list:
    if spacing is None or isinstance(spacing, Spacing):
        return [spacing] * n
    seq = list(spacing)
    if seq and all(isinstance(v, (int, float, np.number)) for v in seq):  # one (row, col[, slice])
        return [Spacing(*map(float, seq))] * n
    if len(seq) != n:
        raise ValueError(f"spacing: expected one value or {n}, got {len(seq)}")
    return [v if (v is None or isinstance(v, Spacing)) else Spacing(*map(float, v)) for v in seq]


def _str_list(values, n: int, what: str) -> list:
    if values is None or isinstance(values, str):
        return [values] * n
    seq = list(values)
    if len(seq) != n:
        raise ValueError(f"{what}: expected one value or {n}, got {len(seq)}")
    return [None if v is None else str(v) for v in seq]


def _group_sum(conf: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    out = np.zeros((n_groups,) + conf.shape[1:], np.int64)
    keep = groups >= 0
    np.add.at(out, groups[keep], conf[keep])
    return out


# --------------------------------------------------------------------- accumulator


class MetricAccumulator:
    """Streams batches of hard label maps; ``compute()`` returns the report dict.

    Only per-B-scan confusion counts (K*K int64 each) and HD95 values are kept,
    so evaluation never holds all predictions. ``hd95``: "auto" computes it in mm
    for B-scans whose spacing is known, "px" in pixels for all, "off" never.
    Spacing must be that of the label maps as passed (rescale it after resizing).
    """

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None,
                 ignore_index: Optional[int] = IGNORE_INDEX, hd95: str = "auto"):
        self.K = int(num_classes)
        self.names = tuple(class_names) if class_names is not None else _default_names(self.K)
        if len(self.names) != self.K:
            raise ValueError(f"{len(self.names)} class names for {self.K} classes")
        if hd95 not in ("auto", "px", "off"):
            raise ValueError("hd95 must be 'auto', 'px' or 'off'")
        self.ignore_index = ignore_index
        self.hd95_mode = hd95
        self._conf: list[np.ndarray] = []
        self._vol: list[np.ndarray] = []
        self._ven: list[np.ndarray] = []
        self._hd: list[np.ndarray] = []
        self._hd_done: list[np.ndarray] = []
        self._vol_names: list[str] = []
        self._vol_lookup: dict[str, int] = {}
        self._vol_spacing: dict[int, Spacing] = {}
        self._vol_vendor: dict[int, str] = {}
        self._ven_names: list[str] = []
        self._ven_lookup: dict[str, int] = {}

    def _code(self, value, lookup, names) -> int:
        if value is None:
            return -1
        if value not in lookup:
            lookup[value] = len(names)
            names.append(value)
        return lookup[value]

    def update(self, gt, pred, volumes=None, vendors=None, spacings=None) -> None:
        """Add a batch: gt/pred (H,W) or (N,H,W); volumes/vendors/spacings are one
        value for the batch or one per B-scan (None = unknown)."""
        gt, pred = _as_batch(gt, pred)
        n = gt.shape[0]
        conf = confusion_per_image(gt, pred, self.K, self.ignore_index)
        vols = _str_list(volumes, n, "volumes")
        vens = _str_list(vendors, n, "vendors")
        sps = _spacing_list(spacings, n)
        vcode = np.array([self._code(v, self._vol_lookup, self._vol_names) for v in vols], np.int64)
        ecode = np.array([self._code(v, self._ven_lookup, self._ven_names) for v in vens], np.int64)
        for vc, ec, sp in zip(vcode, ecode, sps):
            if vc >= 0:
                if sp is not None:
                    self._vol_spacing.setdefault(int(vc), sp)
                if ec >= 0:
                    self._vol_vendor.setdefault(int(vc), self._ven_names[ec])

        hd = np.full((n, self.K), np.nan)
        done = np.zeros(n, bool)
        if self.hd95_mode != "off":
            todo = [i for i in range(n) if self.hd95_mode == "px" or sps[i] is not None]
            if todo:
                g_np, p_np = _to_numpy(gt), _to_numpy(pred)
                sp_todo = [None if self.hd95_mode == "px" else sps[i] for i in todo]
                hd[todo] = hd95_per_image(g_np[todo], p_np[todo], self.K, sp_todo, self.ignore_index)
                done[todo] = True
        self._conf.append(conf)
        self._vol.append(vcode)
        self._ven.append(ecode)
        self._hd.append(hd)
        self._hd_done.append(done)

    # -- state ------------------------------------------------------------------
    def _state(self):
        K = self.K
        if not self._conf:
            return np.zeros((0, K, K), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, K)), np.zeros(0, bool)
        return (np.concatenate(self._conf), np.concatenate(self._vol), np.concatenate(self._ven),
                np.concatenate(self._hd), np.concatenate(self._hd_done))

    def _summary(self, conf, vol, hd, done) -> dict:
        names = self.names
        per = scores_from_confusion(conf)
        pooled = scores_from_confusion(conf.sum(0))
        out: dict[str, Any] = {"n_bscans": int(conf.shape[0])}
        out["pooled"] = {m: _per_class(pooled[m], names) for m in METRICS}
        out["pooled"]["gt_pixels"] = _per_class(pooled["gt_pixels"], names)
        out["pooled"]["pred_pixels"] = _per_class(pooled["pred_pixels"], names)

        def agg(scores):
            d, cnt = {}, {}
            for m in METRICS:
                mean, c = _nanmean(scores[m])
                d[m] = _per_class(mean, names)
                cnt[m] = c
            d["counted"] = _per_class(cnt["dice"], names)
            d["counted_precision"] = _per_class(cnt["precision"], names)
            d["counted_recall"] = _per_class(cnt["recall"], names)
            return d, _nanmean(scores["dice"])[0]

        out["per_bscan"], bscan_dice = agg(per)
        vol_ids = np.unique(vol[vol >= 0])
        if vol_ids.size:
            remap = np.full(len(self._vol_names), -1, np.int64)
            remap[vol_ids] = np.arange(vol_ids.size)
            vconf = _group_sum(conf, np.where(vol >= 0, remap[np.maximum(vol, 0)], -1), vol_ids.size)
            out["per_volume"], vol_dice = agg(scores_from_confusion(vconf))
            out["n_volumes"] = int(vol_ids.size)
        else:
            out["per_volume"], vol_dice = None, None
            out["n_volumes"] = 0

        def mfd(d):
            if d is None:
                return None
            return _js(_nanmean(np.asarray(d[1:]))[0]) if self.K > 1 else None

        out["mean_foreground_dice"] = {"pooled": mfd(pooled["dice"]), "per_bscan": mfd(bscan_dice),
                                       "per_volume": mfd(vol_dice)}
        if done.any():
            present = (per["gt_pixels"] > 0) | (per["pred_pixels"] > 0)
            h = hd[done]
            pres = present[done]
            defined = np.isfinite(h)
            means, cnt = _nanmean(h)
            med = [np.median(h[defined[:, c], c]) if cnt[c] else math.nan for c in range(self.K)]
            undef = (pres & ~defined).sum(0)
            fg = np.arange(self.K) > 0
            out["hd95"] = {
                "unit": "px" if self.hd95_mode == "px" else "mm",
                "definition": HD95_DEFINITION,
                "mean": _per_class(means, names),
                "median": _per_class(med, names),
                "counted": _per_class(np.where(fg, cnt, 0), names),
                "undefined": {n: (int(u) if f else None) for n, u, f in zip(names, undef, fg)},
                "not_computed": int((~done).sum()),
            }
        return out

    def compute(self, tables: bool = True) -> dict:
        """The report dict (JSON-ready). ``tables=False`` leaves out the per-B-scan
        and per-volume tables, which are large for big sets."""
        conf, vol, ven, hd, done = self._state()
        rep: dict[str, Any] = {"classes": list(self.names)}
        rep.update(self._summary(conf, vol, hd, done))
        if (ven >= 0).any():
            groups = {name: ven == i for i, name in enumerate(self._ven_names)}
            if (ven < 0).any():
                groups["unknown"] = ven < 0
            rep["by_vendor"] = {name: self._summary(conf[m], vol[m], hd[m], done[m])
                                for name, m in groups.items() if m.any()}
        if tables:
            vol_ids = np.unique(vol[vol >= 0])
            if vol_ids.size:
                remap = np.full(len(self._vol_names), -1, np.int64)
                remap[vol_ids] = np.arange(vol_ids.size)
                vconf = _group_sum(conf, np.where(vol >= 0, remap[np.maximum(vol, 0)], -1), vol_ids.size)
                vd = scores_from_confusion(vconf)["dice"]
                rep["per_volume_table"] = {self._vol_names[v]: _per_class(vd[j], self.names) for j, v in enumerate(vol_ids)}
            else:
                rep["per_volume_table"] = None
            d = scores_from_confusion(conf)["dice"]
            table = []
            for i in range(conf.shape[0]):
                row = {"index": i, "volume": self._vol_names[vol[i]] if vol[i] >= 0 else None,
                       "vendor": self._ven_names[ven[i]] if ven[i] >= 0 else None,
                       "dice": _per_class(d[i], self.names)}
                if done[i]:
                    row["hd95"] = _per_class(hd[i], self.names)
                table.append(row)
            rep["per_bscan_table"] = table
        return rep

    def retouch(self) -> dict:
        """RETOUCH-style volume metrics from what was streamed (see
        :func:`retouch_volume_metrics`); needs volume ids."""
        conf, vol, ven, _, _ = self._state()
        vol_ids = np.unique(vol[vol >= 0])
        if not vol_ids.size:
            raise ValueError("RETOUCH metrics need volume ids (pass volumes= to update)")
        remap = np.full(len(self._vol_names), -1, np.int64)
        remap[vol_ids] = np.arange(vol_ids.size)
        vconf = _group_sum(conf, np.where(vol >= 0, remap[np.maximum(vol, 0)], -1), vol_ids.size)
        names = [self._vol_names[v] for v in vol_ids]
        vendors = [self._vol_vendor.get(int(v)) for v in vol_ids]
        spacings = [self._vol_spacing.get(int(v)) for v in vol_ids]
        return _retouch_from_confusion(vconf, names, spacings, vendors, self.names)


def segmentation_report(gt, pred, num_classes: int, class_names=None, volumes=None, vendors=None,
                        spacing=None, ignore_index: Optional[int] = IGNORE_INDEX, hd95: str = "auto",
                        tables: bool = True) -> dict:
    """One-shot report over (N,H,W) label maps; see :class:`MetricAccumulator`.

    Keys: classes, n_bscans, n_volumes, pooled, per_bscan, per_volume,
    mean_foreground_dice, hd95 (when computed), by_vendor (when vendors given),
    per_volume_table, per_bscan_table. ``per_volume`` (and its table) is null
    without volume ids; ``by_vendor`` puts B-scans of unknown vendor under "unknown".
    """
    acc = MetricAccumulator(num_classes, class_names, ignore_index=ignore_index, hd95=hd95)
    acc.update(gt, pred, volumes=volumes, vendors=vendors, spacings=spacing)
    return acc.compute(tables=tables)


# ------------------------------------------------------------------------- RETOUCH


def _retouch_from_confusion(vconf, vol_names, spacings, vendors, class_names) -> dict:
    K = len(class_names)
    fg = list(range(1, K))
    fg_names = [class_names[c] for c in fg]
    sc = scores_from_confusion(vconf)
    gt_vox, pr_vox = sc["gt_pixels"], sc["pred_pixels"]
    voxel_mm3 = np.array([sp.row * sp.col * sp.slice if (sp is not None and sp.slice is not None) else np.nan
                          for sp in spacings])
    gt_mm3, pr_mm3 = gt_vox * voxel_mm3[:, None], pr_vox * voxel_mm3[:, None]
    avd = np.abs(gt_mm3 - pr_mm3)

    def summary(m: np.ndarray) -> dict:
        dm, dc = _nanmean(sc["dice"][m][:, fg])
        am, ac = _nanmean(avd[m][:, fg])
        known = bool(np.isfinite(voxel_mm3[m]).all())
        score = pr_mm3[m] if known else pr_vox[m]
        auc, npos, nneg = {}, {}, {}
        for c, name in zip(fg, fg_names):
            lab = gt_vox[m][:, c] > 0
            auc[name] = _js(roc_auc(lab, score[:, c]))
            npos[name], nneg[name] = int(lab.sum()), int((~lab).sum())
        return {
            "n_volumes": int(m.sum()),
            "dice": _per_class(dm, fg_names), "dice_counted": _per_class(dc, fg_names),
            "mean_foreground_dice": _js(_nanmean(dm)[0]),
            "avd_mm3": _per_class(am, fg_names), "avd_counted": _per_class(ac, fg_names),
            "auc": auc, "auc_positives": npos, "auc_negatives": nneg,
            "auc_score_unit": "mm3" if known else "voxels",
        }

    out: dict[str, Any] = {"classes": fg_names, "volumes": {}}
    for j, name in enumerate(vol_names):
        out["volumes"][name] = {
            "vendor": vendors[j],
            "dice": _per_class(sc["dice"][j, fg], fg_names),
            "avd_mm3": _per_class(avd[j, fg], fg_names),
            "gt_mm3": _per_class(gt_mm3[j, fg], fg_names),
            "pred_mm3": _per_class(pr_mm3[j, fg], fg_names),
            "gt_voxels": _per_class(gt_vox[j, fg], fg_names),
            "pred_voxels": _per_class(pr_vox[j, fg], fg_names),
        }
    allm = np.ones(len(vol_names), bool)
    out["overall"] = summary(allm)
    ven = np.array([v if v is not None else "unknown" for v in vendors], dtype=object)
    if any(v is not None for v in vendors):
        out["by_vendor"] = {v: summary(ven == v) for v in sorted(set(ven.tolist()))}
    return out


def retouch_volume_metrics(gt_volumes, pred_volumes, spacings, vendors, num_classes: int,
                           class_names=None, volume_ids=None, ignore_index: Optional[int] = IGNORE_INDEX) -> dict:
    """RETOUCH challenge metrics per volume and foreground class, also by vendor.

    * Dice: 3-D pooled over the volume; excluded from means where the class is
      absent in both (NaN/null).
    * AVD: ``|voxels_gt - voxels_pred| * row*col*slice`` mm^3; NaN where the
      spacing or ``Spacing.slice`` is unknown. Voxel size must match the label maps.
    * Detection AUC: label = class present in the reference volume, score =
      predicted volume (mm^3 if every spacing is known, else voxels), by
      :func:`roc_auc`; NaN when all volumes have the same label.
    ``gt_volumes``/``pred_volumes``: sequences of (S,H,W) label maps.
    """
    n = len(gt_volumes)
    if len(pred_volumes) != n:
        raise ValueError("gt_volumes and pred_volumes differ in length")
    sps = _spacing_list(spacings, n)
    vens = _str_list(vendors, n, "vendors")
    ids = [str(i) for i in range(n)] if volume_ids is None else [str(v) for v in volume_ids]
    if len(set(ids)) != n:
        raise ValueError("volume_ids must be unique")
    acc = MetricAccumulator(num_classes, class_names, ignore_index=ignore_index, hd95="off")
    for g, p, vid, sp, ve in zip(gt_volumes, pred_volumes, ids, sps, vens):
        acc.update(g, p, volumes=vid, vendors=ve, spacings=sp)
    return acc.retouch()


# --------------------------------------------------------------------------- table


def _f(x, width=6, digits=3) -> str:
    return ("-" if x is None else f"{x:.{digits}f}").rjust(width)


def _block(rep: dict, title: str) -> list[str]:
    names = rep.get("classes") or list(rep["pooled"]["dice"].keys())
    pv = rep.get("per_volume")
    hd = rep.get("hd95")
    head = f"{'class':<12}| {'pooled':^27} | {'per B-scan':^34} |"
    sub = f"{'':<12}| {'Dice':>6}{'IoU':>7}{'Prec':>7}{'Rec':>7} | {'Dice':>6}{'IoU':>7}{'Prec':>7}{'Rec':>7}{'n':>7} |"
    if pv is not None:
        head += f" {'per volume':^13} |"
        sub += f" {'Dice':>6}{'n':>7} |"
    if hd is not None:
        head += f" HD95 ({hd['unit']}) per B-scan"
        sub += f" {'mean':>7}{'median':>8}{'n':>6}{'undef':>6}"
    lines = [f"== {title} ({rep['n_bscans']} B-scans, {rep.get('n_volumes', 0)} volumes) ==", head, sub,
             "-" * len(sub)]
    po, pb = rep["pooled"], rep["per_bscan"]
    for c in names:
        row = f"{c:<12}| " + "".join(_f(po[m][c], 6 if i == 0 else 7) for i, m in enumerate(METRICS))
        row += " | " + "".join(_f(pb[m][c], 6 if i == 0 else 7) for i, m in enumerate(METRICS))
        row += f"{pb['counted'][c]:>7} |"
        if pv is not None:
            row += f" {_f(pv['dice'][c])}{pv['counted'][c]:>7} |"
        if hd is not None:
            und = hd["undefined"][c]
            row += f" {_f(hd['mean'][c], 7)}{_f(hd['median'][c], 8)}{hd['counted'][c]:>6}{'-' if und is None else und:>6}"
        lines.append(row)
    m = rep["mean_foreground_dice"]
    lines.append(f"mean foreground Dice: pooled {_f(m['pooled'], 0)}, per B-scan {_f(m['per_bscan'], 0)}, "
                 f"per volume {_f(m['per_volume'], 0)}")
    return lines


def format_table(report: dict) -> str:
    """Readable text table of a :func:`segmentation_report` dict, one block per vendor.

    '-' marks an undefined value (e.g. class absent everywhere); n = B-scans
    (volumes) counted, i.e. where the class is in the reference or the prediction.
    """
    lines = _block(report, "all")
    for vendor, sub in (report.get("by_vendor") or {}).items():
        lines.append("")
        lines += _block(dict(sub, classes=report["classes"]), f"vendor {vendor}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- seed's own


def seed_dice(probs, gt_onehot, smooth: float = 0.0) -> np.ndarray:
    """The seed's "soft" Dice, per class, background included: NOT a headline figure.

    ``2*sum(p*g) / (sum p + sum g)`` summed over batch and pixels, per class
    (probs, gt_onehot: (N,K,H,W)); the seed's table reported the mean over
    classes. Flawed: soft probabilities, background dominates the mean, and
    pooling hides per-B-scan failures. Kept only to set results beside the seed's.
    """
    p = _to_numpy(probs).astype(np.float64)
    g = _to_numpy(gt_onehot).astype(np.float64)
    if p.shape != g.shape or p.ndim < 2:
        raise ValueError(f"probs and gt_onehot must be (N,K,...) of equal shape, got {p.shape} and {g.shape}")
    axes = (0,) + tuple(range(2, p.ndim))
    inter = (p * g).sum(axes)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (2 * inter + smooth) / (p.sum(axes) + g.sum(axes) + smooth)


def seed_iou(pred, gt, num_classes: int, ignore_index: Optional[int] = IGNORE_INDEX) -> np.ndarray:
    """The seed's IoU per class: per B-scan, absent-in-both scored 1, then averaged.

    NOT a headline figure: scoring absent-absent as 1 rewards predicting nothing
    on the many fluid-free B-scans. Kept only for comparison with the seed's table.
    """
    conf = confusion_per_image(gt, pred, num_classes, ignore_index)
    iou = scores_from_confusion(conf)["iou"]
    return np.where(np.isnan(iou), 1.0, iou).mean(0)
