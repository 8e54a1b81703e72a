"""RETOUCH challenge metrics per volume: 3-D Dice, absolute volume difference (mm³) and
detection AUC, overall and by vendor.

Owns the volume-level figures that ``octseg evaluate`` reports beside the segmentation
report. They are built from the same per-B-scan confusion counts (pooled per volume), so
the Dice here equals the report's per-volume Dice.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from octseg.constants import IGNORE_INDEX
from octseg.metrics.functional import _nanmean, _spacing_list, _str_list, pool_by_group, roc_auc, scores_from_confusion
from octseg.metrics.report import BScanMeasures, _js, _per_class, class_names_for, first_seen_codes, measure_bscans

__all__ = ["retouch_volume_metrics", "retouch_from_measures"]


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


def retouch_from_measures(measures: BScanMeasures, class_names: Sequence[str]) -> dict:
    """RETOUCH metrics of per-B-scan measures, pooled per volume id (see
    :func:`retouch_volume_metrics`). A volume's spacing and vendor are the first known
    ones among its B-scans. Raises ValueError without volume ids."""
    vol, vol_names = first_seen_codes(measures.volumes)
    vol_ids, vconf = pool_by_group(measures.conf, vol)
    if not vol_ids.size:
        raise ValueError("RETOUCH metrics need volume ids (pass volumes= to update)")
    spacing: dict[int, Any] = {}
    vendor: dict[int, str] = {}
    for v, ve, sp in zip(vol.tolist(), measures.vendors, measures.spacings):
        if v >= 0:
            if sp is not None:
                spacing.setdefault(v, sp)
            if ve is not None:
                vendor.setdefault(v, ve)
    ids = vol_ids.tolist()
    return _retouch_from_confusion(vconf, [vol_names[v] for v in ids], [spacing.get(v) for v in ids],
                                   [vendor.get(v) for v in ids], tuple(class_names))


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
    names = class_names_for(num_classes, class_names)
    parts = [measure_bscans(g, p, len(names), volumes=vid, vendors=ve, spacings=sp, ignore_index=ignore_index,
                            hd95="off")
             for g, p, vid, sp, ve in zip(gt_volumes, pred_volumes, ids, sps, vens)]
    return retouch_from_measures(BScanMeasures.concat(parts, len(names)), names)
