"""Optional clean-up of predicted label maps (off unless asked for).

Why: small specks of predicted fluid are mostly noise and inflate fluid volumes; a
per-class minimum component size removes them without touching larger lesions.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from octseg.errors import ConfigError

#: 8-connectivity: pixels touching at a corner belong to one component, so a thin diagonal
#: lesion is not broken into specks and removed.
_STRUCTURE = np.ones((3, 3), dtype=bool)


def parse_min_sizes(specs: Optional[Sequence[str]], classes: Sequence[str]) -> dict[int, int]:
    """``["IRF=50", "3=20"]`` -> ``{1: 50, 3: 20}``; class by name (case-insensitive) or index."""
    out: dict[int, int] = {}
    names = {c.lower(): i for i, c in enumerate(classes)}
    for spec in specs or ():
        if "=" not in spec:
            raise ConfigError(f"--min-size {spec!r}: expected CLASS=PIXELS, e.g. IRF=50")
        cls, _, val = spec.partition("=")
        cls = cls.strip()
        if cls.lower() in names:
            idx = names[cls.lower()]
        elif cls.isdigit() and int(cls) < len(classes):
            idx = int(cls)
        else:
            raise ConfigError(f"--min-size {spec!r}: unknown class {cls!r}; classes are "
                              f"{', '.join(f'{i}={c}' for i, c in enumerate(classes))}")
        if idx == 0:
            raise ConfigError(f"--min-size {spec!r}: class 0 ({classes[0]}) is the background; "
                              f"only fluid classes can be cleaned")
        try:
            n = int(val)
        except ValueError:
            raise ConfigError(f"--min-size {spec!r}: PIXELS must be a whole number") from None
        if n < 0:
            raise ConfigError(f"--min-size {spec!r}: PIXELS must be >= 0")
        out[idx] = n
    return out


def check_min_sizes(min_sizes: Optional[Mapping], classes: Sequence[str]) -> dict[int, int]:
    """Normalise a ``{class name or index: pixels}`` mapping (the Python API's form)."""
    if not min_sizes:
        return {}
    return parse_min_sizes([f"{k}={v}" for k, v in dict(min_sizes).items()], classes)


def remove_small_components(labels: np.ndarray, min_sizes: Mapping[int, int]) -> np.ndarray:
    """Set connected components of class c smaller than ``min_sizes[c]`` pixels to background.

    Works per B-scan on (H, W) or (N, H, W) label maps; returns a new array (input untouched).
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    if not min_sizes or not any(n > 1 for n in min_sizes.values()):
        return labels.copy()
    out = labels.copy()
    stack = out[None] if out.ndim == 2 else out
    for img in stack:  # a view: edits land in `out`
        for cls, min_px in min_sizes.items():
            if min_px <= 1:
                continue
            mask = img == cls
            if not mask.any():
                continue
            comp, n = ndimage.label(mask, structure=_STRUCTURE)
            sizes = np.bincount(comp.ravel(), minlength=n + 1)
            small = sizes < min_px
            small[0] = False  # label 0 is "not this class"
            if small.any():
                img[small[comp]] = 0
    return out
