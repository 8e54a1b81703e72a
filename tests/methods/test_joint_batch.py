"""``method.fixmatch.joint_batch`` switches exactly one thing: whether the labelled views share their
BatchNorm batch with the unlabelled strong views (the subject of benchmarks/joint_batchnorm.py)."""

from __future__ import annotations

import pytest
from test_method_contract import _batch, _ctx, _method

pytestmark = pytest.mark.usefixtures("one_thread")


def _supervised_loss(joint: bool, x_u):
    m = _method("fixmatch")
    m.cfg.joint_batch = joint
    m.cfg.weight = 0.0
    m.train()
    x_l, y_l, _, valid_u = _batch()
    _, logs = m.training_loss(x_l, y_l, x_u, _ctx(1, valid_u))
    return float(logs["loss_sup"])


def test_separate_batches_keep_the_labelled_loss_independent_of_the_unlabelled_images():
    _, _, x_u, _ = _batch()
    assert _supervised_loss(False, x_u) == pytest.approx(_supervised_loss(False, x_u * 0.2 + 0.7), abs=1e-6)


def test_a_joint_batch_normalises_the_labelled_views_with_the_unlabelled_ones():
    _, _, x_u, _ = _batch()
    assert abs(_supervised_loss(True, x_u) - _supervised_loss(True, x_u * 0.2 + 0.7)) > 1e-4
