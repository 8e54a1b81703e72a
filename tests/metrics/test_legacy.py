"""octseg.metrics.legacy: the seed's measures, reproduced for comparison only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from octseg.metrics import seed_dice, seed_iou


def test_seed_dice_hand_case():
    probs = np.array([[[[0.8, 0.4]], [[0.2, 0.6]]]])  # (1, 2, 1, 2)
    gt = np.array([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    d = seed_dice(probs, gt)
    assert d[0] == pytest.approx(2 * 0.8 / (1.2 + 1.0))
    assert d[1] == pytest.approx(2 * 0.6 / (0.8 + 1.0))
    np.testing.assert_allclose(seed_dice(torch.tensor(probs), torch.tensor(gt)), d)


def test_seed_iou_scores_absent_absent_as_one():
    gt = np.zeros((2, 3, 3), int)
    pred = np.zeros((2, 3, 3), int)
    gt[0, 0, :2] = 1
    pred[0, 0, :1] = 1  # B-scan 0: IoU 1/2; B-scan 1: absent in both, scored 1 by the seed
    assert seed_iou(pred, gt, 2)[1] == pytest.approx((0.5 + 1.0) / 2)
