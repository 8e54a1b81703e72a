"""Mean Teacher with CutMix (French et al. 2020): the student sees pasted pairs of unlabelled B-scans, its target is
the teacher's prediction on the unmixed B-scans pasted with the same boxes; without boxes it is plain Mean Teacher."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODEL

from octseg.config import load_config
from octseg.data.augment import AugmentConfig, Augmenter
from octseg.losses import LossConfig, SegmentationLoss, softmax_mse
from octseg.methods import MethodConfig, StepContext, build_method
from octseg.methods.mean_teacher import MeanTeacherConfig
from octseg.models import ModelConfig, build_model

K = 4
pytestmark = pytest.mark.usefixtures("one_thread")


def _method(cutmix: bool):
    torch.manual_seed(0)
    cfg = MethodConfig(name="mean_teacher", mean_teacher=MeanTeacherConfig(
        cutmix=cutmix, noise_std=0.0, consistency_weight=1.0, consistency_rampup_epochs=0))
    m = build_method(cfg, build_model(ModelConfig(**TINY_MODEL), K), SegmentationLoss(LossConfig(), K))
    with torch.no_grad():  # a teacher that differs from the student, so that the consistency is not 0
        for p in m.teacher.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return m.train()


def _ctx(cutmix_p: float, seed: int = 3) -> StepContext:
    return StepContext(epoch=5, global_step=7, generator=torch.Generator().manual_seed(seed),
                       normalise=lambda x: (x - 0.4) / 0.2, augmenter=Augmenter(AugmentConfig(cutmix_p=cutmix_p)))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 1, 32, 32, generator=g), torch.randint(0, K, (2, 32, 32), generator=g), \
        torch.rand(4, 1, 32, 32, generator=g)


def test_student_learns_the_teachers_prediction_pasted_with_its_input():
    x_l, y_l, x_u = _batch()
    m = _method(cutmix=True)
    _, logs = m.training_loss(x_l, y_l, x_u, _ctx(1.0))
    box, partner = Augmenter(AugmentConfig(cutmix_p=1.0)).cutmix_boxes(4, (32, 32), _ctx(1.0).generator, "cpu")
    assert box.any() and not box.all() and not torch.equal(partner, torch.arange(4))
    norm = _ctx(1.0).normalise
    with torch.no_grad():  # the same BatchNorm batches as the method: labelled, then unlabelled
        s = torch.cat([m.student(norm(x_l)), m.student(norm(torch.where(box[:, None], x_u[partner], x_u)))])
        t_u = m.teacher(norm(x_u))
        t = torch.cat([m.teacher(norm(x_l)), torch.where(box[:, None], t_u[partner], t_u)])
    assert torch.allclose(logs["loss_cons"], softmax_mse(s, t), rtol=1e-5, atol=1e-8)
    # unpasted, the same targets give another consistency: the boxes are what the student is held to
    with torch.no_grad():
        plain = softmax_mse(torch.cat([s[:2], m.student(norm(x_u))]), t)
    assert not torch.allclose(logs["loss_cons"], plain)


def test_without_boxes_it_is_plain_mean_teacher_and_gradients_reach_the_student():
    x_l, y_l, x_u = _batch()
    loss_mix, logs_mix = _method(cutmix=True).training_loss(x_l, y_l, x_u, _ctx(0.0))
    m = _method(cutmix=False)
    loss, logs = m.training_loss(x_l, y_l, x_u, _ctx(0.0))
    assert torch.allclose(loss_mix, loss) and torch.allclose(logs_mix["loss_cons"], logs["loss_cons"])
    mc = _method(cutmix=True)
    loss, _ = mc.training_loss(x_l, y_l, x_u, _ctx(1.0))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mc.student.parameters())
    assert all(p.grad is None for p in mc.teacher.parameters())


def test_one_unlabelled_b_scan_or_none_trains_without_pasting():
    x_l, y_l, x_u = _batch()
    for u in (x_u[:1], None):
        loss, logs = _method(cutmix=True).training_loss(x_l, y_l, u, _ctx(1.0))
        assert torch.isfinite(loss) and torch.isfinite(logs["loss_cons"])


def test_recipe_key():
    assert load_config("demo_cpu", ["method.mean_teacher.cutmix=true", "data.path=/x"]).method.mean_teacher.cutmix


def test_a_bad_value_names_the_key():
    from octseg.errors import ConfigError

    with pytest.raises(ConfigError, match="method.mean_teacher.cutmix"):
        load_config("demo_cpu", ["method.mean_teacher.cutmix=sometimes", "data.path=/x"])
