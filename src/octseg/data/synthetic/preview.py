"""The synthetic-data preview figure: one fluid B-scan per vendor, plain and with its labels.

Why: a quick visual check that the synthetic scans look like OCT (optionally beside a real
B-scan). The fluid tint comes from :mod:`octseg.overlay`, so the preview, prediction overlays
and the demo figure share one palette.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from octseg.constants import RETOUCH_CLASSES
from octseg.errors import DataError
from octseg.overlay import class_colours, overlay_rgb

__all__ = ["render_preview"]

#: Weight of the class colour in the preview's tint (stronger than prediction overlays' default,
#: so thin fluid stays visible in the small panels).
PREVIEW_ALPHA = 0.55


def render_preview(samples, path, real_reference=None) -> Path:
    """Figure: each (vendor, image, labels) plain and with a fluid overlay, plus a real B-scan."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    path = Path(path)
    real = None
    if real_reference is not None:
        from PIL import Image

        try:
            real = np.asarray(Image.open(real_reference).convert("L"))
        except OSError as exc:
            raise DataError(real_reference, f"cannot read the real reference image ({exc})") from exc
    colours = class_colours(len(RETOUCH_CLASSES))
    ncol = len(samples) + (real is not None)
    fig = Figure(figsize=(3.6 * ncol, 6.6), dpi=110)
    axes = fig.subplots(2, ncol, squeeze=False)
    for j, (vendor, img, lab) in enumerate(samples):
        axes[0, j].imshow(img, cmap="gray", vmin=0, vmax=255, aspect="auto", interpolation="nearest")
        axes[0, j].set_title(f"synthetic {vendor} {img.shape[0]}x{img.shape[1]}", fontsize=9)
        rgb = overlay_rgb(img, lab, len(RETOUCH_CLASSES), alpha=PREVIEW_ALPHA)
        axes[1, j].imshow(rgb, aspect="auto", interpolation="nearest")
        axes[1, j].set_title(f"{vendor} + labels", fontsize=9)
    if real is not None:
        axes[0, -1].imshow(real, cmap="gray", vmin=0, vmax=255, aspect="auto")
        axes[0, -1].set_title(f"real: {Path(real_reference).name}", fontsize=9)
        axes[1, -1].set_visible(False)
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    handles = [Patch(color=colours[c] / 255.0, label=RETOUCH_CLASSES[c]) for c in (1, 2, 3)]
    fig.legend(handles=handles, loc="lower right", ncol=3, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    from octseg import __version__
    from octseg.io.outputs import atomic_write

    # the Software mark lets a later run recognise the file as octseg's and replace it
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", metadata={"Software": f"octseg {__version__}"}))
    return path
