"""data.fluid_band_margin: columns outside a labelled volume's fluid extent +- margin become
unlabelled for training only (data graded in a central band, as Duke DME)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_train_overrides
from hypothesis import given, settings
from hypothesis import strategies as st

from octseg.constants import IGNORE_INDEX
from octseg.data.label_band import fluid_column_extent, unlabel_outside_fluid_band


def _masks():
    m = np.zeros((4, 3, 20), np.uint8)
    m[0, 1, 6:9] = 1       # volume a: fluid in columns 6-8 of one B-scan ...
    m[1, 2, 11] = 2        # ... and column 11 of the other: extent 6-11
    m[1, 0, 0] = IGNORE_INDEX  # an unlabelled pixel is not fluid
    # volume b (rows 2, 3): no fluid
    return m


def test_band_is_per_volume_extent_plus_margin():
    m = _masks()
    out, bands = unlabel_outside_fluid_band(m, [0, 1, 2, 3], ["a", "a", "b", "b"], margin=2)
    assert bands == {"a": (4, 13), "b": None}
    for r in (0, 1):
        assert (out[r, :, :4] == IGNORE_INDEX).all() and (out[r, :, 14:] == IGNORE_INDEX).all()
        np.testing.assert_array_equal(out[r, :, 4:14], m[r, :, 4:14])   # inside: the labels as they were
    np.testing.assert_array_equal(out[2:], m[2:])                      # no fluid: left as it is
    assert (m[0, :, :4] == 0).all()                                    # the input is not modified


def test_only_the_given_rows_change_and_margin_clips_at_the_border():
    m = _masks()
    out, bands = unlabel_outside_fluid_band(m, [0], ["a", "a", "b", "b"], margin=100)
    assert bands == {"a": (0, 19)}
    np.testing.assert_array_equal(out, m)
    out, _ = unlabel_outside_fluid_band(m, [1], ["a", "a", "b", "b"], margin=0)  # row 1 alone: extent 11-11
    assert (out[1, :, 11] == m[1, :, 11]).all() and (out[1, :, :11] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(out[0], m[0])
    with pytest.raises(ValueError, match="margin"):
        unlabel_outside_fluid_band(m, [0], ["a"] * 4, margin=-1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 29), min_size=1, max_size=6), st.integers(0, 8))
def test_fluid_never_becomes_unlabelled(cols, margin):
    m = np.zeros((2, 2, 30), np.uint8)
    for i, c in enumerate(cols):
        m[i % 2, i % 2, c] = 1 + i % 3
    out, bands = unlabel_outside_fluid_band(m, [0, 1], ["v", "v"], margin)
    assert (out[m > 0] == m[m > 0]).all()
    lo, hi = bands["v"]
    assert fluid_column_extent(m) == (min(cols), max(cols))
    assert lo == max(0, min(cols) - margin) and hi == min(29, max(cols) + margin)
    assert ((out == IGNORE_INDEX).sum(axis=(0, 1)) > 0).tolist() == [c < lo or c > hi for c in range(30)]


def test_training_data_unlabels_only_labelled_rows(tiny_prepared):
    from octseg.config import load_config
    from octseg.training.data import load_train_data

    plain = load_train_data(load_config("demo_cpu", tiny_train_overrides(tiny_prepared)))
    banded = load_train_data(load_config("demo_cpu", tiny_train_overrides(tiny_prepared, **{"data.fluid_band_margin": 2})))
    assert plain.label_bands is None and set(banded.label_bands) == {plain.volumes[r] for r in plain.parts["labelled"]}
    lab = plain.parts["labelled"]
    others = np.setdiff1d(np.arange(len(plain.masks)), lab)
    np.testing.assert_array_equal(banded.masks[others], plain.masks[others])  # validation and the rest unchanged
    changed = banded.masks[lab] != plain.masks[lab]
    assert changed.any() and (banded.masks[lab][changed] == IGNORE_INDEX).all() and (plain.masks[lab][changed] == 0).all()


def test_negative_margin_is_refused_naming_the_key():
    from octseg.config import load_config
    from octseg.errors import ConfigError

    with pytest.raises(ConfigError, match="data.fluid_band_margin"):
        load_config("demo_cpu", ["data.fluid_band_margin=-3"])


def test_duke_benchmarks_band_score_uses_the_same_band():
    from benchmarks.duke import band_masks

    gt = _masks()[:2].copy()
    gt[gt == 2] = 1
    gt[gt == IGNORE_INDEX] = 0
    band = band_masks(gt, 2)
    assert (band[:, :, :4] == IGNORE_INDEX).all() and (band[:, :, 14:] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(band[:, :, 4:14], gt[:, :, 4:14])
