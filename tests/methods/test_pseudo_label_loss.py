"""``unsup_loss`` of FixMatch and UniMatch: cross-entropy, soft Dice over confident pixels, or both."""

from __future__ import annotations

import pytest
import torch

from octseg.constants import IGNORE_INDEX
from octseg.errors import ConfigError
from octseg.losses import LossConfig, SegmentationLoss
from octseg.methods import MethodConfig, build_method
from octseg.methods.pseudo_labels import masked_ce, pseudo_label_loss
from octseg.models import ModelConfig, build_model
from conftest import TINY_MODEL


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 16, 16, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (2, 16, 16), generator=g)
    target[:, :, :6] = IGNORE_INDEX  # not confident
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    return logits, target, valid


def test_dice_ignores_unconfident_pixels_and_equals_the_supervised_dice_there():
    logits, target, valid = _case()
    dice = pseudo_label_loss("dice", logits, target, valid)
    sup = SegmentationLoss(LossConfig(name="dice_ce", other_weight=0.0), 4)(logits, target)
    assert torch.allclose(dice, sup)
    changed = logits.detach().clone()
    changed[:, :, :, :6] = torch.randn(2, 4, 16, 6)  # only where no pixel is confident
    assert torch.allclose(pseudo_label_loss("dice", changed, target, valid), dice)


def test_a_rare_class_weighs_as_much_as_background_in_dice_not_in_ce():
    """A mistake on the few pixels of a rare class moves Dice far more than cross-entropy."""
    target = torch.zeros(1, 32, 32, dtype=torch.long)
    target[0, :2, :2] = 1                        # 4 of 1024 pixels
    good = torch.full((1, 2, 32, 32), -4.0)
    good[:, 0] = 4.0
    good[0, 1, :2, :2], good[0, 0, :2, :2] = 4.0, -4.0
    bad = good.clone()
    bad[0, 1, :2, :2], bad[0, 0, :2, :2] = -4.0, 4.0  # the rare class missed
    valid = torch.ones(1, 32, 32, dtype=torch.bool)
    rise = {k: float(pseudo_label_loss(k, bad, target, valid) - pseudo_label_loss(k, good, target, valid))
            for k in ("ce", "dice")}
    assert rise["dice"] > 0.4 > 0.1 > rise["ce"] > 0


def test_dice_ce_is_their_sum_and_nothing_confident_gives_zero_with_a_gradient():
    logits, target, valid = _case(1)
    both = pseudo_label_loss("dice_ce", logits, target, valid)
    assert torch.allclose(both, pseudo_label_loss("dice", logits, target, valid) + masked_ce(logits, target, valid))
    none = torch.full_like(target, IGNORE_INDEX)
    for kind in ("ce", "dice", "dice_ce"):
        loss = pseudo_label_loss(kind, logits, none, valid)
        assert float(loss) == 0.0
        loss.backward()  # still part of the graph


@pytest.mark.parametrize("name", ["fixmatch", "unimatch"])
def test_an_unknown_unsup_loss_is_refused_by_name(name):
    cfg = MethodConfig(name=name)
    getattr(cfg, name).unsup_loss = "dcie"
    with pytest.raises(ConfigError, match=rf"method\.{name}\.unsup_loss='dcie'.*dice_ce"):
        build_method(cfg, build_model(ModelConfig(**TINY_MODEL), 4), SegmentationLoss(LossConfig(name="dice_ce"), 4))


@pytest.mark.parametrize("name", ["fixmatch", "unimatch"])
def test_methods_train_with_dice_on_pseudo_labels(name):
    torch.manual_seed(0)
    cfg = MethodConfig(name=name)
    section = getattr(cfg, name)
    section.unsup_loss, section.threshold = "dice", 0.0
    m = build_method(cfg, build_model(ModelConfig(**TINY_MODEL), 4), SegmentationLoss(LossConfig(name="dice_ce"), 4))
    from test_method_contract import _batch, _ctx
    x_l, y_l, x_u, valid_u = _batch()
    loss, logs = m.training_loss(x_l, y_l, x_u, _ctx(1, valid_u))
    assert torch.isfinite(loss) and float(logs["loss_unsup"]) > 0
    loss.backward()
    assert all(p.grad is not None for p in m.trainable_parameters())
