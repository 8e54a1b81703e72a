"""Every registered method trains on 2.5D views (N, 2k+1, H, W): a finite loss whose gradients reach
every trainable parameter, and CutMix / copy-paste moving all channels of a B-scan together."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODEL, method_test_config

from octseg.data.augment import AugmentConfig, Augmenter
from octseg.losses import LossConfig, SegmentationLoss
from octseg.methods import METHODS, StepContext, build_method
from octseg.methods.pseudo_labels import strong_view
from octseg.models import ModelConfig, build_model

K, C = 4, 3
pytestmark = pytest.mark.usefixtures("one_thread")


def _ctx(augmenter, valid_u=None) -> StepContext:
    return StepContext(epoch=0, global_step=1, generator=torch.Generator().manual_seed(3), steps_per_epoch=2,
                       total_steps=4, normalise=lambda x: (x - 0.3) / 0.2, augmenter=augmenter, valid_u=valid_u)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_on_2k_plus_1_channel_views(name):
    torch.manual_seed(0)
    net = build_model(ModelConfig(**{**TINY_MODEL, "context_slices": 1}), K)
    m = build_method(method_test_config(name, context_slices=1), net, SegmentationLoss(LossConfig(name="dice_ce"), K)).train()
    g = torch.Generator().manual_seed(0)
    x_l, x_u = torch.rand(2, C, 32, 32, generator=g), torch.rand(2, C, 32, 32, generator=g)
    y_l = torch.randint(0, K, (2, 32, 32), generator=g)
    loss, _ = m.training_loss(x_l, y_l, x_u, _ctx(Augmenter(AugmentConfig()), torch.ones(2, 32, 32, dtype=torch.bool)))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in m.trainable_parameters())


def test_cutmix_pastes_all_channels_of_a_bscan_together():
    identity_strong = AugmentConfig(strong_brightness=0, strong_contrast=0, strong_gamma=0, speckle_std=0, blur_p=0,
                                    cutout_p=0, cutmix_p=1.0)
    n = 4
    # B-scan i, channel j: the constant (3 i + j) / 20, so a pixel's channels name their source
    x = torch.tensor([[(3 * i + j) / 20 for j in range(C)] for i in range(n)]).view(n, C, 1, 1).expand(n, C, 16, 16)
    t = torch.zeros(n, 16, 16, dtype=torch.long)
    x_s, _, _ = strong_view(x.clone(), t, torch.ones(n, 16, 16, dtype=torch.bool), _ctx(Augmenter(identity_strong)),
                            cutmix=True)
    assert not torch.equal(x_s, x)  # boxes were pasted
    step = x_s[:, 1:] - x_s[:, :-1]
    assert torch.allclose(step, torch.full_like(step, 1 / 20), atol=1e-6)  # channels of one source everywhere
