"""octseg.metrics.scoring.score_networks equals predict_labels + segmentation_report done by hand."""

from __future__ import annotations

import numpy as np
import pytest

from octseg.checkpoint import load_networks
from octseg.inference import predict_labels
from octseg.metrics import score_networks, segmentation_report


@pytest.fixture
def scored_set():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 48, 40), dtype=np.uint8)
    gt = rng.integers(0, 4, (5, 48, 40)).astype(np.uint8)
    gt[1, :4] = 255  # ignored pixels
    volumes = ["a", "a", "b", "b", "c"]
    vendors = ["cirrus", "cirrus", "topcon", "topcon", None]
    return images, gt, volumes, vendors


def test_score_networks_equals_by_hand(tiny_checkpoint, scored_set):
    images, gt, volumes, vendors = scored_set
    nets, meta = load_networks(tiny_checkpoint)
    reports, preds = score_networks(nets, meta, images, gt, volumes=volumes, vendors=vendors, batch=2, tables=True,
                                    return_predictions=True)
    assert list(reports) == list(nets) == list(preds) == ["teacher", "student"]
    for name, net in nets.items():
        pred = predict_labels(net, images, meta["normalization"], meta["input_size"], batch=2)
        np.testing.assert_array_equal(preds[name], pred)
        by_hand = segmentation_report(gt, pred, len(meta["classes"]), class_names=meta["classes"], volumes=volumes,
                                      vendors=vendors)
        assert reports[name] == by_hand
        assert "by_vendor" in by_hand and "per_bscan_table" in by_hand
    # without return_predictions: the reports alone, the same
    assert score_networks(nets, meta, images, gt, volumes=volumes, vendors=vendors, batch=2, tables=True) == reports


def test_score_networks_tables_vendors_and_names(tiny_checkpoint, scored_set):
    images, gt, volumes, _ = scored_set
    nets, meta = load_networks(tiny_checkpoint)
    nets = {"teacher": nets["teacher"]}
    pred = predict_labels(nets["teacher"], images, meta["normalization"], meta["input_size"], batch=16)
    full = segmentation_report(gt, pred, 4, class_names=meta["classes"], volumes=volumes)

    # "per_volume": what training's metrics.json keeps (the per-B-scan table popped)
    pv = score_networks(nets, meta, images, gt, volumes=volumes, vendors=[None] * 5, tables="per_volume")["teacher"]
    assert "per_bscan_table" not in pv and pv["per_volume_table"] == full["per_volume_table"]
    assert "by_vendor" not in pv  # vendors all unknown count as none given
    assert pv == {k: v for k, v in full.items() if k != "per_bscan_table"}
    assert score_networks(nets, meta, images, gt, volumes=volumes, vendors=[""] * 5, tables="per_volume")["teacher"] == pv

    none = score_networks(nets, meta, images, gt, volumes=volumes)["teacher"]
    assert none == segmentation_report(gt, pred, 4, class_names=meta["classes"], volumes=volumes, tables=False)
    assert "per_bscan_table" not in none and "per_volume_table" not in none

    renamed = score_networks(nets, meta, images, gt, class_names=["bg", "a", "b", "c"])["teacher"]
    assert renamed["classes"] == ["bg", "a", "b", "c"]
    assert list(renamed["pooled"]["dice"].values()) == list(none["pooled"]["dice"].values())
    with pytest.raises(ValueError):
        score_networks(nets, meta, images, gt, class_names=["bg", "fluid"])
    with pytest.raises(ValueError):
        score_networks(nets, meta, images, gt, tables="per_bscan")


def test_score_networks_predicts_at_the_reference_size(tiny_checkpoint, scored_set):
    images, gt, _, _ = scored_set
    nets, meta = load_networks(tiny_checkpoint)
    small_gt = gt[:, ::2, ::2]
    reports, preds = score_networks(nets, meta, images, small_gt, return_predictions=True)
    pred = predict_labels(nets["student"], images, meta["normalization"], meta["input_size"], out_size=(24, 20))
    np.testing.assert_array_equal(preds["student"], pred)
    assert reports["student"] == segmentation_report(small_gt, pred, 4, class_names=meta["classes"], tables=False)
