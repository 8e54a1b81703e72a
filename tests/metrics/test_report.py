"""octseg.metrics.report: pooled / per-B-scan / per-volume / by-vendor reports and the text table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _labelmaps import K, random_maps
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from octseg.records import Spacing
from octseg.metrics import (
    confusion_per_image,
    format_table,
    hd95_per_image,
    scores_from_confusion,
    original_iou,
    segmentation_report,
)

tm_cls = pytest.importorskip("torchmetrics.functional.classification")
tm_seg = pytest.importorskip("torchmetrics.functional.segmentation")


# ----------------------------------------------------------------------- torchmetrics


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


# ------------------------------------------------------------------------ aggregation


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


def test_absent_absent_excluded_from_per_bscan_and_original_iou_counts_it_as_one():
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
    # the original project's flaw: absent-absent scored 1 lifts the mean from 0.5 to 2/3
    assert original_iou(b, a, 2)[1] == pytest.approx(2 / 3)
    assert original_iou(np.zeros((5, 4, 4), int), np.zeros((5, 4, 4), int), 2)[1] == 1.0


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


def test_volumes_interleaved_keep_first_seen_order():
    gt, pred = random_maps(9)
    vols = ["z", "a", None, "z", "m", "a", None, "m"]
    rep = segmentation_report(gt, pred, K, volumes=vols, hd95="off")
    assert list(rep["per_volume_table"]) == ["z", "a", "m"] and rep["n_volumes"] == 3
    conf = confusion_per_image(gt, pred, K)
    d = scores_from_confusion(conf[[1, 5]].sum(0))["dice"]
    assert rep["per_volume_table"]["a"]["IRF"] == pytest.approx(d[1])
    assert [r["volume"] for r in rep["per_bscan_table"]] == vols


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


def test_class_names_checked():
    gt, pred = random_maps(0)
    with pytest.raises(ValueError):
        segmentation_report(gt, pred, K, class_names=["a", "b"])
    assert segmentation_report(gt, pred, K, class_names="abcd", tables=False)["classes"] == list("abcd")
    with pytest.raises(ValueError):
        segmentation_report(gt, pred, K, hd95="mm")


# ----------------------------------------------------------------------------- HD95


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
