"""Synthetic RETOUCH-like OCT volumes with exact fluid labels (0 bg, 1 IRF, 2 SRF, 3 PED).

Why: tests, the CPU demo and label-efficiency benchmarks need any amount of labelled data
without licensed scans. One concern per module; each imports only modules listed before it:

- :mod:`.vendors`: per-vendor RETOUCH geometry and display style, vendor-name checks;
- :mod:`.anatomy`: the random retina, fluid lesions, vessels and choroid of one volume;
- :mod:`.render`: one B-scan of that anatomy to pixels and labels;
- :mod:`.phantom`: :func:`generate_volume`, :func:`generate_bscans` (the public generators);
- :mod:`.preview`: the preview figure (colours from :mod:`octseg.overlay`);
- :mod:`.writer`: :func:`write_synthetic_dataset` (MHD / PNG + volumes.csv in an output folder).
"""

from __future__ import annotations

from octseg.constants import VENDORS
from octseg.data.synthetic.phantom import SyntheticVolume, generate_bscans, generate_volume
from octseg.data.synthetic.preview import render_preview
from octseg.data.synthetic.vendors import GEOMETRY, VendorGeometry, vendor_folder
from octseg.data.synthetic.writer import write_synthetic_dataset

__all__ = [
    "GEOMETRY",
    "VENDORS",
    "SyntheticVolume",
    "VendorGeometry",
    "generate_volume",
    "generate_bscans",
    "write_synthetic_dataset",
    "render_preview",
    "vendor_folder",
]
