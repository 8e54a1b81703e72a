"""FixMatch's distribution alignment: rare classes the network under-predicts are lifted before the
threshold, invalid pixels do not count, and the running means survive a checkpoint (resume)."""

from __future__ import annotations

import torch
from conftest import TINY_MODEL

from octseg.constants import IGNORE_INDEX
from octseg.losses import LossConfig, SegmentationLoss
from octseg.methods import MethodConfig, build_method
from octseg.methods.pseudo_labels import DistributionAlignment
from octseg.models import ModelConfig, build_model


def _probs(n=2, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 3, h, w, generator=g)
    logits[:, 2] -= 3.0  # class 2 under-predicted
    return logits.softmax(1)


def test_an_under_predicted_class_is_lifted_and_rows_stay_distributions():
    probs = _probs()
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    y_l = torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(1))  # ~1/3 each
    da = DistributionAlignment()
    out = da(probs, valid, y_l)
    torch.testing.assert_close(out.sum(1), torch.ones(2, 8, 8))
    assert out[:, 2].mean() > 3 * probs[:, 2].mean()
    assert (out.argmax(1) == 2).sum() > (probs.argmax(1) == 2).sum()
    # the running means: labelled frequencies and predicted means, per class
    torch.testing.assert_close(da.labelled, torch.bincount(y_l.flatten(), minlength=3).float() / y_l.numel())
    torch.testing.assert_close(da.predicted, probs.mean((0, 2, 3)))


def test_invalid_and_ignored_pixels_do_not_count():
    probs = _probs()
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    valid[:, :, :4] = False
    probs_changed = probs.clone()
    probs_changed[:, :, :, :4] = torch.tensor([0.0, 0.0, 1.0])[None, :, None, None]
    y_l = torch.zeros(2, 8, 8, dtype=torch.long)
    y_l[:, :2] = IGNORE_INDEX
    y_l[:, 2:4] = 1
    a, b = DistributionAlignment(), DistributionAlignment()
    a(probs, valid, y_l)
    b(probs_changed, valid, y_l)
    torch.testing.assert_close(a.predicted, b.predicted)
    torch.testing.assert_close(a.labelled, torch.tensor([4 / 6, 2 / 6, 0.0]))


def test_running_means_follow_the_momentum_and_survive_a_state_dict_round_trip():
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    y_l = torch.zeros(2, 8, 8, dtype=torch.long)
    a = DistributionAlignment(momentum=0.9)
    a(_probs(seed=0), valid, y_l)
    first = a.predicted.clone()
    a(_probs(seed=1), valid, y_l)
    torch.testing.assert_close(a.predicted, 0.9 * first + 0.1 * _probs(seed=1).mean((0, 2, 3)))
    b = DistributionAlignment(momentum=0.9)
    b.load_state_dict(a.state_dict())  # a fresh module (a resumed run) takes the saved sizes and values
    p = _probs(seed=2)
    torch.testing.assert_close(a(p, valid, y_l), b(p, valid, y_l))


def test_fixmatch_with_alignment_trains_and_resumes_with_its_running_means():
    from test_method_contract import _batch, _ctx

    def make():
        torch.manual_seed(0)
        cfg = MethodConfig(name="fixmatch")
        cfg.fixmatch.distribution_alignment, cfg.fixmatch.threshold, cfg.fixmatch.alignment_start = True, 0.5, 0.0
        return build_method(cfg, build_model(ModelConfig(**TINY_MODEL), 4), SegmentationLoss(LossConfig(name="dice_ce"), 4))

    m = make()
    x_l, y_l, x_u, valid_u = _batch()
    loss, logs = m.training_loss(x_l, y_l, x_u, _ctx(1, valid_u))
    assert torch.isfinite(loss) and m.alignment.predicted.numel() == 4
    loss.backward()
    assert all(p.grad is not None for p in m.trainable_parameters())
    resumed = make()
    resumed.load_state_dict(m.state_dict())
    torch.testing.assert_close(resumed.alignment.labelled, m.alignment.labelled)
    with torch.no_grad():
        a = m.training_loss(x_l, y_l, x_u, _ctx(2, valid_u))[0]
        b = resumed.training_loss(x_l, y_l, x_u, _ctx(2, valid_u))[0]
    assert torch.equal(a, b)
    assert "alignment.predicted" in dict(m.named_buffers())


def test_alignment_waits_for_alignment_start_but_keeps_its_running_means():
    probs = _probs()
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    y_l = torch.zeros(2, 8, 8, dtype=torch.long)
    da = DistributionAlignment()
    assert torch.equal(da(probs, valid, y_l, apply=False), probs) and da.predicted.numel() == 3
    assert not torch.equal(da(probs, valid, y_l), probs)
