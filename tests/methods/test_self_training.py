"""Self-training from a frozen teacher checkpoint: the teacher labels the weak views with its own normalisation
(flip-averaged), is never trained or saved, and a missing or mismatched teacher is a clear error."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODEL, make_tiny_checkpoint, method_test_config, tiny_teacher

from octseg.checkpoint import load_network
from octseg.config import load_config
from octseg.constants import IGNORE_INDEX
from octseg.errors import ConfigError
from octseg.losses import LossConfig, SegmentationLoss
from octseg.methods import StepContext, build_method
from octseg.models import ModelConfig, build_model

K = 4
pytestmark = pytest.mark.usefixtures("one_thread")


def _method(**options):
    cfg = method_test_config("self_training")
    for k, v in options.items():
        setattr(cfg.self_training, k, v)
    torch.manual_seed(0)
    return build_method(cfg, build_model(ModelConfig(**TINY_MODEL), K), SegmentationLoss(LossConfig(), K))


def _ctx(valid_u=None):
    return StepContext(epoch=0, global_step=1, generator=torch.Generator().manual_seed(0),
                       normalise=lambda x: (x - 0.5) / 0.3, valid_u=valid_u)  # not the teacher's (0.2, 0.15)


def test_pseudo_labels_are_the_teachers_flip_averaged_prediction_with_its_own_normalisation():
    m = _method()
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    valid = torch.ones(3, 64, 64, dtype=torch.bool)
    valid[:, :, :6] = False
    target, _ = m.teacher_targets(x, _ctx(valid))
    teacher, meta = load_network(tiny_teacher())
    norm = meta["normalization"]
    with torch.no_grad():
        xn = (x - norm["mean"]) / norm["std"]
        probs = 0.5 * (teacher(xn).softmax(1) + teacher(xn.flip(-1)).softmax(1).flip(-1))
    expected = torch.where(valid, probs.argmax(1), torch.full_like(target, IGNORE_INDEX))
    assert torch.equal(target, expected)

    m.cfg.flip = False
    plain, _ = m.teacher_targets(x, _ctx(valid))
    with torch.no_grad():
        assert torch.equal(plain[valid], teacher(xn).argmax(1)[valid])


def test_several_teachers_label_with_their_mean_probability_each_with_its_own_normalisation(tmp_path):
    """An ensemble teacher (a list of checkpoints, as ``octseg predict`` takes them): the pseudo-label is the argmax of
    the members' mean flip-averaged probability, each member seeing the input normalised its own way."""
    other = make_tiny_checkpoint(tmp_path / "other.ckpt", method="supervised", seed=5,
                                 normalization={"mean": 0.4, "std": 0.3})
    paths = [str(tiny_teacher()), str(other)]
    m = _method(teacher=paths)
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    target, _ = m.teacher_targets(x, _ctx())
    probs = 0
    with torch.no_grad():
        for p in paths:
            net, meta = load_network(p)
            xn = (x - meta["normalization"]["mean"]) / meta["normalization"]["std"]
            probs = probs + 0.25 * (net(xn).softmax(1) + net(xn.flip(-1)).softmax(1).flip(-1))
    assert (target == probs.argmax(1)).float().mean() > 0.999  # (float rounding may flip a tie)
    singles = [_method(teacher=p).teacher_targets(x, _ctx())[0] for p in paths]
    assert not torch.equal(singles[0], singles[1]) and not torch.equal(target, singles[1])  # the members disagree
    # given as one comma-separated override, as the benchmarks pass it
    cfg = load_config(None, ["method.name=self_training", f"method.self_training.teacher=[{paths[0]},{paths[1]}]"])
    assert cfg.method.self_training.teacher == paths
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        load_config(None, ["method.name=self_training", f"method.self_training.teacher=[{paths[0]},{tmp_path}/x.ckpt]"])
    with pytest.raises(ConfigError, match="a folder without cv.json"):
        load_config(None, ["method.name=self_training", f"method.self_training.teacher={tmp_path}"])
    # an octseg cv folder teaches as the ensemble of its folds
    import json
    import shutil

    cv = tmp_path / "cv"
    cv.mkdir()
    for i, p in enumerate(paths):
        shutil.copy(p, cv / f"fold{i}.ckpt")
    (cv / "cv.json").write_text(json.dumps({"format": 1, "checkpoints": ["fold0.ckpt", "fold1.ckpt"]}))
    cfg = load_config(None, ["method.name=self_training", f"method.self_training.teacher={cv}"])
    assert torch.equal(_method(teacher=cfg.method.self_training.teacher).teacher_targets(x, _ctx())[0], target)


def test_threshold_keeps_only_confident_pixels():
    m = _method(threshold=1.0)
    x_l, x_u = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)
    y_l = torch.randint(0, K, (2, 64, 64))
    m.train()
    _, logs = m.training_loss(x_l, y_l, x_u, _ctx())
    assert float(logs["loss_unsup"]) == 0.0 and float(logs["confident_fraction"]) == 0.0
    m.cfg.threshold = 0.0
    _, logs = m.training_loss(x_l, y_l, x_u, _ctx())
    assert float(logs["loss_unsup"]) > 0 and float(logs["confident_fraction"]) == pytest.approx(1.0)


def test_teacher_is_frozen_in_eval_mode_and_not_saved():
    m = _method()
    m.train()
    assert not m.teacher.training and not any(p.requires_grad for p in m.teacher.parameters())
    assert not any(k.startswith("teacher") for k in m.state_dict())
    assert set(m.networks()) == {"student"}
    before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    x = torch.rand(2, 1, 64, 64)
    loss, _ = m.training_loss(x, torch.randint(0, K, (2, 64, 64)), x.flip(0), _ctx())
    loss.backward()
    torch.optim.SGD(m.trainable_parameters(), lr=1.0).step()
    assert all(torch.equal(before[k], v) for k, v in m.teacher.state_dict().items())  # BatchNorm stats too


def test_missing_or_mismatched_teacher_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="method.self_training.teacher is empty"):
        load_config(None, ["method.name=self_training"])
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        load_config(None, ["method.name=self_training", f"method.self_training.teacher={tmp_path / 'nope.ckpt'}"])
    two = make_tiny_checkpoint(tmp_path / "two.ckpt", classes=("background", "fluid"), method="supervised")
    with pytest.raises(ConfigError, match=r"two\.ckpt.*2 classes, the model being trained 4"):
        _method(teacher=str(two))
    wide = tiny_teacher(context_slices=1)
    with pytest.raises(ConfigError, match="3 input channels"):
        _method(teacher=str(wide))
    # another method ignores the (empty) teacher setting
    assert load_config(None, ["method.name=fixmatch"]).method.name == "fixmatch"


def test_teacher_takes_the_students_memory_layout():
    cfg = method_test_config("self_training")
    net = build_model(ModelConfig(**TINY_MODEL), K).to(memory_format=torch.channels_last)
    m = build_method(cfg, net, SegmentationLoss(LossConfig(), K))
    w = next(p for p in m.teacher.parameters() if p.ndim == 4 and p.shape[-1] > 1)
    assert m.memory_format == torch.channels_last and w.is_contiguous(memory_format=torch.channels_last)
    assert _method().memory_format == torch.contiguous_format
    x = torch.rand(2, 1, 64, 64)
    a, _ = m.teacher_targets(x, _ctx())
    b, _ = _method().teacher_targets(x, _ctx())
    assert (a == b).float().mean() > 0.99  # the same teacher, another layout: (nearly) the same labels


def test_without_strong_the_student_learns_the_weak_view():
    """``strong: false, cutmix: false``: the unlabelled term is the student's cross-entropy on the weak view itself."""
    import torch.nn.functional as F

    from octseg.data.augment import AugmentConfig, Augmenter

    m = _method(strong=False, cutmix=False)
    x_l, x_u = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)
    ctx = _ctx()
    ctx.augmenter = Augmenter(AugmentConfig())
    m.eval()
    with torch.no_grad():
        _, logs = m.training_loss(x_l, torch.randint(0, K, (2, 64, 64)), x_u, ctx)
        target, _ = m.teacher_targets(x_u, ctx)
        expected = F.cross_entropy(m.student(ctx.normalise(x_u)), target)
    assert float(logs["loss_unsup"]) == pytest.approx(float(expected), rel=1e-5)
    m.cfg.strong = True
    with torch.no_grad():
        _, logs = m.training_loss(x_l, torch.randint(0, K, (2, 64, 64)), x_u, ctx)
    assert float(logs["loss_unsup"]) != pytest.approx(float(expected), rel=1e-5)
