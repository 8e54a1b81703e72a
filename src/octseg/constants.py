"""Values every layer agrees on: the ignore/unlabelled label value and the known label sets."""

from __future__ import annotations

#: Label value for "no label here": unlabelled B-scans in a prepared ``masks.npy``, pixels that
#: losses ignore and metrics skip. One value everywhere, so a mask never means two things.
IGNORE_INDEX = 255
#: The same value under the name the data layer uses for a B-scan without a label map.
UNLABELLED = IGNORE_INDEX
#: Label value of background in every label set (the first class).
BACKGROUND = 0
#: RETOUCH's label set, the default for OCT fluid segmentation.
RETOUCH_CLASSES: tuple[str, ...] = ("background", "IRF", "SRF", "PED")
#: Binary fluid label set (e.g. the Duke DME annotations).
FLUID_CLASSES: tuple[str, ...] = ("background", "fluid")
#: Known OCT vendors (RETOUCH). Readers lower-case vendor names.
VENDORS: tuple[str, ...] = ("cirrus", "spectralis", "topcon")
