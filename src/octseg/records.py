"""The records every reader produces and every consumer (prepare, predict) reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import numpy as np



@dataclass(frozen=True)
class Spacing:
    """Voxel spacing in millimetres.

    row: along the A-scan (depth, image rows); col: across the B-scan (image
    columns); slice: between neighbouring B-scans of a volume (None for a lone image).
    """

    row: float
    col: float
    slice: Optional[float] = None


@dataclass
class BScan:
    """One B-scan as read from disk, before any resizing.

    ``image`` is uint8 (H, W), rows = depth. ``mask`` is uint8 (H, W) with values in
    0..K-1 of the dataset's label set, or None when the B-scan is unlabelled.
    """

    id: str
    volume: str
    slice_index: int
    image: np.ndarray
    mask: Optional[np.ndarray] = None
    vendor: Optional[str] = None
    spacing: Optional[Spacing] = None
    source: str = ""


@dataclass
class VolumeSource:
    """A volume (or a group of 2-D images sharing a volume id) found on disk, not yet read.

    ``n_slices`` and ``shape`` (H, W) are known without reading pixel data, so a writer
    can allocate memory-mapped output before reading. ``load()`` yields the B-scans in
    slice order and raises :class:`octseg.errors.DataError` naming the file on bad data.
    """

    volume: str
    n_slices: int
    shape: Optional[tuple[int, int]]
    load: Callable[[], Iterator[BScan]]
    vendor: Optional[str] = None
    spacing: Optional[Spacing] = None
    labelled: bool = False
    paths: Sequence[str] = field(default_factory=tuple)


@dataclass
class DatasetSource:
    """Everything a reader found under a root folder."""

    root: str
    layout: str  # "retouch" | "folders"
    classes: tuple[str, ...]
    volumes: list[VolumeSource]
    warnings: list[str] = field(default_factory=list)

    @property
    def n_slices(self) -> int:
        return sum(v.n_slices for v in self.volumes)
