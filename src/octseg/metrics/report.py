"""Segmentation reports: per-B-scan measures aggregated three ways, as JSON-ready dicts and text.

Owns the shape of a report (what :func:`segmentation_report`, ``MetricAccumulator.compute``,
``octseg evaluate`` and training's metrics.json hold) and its text table
(:func:`format_table`). Everything starts from per-B-scan confusion counts (rows =
reference, cols = prediction), so the three aggregations come from one cheap pass:

* ``pooled``: one confusion matrix summed over the whole set.
* ``per_bscan``: the mean over B-scans of each B-scan's score.
* ``per_volume``: each volume's pooled (3-D) score, averaged over volumes.

A class absent from both reference and prediction in a B-scan (or volume) has
no defined Dice/IoU there: it is *excluded* from the mean, never scored 1 (which
inflates scores on the many fluid-free B-scans) nor 0. Precision is undefined
(NaN, excluded) where nothing is predicted, recall where nothing is in the
reference. NaN becomes ``null`` in the JSON-ready dicts. The headline "mean
foreground Dice" is the mean over classes 1..K-1 that have a value.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

from octseg.constants import FLUID_CLASSES, IGNORE_INDEX, RETOUCH_CLASSES
from octseg.metrics.functional import (
    HD95_DEFINITION,
    _as_batch,
    _nanmean,
    _spacing_list,
    _str_list,
    _to_numpy,
    confusion_per_image,
    hd95_per_image,
    pool_by_group,
    scores_from_confusion,
)

__all__ = ["segmentation_report", "build_report", "format_table", "measure_bscans", "BScanMeasures", "METRICS"]

METRICS = ("dice", "iou", "precision", "recall")
HD95_MODES = ("auto", "px", "off")


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


def class_names_for(num_classes: int, class_names: Optional[Sequence[str]] = None) -> tuple[str, ...]:
    """The given names, checked against K, or the known label set with K classes (class0.. else)."""
    k = int(num_classes)
    if class_names is not None:
        names = tuple(class_names)
    elif k == len(RETOUCH_CLASSES):
        names = RETOUCH_CLASSES
    elif k == len(FLUID_CLASSES):
        names = FLUID_CLASSES
    else:
        names = tuple(f"class{i}" for i in range(k))
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} classes")
    return names


def first_seen_codes(values) -> tuple[np.ndarray, list]:
    """Names -> int64 codes in order of first appearance (None -> -1), and the names in that order."""
    lookup: dict = {}
    codes = np.array([-1 if v is None else lookup.setdefault(v, len(lookup)) for v in values], np.int64)
    return codes, list(lookup)


# ------------------------------------------------------------------ per-B-scan record


class BScanMeasures(NamedTuple):
    """What every report is built from, one entry per B-scan (in input order)."""

    conf: np.ndarray  # int64 (N, K, K) confusion counts, rows = gt
    hd95: np.ndarray  # float (N, K) HD95, NaN where undefined or not computed
    hd95_done: np.ndarray  # bool (N,): HD95 computed for this B-scan
    volumes: list  # volume id or None, per B-scan
    vendors: list  # vendor name or None
    spacings: list  # Spacing or None

    @classmethod
    def concat(cls, parts: Sequence["BScanMeasures"], num_classes: int) -> "BScanMeasures":
        """Join measures in order (no parts: N = 0)."""
        K = int(num_classes)
        if not parts:
            return cls(np.zeros((0, K, K), np.int64), np.zeros((0, K)), np.zeros(0, bool), [], [], [])
        if len(parts) == 1:
            return parts[0]
        return cls(np.concatenate([p.conf for p in parts]), np.concatenate([p.hd95 for p in parts]),
                   np.concatenate([p.hd95_done for p in parts]), [v for p in parts for v in p.volumes],
                   [v for p in parts for v in p.vendors], [v for p in parts for v in p.spacings])


def measure_bscans(gt, pred, num_classes: int, volumes=None, vendors=None, spacings=None,
                   ignore_index: Optional[int] = IGNORE_INDEX, hd95: str = "auto") -> BScanMeasures:
    """Per-B-scan confusion counts and HD95 of (H,W) or (N,H,W) hard label maps.

    ``volumes``/``vendors``/``spacings``: one value for all or one per B-scan (None =
    unknown). ``hd95``: "auto" computes it in mm for B-scans whose spacing is known,
    "px" in pixels for all, "off" never. Spacing must be that of the label maps as passed.
    """
    if hd95 not in HD95_MODES:
        raise ValueError("hd95 must be 'auto', 'px' or 'off'")
    K = int(num_classes)
    gt, pred = _as_batch(gt, pred)
    n = gt.shape[0]
    conf = confusion_per_image(gt, pred, K, ignore_index)
    vols = _str_list(volumes, n, "volumes")
    vens = _str_list(vendors, n, "vendors")
    sps = _spacing_list(spacings, n)
    hd = np.full((n, K), np.nan)
    done = np.zeros(n, bool)
    if hd95 != "off":
        todo = [i for i in range(n) if hd95 == "px" or sps[i] is not None]
        if todo:
            g_np, p_np = _to_numpy(gt), _to_numpy(pred)
            sp_todo = [None if hd95 == "px" else sps[i] for i in todo]
            hd[todo] = hd95_per_image(g_np[todo], p_np[todo], K, sp_todo, ignore_index)
            done[todo] = True
    return BScanMeasures(conf, hd, done, vols, vens, sps)


# -------------------------------------------------------------------------- report


def _summary(conf, vol, hd, done, names, hd95_mode: str) -> dict:
    """pooled / per_bscan / per_volume / mean_foreground_dice / hd95 of one set of B-scans."""
    K = len(names)
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
    vol_ids, vconf = pool_by_group(conf, vol)
    if vol_ids.size:
        out["per_volume"], vol_dice = agg(scores_from_confusion(vconf))
        out["n_volumes"] = int(vol_ids.size)
    else:
        out["per_volume"], vol_dice = None, None
        out["n_volumes"] = 0

    def mfd(d):
        if d is None:
            return None
        return _js(_nanmean(np.asarray(d[1:]))[0]) if K > 1 else None

    out["mean_foreground_dice"] = {"pooled": mfd(pooled["dice"]), "per_bscan": mfd(bscan_dice),
                                   "per_volume": mfd(vol_dice)}
    if done.any():
        present = (per["gt_pixels"] > 0) | (per["pred_pixels"] > 0)
        h = hd[done]
        pres = present[done]
        defined = np.isfinite(h)
        means, cnt = _nanmean(h)
        med = [np.median(h[defined[:, c], c]) if cnt[c] else math.nan for c in range(K)]
        undef = (pres & ~defined).sum(0)
        fg = np.arange(K) > 0
        out["hd95"] = {
            "unit": "px" if hd95_mode == "px" else "mm",
            "definition": HD95_DEFINITION,
            "mean": _per_class(means, names),
            "median": _per_class(med, names),
            "counted": _per_class(np.where(fg, cnt, 0), names),
            "undefined": {n: (int(u) if f else None) for n, u, f in zip(names, undef, fg)},
            "not_computed": int((~done).sum()),
        }
    return out


def build_report(measures: BScanMeasures, class_names: Sequence[str], hd95_mode: str = "auto",
                 tables: bool = True) -> dict:
    """The report dict (JSON-ready) of per-B-scan measures; see :func:`segmentation_report`.

    ``hd95_mode`` only names the HD95 unit ("px": pixels, else mm). ``tables=False``
    leaves out the per-B-scan and per-volume tables, which are large for big sets.
    """
    names = tuple(class_names)
    conf, hd, done = measures.conf, measures.hd95, measures.hd95_done
    vol, vol_names = first_seen_codes(measures.volumes)
    ven, ven_names = first_seen_codes(measures.vendors)
    rep: dict[str, Any] = {"classes": list(names)}
    rep.update(_summary(conf, vol, hd, done, names, hd95_mode))
    if (ven >= 0).any():
        groups = {name: ven == i for i, name in enumerate(ven_names)}
        if (ven < 0).any():
            groups["unknown"] = ven < 0
        rep["by_vendor"] = {name: _summary(conf[m], vol[m], hd[m], done[m], names, hd95_mode)
                            for name, m in groups.items() if m.any()}
    if tables:
        vol_ids, vconf = pool_by_group(conf, vol)
        if vol_ids.size:
            vd = scores_from_confusion(vconf)["dice"]
            rep["per_volume_table"] = {vol_names[v]: _per_class(vd[j], names) for j, v in enumerate(vol_ids)}
        else:
            rep["per_volume_table"] = None
        d = scores_from_confusion(conf)["dice"]
        table = []
        for i in range(conf.shape[0]):
            row = {"index": i, "volume": vol_names[vol[i]] if vol[i] >= 0 else None,
                   "vendor": ven_names[ven[i]] if ven[i] >= 0 else None,
                   "dice": _per_class(d[i], names)}
            if done[i]:
                row["hd95"] = _per_class(hd[i], names)
            table.append(row)
        rep["per_bscan_table"] = table
    return rep


def segmentation_report(gt, pred, num_classes: int, class_names=None, volumes=None, vendors=None,
                        spacing=None, ignore_index: Optional[int] = IGNORE_INDEX, hd95: str = "auto",
                        tables: bool = True) -> dict:
    """One-shot report over (N,H,W) label maps (``MetricAccumulator`` streams the same).

    Keys: classes, n_bscans, n_volumes, pooled, per_bscan, per_volume,
    mean_foreground_dice, hd95 (when computed), by_vendor (when vendors given),
    per_volume_table, per_bscan_table. ``per_volume`` (and its table) is null
    without volume ids; ``by_vendor`` puts B-scans of unknown vendor under "unknown".
    ``hd95``: "auto" (mm where spacing is known), "px" or "off".
    """
    names = class_names_for(num_classes, class_names)
    m = measure_bscans(gt, pred, len(names), volumes, vendors, spacing, ignore_index, hd95)
    return build_report(m, names, hd95, tables)


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
