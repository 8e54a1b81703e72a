"""The contract every registered method keeps (a new method is tested by being registered):
a finite loss, gradients that reach every trainable parameter, an ``after_optimizer_step`` that
runs, its default network among ``networks()``, its networks surviving a checkpoint round trip,
and a step that is a pure function of the step's generator (so a resumed run repeats itself).
Resume of whole runs is tested per method in tests/training."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODEL, method_test_config

from octseg.checkpoint import checkpoint_meta, load_networks, save_inference_checkpoint
from octseg.constants import IGNORE_INDEX
from octseg.data.augment import AugmentConfig, Augmenter
from octseg.losses import LossConfig, SegmentationLoss
from octseg.methods import METHODS, MethodConfig, StepContext, build_method
from octseg.models import ModelConfig, build_model

K = 4


def _method(name: str, seed: int = 0):
    torch.manual_seed(seed)
    net = build_model(ModelConfig(**TINY_MODEL), K)
    return build_method(method_test_config(name), net, SegmentationLoss(LossConfig(name="dice_ce"), K))


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x_l, x_u = torch.rand(2, 1, 64, 64, generator=g), torch.rand(3, 1, 64, 64, generator=g)
    y_l = torch.randint(0, K, (2, 64, 64), generator=g)
    y_l[:, :4] = IGNORE_INDEX
    valid_u = torch.ones(3, 64, 64, dtype=torch.bool)
    valid_u[:, :, :5] = False
    return x_l, y_l, x_u, valid_u


def _ctx(step: int, valid_u, seed: int = 7) -> StepContext:
    return StepContext(epoch=0, global_step=step, generator=torch.Generator().manual_seed(seed), steps_per_epoch=4,
                       total_steps=8, normalise=lambda x: (x - 0.3) / 0.2,
                       augmenter=Augmenter(AugmentConfig()), valid_u=valid_u)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_loss_is_finite_and_reaches_every_trainable_parameter(name):
    m = _method(name)
    x_l, y_l, x_u, valid_u = _batch()
    m.train()
    loss, logs = m.training_loss(x_l, y_l, x_u, _ctx(1, valid_u))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert "loss_sup" in logs and all(torch.isfinite(torch.as_tensor(v)) for v in logs.values())
    loss.backward()
    params = list(m.trainable_parameters())
    assert params, "a method must train something"
    missing = [i for i, p in enumerate(params) if p.grad is None]
    assert not missing, f"{len(missing)} trainable parameters got no gradient"
    trainable = {id(p) for p in params}
    for net_name, net in m.networks().items():  # parameters outside trainable_parameters() are not trained
        for p in net.parameters():
            if id(p) not in trainable:
                assert not p.requires_grad, f"{net_name} has a parameter the optimiser never sees"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_unlabelled_data_changes_the_loss_only_for_methods_that_use_it(name):
    m = _method(name)
    x_l, y_l, x_u, valid_u = _batch()
    with torch.no_grad():
        a, _ = m.training_loss(x_l, y_l, x_u, _ctx(1, valid_u))
        b, _ = m.training_loss(x_l, y_l, x_u.flip(0) * 0.5, _ctx(1, valid_u))
    assert (not torch.equal(a, b)) == m.uses_unlabelled


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_step_is_a_function_of_its_generator(name):
    x_l, y_l, x_u, valid_u = _batch()
    losses = []
    for _ in range(2):
        m = _method(name)
        losses.append(m.training_loss(x_l, y_l, x_u, _ctx(3, valid_u))[0].detach())
    assert torch.equal(losses[0], losses[1])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_after_step_networks_and_checkpoint_round_trip(name, tmp_path):
    m = _method(name)
    x_l, y_l, x_u, valid_u = _batch()
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.1)
    loss, _ = m.training_loss(x_l, y_l, x_u, _ctx(1, valid_u))
    loss.backward()
    opt.step()
    m.after_optimizer_step(_ctx(1, valid_u))
    nets = m.networks()
    assert m.default_weights in nets
    meta = checkpoint_meta(TINY_MODEL, ("background", "IRF", "SRF", "PED"), (64, 64), {"mean": 0.3, "std": 0.2},
                           name, list(nets), m.default_weights)
    path = save_inference_checkpoint(tmp_path / "m.ckpt", nets, meta)
    loaded, meta2 = load_networks(path)
    assert set(loaded) == set(nets) and meta2["default_weights"] == m.default_weights
    x = torch.rand(1, 1, 64, 64)
    for k, net in nets.items():
        net.eval()
        with torch.no_grad():
            assert torch.allclose(net(x), loaded[k](x), atol=1e-6), k


def test_every_method_has_a_config_section_or_none():
    cfg = MethodConfig()
    for name, cls in METHODS.items():
        if cls.Config is not None:
            assert isinstance(getattr(cfg, name), cls.Config)


def test_fixmatch_ignores_unconfident_and_invalid_pixels():
    """With threshold 1 no pixel is confident: the unlabelled term is exactly 0."""
    m = _method("fixmatch")
    m.cfg.threshold = 1.0
    x_l, y_l, x_u, valid_u = _batch()
    _, logs = m.training_loss(x_l, y_l, x_u, _ctx(1, valid_u))
    assert float(logs["loss_unsup"]) == 0.0 and float(logs["confident_fraction"]) == 0.0
    m.cfg.threshold = 0.0
    _, logs = m.training_loss(x_l, y_l, x_u, _ctx(1, valid_u))
    assert float(logs["loss_unsup"]) > 0 and float(logs["confident_fraction"]) == pytest.approx(1.0)


def test_strong_augmentation_keeps_range_and_shape_and_changes_pixels():
    aug = Augmenter(AugmentConfig(blur_p=1.0, cutout_p=1.0))
    x = torch.rand(4, 1, 32, 48)
    y = aug.strong(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1 and not torch.allclose(x, y)
    box, perm = aug.cutmix_boxes(4, (32, 48), torch.Generator().manual_seed(0), "cpu")
    assert box.shape == (4, 32, 48) and sorted(perm.tolist()) == [0, 1, 2, 3]
    assert Augmenter(AugmentConfig(cutmix_p=0.0)).cutmix_boxes(4, (32, 48), torch.Generator(), "cpu")[0].sum() == 0


def test_cps_networks_start_different_and_both_train():
    m = _method("cps")
    x = torch.rand(1, 1, 64, 64)
    m.eval()
    with torch.no_grad():
        assert not torch.allclose(m.student(x), m.peer(x))
    assert len(list(m.trainable_parameters())) == 2 * len(list(m.student.parameters()))


def test_bcp_mixes_labelled_and_unlabelled_boxes():
    m = _method("bcp")
    box = m._box(3, (64, 48), torch.Generator().manual_seed(0), "cpu")
    assert box.shape == (3, 64, 48) and int(box[0].sum()) == round(64 * 2 / 3) * round(48 * 2 / 3)


def test_unimatch_feature_perturbation_changes_the_output():
    from octseg.methods.unimatch import forward_with_feature_dropout

    m = _method("unimatch")
    m.eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        plain = m.student(x)
        same = forward_with_feature_dropout(m.student, x, 0.0, torch.Generator().manual_seed(0))
        dropped = forward_with_feature_dropout(m.student, x, 0.5, torch.Generator().manual_seed(0))
    assert torch.allclose(plain, same, atol=1e-6) and not torch.allclose(plain, dropped)
