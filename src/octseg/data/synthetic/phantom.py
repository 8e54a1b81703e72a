"""Synthetic RETOUCH-like OCT volumes with exact fluid labels (0 bg, 1 IRF, 2 SRF, 3 PED).

Why: tests, the CPU demo and label-efficiency benchmarks need any amount of labelled data
without licensed scans. This is the entry point: :func:`generate_volume` draws a random
retina (:mod:`.anatomy`) in a vendor's geometry and style (:mod:`.vendors`) and renders each
B-scan (:mod:`.render`); :func:`generate_bscans` gives quick resized image/label pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from octseg.data.synthetic.anatomy import Anatomy
from octseg.data.synthetic.render import render_bscan
from octseg.data.synthetic.vendors import GEOMETRY, vendor_key
from octseg.records import Spacing
from octseg.errors import ConfigError

__all__ = ["SyntheticVolume", "generate_volume", "generate_bscans"]


@dataclass
class SyntheticVolume:
    """A generated volume: B-scans, their labels, voxel spacing (mm) and the vendor key."""

    image: np.ndarray  # uint8 (S, H, W)
    labels: np.ndarray  # uint8 (S, H, W), 0..3
    spacing: Spacing
    vendor: str

    @property
    def has_fluid(self) -> bool:
        return bool(self.labels.any())


def generate_volume(vendor: str, rng: np.random.Generator, slices: Optional[int] = None,
                    scale: float = 1.0, with_fluid: bool = True) -> SyntheticVolume:
    """One synthetic OCT volume of a vendor's style (RETOUCH geometry times ``scale``).

    ``slices`` overrides the B-scan count, keeping the vendor's slice spacing (so a few
    slices are a block around the fovea, where the fluid is).
    """
    key = vendor_key(vendor)
    ph = Anatomy(key, rng, slices, scale, with_fluid)
    image = np.empty((ph.S, ph.H, ph.W), np.uint8)
    labels = np.empty((ph.S, ph.H, ph.W), np.uint8)
    for s in range(ph.S):  # in order: each B-scan's speckle continues the same generator
        image[s], labels[s] = render_bscan(ph, s)
    return SyntheticVolume(image=image, labels=labels, spacing=ph.spacing, vendor=key)


def generate_bscans(n: int, size: tuple[int, int], seed: int, vendor: str = "spectralis"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` fluid-bearing B-scans resized to ``size`` (H, W), from a few small volumes.

    Why: tests and the demo need quick image/label pairs; generating near the target size and
    resizing (area-like for images, nearest for labels) keeps it fast.
    """
    from PIL import Image

    key = vendor_key(vendor)
    h, w = int(size[0]), int(size[1])
    if n < 0 or h < 1 or w < 1 or int(seed) < 0:
        raise ConfigError(f"need n >= 0, a positive size and seed >= 0, got n={n}, size={size}, seed={seed}")
    g = GEOMETRY[key]
    scale = max(h / g.rows, w / g.cols)
    per = max(1, min(n, 16, g.slices))
    images = np.empty((n, h, w), np.uint8)
    labels = np.empty((n, h, w), np.uint8)
    done, v = 0, 0
    while done < n:
        vol = generate_volume(key, np.random.default_rng([int(seed), v]), slices=per, scale=scale)
        for s in range(min(per, n - done)):
            img, lab = vol.image[s], vol.labels[s]
            if img.shape != (h, w):
                img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
                lab = np.asarray(Image.fromarray(lab).resize((w, h), Image.NEAREST))
            images[done], labels[done] = img, lab
            done += 1
        v += 1
    return images, labels
