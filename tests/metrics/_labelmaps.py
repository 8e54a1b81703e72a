"""Random label maps shared by the metrics tests (imported as ``from _labelmaps import ...``)."""

from __future__ import annotations

import numpy as np

K = 4


def random_maps(seed=0, n=8, h=24, w=20, k=K):
    """Sparse-ish foreground so that some classes are absent in some B-scans."""
    rng = np.random.default_rng(seed)
    gt = np.where(rng.random((n, h, w)) < 0.6, 0, rng.integers(1, k, (n, h, w)))
    pred = np.where(rng.random((n, h, w)) < 0.3, rng.integers(0, k, (n, h, w)), gt)
    gt[0][gt[0] == 2] = 0  # class 2 absent from B-scan 0's reference ...
    pred[0][pred[0] == 2] = 0  # ... and prediction: absent-absent
    gt[1][gt[1] == 3] = 0  # class 3 only predicted in B-scan 1
    pred[2][pred[2] == 1] = 0  # class 1 only in the reference of B-scan 2
    return gt.astype(np.int64), pred.astype(np.int64)
