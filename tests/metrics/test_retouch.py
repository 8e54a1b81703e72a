"""octseg.metrics.retouch: per-volume Dice, AVD (mm³) and detection AUC, by hand and by accumulator."""

from __future__ import annotations

import json

import numpy as np
import pytest

from octseg.records import Spacing
from octseg.metrics import MetricAccumulator, retouch_volume_metrics


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


def test_volume_spacing_and_vendor_are_the_first_known():
    g = np.zeros((3, 4, 5), int)
    p = np.zeros((3, 4, 5), int)
    g[:, 0, :2] = 1
    acc = MetricAccumulator(2, hd95="off")
    acc.update(g[:1], p[:1], volumes="v", vendors=None, spacings=None)  # nothing known yet
    acc.update(g[1:2], p[1:2], volumes="v", vendors="topcon", spacings=Spacing(0.1, 0.2, 0.5))
    acc.update(g[2:], p[2:], volumes="v", vendors="cirrus", spacings=Spacing(1.0, 1.0, 1.0))
    r = acc.retouch()
    assert r["volumes"]["v"]["vendor"] == "topcon"
    assert r["volumes"]["v"]["gt_mm3"]["fluid"] == pytest.approx(6 * 0.1 * 0.2 * 0.5)
    with pytest.raises(ValueError):
        retouch_volume_metrics([g, g], [p, p], None, None, 2, volume_ids=["a", "a"])  # ids not unique
    with pytest.raises(ValueError):
        retouch_volume_metrics([g, g], [p], None, None, 2)  # lengths differ
