"""Batch augmentation on tensors, on the training device: one call per batch, no per-image Python.

Geometric transforms (flip, small affine) move image and mask together (the mask with
nearest-neighbour sampling, so labels stay labels); intensity transforms touch the image only.
All randomness comes from an explicit ``torch.Generator``, so a step's augmentation is a pure
function of (seed, step): an interrupted and resumed run sees the same batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from octseg.constants import IGNORE_INDEX


@dataclass
class AugmentConfig:
    """The weak views every method gets (flip, small affine, mild intensity jitter), and the strong
    perturbations (``strong_*``, ``speckle_std``, ``blur_p``, ``cutout_p``, ``cutmix_p``) that
    semi-supervised methods apply through :class:`Augmenter`. ``strong: true`` also applies the
    strong intensity augmentation to the labelled views of every method (e.g. a supervised
    baseline with strong augmentation), the same for every method of a paired comparison."""

    enabled: bool = True
    hflip: float = 0.5
    rotate_deg: float = 8.0
    scale: float = 0.1
    translate: float = 0.05
    affine_p: float = 0.7
    gamma: float = 0.3
    contrast: float = 0.15
    brightness: float = 0.08
    noise_std: float = 0.02
    strong: bool = False
    strong_brightness: float = 0.25
    strong_contrast: float = 0.4
    strong_gamma: float = 0.5
    speckle_std: float = 0.25
    blur_p: float = 0.5
    cutout_p: float = 0.5
    cutmix_p: float = 0.5
    #: Fourier style transfer from the unlabelled pool (FDA: Yang & Soatto, CVPR 2020): the probability that a
    #: labelled view takes on the low-frequency amplitude spectrum of a random unlabelled B-scan of its step
    #: (mixed in by lambda ~ U(0, 1)), its phase (the anatomy, so its labels) kept: intensity profiles of
    #: scanners seen only without labels reach supervised training (0 = off)
    fourier_style_p: float = 0.0
    #: half-width of the low-frequency window, as a fraction of min(H, W)
    fourier_beta: float = 0.05


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def augment_batch(
    images: torch.Tensor,
    masks: Optional[torch.Tensor],
    cfg: AugmentConfig,
    g: torch.Generator,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """images float (N,1,H,W) in [0,1]; masks long (N,H,W) or None. Returns augmented copies."""
    if not cfg.enabled:
        return images, masks
    n, dev = images.shape[0], images.device
    # Geometric: one affine grid per image (flip folded into the x scale), applied to image and mask.
    flip = torch.where(torch.rand(n, generator=g, device=dev) < cfg.hflip, -1.0, 1.0)
    use_affine = (torch.rand(n, generator=g, device=dev) < cfg.affine_p).float()
    ang = _uniform(n, -1, 1, g, dev) * math.radians(cfg.rotate_deg) * use_affine
    sc = 1.0 + _uniform(n, -1, 1, g, dev) * cfg.scale * use_affine
    tx = _uniform(n, -1, 1, g, dev) * cfg.translate * 2 * use_affine
    ty = _uniform(n, -1, 1, g, dev) * cfg.translate * 2 * use_affine
    if bool((flip < 0).any()) or bool(use_affine.any()):
        cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
        ).to(images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if masks is not None:
            # Pixels pulled in from outside the scan are ignored by the loss, not called background.
            m = F.grid_sample(
                masks.unsqueeze(1).to(images.dtype) + 1.0, grid, mode="nearest", padding_mode="zeros",
                align_corners=False,
            ).squeeze(1).round().long() - 1
            masks = torch.where(m < 0, torch.full_like(m, IGNORE_INDEX), m)
    # Intensity: gamma, contrast, brightness, additive noise.
    if cfg.gamma > 0:
        gamma = torch.exp(_uniform(n, -cfg.gamma, cfg.gamma, g, dev)).view(n, 1, 1, 1).to(images.dtype)
        images = images.clamp_min(0).pow(gamma)
    if cfg.contrast > 0 or cfg.brightness > 0:
        c = (1.0 + _uniform(n, -cfg.contrast, cfg.contrast, g, dev)).view(n, 1, 1, 1).to(images.dtype)
        b = _uniform(n, -cfg.brightness, cfg.brightness, g, dev).view(n, 1, 1, 1).to(images.dtype)
        mean = images.mean(dim=(2, 3), keepdim=True)
        images = (images - mean) * c + mean + b
    if cfg.noise_std > 0:
        images = images + torch.randn(images.shape, generator=g, device=dev, dtype=images.dtype) * cfg.noise_std
    return images.clamp(0.0, 1.0), masks


def fourier_style(x: torch.Tensor, style: torch.Tensor, beta: float, lam: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, H, W) in [0, 1] with the amplitude spectrum of ``style`` (same shape) mixed in by
    ``lam`` (N,) inside the centred window of half-width ``round(beta * min(H, W))`` (at least 1)
    frequencies; the phase and every other frequency stay ``x``'s. ``lam`` 0 returns ``x``."""
    h, w = x.shape[-2:]
    b = max(1, int(round(min(h, w) * beta)))
    shift = (-2, -1)
    fx = torch.fft.fftshift(torch.fft.fft2(x.float()), dim=shift)
    fs = torch.fft.fftshift(torch.fft.fft2(style.float()), dim=shift)
    amp, phase = fx.abs(), fx.angle()
    win = (..., slice(max(0, h // 2 - b), h // 2 + b + 1), slice(max(0, w // 2 - b), w // 2 + b + 1))
    lam = lam.float().view(-1, 1, 1, 1)
    amp[win] = (1 - lam) * amp[win] + lam * fs.abs()[win]
    out = torch.fft.ifft2(torch.fft.ifftshift(torch.polar(amp, phase), dim=shift)).real
    return torch.where(lam > 0, out.clamp(0.0, 1.0), x.float()).to(x.dtype)


class Augmenter:
    """The strong perturbations semi-supervised methods use, on whole batches of [0, 1] views
    (N, 1, H, W), all randomness from the step's generator.

    * :meth:`strong`: per B-scan brightness, contrast, gamma, Gaussian blur (probability
      ``blur_p``, sigma 0.3-1.5 px), multiplicative speckle-like noise (log-normal, sd
      ``speckle_std``) and cutout (probability ``cutout_p``, one box of 2-25 % of the B-scan filled
      with its mean) — intensity only, so labels and pseudo-labels stay aligned;
    * :meth:`cutmix_boxes`: for CutMix / copy-paste between B-scans, one box per B-scan (probability
      ``cutmix_p``, 2-40 % of the area) and a permutation that says where each pasted box comes from.
    """

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    def strong(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        c, n, dev, dt = self.cfg, x.shape[0], x.device, x.dtype

        def per_image(lo, hi):
            return _uniform(n, lo, hi, g, dev).view(n, 1, 1, 1).to(dt)

        x = x.clamp(0, 1).pow(torch.exp(per_image(-c.strong_gamma, c.strong_gamma)))
        mean = x.mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * per_image(1 - c.strong_contrast, 1 + c.strong_contrast) + mean
        x = x + per_image(-c.strong_brightness, c.strong_brightness)
        if c.blur_p > 0:
            x = _blur(x, _uniform(n, 0.3, 1.5, g, dev), torch.rand(n, generator=g, device=dev) < c.blur_p)
        if c.speckle_std > 0:
            x = x * torch.exp(torch.randn(x.shape, generator=g, device=dev, dtype=dt) * c.speckle_std
                              - 0.5 * c.speckle_std ** 2)
        if c.cutout_p > 0:
            box = _boxes(n, x.shape[-2:], 0.02, 0.25, c.cutout_p, g, dev)
            x = torch.where(box[:, None], x.mean(dim=(2, 3), keepdim=True), x)
        return x.clamp(0.0, 1.0)

    def cutmix_boxes(self, n: int, hw, g: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(boxes bool (N, H, W), perm (N,)): paste ``x[perm]`` where ``boxes`` is true."""
        return _boxes(n, hw, 0.02, 0.4, self.cfg.cutmix_p, g, device), torch.randperm(n, generator=g, device=device)


def _boxes(n: int, hw, lo: float, hi: float, p: float, g: torch.Generator, dev) -> torch.Tensor:
    """One random axis-aligned box per image (area fraction in [lo, hi], aspect 0.3-3.3), with probability p."""
    H, W = int(hw[0]), int(hw[1])
    area = _uniform(n, lo, hi, g, dev) * H * W
    aspect = torch.exp(_uniform(n, math.log(0.3), math.log(1 / 0.3), g, dev))
    bh = (area * aspect).sqrt().clamp(1, H)
    bw = (area / aspect).sqrt().clamp(1, W)
    y0 = _uniform(n, 0, 1, g, dev) * (H - bh)
    x0 = _uniform(n, 0, 1, g, dev) * (W - bw)
    on = torch.rand(n, generator=g, device=dev) < p
    ys = torch.arange(H, device=dev).view(1, H, 1)
    xs = torch.arange(W, device=dev).view(1, 1, W)
    inside = ((ys >= y0.view(n, 1, 1)) & (ys < (y0 + bh).view(n, 1, 1))
              & (xs >= x0.view(n, 1, 1)) & (xs < (x0 + bw).view(n, 1, 1)))
    return inside & on.view(n, 1, 1)


def _blur(x: torch.Tensor, sigma: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a sigma per image, only where ``apply``."""
    n, radius = x.shape[0], 4
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1).to(x.dtype)) ** 2)
    k = k / k.sum(1, keepdim=True)  # (N, 2r+1)
    y = x.transpose(0, 1)  # (1, N, H, W): one group per image
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(n, 1, -1, 1), groups=n)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k.view(n, 1, 1, -1), groups=n)
    return torch.where(apply.view(n, 1, 1, 1), y.transpose(0, 1), x)
