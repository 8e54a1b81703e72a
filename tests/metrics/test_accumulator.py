"""octseg.metrics.accumulator: streaming in batches, merging, and the one-shot report agree."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _labelmaps import K, random_maps
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from octseg.records import Spacing
from octseg.metrics import MetricAccumulator, segmentation_report


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


def test_merge_equals_one_accumulator_and_checks_settings():
    gt, pred = random_maps(11)
    vols = [f"v{i % 3}" for i in range(len(gt))]
    one = segmentation_report(gt, pred, K, volumes=vols, hd95="px")
    a, b = MetricAccumulator(K, hd95="px"), MetricAccumulator(K, hd95="px")
    a.update(gt[:5], pred[:5], volumes=vols[:5])
    b.update(gt[5:6], pred[5:6], volumes=vols[5:6])
    b.update(gt[6:], pred[6:], volumes=vols[6:])
    assert a.merge(b) is a
    assert a.compute() == one and a.measures().conf.shape == (len(gt), K, K)
    with pytest.raises(ValueError):
        a.merge(MetricAccumulator(K, hd95="off"))
    a.reset()
    assert a.compute(tables=False)["n_bscans"] == 0


def test_empty_accumulator_and_bad_settings():
    rep = MetricAccumulator(2).compute()
    assert rep["n_bscans"] == 0 and rep["per_volume"] is None and rep["per_bscan_table"] == []
    with pytest.raises(ValueError):
        MetricAccumulator(2, ["only one"])
    with pytest.raises(ValueError):
        MetricAccumulator(2, hd95="mm")
    with pytest.raises(ValueError):
        MetricAccumulator(2).retouch()  # no volume ids
