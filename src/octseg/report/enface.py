"""The numbers behind the report's pictures, computed in Python (the page's JavaScript only draws them).

* en-face fluid map: for each class, the number of class pixels in each A-scan (image column) of
  each B-scan, a (S, W) map on the B-scan × A-scan plane; times the axial spacing it is the fluid
  thickness in µm;
* fluid area per B-scan along the volume;
* for a lone B-scan, the en-face map has one row: the fluid height along the B-scan.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def enface_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(S, H, W) label stack -> uint16 (K-1, S, W): pixels of each fluid class per A-scan.

    Row ``s``, column ``x`` of class ``c`` is ``(labels[s, :, x] == c).sum()`` exactly."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    if labels.ndim != 3:
        raise ValueError(f"labels must be (S, H, W), got shape {labels.shape}")
    if labels.shape[1] > np.iinfo(np.uint16).max:
        raise ValueError(f"A-scans of {labels.shape[1]} pixels do not fit the uint16 map")
    return np.stack([(labels == c).sum(axis=1, dtype=np.int64) for c in range(1, num_classes)]).astype(np.uint16)


def enface_thickness_um(labels: np.ndarray, num_classes: int, axial_mm: Optional[float]) -> np.ndarray:
    """(S, H, W) -> float64 (K-1, S, W) fluid thickness in µm (pixel counts × axial spacing);
    in pixels when ``axial_mm`` is unknown."""
    counts = enface_counts(labels, num_classes).astype(np.float64)
    return counts * (axial_mm * 1000.0) if axial_mm else counts


def area_per_bscan(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(S, H, W) -> int64 (S, K-1): pixels of each fluid class per B-scan."""
    labels = np.asarray(labels)
    flat = labels.reshape(len(labels), -1)
    return np.stack([(flat == c).sum(axis=1) for c in range(1, num_classes)], axis=1).astype(np.int64)
