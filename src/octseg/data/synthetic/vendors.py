"""Per-vendor acquisition geometry and display style of the synthetic OCT volumes.

Why a module of its own: the phantom, the renderer, the writer and the benchmarks all look a
vendor up here, and a vendor name is checked in one place (so every entry point gives the same
error for an unknown vendor).
"""

from __future__ import annotations

from dataclasses import dataclass

from octseg.constants import VENDORS
from octseg.records import Spacing
from octseg.errors import ConfigError

__all__ = ["GEOMETRY", "STYLES", "VendorGeometry", "VendorStyle", "vendor_folder", "vendor_key"]


@dataclass(frozen=True)
class VendorGeometry:
    rows: int
    cols: int
    slices: int
    spacing: Spacing  # mm: row = axial, col = lateral, slice = between B-scans


#: RETOUCH acquisition geometry per vendor (the values in the challenge's .mhd headers).
GEOMETRY: dict[str, VendorGeometry] = {
    "cirrus": VendorGeometry(1024, 512, 128, Spacing(0.001953125, 0.01171875, 0.0472441)),
    "spectralis": VendorGeometry(496, 512, 49, Spacing(0.003872, 0.01133, 0.1195)),
    "topcon": VendorGeometry(885, 512, 128, Spacing(0.0026, 0.01171875, 0.0472441)),
}


@dataclass(frozen=True)
class VendorStyle:
    """How a vendor's device renders reflectivity (all intensities on a 0..1 display scale)."""

    background: float  # noise floor level (vitreous)
    speckle: float  # log-std of the multiplicative speckle on tissue
    grain_mm: tuple[float, float]  # speckle correlation length (axial, lateral)
    noise: float  # log-std of the additive noise floor's grain
    gain: float
    contrast: float  # <1 pulls layer intensities toward their mean (flatter look)
    gamma: float  # applied to the 8-bit render
    attenuation: float  # 1/mm, signal loss below the ILM


STYLES: dict[str, VendorStyle] = {
    # grainy, bright noise floor, high contrast
    "cirrus": VendorStyle(0.11, 0.55, (0.004, 0.012), 0.6, 1.0, 1.05, 1.0, 1.2),
    # frame-averaged: smooth tissue, dark grainy background, crisp layers
    "spectralis": VendorStyle(0.085, 0.3, (0.006, 0.018), 0.42, 1.0, 1.0, 1.0, 1.0),
    # blurrier speckle, lifted background, low contrast
    "topcon": VendorStyle(0.15, 0.4, (0.008, 0.02), 0.5, 0.92, 0.8, 0.85, 1.4),
}


def vendor_key(vendor: str) -> str:
    """The lower-case key of a vendor name; a ConfigError naming the valid ones otherwise."""
    key = str(vendor).strip().lower()
    if key not in GEOMETRY:
        raise ConfigError(f"unknown OCT vendor {vendor!r}; valid vendors: {', '.join(VENDORS)}")
    return key


def vendor_folder(vendor: str) -> str:
    """RETOUCH training folder name of a vendor, e.g. ``RETOUCH-TrainingSet-Cirrus``."""
    return f"RETOUCH-TrainingSet-{vendor_key(vendor).capitalize()}"
