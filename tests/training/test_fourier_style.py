"""augment.fourier_style_p: labelled views take the low-frequency amplitude of unlabelled B-scans
(FDA), their phase and labels kept; supervised training then draws unlabelled batches as style sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_train_overrides
from hypothesis import given, settings
from hypothesis import strategies as st

from octseg.data.augment import fourier_style

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(seed=0, shape=(2, 1, 24, 32)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g) * 0.5 + 0.2
    style = (torch.rand(shape, generator=g) * 0.3 + 0.1) * torch.linspace(0.2, 1.5, shape[-2]).view(-1, 1)
    return x, style


def test_lambda_zero_is_identity_and_one_takes_the_style_low_frequencies():
    x, style = _pair()
    np.testing.assert_array_equal(fourier_style(x, style, 0.1, torch.zeros(2)).numpy(), x.numpy())
    out = fourier_style(x, style.clamp(0, 1), 0.1, torch.ones(2))
    assert out.shape == x.shape and out.dtype == x.dtype and 0 <= out.min() and out.max() <= 1
    # the mean (zero frequency) moves to the style's; the high frequencies stay x's
    assert torch.allclose(out.mean(dim=(2, 3)), style.mean(dim=(2, 3)), atol=0.03)
    hi = lambda t: t - torch.nn.functional.avg_pool2d(t, 5, 1, 2, count_include_pad=False)  # noqa: E731
    assert torch.corrcoef(torch.stack([hi(out).flatten(), hi(x).flatten()]))[0, 1] > 0.9


def test_only_the_window_changes_and_per_sample_lambda():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 24, 32, generator=g) * 0.2 + 0.4          # mild images: nothing is clamped
    style = torch.rand(2, 1, 24, 32, generator=g) * 0.1 + 0.45
    lam = torch.tensor([0.0, 0.7])
    out = fourier_style(x, style, 0.05, lam)
    assert 0 < out.min() and out.max() < 1
    np.testing.assert_array_equal(out[0].numpy(), x[0].numpy())
    f = lambda t: torch.fft.fftshift(torch.fft.fft2(t.double()), dim=(-2, -1))  # noqa: E731
    d = (f(out[1]) - f(x[1])).abs()[0]
    b = max(1, round(min(24, 32) * 0.05))
    win = torch.zeros_like(d, dtype=torch.bool)
    win[12 - b:12 + b + 1, 16 - b:16 + b + 1] = True
    assert d[win].max() > 1 and d[~win].max() < 1e-4   # outside the window: x's spectrum


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.01, 0.5), st.integers(1, 3))
def test_output_is_real_bounded_and_finite(seed, beta, channels):
    x, style = _pair(seed, (3, channels, 17, 20))
    lam = torch.rand(3, generator=torch.Generator().manual_seed(seed))
    out = fourier_style(x, style, beta, lam)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1 and out.shape == x.shape


def test_supervised_training_uses_unlabelled_styles(tiny_prepared, tmp_path, capsys):
    from octseg.config import load_config
    from octseg.training.module import SegmentationModule
    from octseg.training.run import train

    seen = []
    orig = SegmentationModule._fourier_style

    def spy(self, x_l, x_u):
        out = orig(self, x_l, x_u)
        seen.append((x_u.shape[0], float((out - x_l).abs().max())))
        return out

    SegmentationModule._fourier_style = spy
    try:
        cfg = load_config("demo_cpu", tiny_train_overrides(tiny_prepared, **{
            "method.name": "supervised", "augment.fourier_style_p": 1.0, "trainer.max_epochs": 1,
            "trainer.steps_per_epoch": 2}))
        res = train(cfg, tmp_path / "run")
    finally:
        SegmentationModule._fourier_style = orig
    assert len(seen) == 2 and all(n == 2 for n, _ in seen) and any(d > 0 for _, d in seen)
    assert np.isfinite(res.metrics["val"]["student"]["pooled"]["dice"]["IRF"])
    assert "unlabelled B-scans" in capsys.readouterr().out


def test_out_of_range_settings_are_refused():
    from octseg.config import load_config
    from octseg.errors import ConfigError

    for bad in ("augment.fourier_style_p=1.5", "augment.fourier_beta=0", "augment.fourier_beta=0.7"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config("demo_cpu", [bad])
