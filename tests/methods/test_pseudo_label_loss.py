"""``unsup_loss`` of FixMatch and UniMatch: cross-entropy, soft Dice over confident pixels, both, or class-balanced
cross-entropy."""

from __future__ import annotations

import pytest
import torch

from octseg.constants import IGNORE_INDEX
from octseg.errors import ConfigError
from octseg.losses import LossConfig, SegmentationLoss
from octseg.methods import MethodConfig, build_method
from octseg.methods.pseudo_labels import BALANCE_MAX_WEIGHT, masked_ce, pseudo_label_loss
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
    for kind in ("ce", "dice", "dice_ce", "balanced_ce"):
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
@pytest.mark.parametrize("kind", ["dice", "balanced_ce"])
def test_methods_train_with_each_loss_on_pseudo_labels(name, kind):
    torch.manual_seed(0)
    cfg = MethodConfig(name=name)
    section = getattr(cfg, name)
    section.unsup_loss, section.threshold = kind, 0.0
    m = build_method(cfg, build_model(ModelConfig(**TINY_MODEL), 4), SegmentationLoss(LossConfig(name="dice_ce"), 4))
    from test_method_contract import _batch, _ctx
    x_l, y_l, x_u, valid_u = _batch()
    loss, logs = m.training_loss(x_l, y_l, x_u, _ctx(1, valid_u))
    assert torch.isfinite(loss) and float(logs["loss_unsup"]) > 0
    loss.backward()
    assert all(p.grad is not None for p in m.trainable_parameters())


def _ce_per_pixel(logits, target):
    return torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")


def test_balanced_ce_equals_ce_when_classes_are_equally_frequent_or_one_class_is_confident():
    logits, _, valid = _case(2)
    target = torch.arange(4).repeat_interleave(128).reshape(2, 16, 16)  # 128 pixels of each class
    assert torch.allclose(pseudo_label_loss("balanced_ce", logits, target, valid), masked_ce(logits, target, valid))
    only_bg = torch.zeros_like(target)
    only_bg[:, :, :4] = IGNORE_INDEX
    assert torch.allclose(pseudo_label_loss("balanced_ce", logits, only_bg, valid), masked_ce(logits, only_bg, valid))


def test_balanced_ce_lifts_a_rare_class_keeps_the_mean_weight_and_caps_the_lift():
    """100x rarer than background: weight 10x background's (sqrt), the confident pixels' mean weight still 1; 10^4x:
    capped at BALANCE_MAX_WEIGHT, not 100."""
    logits = torch.randn(1, 2, 101, 100, generator=torch.Generator().manual_seed(3))
    valid = torch.ones(1, 101, 100, dtype=torch.bool)
    for rare, lift in ((100, 100 ** 0.5), (1, BALANCE_MAX_WEIGHT)):
        target = torch.zeros(1, 101, 100, dtype=torch.long)
        target.view(-1)[:rare] = 1
        target.view(-1)[rare + 100 * 100:] = IGNORE_INDEX  # 100 * 100 confident background pixels
        per = _ce_per_pixel(logits, target)
        bg, fg = (target == 0), (target == 1)
        n_bg, n_fg = int(bg.sum()), int(fg.sum())
        w_bg = (n_bg + n_fg) / (n_bg + lift * n_fg)  # mean weight over the confident pixels is 1
        want = (w_bg * per[bg].sum() + w_bg * lift * per[fg].sum()) / valid.sum()
        got = pseudo_label_loss("balanced_ce", logits, target, valid)
        assert torch.allclose(got, want, rtol=1e-5), (rare, float(got), float(want))
