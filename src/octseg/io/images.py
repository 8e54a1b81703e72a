"""2-D image files (PNG, TIFF, BMP, JPEG, GIF, PGM/PPM): headers, B-scans, masks, intensities.

* :func:`header_size` reads only the header (PIL's open is lazy);
* :func:`read_image` decodes a B-scan as uint8 grayscale, :func:`mask_array` a mask's raw values;
* :class:`MaskEncoding` / :func:`map_mask` turn mask values into labels 0..K-1: a dataset's masks
  hold either the labels ("index") or values spread evenly over 0..255 ("spread": 0/85/170/255
  for K=4, 0/255 for K=2), never a mix;
* :func:`to_uint8` converts any intensities (images and volumes) to uint8, refusing NaN/inf;
* :func:`write_png` writes a label map or overlay atomically.

Every file is checked to be a regular file before it is opened, has one frame, and has at most
``OCTSEG_MAX_IMAGE_PIXELS`` pixels (PIL's decompression-bomb limit by default); any failure is a
:class:`~octseg.errors.DataError` naming the file.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import BinaryIO, Iterable, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from octseg.constants import FLUID_CLASSES, RETOUCH_CLASSES
from octseg.errors import ConfigError, DataError
from octseg.io.files import open_regular
from octseg.io.outputs import atomic_write

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".gif", ".pgm", ".ppm")

# ---------------------------------------------------------------------------------------------
# Decoding limits

#: Environment variable that sets the decompression-bomb guard (largest image, in pixels).
MAX_PIXELS_ENV = "OCTSEG_MAX_IMAGE_PIXELS"


def _pixel_limit_from_env() -> tuple[Optional[int], Optional[str]]:
    """(limit, problem): ``OCTSEG_MAX_IMAGE_PIXELS`` as a pixel count (``0``/``none`` = no limit);
    unset keeps PIL's default. A bad value is reported when an image is first read."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return Image.MAX_IMAGE_PIXELS, None
    if raw.lower() in ("0", "none", "off", "unlimited"):
        return None, None
    try:
        n = int(raw.replace("_", ""))
    except ValueError:
        n = -1
    if n < 0:
        return Image.MAX_IMAGE_PIXELS, (f"{MAX_PIXELS_ENV}={raw!r} is not a pixel count "
                                        f"(use a positive integer, or 0 for no limit)")
    return n, None


# Read once, here: PIL's guard then applies to every image octseg opens (readers, predict, overlays).
_PIXEL_LIMIT, _PIXEL_LIMIT_PROBLEM = _pixel_limit_from_env()
Image.MAX_IMAGE_PIXELS = _PIXEL_LIMIT


def _bomb_problem(exc: Exception) -> str:
    """The message for an image over the decompression-bomb limit, with its size when known."""
    size, tb = None, exc.__traceback__
    while tb is not None:  # PIL's check has the (W, H) it refused as a local
        if tb.tb_frame.f_code.co_name == "_decompression_bomb_check":
            size = tb.tb_frame.f_locals.get("size")
        tb = tb.tb_next
    if isinstance(size, tuple) and len(size) == 2:
        what = f"{size[0]} x {size[1]} pixels"
    else:
        m = re.search(r"\((\d+) pixels\)", str(exc))
        what = f"{m.group(1)} pixels" if m else "too many pixels"
    return (f"image of {what} is larger than the limit of {Image.MAX_IMAGE_PIXELS} pixels "
            f"(a decompression-bomb guard); set {MAX_PIXELS_ENV} to allow it")


class _Reading:
    """Context for PIL calls on ``path``: every failure becomes a DataError naming the file, and
    an image over the pixel limit is an error (PIL only warns up to twice the limit)."""

    def __init__(self, path: Path):
        self.path = path
        self._warnings = warnings.catch_warnings()

    def __enter__(self):
        self._warnings.__enter__()
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return self

    def __exit__(self, etype, exc, tb):
        self._warnings.__exit__(etype, exc, tb)
        if exc is None or isinstance(exc, (DataError, ConfigError)) or not isinstance(exc, Exception):
            return False
        path = self.path
        if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            raise DataError(path, _bomb_problem(exc)) from None
        if isinstance(exc, UnidentifiedImageError):
            raise DataError(path, "cannot read image (not a recognised image format)") from None
        if isinstance(exc, (OSError, SyntaxError, ValueError, EOFError)):
            raise DataError(path, f"cannot read image ({exc})") from None
        # zlib and codec errors surface as various types
        raise DataError(path, f"cannot read image ({type(exc).__name__}: {exc})") from None


def _open_image(path: Path) -> tuple[Image.Image, BinaryIO]:
    """(image with only its header read, its open file): a regular file (checked before it is
    opened), one frame, within the pixel limit. The caller closes the file."""
    if _PIXEL_LIMIT_PROBLEM:
        raise ConfigError(_PIXEL_LIMIT_PROBLEM)
    fh = open_regular(path)
    try:
        with _Reading(path):
            im = Image.open(fh)
            n_frames = int(getattr(im, "n_frames", 1) or 1)
        if n_frames > 1:
            raise DataError(path, f"has {n_frames} frames (pages); octseg reads one B-scan per image file and "
                                  f"would silently use the first: save the pages as separate B-scans "
                                  f"(<volume>_<slice>.png) or as an .mhd volume")
    except BaseException:
        fh.close()
        raise
    return im, fh


def header_size(path: Path) -> tuple[int, int]:
    """(H, W) from the image header; PIL's open is lazy and does not decode pixels. Also checks
    what would otherwise fail late: not a regular file, several frames, over the pixel limit."""
    im, fh = _open_image(path)
    with fh:
        w, h = im.size
    return h, w


def _decode(path: Path) -> Image.Image:
    im, fh = _open_image(path)
    with fh, _Reading(path):
        im.load()
    return im


# ---------------------------------------------------------------------------------------------
# Intensities


def nonfinite_problem(a: np.ndarray, what: str = "pixel values") -> Optional[str]:
    """"N NaN/inf <what> (...)" when a float array has any, else None: octseg never guesses them."""
    if a.dtype.kind not in "fc":
        return None
    finite = np.isfinite(a)
    if finite.all():
        return None
    n_nan = int(np.isnan(a).sum())
    n_inf = int(a.size - finite.sum()) - n_nan
    return (f"{n_nan + n_inf} NaN/inf {what} ({n_nan} NaN, {n_inf} inf) of {a.size}; "
            f"octseg does not guess intensities: replace them with finite values")


def to_uint8(arr: np.ndarray, source=None) -> np.ndarray:
    """Convert intensities to uint8.

    uint8 is kept. Integer data already within 0..255 is kept as is (8-bit data in a
    wider container). Anything else is clipped at its 99.9th percentile and scaled to
    0..255: raw 16-bit OCT (Spectralis) has a few very bright specular pixels, and a
    plain max-scaling would leave the retina nearly black. Callers pass a whole volume
    so that all its B-scans share one scaling.

    NaN or infinite values raise :class:`DataError` naming ``source`` (the file the array
    came from; "input array" when not given) and how many there are.
    """
    if arr.dtype == np.uint8:
        return arr
    a = np.asarray(arr)
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    problem = nonfinite_problem(a)
    if problem:
        raise DataError(source if source is not None else "input array", problem)
    lo, hi = a.min(), a.max()
    if a.dtype.kind in "iu" and lo >= 0 and hi <= 255:
        return a.astype(np.uint8)
    lo = min(float(lo), 0.0)
    flat = a.ravel()
    if flat.size > 4_000_000:  # a strided sample is plenty for a percentile
        flat = flat[:: flat.size // 2_000_000]
    top = float(np.percentile(flat, 99.9))
    if top <= lo:
        top = float(hi)
    if top <= lo:
        return np.zeros(a.shape, np.uint8)
    out = (np.clip(a, lo, top).astype(np.float32) - lo) * (255.0 / (top - lo))
    return np.rint(out).astype(np.uint8)


def read_image(path) -> np.ndarray:
    """A 2-D image file as uint8 grayscale (H, W): colour -> luminance, 16-bit/float scaled."""
    path = Path(path)
    im = _decode(path)
    if im.mode in ("L",):
        return np.asarray(im, dtype=np.uint8)
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return to_uint8(np.asarray(im), source=path)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return np.asarray(im.convert("L"), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Masks


def mask_array(path: Path) -> np.ndarray:
    """A mask file's values (H, W), not yet mapped to labels: a single channel (gray, palette
    indices, 16-bit, or an RGB image whose channels are equal)."""
    im = _decode(path)
    if im.mode in ("RGB", "RGBA"):
        a = np.asarray(im)[..., :3]
        if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
            raise DataError(path, "colour mask (R, G, B differ); expected a single-channel label map")
        return a[..., 0]
    if im.mode in ("LA", "La"):
        return np.asarray(im)[..., 0]
    if im.mode == "1":
        return np.asarray(im, dtype=np.uint8)
    a = np.asarray(im)  # L, P (palette indices are the labels), I;16, I, F
    if a.ndim != 2:
        raise DataError(path, f"unsupported mask mode {im.mode}")
    return a


# Mask encodings: labels 0..K-1 ("index"), or 0..255 spread evenly ("spread": 0/85/170/255 for
# K=4, 0/255 for K=2). One dataset uses one: a 0/255 mask among 0..3 masks must not become PED.
INDEX, SPREAD = "index", "spread"


def _spread_step(n_classes: int) -> int:
    """Value step of the spread encoding for K classes; 0 when there is none (or it equals index)."""
    if n_classes < 2 or 255 % (n_classes - 1):
        return 0
    step = 255 // (n_classes - 1)
    return step if step > 1 else 0


def _fits(vals: np.ndarray, n_classes: int) -> set[str]:
    """The encodings that mask values (np.unique) fit; both for an all-0 (or empty) mask."""
    if vals.size == 0:
        return {INDEX, SPREAD}
    if not np.all(vals == np.round(vals)):  # also NaN
        return set()
    fits = set()
    if vals.min() >= 0 and vals.max() < n_classes:
        fits.add(INDEX)
    step = _spread_step(n_classes)
    if step and np.all(np.isin(vals, np.arange(n_classes) * step)):
        fits.add(SPREAD)
    return fits


def _encoding_name(kind: str, n_classes: int) -> str:
    if kind == INDEX:
        return f"0..{n_classes - 1} labels"
    step = _spread_step(n_classes)
    return "/".join(str(i * step) for i in range(n_classes)) + " encoding"


def _encoding_uses(kind: str, n_classes: int) -> str:
    return ("uses " if kind == INDEX else "uses the ") + _encoding_name(kind, n_classes)


def _show(path: Path, root: Optional[Path]) -> str:
    if root is not None:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return str(path)


def fmt_values(vals) -> str:
    """Label values for a message: ``[0, 7]``, at most 20 of them."""
    vals = [int(v) if float(v).is_integer() else float(v) for v in np.asarray(vals).ravel()]
    return str(vals[:20])[:-1] + (", ...]" if len(vals) > 20 else "]")


def classes_for(n: int) -> tuple[str, ...]:
    """Default class names for K classes: the fluid or RETOUCH label sets, else class0..."""
    return {2: FLUID_CLASSES, 4: RETOUCH_CLASSES}.get(n, tuple(f"class{i}" for i in range(n)))


def map_mask(a: np.ndarray, n_classes: int, path: Path, encoding: Optional[str] = None) -> np.ndarray:
    """Mask values -> labels 0..K-1 with the dataset's ``encoding``: index labels kept as they are,
    spread values (0/85/170/255 for K=4, 0/255 for K=2) divided by their step. ``encoding=None``
    (not decided yet): index when the values fit it, else spread."""
    vals = np.unique(a)
    fits = _fits(vals, n_classes)
    if encoding is None:
        encoding = INDEX if INDEX in fits else SPREAD if SPREAD in fits else None
    if encoding in fits and encoding == INDEX:
        return a.astype(np.uint8, copy=False)
    if encoding in fits and encoding == SPREAD:
        return (a // _spread_step(n_classes)).astype(np.uint8)
    expected = (_encoding_name(encoding, n_classes) if encoding is not None else
                " or ".join(_encoding_name(k, n_classes) for k in (INDEX, SPREAD)
                            if k == INDEX or _spread_step(n_classes)))
    raise DataError(path, f"mask values {fmt_values(vals)} found; expected {expected} for classes "
                          f"{list(classes_for(n_classes))}")


class MaskEncoding:
    """The one mask encoding of a dataset, shared by all volumes of a DatasetSource: decided by
    :func:`survey_masks` (which reads every mask), else by the first mask loaded that is not
    all 0; a later mask of the other encoding is a DataError naming it and that first mask."""

    def __init__(self, n_classes: int, kind: Optional[str] = None, first: Optional[Path] = None,
                 root: Optional[Path] = None):
        self.n_classes, self.kind, self.first, self.root = n_classes, kind, first, root

    def map(self, a: np.ndarray, path: Path) -> np.ndarray:
        vals = np.unique(a)
        fits = _fits(vals, self.n_classes)
        if len(fits) == 1:
            (kind,) = fits
            if self.kind is None:
                self.kind, self.first = kind, path
            elif kind != self.kind:
                raise DataError(path, f"mask values {fmt_values(vals)} ({_encoding_name(kind, self.n_classes)}) "
                                      f"while {_show(self.first, self.root)} "
                                      f"{_encoding_uses(self.kind, self.n_classes)}; one dataset must use one "
                                      f"encoding")
        return map_mask(a, self.n_classes, path, self.kind if self.kind in fits else None)


def survey_masks(mask_paths: Iterable[Path], root: Optional[Path] = None
                 ) -> tuple[set[int], Optional[str], Optional[Path]]:
    """Read every mask once: (union of their values, the dataset's encoding, its first mask).

    Values must be labels 0..3 or spread 0/85/170/255; masks that fit both (all 0) decide nothing,
    so the encoding is None when every mask does. Mixing the two is a DataError naming the first
    mask of the rarer encoding (on a tie: the later one) and a mask of the other."""
    union: set[int] = set()
    first: dict[str, Path] = {}
    values: dict[str, np.ndarray] = {}
    count = {INDEX: 0, SPREAD: 0}
    for p in mask_paths:
        vals = np.unique(mask_array(p))
        fits = _fits(vals, 4)
        if not fits:
            raise DataError(p, f"mask values {fmt_values(vals)} found; expected 0..3 or 0/85/170/255")
        if len(fits) == 1:
            (kind,) = fits
            first.setdefault(kind, p)
            values.setdefault(kind, vals)
            count[kind] += 1
        union |= set(int(x) for x in vals)
    if len(first) == 2:
        order = list(first)
        odd = min(order, key=lambda k: (count[k], -order.index(k)))
        other = INDEX if odd == SPREAD else SPREAD
        raise DataError(first[odd], f"mask values {fmt_values(values[odd])} ({_encoding_name(odd, 4)}; "
                                    f"{count[odd]} such mask(s)) while {_show(first[other], root)} "
                                    f"{_encoding_uses(other, 4)} ({count[other]} such mask(s)); one dataset "
                                    f"must use one encoding")
    kind = next(iter(first), None)
    return union, kind, first.get(kind)


# ---------------------------------------------------------------------------------------------
# Writing


def write_png(path, image, compress_level: int = 1, fsync: bool = False) -> Path:
    """``image`` (a PIL image, or a uint8 array: (H, W) gray/labels, (H, W, 3) RGB) as a PNG at
    ``path``, atomically: a crash or a full disk never leaves half a file under the name.
    ``compress_level=1`` is fast and still shrinks label maps well; ``fsync=False`` suits many
    small outputs (see :func:`octseg.io.outputs.atomic_write`)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return atomic_write(path, lambda fh: image.save(fh, format="PNG", compress_level=compress_level), fsync=fsync)
