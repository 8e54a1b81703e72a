"""Readers: find OCT B-scans on disk in the layouts users have, without reading pixels.

Two layouts:

* ``retouch``: the RETOUCH challenge folders ``RETOUCH-TrainingSet-<Vendor>/TRAINxxx/oct.mhd``
  (+ ``reference.mhd`` labels), read with SimpleITK.
* ``folders``: 2-D images (``images/`` + ``masks/``, the Kaggle RETOUCH copy's
  ``train_edge_maps/train`` + ``train_masks/train``, explicit folders, or a folder of
  images only), grouped into volumes by parsing file stems.

:func:`scan_source` returns a :class:`DatasetSource` whose volumes know their size
from file headers; pixels are read only by ``VolumeSource.load()``, one volume at a time.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import stat
import warnings
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from octseg.data.prepared import is_prepared
from octseg.constants import FLUID_CLASSES, RETOUCH_CLASSES
from octseg.data.types import BScan, DatasetSource, Spacing, VolumeSource
from octseg.errors import ConfigError, DataError

#: Default stem pattern: ``TRAIN001_045`` -> (TRAIN001, 45), ``Subject_01_11`` -> (Subject_01, 11).
DEFAULT_VOLUME_REGEX = r"^(?P<volume>.+?)[_-](?P<slice>\d+)$"
IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".gif", ".pgm", ".ppm")
#: (images, masks) sub-folder pairs tried under a root, in order.
FOLDER_PAIRS = (
    ("images", "masks"),
    ("images", "labels"),
    ("train_edge_maps/train", "train_masks/train"),
)
_RETOUCH_DIR = re.compile(r"^RETOUCH[-_](?:Training|Test)Set[-_](?P<vendor>[A-Za-z]+)$", re.IGNORECASE)
_MASK_SUFFIX = re.compile(r"[_-](?:mask|masks|label|labels|seg|gt)$", re.IGNORECASE)
_MAX_DEPTH = 5  # root/[wrapper/[wrapper/]]RETOUCH-TrainingSet-X/TRAIN001/oct.mhd


def _warn(msgs: list[str], msg: str) -> None:
    msgs.append(msg)
    warnings.warn(msg, UserWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------
# Input safety: what a path is before anything opens it, and image decoding limits

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

_MODE_KINDS = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
               (stat.S_ISBLK, "block device"))


def entry_kind(path) -> str:
    """What ``path`` is, symlinks followed, without opening it: ``"file"`` (a regular file),
    ``"folder"``, ``"missing"``, or a description of anything else (``"FIFO"``, ``"socket"``,
    ``"broken symlink"``, ``"symlink loop"``, ``"unreadable: ..."``). Never blocks."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "broken symlink" if os.path.islink(path) else "missing"
        return f"unreadable: {exc.strerror or exc}"
    except ValueError as exc:  # e.g. an embedded NUL byte
        return f"unreadable: {exc}"
    return _mode_kind(st.st_mode)


def _mode_kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    for test, name in _MODE_KINDS:
        if test(mode):
            return name
    return "special file"


def _dirent_kind(entry: os.DirEntry) -> str:
    """:func:`entry_kind` of a directory entry; a plain regular file costs no extra system call."""
    try:
        if entry.is_file(follow_symlinks=False):
            return "file"
        if entry.is_dir(follow_symlinks=False):
            return "folder"
    except OSError:
        pass
    return entry_kind(entry.path)


def skipped_note(where, skipped: Sequence[str]) -> str:
    """The warning for entries that are not regular files (``skipped``: "name (kind)" strings)."""
    n = len(skipped)
    what = "1 entry that is not a regular file" if n == 1 else f"{n} entries that are not regular files"
    shown = ", ".join(skipped[:10]) + (" ..." if n > 10 else "")
    return f"{where}: skipped {what}: {shown}"


def _open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading: anything else (FIFO, device, socket, broken link, loop)
    is a DataError before open() is called, and open() itself cannot block (O_NONBLOCK, then
    re-checked on the descriptor, in case the path was swapped in between)."""
    kind = entry_kind(path)
    if kind != "file":
        raise DataError(path, "no such file" if kind == "missing" else f"not a regular file ({kind})")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise DataError(path, f"cannot open ({exc.strerror or exc})") from None
    try:
        kind = _mode_kind(os.fstat(fd).st_mode)
        if kind != "file":
            raise DataError(path, f"not a regular file ({kind})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _nonfinite_problem(a: np.ndarray) -> Optional[str]:
    """"N NaN/inf pixel values (...)" when a float array has any, else None."""
    if a.dtype.kind not in "fc":
        return None
    finite = np.isfinite(a)
    if finite.all():
        return None
    n_nan = int(np.isnan(a).sum())
    n_inf = int(a.size - finite.sum()) - n_nan
    return (f"{n_nan + n_inf} NaN/inf pixel values ({n_nan} NaN, {n_inf} inf) of {a.size}; "
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
    problem = _nonfinite_problem(a)
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


# ---------------------------------------------------------------------------------------------
# RETOUCH (.mhd) layout


def _mhd_header(path: Path) -> dict:
    """Parse a MetaImage header (key = value lines) without SimpleITK, for the .raw checks."""
    head = {}
    try:
        with _open_regular(path) as fh:
            for raw in fh.read(8192).splitlines():
                line = raw.decode("latin-1").strip()
                if "=" not in line:
                    continue
                k, v = line.split("=", 1)
                head[k.strip()] = v.strip()
                if k.strip() == "ElementDataFile":
                    break
    except OSError as exc:
        raise DataError(path, f"cannot read header ({exc.strerror or exc})") from exc
    return head


_MET_BYTES = {
    "MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4,
    "MET_ULONG": 8, "MET_LONG": 8, "MET_ULONG_LONG": 8, "MET_LONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


def _mhd_info(path: Path) -> tuple[tuple[int, int, int], tuple[float, float, float], list[Path]]:
    """Size (W, H, S), spacing (col, row, slice) and data files of an .mhd, checking the .raw
    exists and is long enough (so a bad volume fails before anything is written)."""
    import SimpleITK as sitk

    head = _mhd_header(path)
    if "DimSize" not in head or "ElementDataFile" not in head:
        raise DataError(path, "not a MetaImage header (no DimSize/ElementDataFile)")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError(path, f"cannot read MetaImage header ({_sitk_msg(exc)})") from None
    size = tuple(int(x) for x in reader.GetSize())
    spacing = tuple(float(x) for x in reader.GetSpacing())
    if len(size) == 2:
        size, spacing = size + (1,), spacing + (0.0,)
    if len(size) != 3 or reader.GetNumberOfComponents() != 1:
        raise DataError(path, f"expected a 3-D scalar volume, found size {size} "
                              f"with {reader.GetNumberOfComponents()} components")
    data_files: list[Path] = []
    edf = head["ElementDataFile"]
    compressed = head.get("CompressedData", "False").lower() == "true"
    if edf != "LOCAL" and " " not in edf and not edf.upper().startswith("LIST"):
        raw = (path.parent / edf) if not os.path.isabs(edf) else Path(edf)
        data_files.append(raw)
        kind = entry_kind(raw)
        if kind == "missing":
            raise DataError(path, f"its data file {raw.name} is missing (expected {raw})")
        if kind != "file":
            raise DataError(path, f"its data file {raw} is not a regular file ({kind})")
        nbytes = _MET_BYTES.get(head.get("ElementType", ""), 0) * size[0] * size[1] * size[2]
        nbytes *= int(head.get("ElementNumberOfChannels", "1") or 1)
        have = raw.stat().st_size
        if not compressed and nbytes and have < nbytes:
            raise DataError(path, f"its data file {raw.name} is too short: {have} bytes, "
                                  f"the header needs {nbytes} (DimSize {head['DimSize']}, {head.get('ElementType')})")
    return size, spacing, data_files


def _sitk_msg(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


class _Volume:
    """A read-only array view of a SimpleITK image, holding the image alive: avoids the
    second full copy GetArrayFromImage makes (a Cirrus volume is 64 MB per copy). The view
    is valid only while this object lives, so callers copy what they hand out."""

    def __init__(self, path: Path):
        import SimpleITK as sitk

        try:
            self.image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise DataError(path, f"cannot read volume ({_sitk_msg(exc)})") from None
        arr = sitk.GetArrayViewFromImage(self.image)
        self.array = arr[None] if arr.ndim == 2 else arr


def find_oct_files(root: Path, skipped: Optional[list[str]] = None) -> list[Path]:
    """Every ``oct.mhd`` under ``root`` (a few folder levels deep), sorted.

    Symlinked folders are followed, each real folder once (a link back up the tree is no loop);
    an ``oct.mhd`` that is not a regular file and a folder that cannot be listed are appended
    to ``skipped`` as "path (what it is)" instead."""
    found = []
    seen: set[tuple[int, int]] = set()
    root_depth = len(root.parts)

    def unreadable(exc: OSError) -> None:
        if skipped is not None:
            skipped.append(f"{exc.filename} (unreadable: {exc.strerror or exc})")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # reached again through a symlink
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        depth = len(Path(dirpath).parts) - root_depth
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < _MAX_DEPTH - 1 else []
        if "oct.mhd" in filenames:
            p = Path(dirpath) / "oct.mhd"
            kind = entry_kind(p)
            if kind == "file":
                found.append(p)
            elif skipped is not None:
                skipped.append(f"{p} ({kind})")
    return sorted(found)


def _vendor_of(oct_path: Path) -> tuple[Optional[str], Optional[str]]:
    """(vendor lower-cased, vendor as spelled in the folder name) from RETOUCH-...Set-<Vendor>."""
    for parent in list(oct_path.parents)[1:4]:
        m = _RETOUCH_DIR.match(parent.name)
        if m:
            return m.group("vendor").lower(), m.group("vendor")
    return None, None


def _retouch_volume(oct_path: Path, volume: str, vendor: Optional[str], meta: dict,
                    n_classes: int) -> VolumeSource:
    size, sp, data_files = _mhd_info(oct_path)
    ref_path = oct_path.with_name("reference.mhd") if oct_path.name == "oct.mhd" else None
    ref_kind = entry_kind(ref_path) if ref_path is not None else "missing"
    if ref_kind not in ("file", "missing"):
        raise DataError(ref_path, f"not a regular file ({ref_kind}); remove it to read {oct_path} as unlabelled")
    labelled = ref_kind == "file"
    paths = [oct_path, *data_files]
    if labelled:
        rsize, _, rfiles = _mhd_info(ref_path)
        if rsize != size:
            raise DataError(ref_path, f"size {rsize} (W, H, S) differs from {oct_path.name}'s {size}")
        paths += [ref_path, *rfiles]
    spacing = Spacing(row=sp[1], col=sp[0], slice=sp[2] or None) if sp[0] > 0 and sp[1] > 0 else None
    if vendor is None and volume in meta:
        vendor = meta[volume].get("vendor") or vendor
    W, H, S = size

    def load() -> Iterator[BScan]:
        oct_vol = _Volume(oct_path)
        img = to_uint8(oct_vol.array, source=oct_path)
        ref = None
        if labelled:
            ref_vol = _Volume(ref_path)
            ref = ref_vol.array
            if ref.shape != img.shape:
                raise DataError(ref_path, f"array shape {ref.shape} differs from {oct_path.name}'s {img.shape}")
            ref = _check_labels(ref, n_classes, ref_path)
        for k in range(img.shape[0]):
            yield BScan(
                id=f"{volume}_{k:03d}", volume=volume, slice_index=k,
                # copies: img/ref may be views into SimpleITK memory freed after this generator
                image=np.array(img[k]),
                mask=None if ref is None else np.array(ref[k]),
                vendor=vendor, spacing=spacing, source=f"{oct_path}#{k}",
            )

    return VolumeSource(volume=volume, n_slices=S, shape=(H, W), load=load, vendor=vendor,
                        spacing=spacing, labelled=labelled, paths=tuple(str(p) for p in paths))


def _check_labels(ref: np.ndarray, n_classes: int, path: Path) -> np.ndarray:
    if ref.dtype.kind == "f" and not np.array_equal(ref, np.round(ref)):
        raise DataError(path, "label volume has non-integer values")
    if ref.size and (ref.min() < 0 or ref.max() >= n_classes):
        vals = np.unique(ref)
        raise DataError(path, f"label values {_fmt_values(vals)} found; expected 0..{n_classes - 1}")
    return ref.astype(np.uint8, copy=False)


def _fmt_values(vals) -> str:
    vals = [int(v) if float(v).is_integer() else float(v) for v in np.asarray(vals).ravel()]
    return str(vals[:20])[:-1] + (", ...]" if len(vals) > 20 else "]")


def _scan_retouch(path: Path, classes) -> DatasetSource:
    msgs: list[str] = []
    if entry_kind(path) == "file":
        if path.suffix.lower() != ".mhd":
            raise DataError(path, "not an .mhd volume")
        oct_files, root = [path], path.parent
    else:
        skipped: list[str] = []
        oct_files, root = find_oct_files(path, skipped), path
        if skipped:
            _warn(msgs, skipped_note(path, skipped))
        if not oct_files:
            raise DataError(path, "no oct.mhd volumes found (expected RETOUCH-*Set-<Vendor>/<CASE>/oct.mhd)")
    meta = _read_volumes_csv(root, msgs)
    classes = tuple(classes) if classes else RETOUCH_CLASSES
    vols, seen = [], {}
    for f in oct_files:
        vendor, spelled = _vendor_of(f)
        case = f.parent.name if f.name == "oct.mhd" else f.stem
        vid = f"{spelled}_{case}" if spelled else case
        if vid in seen:
            rel = f.parent.relative_to(root) if f.parent != root and root in f.parents else Path(case)
            vid = "_".join(rel.parts)
            if vid in seen:
                raise DataError(f, f"volume id {vid!r} also used by {seen[vid]}")
        seen[vid] = f
        vols.append(_retouch_volume(f, vid, vendor, meta, len(classes)))
    return DatasetSource(root=str(root), layout="retouch", classes=classes, volumes=vols, warnings=msgs)


# ---------------------------------------------------------------------------------------------
# Image/mask folders


def _read_volumes_csv(root: Path, msgs: list[str]) -> dict[str, dict]:
    """Optional ``volumes.csv`` (volume,vendor,spacing_row,spacing_col,spacing_slice)."""
    p = root / "volumes.csv"
    if entry_kind(p) == "missing":
        return {}  # anything else that is not a regular file: a DataError from _open_regular
    out = {}
    try:
        with io.TextIOWrapper(_open_regular(p), newline="") as fh:
            for row in csv.DictReader(fh):
                if not row.get("volume"):
                    continue
                sp = None
                try:
                    if row.get("spacing_row") and row.get("spacing_col"):
                        sl = row.get("spacing_slice")
                        sp = Spacing(float(row["spacing_row"]), float(row["spacing_col"]),
                                     float(sl) if sl else None)
                except ValueError as exc:
                    raise DataError(p, f"bad spacing for volume {row['volume']!r} ({exc})") from None
                out[row["volume"]] = {"vendor": (row.get("vendor") or "").strip().lower() or None, "spacing": sp}
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise DataError(p, f"cannot read ({exc})") from None
    return out


def _not_folder(kind: str) -> str:
    return "does not exist" if kind == "missing" else "is a file, not a folder" if kind == "file" \
        else f"is not a folder ({kind})"


def _list_images(folder: Path, msgs: list[str], what: str) -> list[Path]:
    """Image files in ``folder``: regular files only (symlinks followed); anything else (FIFO,
    socket, device, broken symlink, symlink loop, unreadable entry) is skipped with a warning."""
    kind = entry_kind(folder)
    if kind != "folder":
        raise DataError(folder, f"{what} folder {_not_folder(kind)}")
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(folder, f"cannot list the {what} folder ({exc.strerror or exc})") from None
    images, stray, odd = [], [], []
    for entry in entries:
        kind = _dirent_kind(entry)
        if kind == "folder":
            continue
        if kind != "file":
            odd.append(f"{entry.name} ({kind})")
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
            images.append(Path(entry.path))
        else:
            stray.append(entry.name)
    if odd:
        _warn(msgs, skipped_note(folder, odd))
    if stray:
        _warn(msgs, f"{folder}: skipped {len(stray)} non-image file(s) among the {what}: "
                    f"{', '.join(stray[:10])}{' ...' if len(stray) > 10 else ''}")
    if not images:
        hint = ("; expected image files, images/ + masks/ folders or RETOUCH-*Set-<Vendor>/<CASE>/oct.mhd"
                if what == "images" else "")
        raise DataError(folder, f"no {what} found (looked for {', '.join(IMAGE_EXTENSIONS)}){hint}")
    return images


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
    fh = _open_regular(path)
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


def _header_size(path: Path) -> tuple[int, int]:
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


def _mask_array(path: Path) -> np.ndarray:
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
_INDEX, _SPREAD = "index", "spread"


def _spread_step(n_classes: int) -> int:
    """Value step of the spread encoding for K classes; 0 when there is none (or it equals index)."""
    if n_classes < 2 or 255 % (n_classes - 1):
        return 0
    step = 255 // (n_classes - 1)
    return step if step > 1 else 0


def _fits(vals: np.ndarray, n_classes: int) -> set[str]:
    """The encodings that mask values (np.unique) fit; both for an all-0 (or empty) mask."""
    if vals.size == 0:
        return {_INDEX, _SPREAD}
    if not np.all(vals == np.round(vals)):  # also NaN
        return set()
    fits = set()
    if vals.min() >= 0 and vals.max() < n_classes:
        fits.add(_INDEX)
    step = _spread_step(n_classes)
    if step and np.all(np.isin(vals, np.arange(n_classes) * step)):
        fits.add(_SPREAD)
    return fits


def _encoding_name(kind: str, n_classes: int) -> str:
    if kind == _INDEX:
        return f"0..{n_classes - 1} labels"
    step = _spread_step(n_classes)
    return "/".join(str(i * step) for i in range(n_classes)) + " encoding"


def _encoding_uses(kind: str, n_classes: int) -> str:
    return ("uses " if kind == _INDEX else "uses the ") + _encoding_name(kind, n_classes)


def _show(path: Path, root: Optional[Path]) -> str:
    if root is not None:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return str(path)


def _map_mask(a: np.ndarray, n_classes: int, path: Path, encoding: Optional[str] = None) -> np.ndarray:
    """Mask values -> labels 0..K-1 with the dataset's ``encoding``: index labels kept as they are,
    spread values (0/85/170/255 for K=4, 0/255 for K=2) divided by their step. ``encoding=None``
    (not decided yet): index when the values fit it, else spread."""
    vals = np.unique(a)
    fits = _fits(vals, n_classes)
    if encoding is None:
        encoding = _INDEX if _INDEX in fits else _SPREAD if _SPREAD in fits else None
    if encoding in fits and encoding == _INDEX:
        return a.astype(np.uint8, copy=False)
    if encoding in fits and encoding == _SPREAD:
        return (a // _spread_step(n_classes)).astype(np.uint8)
    expected = (_encoding_name(encoding, n_classes) if encoding is not None else
                " or ".join(_encoding_name(k, n_classes) for k in (_INDEX, _SPREAD)
                            if k == _INDEX or _spread_step(n_classes)))
    raise DataError(path, f"mask values {_fmt_values(vals)} found; expected {expected} for classes "
                          f"{list(_classes_for(n_classes))}")


class _MaskEncoding:
    """The one mask encoding of a dataset, shared by all volumes of a DatasetSource: decided by
    :func:`_infer_classes` (which reads every mask), else by the first mask loaded that is not
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
                raise DataError(path, f"mask values {_fmt_values(vals)} ({_encoding_name(kind, self.n_classes)}) "
                                      f"while {_show(self.first, self.root)} "
                                      f"{_encoding_uses(self.kind, self.n_classes)}; one dataset must use one "
                                      f"encoding")
        return _map_mask(a, self.n_classes, path, self.kind if self.kind in fits else None)


def _classes_for(n: int) -> tuple[str, ...]:
    return {2: FLUID_CLASSES, 4: RETOUCH_CLASSES}.get(n, tuple(f"class{i}" for i in range(n)))


def _infer_classes(mask_paths: list[Path], msgs: list[str],
                   root: Optional[Path] = None) -> tuple[tuple[str, ...], _MaskEncoding]:
    """Read every mask once and decide the dataset's label set and its one mask encoding:
    labels 0..3 or spread 0/85/170/255 (mixing them is a DataError naming a mask of each);
    max label <= 1 (or only 0/255) -> FLUID_CLASSES, else RETOUCH_CLASSES."""
    union: set[int] = set()
    first: dict[str, Path] = {}
    values: dict[str, np.ndarray] = {}
    count = {_INDEX: 0, _SPREAD: 0}
    for p in mask_paths:
        vals = np.unique(_mask_array(p))
        fits = _fits(vals, 4)
        if not fits:
            raise DataError(p, f"mask values {_fmt_values(vals)} found; expected 0..3 or 0/85/170/255")
        if len(fits) == 1:
            (kind,) = fits
            first.setdefault(kind, p)
            values.setdefault(kind, vals)
            count[kind] += 1
        union |= set(int(x) for x in vals)
    if len(first) == 2:  # name the first mask of the rarer encoding (on a tie: the later), and one of the other
        order = list(first)
        odd = min(order, key=lambda k: (count[k], -order.index(k)))
        other = _INDEX if odd == _SPREAD else _SPREAD
        raise DataError(first[odd], f"mask values {_fmt_values(values[odd])} ({_encoding_name(odd, 4)}; "
                                    f"{count[odd]} such mask(s)) while {_show(first[other], root)} "
                                    f"{_encoding_uses(other, 4)} ({count[other]} such mask(s)); one dataset "
                                    f"must use one encoding")
    kind = next(iter(first), None)
    if union <= {0, 1}:
        classes = FLUID_CLASSES
    elif union <= {0, 255}:
        _warn(msgs, "masks contain only 0 and 255: read as binary fluid masks (255 -> fluid)")
        classes = FLUID_CLASSES
    else:
        classes = RETOUCH_CLASSES
    return classes, _MaskEncoding(len(classes), kind, first.get(kind), root)


def _classes_override(root: Path) -> Optional[tuple[str, ...]]:
    """Class names from ``dataset.json`` ("classes") or ``classes.txt`` (one per line) in the root."""
    j = root / "dataset.json"
    if entry_kind(j) != "missing":
        try:
            with _open_regular(j) as fh:
                meta = json.loads(fh.read())
        except (OSError, ValueError) as exc:
            raise DataError(j, f"invalid JSON ({exc})") from None
        if isinstance(meta, dict) and isinstance(meta.get("classes"), list) and meta.get("format") is None:
            return tuple(str(c) for c in meta["classes"])
    t = root / "classes.txt"
    if entry_kind(t) != "missing":
        try:
            with _open_regular(t) as fh:
                text = fh.read().decode()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(t, f"cannot read ({exc})") from None
        names = tuple(ln.strip() for ln in text.splitlines() if ln.strip())
        if len(names) >= 2:
            return names
        raise DataError(t, "needs at least two class names, one per line")
    return None


def _resolve_folders(path: Optional[Path], images, masks) -> tuple[Path, Path, Optional[Path], bool]:
    """(root, image folder, mask folder or None, single_file)."""
    if images is not None:
        images = Path(images)
        root = path if path is not None and path.is_dir() else images.parent
        return root, images, Path(masks) if masks is not None else None, False
    if masks is not None:
        raise ConfigError("--masks needs --images")
    if entry_kind(path) == "file":
        return path.parent, path, None, True
    for im_name, mk_name in FOLDER_PAIRS:
        if (path / im_name).is_dir():
            mk = path / mk_name
            kind = entry_kind(mk)
            if kind not in ("folder", "missing"):  # not silently unlabelled
                raise DataError(mk, f"{_not_folder(kind)}; expected the masks of {path / im_name}")
            return path, path / im_name, mk if kind == "folder" else None, False
    return path, path, None, False


def _pair(images: list[Path], masks: list[Path], pair_by_order: bool, image_dir: Path,
          mask_dir: Path, msgs: list[str]) -> dict[Path, Optional[Path]]:
    if pair_by_order:
        if len(images) != len(masks):
            raise DataError(mask_dir, f"--pair-by-order needs as many masks as images: "
                                      f"{len(masks)} masks, {len(images)} images in {image_dir}")
        return dict(zip(images, masks))
    by_stem: dict[str, Path] = {}
    for p in images:
        if p.stem in by_stem:
            raise DataError(p, f"two images share the stem {p.stem!r} (also {by_stem[p.stem].name})")
        by_stem[p.stem] = p
    pairs: dict[Path, Optional[Path]] = {p: None for p in images}
    orphans = []
    for m in masks:
        stem = m.stem
        if stem not in by_stem:
            stem = _MASK_SUFFIX.sub("", stem)
        img = by_stem.get(stem)
        if img is None:
            orphans.append(m)
            continue
        if pairs[img] is not None:
            raise DataError(m, f"second mask for image {img.name} (also {pairs[img].name})")
        pairs[img] = m
    if orphans:
        raise DataError(orphans[0], f"mask without an image in {image_dir} "
                                    f"({len(orphans)} such mask(s): {', '.join(o.name for o in orphans[:5])})")
    n_missing = sum(1 for v in pairs.values() if v is None)
    if n_missing:
        _warn(msgs, f"{n_missing} of {len(images)} images in {image_dir} have no mask in {mask_dir}: "
                    f"read as unlabelled B-scans")
    return pairs


def _scan_folders(path: Optional[Path], images, masks, pair_by_order: bool, volume_regex, classes) -> DatasetSource:
    msgs: list[str] = []
    root, image_dir, mask_dir, single = _resolve_folders(path, images, masks)
    if single:
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(path, f"not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})")
        image_files = [path]
    else:
        image_files = _list_images(image_dir, msgs, "images")
    mask_files = _list_images(mask_dir, msgs, "masks") if mask_dir is not None else []
    pairs = _pair(image_files, mask_files, pair_by_order, image_dir, mask_dir, msgs) if mask_dir is not None \
        else {p: None for p in image_files}

    if classes is None:
        classes = _classes_override(root)
    labelled_masks = [m for m in pairs.values() if m is not None]
    encoding = None
    if classes is None:
        classes, encoding = _infer_classes(labelled_masks, msgs, root) if labelled_masks \
            else (RETOUCH_CLASSES, None)
    classes = tuple(classes)
    n_classes = len(classes)
    if encoding is None:  # classes given: the first mask loaded that is not all 0 decides
        encoding = _MaskEncoding(n_classes, root=root)

    # Image/mask sizes from headers (no pixel decoding), so mismatches fail before any writing.
    sizes: dict[Path, tuple[int, int]] = {}
    for img, m in pairs.items():
        sizes[img] = _header_size(img)
        if m is not None:
            ms = _header_size(m)
            if ms != sizes[img]:
                raise DataError(m, f"mask size {ms[1]}x{ms[0]} (WxH) differs from image {img} "
                                   f"size {sizes[img][1]}x{sizes[img][0]}")

    try:
        rx = re.compile(volume_regex or DEFAULT_VOLUME_REGEX)
    except re.error as exc:
        raise ConfigError(f"--volume-regex {volume_regex!r} is not a valid regular expression: {exc}") from None
    if volume_regex and not {"volume", "slice"} <= set(rx.groupindex):
        raise ConfigError(f"--volume-regex {volume_regex!r} needs named groups (?P<volume>...) and (?P<slice>...)")

    groups: dict[str, list[tuple[int, Path]]] = {}
    unmatched = 0
    for img in pairs:
        m = rx.match(img.stem)
        if m:
            try:
                vol, sl = m.group("volume"), int(m.group("slice"))
            except (ValueError, IndexError):
                m = None
        if not m:
            unmatched += 1
            vol, sl = img.stem, 0
        groups.setdefault(vol, []).append((sl, img))
    if unmatched:
        _warn(msgs, f"{unmatched} of {len(pairs)} image names do not match the volume pattern "
                    f"{rx.pattern!r}: each such image is its own volume, so a split by volume may put "
                    f"B-scans of one eye on both sides (use --volume-regex)")

    meta = _read_volumes_csv(root, msgs)
    vols = []
    for vol in sorted(groups):
        items = sorted(groups[vol], key=lambda t: (t[0], t[1].name))
        for (a, pa), (b, pb) in zip(items, items[1:]):
            if a == b:
                raise DataError(pb, f"same volume {vol!r} and slice {a} as {pa.name}")
        vols.append(_folder_volume(vol, items, pairs, sizes, encoding, meta.get(vol, {})))
    return DatasetSource(root=str(root), layout="folders", classes=classes, volumes=vols, warnings=msgs)


def _folder_volume(vol: str, items: list[tuple[int, Path]], pairs: dict, sizes: dict, encoding: _MaskEncoding,
                   meta: dict) -> VolumeSource:
    shapes = {sizes[p] for _, p in items}
    vendor, spacing = meta.get("vendor"), meta.get("spacing")

    def load() -> Iterator[BScan]:
        for sl, p in items:
            img = read_image(p)
            m = pairs[p]
            mask = None
            if m is not None:
                mask = encoding.map(_mask_array(m), m)
                if mask.shape != img.shape:
                    raise DataError(m, f"mask shape {mask.shape} differs from image {p} shape {img.shape}")
            yield BScan(id=p.stem, volume=vol, slice_index=sl, image=img, mask=mask,
                        vendor=vendor, spacing=spacing, source=str(p))

    paths: list[str] = []
    for _, p in items:
        paths.append(str(p))
        if pairs[p] is not None:
            paths.append(str(pairs[p]))
    return VolumeSource(volume=vol, n_slices=len(items), shape=next(iter(shapes)) if len(shapes) == 1 else None,
                        load=load, vendor=vendor, spacing=spacing,
                        labelled=any(pairs[p] is not None for _, p in items), paths=tuple(paths))


# ---------------------------------------------------------------------------------------------


def detect_layout(path: Path) -> str:
    """``retouch`` when ``path`` is an .mhd file or holds oct.mhd volumes, else ``folders``."""
    kind = entry_kind(path)
    if kind != "folder":
        return "retouch" if kind == "file" and path.suffix.lower() == ".mhd" else "folders"
    return "retouch" if find_oct_files(path) else "folders"


def scan_source(path, layout: str = "auto", images=None, masks=None, pair_by_order: bool = False,
                volume_regex: Optional[str] = None, classes: Optional[Sequence[str]] = None) -> DatasetSource:
    """Find the volumes under ``path`` (see the module docstring for the layouts).

    Reads only headers, except that with ``classes=None`` in the folders layout every mask is
    read once to infer the label set (max label <= 1 -> two classes, else RETOUCH's four).
    Warnings (skipped files, unlabelled images, unparsable names) are emitted with
    ``warnings.warn`` and also kept in ``DatasetSource.warnings``.

    Only regular files are read (symlinks followed): listed entries that are anything else
    (FIFO, socket, device, broken symlink, symlink loop) are skipped with a warning, and such a
    ``path`` itself is a DataError; nothing is opened before it is checked, so nothing blocks.
    One dataset's masks use one encoding (labels 0..K-1 or values spread over 0..255); image
    files with several frames, NaN/inf pixels or more pixels than ``OCTSEG_MAX_IMAGE_PIXELS``
    (PIL's decompression-bomb limit by default) are DataErrors naming the file.
    """
    if layout not in ("auto", "retouch", "folders"):
        raise ConfigError(f"layout must be auto, retouch or folders, not {layout!r}")
    if classes is not None and len(tuple(classes)) < 2:
        raise ConfigError(f"classes needs at least two names, got {classes!r}")
    p = Path(path) if path is not None else None
    if p is not None:
        kind = entry_kind(p)
        if kind == "missing":
            raise DataError(p, "no such file or folder")
        if kind not in ("file", "folder"):
            raise DataError(p, f"not a regular file or folder ({kind})")
    if p is None and images is None:
        raise ConfigError("give a data folder or --images")
    if p is not None and p.is_dir() and is_prepared(p):
        raise DataError(p, "is already a prepared dataset; use it directly instead of preparing it again")
    if images is not None or masks is not None:
        if layout == "retouch":
            raise ConfigError("--images/--masks apply to the folders layout, not retouch")
        layout = "folders"
    if layout == "auto":
        layout = detect_layout(p)
    if layout == "retouch":
        return _scan_retouch(p, classes)
    return _scan_folders(p, images, masks, pair_by_order, volume_regex, classes)
