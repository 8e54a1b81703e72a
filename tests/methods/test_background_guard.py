"""``background_guard`` of FixMatch and UniMatch: background pseudo-labels only where the whole neighbourhood
is confidently background, so self-training cannot shrink a fluid region it is unsure of."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_MODEL

from octseg.config import load_config
from octseg.constants import IGNORE_INDEX
from octseg.errors import ConfigError
from octseg.losses import LossConfig, SegmentationLoss
from octseg.methods import MethodConfig, build_method
from octseg.methods.pseudo_labels import guarded_background, weak_targets
from octseg.models import ModelConfig, build_model


class FixedNet(torch.nn.Module):
    """Returns the given logits whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def _scene():
    """One 1x20 row: background (p 0.99) everywhere but an unsure fluid pixel at 10 (p_bg 0.6) and a
    confident IRF pixel at 3."""
    probs = torch.zeros(1, 4, 1, 20)
    probs[:, 0] = 0.99
    probs[:, 1] = 0.01
    probs[0, :, 0, 10] = torch.tensor([0.6, 0.4, 0.0, 0.0])
    probs[0, :, 0, 3] = torch.tensor([0.01, 0.99, 0.0, 0.0])
    ctx = SimpleNamespace(normalise=lambda x: x, valid_u=None)
    return FixedNet(probs.clamp_min(1e-9).log()), torch.zeros(1, 1, 1, 20), ctx


def test_background_near_an_unsure_or_fluid_pixel_is_left_unlabelled():
    net, x, ctx = _scene()
    plain, _ = weak_targets(net, x, ctx, 0.95)
    guarded, _ = weak_targets(net, x, ctx, 0.95, background_guard=2)
    assert plain[0, 0].tolist() == [0, 0, 0, 1] + [0] * 6 + [IGNORE_INDEX] + [0] * 9
    expected = plain.clone()
    expected[0, 0, [1, 2, 4, 5, 8, 9, 11, 12]] = IGNORE_INDEX  # within 2 pixels of pixel 3 or pixel 10
    assert torch.equal(guarded, expected)
    assert guarded[0, 0, 3] == 1  # fluid pseudo-labels are kept


def test_the_guard_is_an_erosion_and_the_image_border_does_not_count():
    sure = torch.ones(1, 7, 7, dtype=torch.bool)
    sure[0, 3, 3] = False
    out = guarded_background(sure, 1)
    assert out.sum() == 49 - 9 and not out[0, 2:5, 2:5].any()
    assert guarded_background(torch.ones(1, 3, 3, dtype=torch.bool), 4).all()


def test_invalid_pixels_count_as_background_for_their_neighbours():
    net, x, ctx = _scene()
    valid = torch.ones(1, 1, 20, dtype=torch.bool)
    valid[0, 0, 15:] = False  # padding the weak view pulled in: unlabelled, but no threat to its neighbours
    ctx.valid_u = valid
    t, _ = weak_targets(net, x, ctx, 0.95, background_guard=2)
    assert (t[0, 0, 15:] == IGNORE_INDEX).all() and (t[0, 0, 13:15] == 0).all()


@pytest.mark.parametrize("name", ["fixmatch", "unimatch"])
def test_methods_train_with_the_guard_and_it_removes_pseudo_labels(name):
    from test_method_contract import _batch, _ctx

    cfg = MethodConfig(name=name)
    getattr(cfg, name).threshold = 0.3
    getattr(cfg, name).background_guard = 3
    m = build_method(cfg, build_model(ModelConfig(**TINY_MODEL), 4), SegmentationLoss(LossConfig(name="dice_ce"), 4))
    x_l, y_l, x_u, valid_u = _batch()
    loss, _ = m.training_loss(x_l, y_l, x_u, _ctx(1, valid_u))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in m.trainable_parameters())
    ctx = _ctx(1, valid_u)
    plain, _ = weak_targets(m.student, x_u, ctx, 0.3)
    guarded, _ = weak_targets(m.student, x_u, ctx, 0.3, background_guard=3)
    assert (guarded != IGNORE_INDEX).sum() <= (plain != IGNORE_INDEX).sum()
    assert torch.equal(guarded[guarded != IGNORE_INDEX], plain[guarded != IGNORE_INDEX])


def test_a_negative_radius_is_refused_with_the_key_named():
    with pytest.raises(ConfigError, match="method.fixmatch.background_guard"):
        load_config(None, ["method.name=fixmatch", "method.fixmatch.background_guard=-1"])
