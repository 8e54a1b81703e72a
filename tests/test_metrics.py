"""octseg.metrics against torchmetrics, hand-computed cases and properties."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from octseg.data.types import Spacing
from octseg.metrics import (
    MetricAccumulator,
    confusion_per_image,
    format_table,
    hd95,
    hd95_per_image,
    retouch_volume_metrics,
    roc_auc,
    scores_from_confusion,
    seed_dice,
    seed_iou,
    segmentation_report,
)

tm_seg = pytest.importorskip("torchmetrics.functional.segmentation")
tm_cls = pytest.importorskip("torchmetrics.functional.classification")

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
    from octseg.metrics import _confusion_torch

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


def test_pooled_matches_torchmetrics():
    gt, pred = random_maps(4)
    rep = segmentation_report(gt, pred, K, hd95="off")
    names = rep["classes"]
    tg, tp = torch.from_numpy(gt), torch.from_numpy(pred)
    d = tm_seg.dice_score(tp, tg, num_classes=K, average="none", input_format="index", aggregation_level="global")
    np.testing.assert_allclose([rep["pooled"]["dice"][n] for n in names], d.numpy().ravel(), rtol=1e-6)
    for key, fn in (("iou", tm_cls.multiclass_jaccard_index), ("precision", tm_cls.multiclass_precision),
                    ("recall", tm_cls.multiclass_recall), ("dice", tm_cls.multiclass_f1_score)):
        ref = fn(tp, tg, num_classes=K, average=None).numpy()
        np.testing.assert_allclose([rep["pooled"][key][n] for n in names], ref, rtol=1e-6, err_msg=key)


def test_ignore_index_matches_torchmetrics():
    gt, pred = random_maps(5)
    gt[:, :5, :] = 255
    rep = segmentation_report(gt, pred, K, hd95="off")
    names = rep["classes"]
    tg, tp = torch.from_numpy(gt), torch.from_numpy(pred)
    for key, fn in (("iou", tm_cls.multiclass_jaccard_index), ("dice", tm_cls.multiclass_f1_score),
                    ("precision", tm_cls.multiclass_precision), ("recall", tm_cls.multiclass_recall)):
        ref = fn(tp, tg, num_classes=K, average=None, ignore_index=255).numpy()
        np.testing.assert_allclose([rep["pooled"][key][n] for n in names], ref, rtol=1e-6, err_msg=key)
    # predictions under ignored pixels change nothing
    pred2 = pred.copy()
    pred2[:, :5, :] = 3
    assert segmentation_report(gt, pred2, K, hd95="off")["pooled"] == rep["pooled"]


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


def test_class_absent_everywhere_is_null_not_one_or_zero():
    gt, pred = random_maps(6)
    gt[gt == 3] = 0
    pred[pred == 3] = 0
    rep = segmentation_report(gt, pred, K, volumes=["a"] * 4 + ["b"] * 4, hd95="off")
    for agg in ("pooled", "per_bscan", "per_volume"):
        for m in ("dice", "iou", "precision", "recall"):
            assert rep[agg][m]["PED"] is None, (agg, m)
    assert rep["per_bscan"]["counted"]["PED"] == 0 and rep["per_volume"]["counted"]["PED"] == 0
    # the headline averages over the classes that have a value
    for agg in ("pooled", "per_bscan", "per_volume"):
        expect = np.mean([rep[agg]["dice"]["IRF"], rep[agg]["dice"]["SRF"]])
        assert rep["mean_foreground_dice"][agg] == pytest.approx(expect)
    json.dumps(rep, allow_nan=False)  # strict JSON: NaN became null
    assert all(row["dice"]["PED"] is None for row in rep["per_bscan_table"])


def test_absent_absent_excluded_from_per_bscan_and_seed_iou_counts_it_as_one():
    a = np.zeros((3, 4, 4), int)
    b = np.zeros((3, 4, 4), int)
    a[0, :2, :2] = 1
    b[0, :2, :2] = 1  # B-scan 0: perfect, Dice 1
    a[1, :2, :2] = 1  # B-scan 1: missed, Dice 0
    # B-scan 2: absent in both -> excluded
    rep = segmentation_report(a, b, 2, hd95="off")
    assert rep["per_bscan"]["dice"]["fluid"] == pytest.approx(0.5)
    assert rep["per_bscan"]["iou"]["fluid"] == pytest.approx(0.5)
    assert rep["per_bscan"]["counted"]["fluid"] == 2
    assert rep["per_bscan"]["recall"]["fluid"] == pytest.approx(0.5)
    assert rep["per_bscan"]["precision"]["fluid"] == pytest.approx(1.0)  # B-scan 1 predicts nothing
    assert rep["per_bscan"]["counted_precision"]["fluid"] == 1
    assert rep["per_bscan_table"][2]["dice"]["fluid"] is None
    # the seed's flaw: absent-absent scored 1 lifts the mean from 0.5 to 2/3
    assert seed_iou(b, a, 2)[1] == pytest.approx(2 / 3)
    assert seed_iou(np.zeros((5, 4, 4), int), np.zeros((5, 4, 4), int), 2)[1] == 1.0


def test_per_volume_by_hand():
    gt = np.zeros((4, 2, 5), int)
    pred = np.zeros((4, 2, 5), int)
    gt[0, 0, :4] = 1
    pred[0, 0, :2] = 1  # vol a, slice 0: tp 2, fn 2
    gt[1, 1, :2] = 1
    pred[1, 1, :] = 1  # vol a, slice 1: tp 2, fp 3
    gt[2, 0, 0] = 1  # vol b: tp 0, fn 1
    rep = segmentation_report(gt, pred, 2, volumes=["a", "a", "b", "b"], hd95="off")
    dice_a = 2 * 4 / (2 * 4 + 3 + 2)
    dice_b = 0.0
    assert rep["per_volume_table"]["a"]["fluid"] == pytest.approx(dice_a)
    assert rep["per_volume_table"]["b"]["fluid"] == pytest.approx(dice_b)
    assert rep["per_volume"]["dice"]["fluid"] == pytest.approx((dice_a + dice_b) / 2)
    assert rep["per_volume"]["counted"]["fluid"] == 2
    per_bscan = (2 * 2 / (4 + 2) + 2 * 2 / (2 + 5) + 0.0) / 3  # slice 3: absent-absent, excluded
    assert rep["per_bscan"]["dice"]["fluid"] == pytest.approx(per_bscan)
    assert rep["pooled"]["dice"]["fluid"] == pytest.approx(2 * 4 / (2 * 4 + 3 + 3))
    assert rep["mean_foreground_dice"]["per_volume"] == pytest.approx((dice_a + dice_b) / 2)


def test_by_vendor_and_table():
    gt, pred = random_maps(7)
    vendors = ["cirrus"] * 3 + ["topcon"] * 5
    rep = segmentation_report(gt, pred, K, volumes=[f"v{i // 2}" for i in range(8)], vendors=vendors, hd95="off")
    sub = segmentation_report(gt[3:], pred[3:], K, volumes=[f"v{i // 2}" for i in range(3, 8)], hd95="off")
    assert rep["by_vendor"]["topcon"]["pooled"] == sub["pooled"]
    assert rep["by_vendor"]["topcon"]["per_bscan"] == sub["per_bscan"]
    assert rep["by_vendor"]["topcon"]["per_volume"] == sub["per_volume"]
    text = format_table(rep)
    assert "mean foreground Dice" in text and "vendor cirrus" in text and "vendor topcon" in text
    for n in ("IRF", "SRF", "PED"):
        assert n in text


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


def test_hd95_in_report_counts_undefined_and_excludes_absent():
    gt = np.zeros((3, 20, 20), int)
    pred = np.zeros((3, 20, 20), int)
    gt[0, 5:10, 5:10] = 1
    pred[0, 5:10, 7:12] = 1  # defined: 2 px -> 2 * 0.1 mm
    gt[1, 5:10, 5:10] = 1  # reference only: undefined
    # B-scan 2: absent in both: excluded
    rep = segmentation_report(gt, pred, 2, spacing=Spacing(0.05, 0.1))
    h = rep["hd95"]
    assert h["unit"] == "mm" and h["counted"]["fluid"] == 1 and h["undefined"]["fluid"] == 1
    assert h["mean"]["fluid"] == pytest.approx(0.2) and h["mean"]["background"] is None
    assert rep["per_bscan_table"][1]["hd95"]["fluid"] is None
    assert "HD95 (mm)" in format_table(rep)
    assert "hd95" not in segmentation_report(gt, pred, 2)  # no spacing: not computed in "auto"
    px = segmentation_report(gt, pred, 2, hd95="px")["hd95"]
    assert px["unit"] == "px" and px["mean"]["fluid"] == pytest.approx(2.0)
    # spacing known for some B-scans only
    part = segmentation_report(gt, pred, 2, spacing=[Spacing(0.05, 0.1), None, None])["hd95"]
    assert part["not_computed"] == 2 and part["undefined"]["fluid"] == 0
    np.testing.assert_allclose(hd95_per_image(gt, pred, 2, (0.05, 0.1))[:, 1], [0.2, np.nan, np.nan], equal_nan=True)


# ------------------------------------------------------------------------ RETOUCH


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


def test_retouch_volume_metrics_by_hand():
    v1g = np.zeros((2, 4, 5), int)
    v1p = np.zeros((2, 4, 5), int)
    v1g[0, 0, :] = 1
    v1g[1, 0, :5] = 1  # 10 gt voxels IRF
    v1p[0, 0, :4] = 1  # 4 predicted, all hits
    v2g = np.zeros((2, 4, 5), int)
    v2p = np.zeros((2, 4, 5), int)
    v2p[0, 3, :3] = 1  # IRF: 3 false positive voxels
    v3g = np.zeros((1, 4, 5), int)
    v3p = np.zeros((1, 4, 5), int)
    v3g[0, 1, 1] = 1
    v3p[0, 1, 1] = 1
    sp = [Spacing(0.1, 0.2, 0.5), Spacing(0.1, 0.2, 0.5), Spacing(0.1, 0.2)]  # v3: no slice spacing
    r = retouch_volume_metrics([v1g, v2g, v3g], [v1p, v2p, v3p], sp, ["cirrus", "topcon", "topcon"], 2,
                               volume_ids=["v1", "v2", "v3"])
    json.dumps(r, allow_nan=False)
    v = r["volumes"]
    assert v["v1"]["avd_mm3"]["fluid"] == pytest.approx(6 * 0.1 * 0.2 * 0.5)
    assert v["v1"]["dice"]["fluid"] == pytest.approx(2 * 4 / 14)
    assert v["v2"]["avd_mm3"]["fluid"] == pytest.approx(3 * 0.01)
    assert v["v2"]["dice"]["fluid"] == 0.0
    assert v["v3"]["avd_mm3"]["fluid"] is None and v["v3"]["dice"]["fluid"] == 1.0
    o = r["overall"]
    assert o["avd_mm3"]["fluid"] == pytest.approx((0.06 + 0.03) / 2) and o["avd_counted"]["fluid"] == 2
    assert o["dice"]["fluid"] == pytest.approx((8 / 14 + 0 + 1) / 3)
    # labels v1 1, v2 0, v3 1; scores (voxels: v3's spacing unknown) 4, 3, 1 -> pairs (4>3), (1<3): 0.5
    assert o["auc_score_unit"] == "voxels" and o["auc"]["fluid"] == pytest.approx(0.5)
    assert r["by_vendor"]["cirrus"]["auc"]["fluid"] is None  # one label kind only
    assert r["by_vendor"]["topcon"]["auc"]["fluid"] == 0.0  # v3 (1 voxel) below v2 (3)
    assert r["by_vendor"]["topcon"]["auc_score_unit"] == "voxels"
    assert r["by_vendor"]["cirrus"]["auc_score_unit"] == "mm3"
    # the accumulator route gives the same
    acc = MetricAccumulator(2, hd95="off")
    for vid, g, p, s, ve in zip(["v1", "v2", "v3"], [v1g, v2g, v3g], [v1p, v2p, v3p], sp, ["cirrus", "topcon", "topcon"]):
        acc.update(g, p, volumes=vid, vendors=ve, spacings=s)
    assert acc.retouch() == r


# ------------------------------------------------------------------------------ seed


def test_seed_dice_hand_case():
    probs = np.array([[[[0.8, 0.4]], [[0.2, 0.6]]]])  # (1, 2, 1, 2)
    gt = np.array([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    d = seed_dice(probs, gt)
    assert d[0] == pytest.approx(2 * 0.8 / (1.2 + 1.0))
    assert d[1] == pytest.approx(2 * 0.6 / (0.8 + 1.0))
    np.testing.assert_allclose(seed_dice(torch.tensor(probs), torch.tensor(gt)), d)


# -------------------------------------------------------------------------- properties

label_maps = st.integers(1, 3).flatmap(
    lambda n: st.tuples(arrays(np.int64, (n, 6, 7), elements=st.integers(0, 2)),
                        arrays(np.int64, (n, 6, 7), elements=st.integers(0, 2))))


@settings(max_examples=60, deadline=None)
@given(label_maps)
def test_dice_bounded_symmetric_and_one_on_itself(maps):
    a, b = maps
    d_ab = scores_from_confusion(confusion_per_image(a, b, 3))["dice"]
    d_ba = scores_from_confusion(confusion_per_image(b, a, 3))["dice"]
    ok = ~np.isnan(d_ab)
    assert ((d_ab[ok] >= 0) & (d_ab[ok] <= 1)).all()
    np.testing.assert_allclose(d_ab, d_ba, equal_nan=True)
    d_aa = scores_from_confusion(confusion_per_image(a, a, 3))["dice"]
    present = np.stack([(a == c).any((1, 2)) for c in range(3)], 1)
    assert (d_aa[present] == 1).all() and np.isnan(d_aa[~present]).all()
    r_ab = segmentation_report(a, b, 3, hd95="off", tables=False)
    r_ba = segmentation_report(b, a, 3, hd95="off", tables=False)
    assert r_ab["pooled"]["dice"] == r_ba["pooled"]["dice"]
    assert r_ab["per_bscan"]["dice"] == pytest.approx(r_ba["per_bscan"]["dice"])


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6).flatmap(lambda n: st.tuples(
    arrays(np.int64, (n, 5, 5), elements=st.integers(0, 2)),
    arrays(np.int64, (n, 5, 5), elements=st.integers(0, 2)),
    st.lists(st.sampled_from(["v0", "v1", "v2"]), min_size=n, max_size=n),
    st.lists(st.sampled_from(["cirrus", "topcon", None]), min_size=n, max_size=n),
    st.lists(st.integers(1, n), min_size=1, max_size=4))))
def test_accumulator_over_batches_equals_one_shot(case):
    gt, pred, vols, vens, cuts = case
    sp = Spacing(0.004, 0.012, 0.1)
    one = segmentation_report(gt, pred, 3, volumes=vols, vendors=vens, spacing=sp)
    acc = MetricAccumulator(3)
    edges = sorted(set([0, len(gt)] + [c for c in cuts if c < len(gt)]))
    for s, e in zip(edges[:-1], edges[1:]):
        acc.update(gt[s:e], pred[s:e], volumes=vols[s:e], vendors=vens[s:e], spacings=sp)
    assert acc.compute() == one
    json.dumps(one, allow_nan=False)
