"""Optional clean-up of predicted label maps (off unless asked for).

Why: small specks of predicted fluid are mostly noise and inflate fluid volumes; a
per-class minimum component size removes them without touching larger lesions.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from octseg.errors import ConfigError

#: 8-connectivity: pixels touching at a corner belong to one component, so a thin diagonal
#: lesion is not broken into specks and removed.
_STRUCTURE = np.ones((3, 3), dtype=bool)


def parse_min_sizes(specs: Optional[Sequence[str]], classes: Sequence[str]) -> dict[int, int]:
    """``["IRF=50", "3=20"]`` -> ``{1: 50, 3: 20}``; class by name (case-insensitive) or index."""
    out: dict[int, int] = {}
    names = {c.lower(): i for i, c in enumerate(classes)}
    for spec in specs or ():
        if "=" not in spec:
            raise ConfigError(f"--min-size {spec!r}: expected CLASS=PIXELS, e.g. IRF=50")
        cls, _, val = spec.partition("=")
        cls = cls.strip()
        if cls.lower() in names:
            idx = names[cls.lower()]
        elif cls.isdigit() and int(cls) < len(classes):
            idx = int(cls)
        else:
            raise ConfigError(f"--min-size {spec!r}: unknown class {cls!r}; classes are "
                              f"{', '.join(f'{i}={c}' for i, c in enumerate(classes))}")
        if idx == 0:
            raise ConfigError(f"--min-size {spec!r}: class 0 ({classes[0]}) is the background; "
                              f"only fluid classes can be cleaned")
        try:
            n = int(val)
        except ValueError:
            raise ConfigError(f"--min-size {spec!r}: PIXELS must be a whole number") from None
        if n < 0:
            raise ConfigError(f"--min-size {spec!r}: PIXELS must be >= 0")
        out[idx] = n
    return out


def check_min_sizes(min_sizes: Optional[Mapping], classes: Sequence[str]) -> dict[int, int]:
    """Normalise a ``{class name or index: pixels}`` mapping (the Python API's form)."""
    if not min_sizes:
        return {}
    return parse_min_sizes([f"{k}={v}" for k, v in dict(min_sizes).items()], classes)


def remove_small_components(labels: np.ndarray, min_sizes: Mapping[int, int]) -> np.ndarray:
    """Set connected components of class c smaller than ``min_sizes[c]`` pixels to background.

    Works per B-scan on (H, W) or (N, H, W) label maps; returns a new array (input untouched).
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    if not min_sizes or not any(n > 1 for n in min_sizes.values()):
        return labels.copy()
    out = labels.copy()
    stack = out[None] if out.ndim == 2 else out
    for img in stack:  # a view: edits land in `out`
        for cls, min_px in min_sizes.items():
            if min_px <= 1:
                continue
            mask = img == cls
            if not mask.any():
                continue
            comp, n = ndimage.label(mask, structure=_STRUCTURE)
            sizes = np.bincount(comp.ravel(), minlength=n + 1)
            small = sizes < min_px
            small[0] = False  # label 0 is "not this class"
            if small.any():
                img[small[comp]] = 0
    return out


#: Minimum component sizes (pixels) tried by :func:`choose_min_sizes`.
MIN_SIZE_GRID = (5, 10, 20, 50, 100, 200, 500, 1000)


def scale_min_sizes(min_sizes: Mapping[int, int], at_size: Optional[Sequence[int]],
                    out_size: Sequence[int]) -> dict[int, int]:
    """Minimum component sizes counted at ``at_size`` (H, W) -> pixels at ``out_size``.

    Why: a CV folder's sizes were chosen on B-scans at the prepared size; the same lesion covers
    (H*W)/(h0*w0) times as many pixels of a B-scan predicted at its own size H x W. Each size is
    scaled by that ratio of pixel areas and rounded; a non-zero size stays at least 1. ``at_size``
    None: the sizes are already output pixels (returned unchanged)."""
    if at_size is None:
        return dict(min_sizes)
    h0, w0 = (int(v) for v in at_size)
    h, w = (int(v) for v in out_size[-2:])
    if (h0, w0) == (h, w):
        return dict(min_sizes)
    ratio = (h * w) / (h0 * w0)
    return {int(c): (max(1, int(round(n * ratio))) if n else 0) for c, n in min_sizes.items()}


def _component_tables(gt: np.ndarray, pred: np.ndarray, cls: int, ignore_index: Optional[int], case: np.ndarray,
                      n_cases: int):
    """Per predicted component of ``cls`` in every B-scan: its case (volume) index, its size (all pixels;
    what removal tests), its scored pixels and true-positive pixels (labelled pixels only); plus the
    scored ground-truth pixels of every case."""
    from scipy import ndimage

    cases, sizes, scored, hits = [], [], [], []
    g_total = np.zeros(n_cases, np.int64)
    for g, p, c in zip(gt, pred, case):
        valid = np.ones(g.shape, bool) if ignore_index is None else g != ignore_index
        g_total[c] += int(((g == cls) & valid).sum())
        mask = p == cls
        if not mask.any():
            continue
        comp, n = ndimage.label(mask, structure=_STRUCTURE)
        cases.append(np.full(n, c, np.int64))
        sizes.append(np.bincount(comp.ravel(), minlength=n + 1)[1:])
        scored.append(np.bincount(comp[valid], minlength=n + 1)[1:])
        hits.append(np.bincount(comp[valid & (g == cls)], minlength=n + 1)[1:])
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
    return cat(cases), cat(sizes), cat(scored), cat(hits), g_total


def choose_min_sizes(gt, pred, num_classes: int, grid: Sequence[int] = MIN_SIZE_GRID,
                     ignore_index: Optional[int] = 255, volumes: Optional[Sequence] = None
                     ) -> tuple[dict[int, int], dict]:
    """Per foreground class, the minimum component size that maximises the class's **mean
    per-volume Dice** (nnU-Net's rule for its post-processing).

    Why per volume: a size chosen on Dice pooled over all B-scans can delete every small lesion of
    some volumes (their Dice falls to 0) while the pooled figure, dominated by volumes with large
    lesions, still rises; the mean over cases weighs every volume alike. ``gt``/``pred``: (N, H, W)
    label maps (e.g. out-of-fold predictions); ``volumes``: the volume of each B-scan (None: each
    B-scan is its own case). For each class and size, a volume's Dice is ``2 TP / (|pred| + |gt|)``
    over its B-scans (pixels labelled ``ignore_index`` not scored), and volumes where neither the
    reference nor the prediction has the class are left out of the mean. A size is kept only when it
    raises that mean above no removal (ties: no removal; among equal sizes, the smallest).

    Returns ``(min_sizes, table)``: ``{class index: pixels}`` for the classes where removal helps,
    and per class index ``{"none": mean dice, "<size>": mean dice, ...}`` (None where no volume has
    the class in the truth or the prediction).
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ConfigError(f"choose_min_sizes: ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    if gt.ndim == 2:
        gt, pred = gt[None], pred[None]
    if volumes is None:
        case, n_cases = np.arange(len(gt)), len(gt)
    else:
        volumes = np.asarray(volumes)
        if volumes.shape != (len(gt),):
            raise ConfigError(f"choose_min_sizes: {volumes.size} volume ids for {len(gt)} B-scans")
        names, case = np.unique(volumes, return_inverse=True)
        n_cases = len(names)
    grid = sorted({int(s) for s in grid if int(s) > 1})
    chosen: dict[int, int] = {}
    table: dict[int, dict] = {}
    for cls in range(1, num_classes):
        comp_case, sizes, scored, hits, g_total = _component_tables(gt, pred, cls, ignore_index, case, n_cases)

        def mean_dice(min_px: int) -> Optional[float]:
            keep = sizes >= min_px
            tp = np.bincount(comp_case[keep], weights=hits[keep], minlength=n_cases)
            denom = np.bincount(comp_case[keep], weights=scored[keep], minlength=n_cases) + g_total
            present = denom > 0  # the class is in this volume's truth or prediction
            return None if not present.any() else float(np.mean(2.0 * tp[present] / denom[present]))

        row = {"none": mean_dice(0), **{str(s): mean_dice(s) for s in grid}}
        table[cls] = row
        base, best, best_s = row["none"], row["none"], None
        for s in grid:
            d = row[str(s)]
            if d is not None and (best is None or d > best + 1e-12):
                best, best_s = d, s
        if best_s is not None and base is not None and best > base + 1e-12:
            chosen[cls] = best_s
    return chosen, table
