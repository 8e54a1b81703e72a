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
