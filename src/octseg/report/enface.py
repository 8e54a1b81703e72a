"""The numbers behind the report's pictures, computed in Python (the page's JavaScript only draws them).

* en-face fluid map: for each class, the number of class pixels in each A-scan (image column) of
  each B-scan, a (S, W) map on the B-scan × A-scan plane; times the axial spacing it is the fluid
  thickness in µm;
* fluid area per B-scan along the volume;
* for a lone B-scan, the en-face map has one row: the fluid height along the B-scan.
"""

from __future__ import annotations

import numpy as np

# The en-face map itself (enface_counts, enface_thickness_um) lives with the palette in octseg.overlay,
# so that prediction, below the report layer, draws its en-face PNG from the numbers the viewer shows.


def area_per_bscan(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(S, H, W) -> int64 (S, K-1): pixels of each fluid class per B-scan."""
    labels = np.asarray(labels)
    flat = labels.reshape(len(labels), -1)
    return np.stack([(flat == c).sum(axis=1) for c in range(1, num_classes)], axis=1).astype(np.int64)
