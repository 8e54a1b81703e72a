"""octseg.metrics.legacy: the original project's measures, reproduced for comparison only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from octseg.metrics import original_dice, original_iou


def test_original_dice_hand_case():
    probs = np.array([[[[0.8, 0.4]], [[0.2, 0.6]]]])  # (1, 2, 1, 2)
    gt = np.array([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    d = original_dice(probs, gt)
    assert d[0] == pytest.approx(2 * 0.8 / (1.2 + 1.0))
    assert d[1] == pytest.approx(2 * 0.6 / (0.8 + 1.0))
    np.testing.assert_allclose(original_dice(torch.tensor(probs), torch.tensor(gt)), d)


def test_original_iou_scores_absent_absent_as_one():
    gt = np.zeros((2, 3, 3), int)
    pred = np.zeros((2, 3, 3), int)
    gt[0, 0, :2] = 1
    pred[0, 0, :1] = 1  # B-scan 0: IoU 1/2; B-scan 1: absent in both, scored 1 by the original project
    assert original_iou(pred, gt, 2)[1] == pytest.approx((0.5 + 1.0) / 2)
