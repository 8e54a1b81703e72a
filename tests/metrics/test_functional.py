"""octseg.metrics.functional: confusion counts (NumPy, torch, on-device pooled), scores, HD95, AUC."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _labelmaps import K, random_maps

from octseg.records import Spacing
from octseg.metrics import (
    confusion_matrix_torch,
    confusion_per_image,
    dice_from_confusion_torch,
    hd95,
    pool_by_group,
    roc_auc,
    scores_from_confusion,
    segmentation_report,
)
from octseg.metrics.functional import _confusion_torch

tm_seg = pytest.importorskip("torchmetrics.functional.segmentation")


# ------------------------------------------------------------------------ confusion


def test_confusion_hand_case_and_ignore():
    gt = np.array([[0, 1, 1], [2, 255, 1]])
    pred = np.array([[0, 1, 0], [1, 2, 1]])
    c = confusion_per_image(gt, pred, 3)
    assert c.shape == (1, 3, 3) and c.dtype == np.int64
    np.testing.assert_array_equal(c[0], [[1, 0, 0], [1, 2, 0], [0, 1, 0]])  # 255 pixel left out
    c_none = confusion_per_image(np.where(gt == 255, 0, gt), pred, 3, ignore_index=None)
    assert c_none.sum() == 6
    # an ignore value whose code would wrap around to a real one in uint8 (64 * 4 = 256)
    g8, p8 = np.array([[64, 1], [0, 64]], np.uint8), np.array([[0, 1], [0, 2]], np.uint8)
    np.testing.assert_array_equal(confusion_per_image(g8, p8, 4, ignore_index=64)[0].ravel(),
                                  [1, 0, 0, 0, 0, 1] + [0] * 10)


def test_confusion_torch_and_numpy_agree_and_bad_input():
    gt, pred = random_maps(1)
    gt[3, :2] = 255
    ref = confusion_per_image(gt, pred, K)
    np.testing.assert_array_equal(confusion_per_image(torch.from_numpy(gt), torch.from_numpy(pred), K), ref)
    assert ref.sum() == gt.size - 2 * gt.shape[2]
    # many classes: the code no longer fits uint8
    rng = np.random.default_rng(0)
    g, p = rng.integers(0, 20, (3, 9, 9)), rng.integers(0, 20, (3, 9, 9))
    c = confusion_per_image(g, p, 20)
    for i in range(3):
        np.testing.assert_array_equal(c[i], np.histogram2d(g[i].ravel(), p[i].ravel(), bins=20, range=[[0, 20], [0, 20]])[0])
    with pytest.raises(ValueError):
        confusion_per_image(gt, pred + 1, K)  # pred label K
    with pytest.raises(ValueError):
        confusion_per_image(np.full((4, 4), 7), np.zeros((4, 4), int), K)  # gt label 7, not ignore
    with pytest.raises(ValueError):
        confusion_per_image(gt.astype(float), pred, K)  # soft input
    with pytest.raises(ValueError):
        confusion_per_image(gt[:, :3], pred, K)


def test_device_counting_path_on_cpu_tensors():
    """The path CUDA tensors take (torch.bincount with per-image offsets), run on CPU."""
    gt, pred = random_maps(2)
    gt[0, 0] = 255
    got = _confusion_torch(torch.from_numpy(gt), torch.from_numpy(pred), K, 255)
    np.testing.assert_array_equal(got, confusion_per_image(gt, pred, K))
    with pytest.raises(ValueError):
        _confusion_torch(torch.from_numpy(gt) * 0 + 9, torch.from_numpy(pred), K, 255)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_confusion_cuda_matches_numpy():
    gt, pred = random_maps(2)
    gt[0, 0] = 255
    ref = confusion_per_image(gt, pred, K)
    got = confusion_per_image(torch.from_numpy(gt).cuda(), torch.from_numpy(pred).cuda(), K)
    np.testing.assert_array_equal(got, ref)


# ------------------------------------------------------- pooled confusion on the device


def _with_ignore(seed, n=6, h=17, w=13, k=K, frac=0.15):
    gt, pred = random_maps(seed, n, h, w, k)
    rng = np.random.default_rng(seed + 100)
    gt[rng.random(gt.shape) < frac] = 255
    return gt, pred


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8])
def test_confusion_matrix_torch_equals_numpy(seed, dtype):
    gt, pred = _with_ignore(seed)
    assert (gt == 255).any()
    got = confusion_matrix_torch(torch.from_numpy(gt).to(dtype), torch.from_numpy(pred).to(dtype), K)
    assert got.dtype == torch.long and tuple(got.shape) == (K, K)
    np.testing.assert_array_equal(got.numpy(), confusion_per_image(gt, pred, K).sum(0))
    # a logits-argmax-like (N, H, W) prediction and (H, W) inputs work the same way
    np.testing.assert_array_equal(confusion_matrix_torch(torch.from_numpy(gt[0]), torch.from_numpy(pred[0]), K).numpy(),
                                  confusion_per_image(gt[0], pred[0], K)[0])


def test_confusion_matrix_torch_ignore_none_and_bad_shapes():
    gt, pred = random_maps(7)
    got = confusion_matrix_torch(torch.from_numpy(gt), torch.from_numpy(pred), K, ignore_index=None)
    np.testing.assert_array_equal(got.numpy(), confusion_per_image(gt, pred, K, ignore_index=None).sum(0))
    assert int(got.sum()) == gt.size
    with pytest.raises(ValueError):
        confusion_matrix_torch(torch.from_numpy(gt), torch.from_numpy(pred[:, :3]), K)


@pytest.mark.parametrize("seed", range(5))
def test_dice_from_confusion_torch_equals_numpy(seed):
    gt, pred = _with_ignore(seed)
    gt[gt == 3] = 0  # class 3 absent from the reference ...
    pred[pred == 3] = 0  # ... and the prediction: NaN
    conf = confusion_matrix_torch(torch.from_numpy(gt), torch.from_numpy(pred), K)
    got = dice_from_confusion_torch(conf)
    ref = scores_from_confusion(confusion_per_image(gt, pred, K).sum(0))["dice"]
    assert got.dtype == torch.float64 and np.isnan(got[3].item())
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-15, equal_nan=True)
    rep = segmentation_report(gt, pred, K, hd95="off", tables=False)
    assert [rep["pooled"]["dice"][c] for c in rep["classes"]] == [None if math.isnan(v) else v for v in got.tolist()]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_confusion_matrix_torch_on_cuda():
    gt, pred = _with_ignore(3)
    conf = confusion_matrix_torch(torch.from_numpy(gt).cuda(), torch.from_numpy(pred).cuda(), K)
    assert conf.is_cuda
    np.testing.assert_array_equal(conf.cpu().numpy(), confusion_per_image(gt, pred, K).sum(0))
    np.testing.assert_allclose(dice_from_confusion_torch(conf).cpu().numpy(),
                               scores_from_confusion(conf.cpu().numpy())["dice"], equal_nan=True)


def test_pool_by_group():
    gt, pred = random_maps(8)
    conf = confusion_per_image(gt, pred, K)
    groups = np.array([2, 0, -1, 2, 5, 0, -1, 5])
    ids, pooled = pool_by_group(conf, groups)
    np.testing.assert_array_equal(ids, [0, 2, 5])
    for j, g in enumerate(ids):
        np.testing.assert_array_equal(pooled[j], conf[groups == g].sum(0))
    ids, pooled = pool_by_group(conf, np.full(8, -1))
    assert ids.size == 0 and pooled.shape == (0, K, K)


# ----------------------------------------------------------------------- torchmetrics


def test_per_image_dice_iou_match_torchmetrics():
    gt, pred = random_maps(3)
    s = scores_from_confusion(confusion_per_image(gt, pred, K))
    tg, tp = torch.from_numpy(gt), torch.from_numpy(pred)
    d_tm = tm_seg.dice_score(tp, tg, num_classes=K, average="none", input_format="index").numpy()
    np.testing.assert_allclose(s["dice"], d_tm, rtol=1e-6, equal_nan=True)  # NaN where absent-absent, too
    assert np.isnan(s["dice"][0, 2])
    i_tm = tm_seg.mean_iou(tp, tg, num_classes=K, per_class=True, input_format="index").numpy()
    i_tm = np.where(i_tm == -1, np.nan, i_tm)  # torchmetrics marks absent-absent with -1
    np.testing.assert_allclose(s["iou"], i_tm, rtol=1e-6, equal_nan=True)

    rep = segmentation_report(gt, pred, K, hd95="off")
    names = rep["classes"]
    per_bscan = [rep["per_bscan"]["dice"][n] for n in names]
    np.testing.assert_allclose(per_bscan, np.nanmean(d_tm, 0), rtol=1e-6)
    assert [rep["per_bscan"]["counted"][n] for n in names] == list((~np.isnan(d_tm)).sum(0))


# ------------------------------------------------------------------------ edge cases


def _one(gt, pred, k=2):
    return scores_from_confusion(confusion_per_image(np.array(gt), np.array(pred), k))


def test_edge_cases_empty_reference_prediction_single_pixel():
    z = np.zeros((3, 3), int)
    one = z.copy()
    one[1, 1] = 1
    s = _one(z, one)  # empty reference, one false positive
    assert s["dice"][0, 1] == 0 and s["iou"][0, 1] == 0 and s["precision"][0, 1] == 0
    assert np.isnan(s["recall"][0, 1])
    s = _one(one, z)  # empty prediction
    assert s["dice"][0, 1] == 0 and s["recall"][0, 1] == 0 and np.isnan(s["precision"][0, 1])
    s = _one(one, one)  # single pixel, hit
    assert s["dice"][0, 1] == 1 and s["iou"][0, 1] == 1 and s["precision"][0, 1] == 1
    s = _one(z, z)  # absent in both: undefined, not 1 and not 0
    for m in ("dice", "iou", "precision", "recall"):
        assert np.isnan(s[m][0, 1])


# ----------------------------------------------------------------------------- HD95


def test_hd95_single_pixels_anisotropic():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[2, 3] = True
    b[5, 7] = True
    expect = math.hypot(3 * 0.5, 4 * 2.0)
    assert hd95(a, b, Spacing(0.5, 2.0)) == pytest.approx(expect)
    assert hd95(b, a, (0.5, 2.0)) == pytest.approx(expect)
    assert hd95(a, b) == pytest.approx(5.0)  # pixels


def test_hd95_squares_offset_by_k():
    for k in (1, 3, 5):
        a = np.zeros((40, 40), bool)
        b = np.zeros((40, 40), bool)
        a[10:20, 10:20] = True
        b[10:20, 10 + k : 20 + k] = True
        # the largest surface distances are the k-column gaps (left edges, outer corners)
        assert hd95(a, b, Spacing(0.5, 2.0)) == pytest.approx(2.0 * k)
        assert hd95(a, b) == pytest.approx(k)


def test_hd95_is_union_percentile_not_max_of_directed():
    a = np.zeros((1, 11), bool)
    b = np.zeros((1, 11), bool)
    a[0, 0] = True
    b[0, 0] = b[0, 10] = True
    # directed a->b {0}, b->a {0, 10}; union {0, 0, 10}: 95th pct = 9.0 (max-of-directed would give 9.5)
    assert hd95(a, b) == pytest.approx(9.0)
    assert hd95(a, b, Spacing(1.0, 0.25)) == pytest.approx(2.25)
    assert math.isnan(hd95(a, np.zeros_like(a)))


# ----------------------------------------------------------------------------- AUC


def test_roc_auc_hand_case():
    labels = [1, 1, 0, 0, 1]
    scores = [3, 1, 1, 0, 5]
    # positive-negative pairs: 3>{1,0}: 2; 1 vs 1 tie: .5, 1>0: 1; 5: 2 -> 5.5 / 6
    assert roc_auc(labels, scores) == pytest.approx(5.5 / 6)
    assert roc_auc([1, 0], [0, 1]) == 0.0
    assert math.isnan(roc_auc([1, 1], [0, 1]))


def test_roc_auc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    s = rng.integers(0, 6, 50).astype(float)
    assert roc_auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s))
