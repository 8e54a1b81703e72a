"""Training masks for data annotated only in a band of columns.

Some datasets were graded only in a central band of each B-scan's width (Duke DME: outside it "0"
means "not annotated", not "no fluid"). Training on those zeros teaches the network that fluid
near the band's edge is background. With ``data.fluid_band_margin`` the columns farther than the
margin from a labelled volume's fluid extent (the leftmost and rightmost fluid column over all of
its labelled B-scans) become unlabelled (255) for training; validation and scoring keep the masks
as they are.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from octseg.constants import BACKGROUND, IGNORE_INDEX


def fluid_column_extent(masks: np.ndarray) -> tuple[int, int] | None:
    """(first, last) column holding any fluid label in (n, H, W) ``masks``; None without fluid."""
    fluid = (masks != BACKGROUND) & (masks != IGNORE_INDEX)
    cols = np.flatnonzero(fluid.any(axis=(0, 1)))
    return (int(cols[0]), int(cols[-1])) if cols.size else None


def unlabel_outside_fluid_band(masks: np.ndarray, rows: Sequence[int], volumes: Sequence[str],
                               margin: int) -> tuple[np.ndarray, dict]:
    """A copy of ``masks`` whose ``rows`` are unlabelled outside their volume's fluid extent +- ``margin``.

    The band is one column range per volume (the graders' band is the same for a volume's B-scans);
    a volume with no fluid in its labelled B-scans is left as it is (its band cannot be estimated).
    Returns the masks and, per volume, the kept column range (None where unchanged).
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    by_volume: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        by_volume[volumes[int(r)]].append(int(r))
    out = np.array(masks, copy=True)
    width = out.shape[-1]
    bands: dict = {}
    for volume, vrows in by_volume.items():
        extent = fluid_column_extent(out[vrows])
        if extent is None:
            bands[volume] = None
            continue
        lo, hi = max(0, extent[0] - margin), min(width - 1, extent[1] + margin)
        bands[volume] = (lo, hi)
        idx = np.asarray(vrows)
        out[idx, :, :lo] = IGNORE_INDEX
        out[idx, :, hi + 1:] = IGNORE_INDEX
    return out, bands
