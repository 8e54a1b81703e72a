"""3-D volumes (MetaImage ``.mhd`` + ``.raw``/``.zraw``, NIfTI ``.nii.gz``) through SimpleITK.

* :func:`mhd_info` reads a MetaImage header and checks its data file before any pixel is read;
* :func:`volume_header` reads any volume's header and checks it is 3-D scalar;
* :class:`Volume` reads the pixels (one copy, a view into SimpleITK's memory);
* :func:`write_volume` writes a volume so that a header under its final name always has its data.

Failures are :class:`~octseg.errors.DataError` naming the file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from octseg.records import Spacing
from octseg.errors import DataError
from octseg.io.files import entry_kind, open_regular
from octseg.io.images import fmt_values
from octseg.io.outputs import TMP_PREFIX, write_error

_MET_BYTES = {
    "MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4,
    "MET_ULONG": 8, "MET_LONG": 8, "MET_ULONG_LONG": 8, "MET_LONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


def _sitk_msg(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Headers


def mhd_header(path: Path) -> dict:
    """Parse a MetaImage header (key = value lines) without SimpleITK, for the .raw checks."""
    head = {}
    try:
        with open_regular(path) as fh:
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


def _information(path: Path, what: str):
    """A SimpleITK ImageFileReader that has read ``path``'s header (no pixels)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError(path, f"cannot read {what} ({_sitk_msg(exc)})") from None
    return reader


def volume_header(path: Path):
    """SimpleITK header (an ImageFileReader) of a volume, checked to be 3-D scalar, so a bad file
    fails before any pixel is read: ``GetSize()`` is (columns, rows, B-scans)."""
    reader = _information(path, "the volume header")
    dim, comps = reader.GetDimension(), reader.GetNumberOfComponents()
    if dim != 3 or comps != 1:
        raise DataError(path, f"expected a 3-D gray volume (columns x rows x B-scans), found a {dim}-D image "
                              f"of size {tuple(reader.GetSize())} with {comps} component(s)")
    _check_nifti_data(path, reader)
    return reader


def _check_nifti_data(path: Path, reader) -> None:
    """A NIfTI file must hold the voxels its header announces: ITK pads a short file silently (a
    header changed to 100 x 2000 x 2000 reads as 400 million voxels of nothing)."""
    name = Path(path).name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    import SimpleITK as sitk

    size = [int(x) for x in reader.GetSize()]
    probe = sitk.Image([1] * len(size), reader.GetPixelID(), reader.GetNumberOfComponents())
    need = int(np.prod(size, dtype=np.float64)) * sitk.GetArrayViewFromImage(probe).nbytes
    header = 348  # the NIfTI-1 header; the voxels start at vox_offset >= 348
    if name.endswith(".gz"):
        have = _inflated_size(Path(path), need + header) - header
    else:
        try:
            have = os.path.getsize(path) - header
        except OSError as exc:
            raise DataError(path, f"cannot read ({exc.strerror or exc})") from None
    if have < need:
        raise DataError(path, f"holds {max(have, 0)} bytes of voxels, its header announces {need} "
                              f"(size {tuple(size)}): a truncated or damaged NIfTI file")


def mhd_info(path: Path) -> tuple[tuple[int, int, int], tuple[float, float, float], list[Path]]:
    """Size (W, H, S), spacing (col, row, slice) and data files of an .mhd, checking the .raw
    exists and is long enough (so a bad volume fails before anything is written). A 2-D image
    is one B-scan (S = 1, slice spacing 0)."""
    head = mhd_header(path)
    if "DimSize" not in head or "ElementDataFile" not in head:
        raise DataError(path, "not a MetaImage header (no DimSize/ElementDataFile)")
    reader = _information(path, "MetaImage header")
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
        if compressed and nbytes:  # ITK fills a short stream up silently: count what it inflates to
            inflated = _inflated_size(raw, nbytes)
            if inflated < nbytes:
                raise DataError(path, f"its compressed data file {raw.name} holds {inflated} bytes, the header "
                                      f"needs {nbytes} (DimSize {head['DimSize']}, {head.get('ElementType')})")
    return size, spacing, data_files


def _inflated_size(path: Path, limit: int) -> int:
    """How many bytes the zlib/gzip stream in ``path`` inflates to (counted up to ``limit``, in
    bounded memory), over every member of a multi-member gzip file (as zlib's gzread, which ITK
    uses, reads them; bytes after a member that start no new one are ignored, as there); a corrupt
    stream is a DataError naming the file."""
    import zlib

    d = zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib or gzip header
    n = 0
    try:
        with open_regular(path) as fh:
            while n < limit:
                if d.eof:  # the end of one member: another may follow
                    rest = d.unused_data
                    if len(rest) < 2:
                        rest += fh.read(1 << 20)
                    if rest[:2] != b"\x1f\x8b":
                        break
                    d = zlib.decompressobj(32 + zlib.MAX_WBITS)
                    chunk = rest
                else:
                    chunk = d.unconsumed_tail or fh.read(1 << 20)
                    if not chunk:
                        break
                n += len(d.decompress(chunk, 1 << 22))
    except zlib.error as exc:
        raise DataError(path, f"corrupt compressed data ({exc})") from None
    except OSError as exc:
        raise DataError(path, f"cannot read ({exc.strerror or exc})") from None
    return n


# ---------------------------------------------------------------------------------------------
# Pixels


class Volume:
    """A read-only array view of a SimpleITK image, holding the image alive: avoids the
    second full copy GetArrayFromImage makes (a Cirrus volume is 64 MB per copy). The view
    is valid only while this object lives, so callers copy what they hand out.
    ``array`` is (S, H, W); a 2-D image is one B-scan."""

    def __init__(self, path: Path):
        import SimpleITK as sitk

        _check_nifti_data(path, _information(path, "the volume header"))
        try:
            self.image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise DataError(path, f"cannot read volume ({_sitk_msg(exc)})") from None
        arr = sitk.GetArrayViewFromImage(self.image)
        self.array = arr[None] if arr.ndim == 2 else arr


def check_labels(ref: np.ndarray, n_classes: int, path: Path) -> np.ndarray:
    """A label volume as uint8, its values checked to be labels 0..K-1."""
    if ref.dtype.kind == "f" and not np.array_equal(ref, np.round(ref)):
        raise DataError(path, "label volume has non-integer values")
    if ref.size and (ref.min() < 0 or ref.max() >= n_classes):
        vals = np.unique(ref)
        raise DataError(path, f"label values {fmt_values(vals)} found; expected 0..{n_classes - 1}")
    return ref.astype(np.uint8, copy=False)


# ---------------------------------------------------------------------------------------------
# Writing


def volume_data_file(path, compress: bool = True) -> Optional[Path]:
    """The data file :func:`write_volume` puts beside a MetaImage header (``.zraw`` compressed,
    ``.raw`` not); None for one-file formats (``.nii.gz``, ``.nii``, ``.mha``, ...)."""
    path = Path(path)
    if path.suffix.lower() != ".mhd":
        return None
    return path.with_suffix(".zraw" if compress else ".raw")


def write_volume(path, array: np.ndarray, spacing=None, origin=None, direction=None,
                 compress: bool = True) -> Path:
    """Write ``array`` ((S, H, W) volume or (H, W) image, labels or intensities) as ``path``:
    ``.mhd`` (+ its data file, see :func:`volume_data_file`), ``.nii.gz``, or any format
    SimpleITK writes by suffix. ``spacing``, ``origin``, ``direction`` are in SimpleITK order
    (columns, rows, B-scans); ``spacing`` may also be a :class:`Spacing` (a missing slice
    spacing is 1). ``compress`` (zlib) shrinks label volumes ~50x, cheaply.

    Written in a temporary folder beside ``path`` (whose folder must exist) and moved in data
    file first, header last, so a header under the final name always has its data; failures
    raise :class:`DataError` naming ``path`` and leave no file under the final names."""
    import SimpleITK as sitk

    final = Path(path)
    if isinstance(spacing, Spacing):
        spacing = (spacing.col, spacing.row) + ((spacing.slice or 1.0,) if np.ndim(array) == 3 else ())
    img = sitk.GetImageFromArray(array)
    if spacing is not None:
        img.SetSpacing(tuple(float(s) for s in spacing))
    if origin is not None:
        img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    names = [final.name]
    data = volume_data_file(final, compress)
    if data is not None:
        names.insert(0, data.name)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=final.parent))
    except OSError as exc:
        raise write_error(exc, final) from None
    moved: list[Path] = []
    try:
        try:
            sitk.WriteImage(img, str(tmp / final.name), bool(compress))
            for name in names:
                os.replace(tmp / name, final.parent / name)
                moved.append(final.parent / name)
        except BaseException:
            for p in moved:  # a data file whose header could not follow
                p.unlink(missing_ok=True)
            raise
    except RuntimeError as exc:
        if shutil.disk_usage(final.parent).free < np.asarray(array).nbytes:
            raise DataError(final, "cannot write: no space left on device") from None
        raise DataError(final, f"cannot write ({str(exc).strip().splitlines()[-1]})") from None
    except OSError as exc:
        raise write_error(exc, final) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
