"""Topcon ``.fda`` / ``.fds`` (3D OCT-1000/2000, Maestro, Triton) through oct-converter.

Why oct-converter: it reads both Topcon containers (eyepy's FDA import wraps it and has no FDS),
with patient and capture records, scan parameters and the fundus photograph. Both are chunked
files (``FOCT`` + type, then ``@NAME`` chunks); octseg checks the magic and that an OCT chunk is
there, then lets oct-converter decode. Spacing is oct-converter's: scan width / A-scans, scan
height / B-scans, axial resolution from ``@PARAM_SCAN_0x``. 16-bit volumes are scaled to 8 bits
per volume (clipped at the 99.9th percentile), like every other 16-bit input.

oct-converter 0.7 parses these files with ``np.fromstring`` on bytes, which NumPy 2.3 removed;
while it reads, :func:`_numpy_compat` gives its two Topcon modules a NumPy whose ``fromstring``
is ``frombuffer`` (same result, no copy), so the readers work on old and new NumPy alike.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import struct
import types
from pathlib import Path

from octseg.errors import DataError, OctsegError
from octseg.io.vendor.common import (ClinicHeader, ClinicScan, Identifiers, check_stack, gray_u8, laterality, quiet,
                                     read_head, require)
from octseg.records import Spacing

MAGIC = b"FOCT"
#: OCT chunk -> (offset of width, height, number of B-scans in its header) of each container
_OCT_CHUNKS = {
    "fda": {b"@IMG_JPEG": (9, 13, 17), b"@IMG_MOT_COMP_03": (1, 5, 13)},
    "fds": {b"@IMG_SCAN_03": (1, 5, 13)},
}


class _FromBufferNumpy(types.SimpleNamespace):
    """NumPy with ``fromstring(bytes, dtype)`` answered by ``frombuffer`` (see the module docstring)."""

    def __getattr__(self, name):
        import numpy

        return getattr(numpy, name)

    @staticmethod
    def fromstring(data, dtype=float, count=-1, sep=""):
        import numpy

        if sep:
            return numpy.fromstring(data, dtype=dtype, count=count, sep=sep)
        return numpy.frombuffer(data, dtype=dtype, count=count)


@contextlib.contextmanager
def _numpy_compat():
    from oct_converter.readers import fda, fds

    saved = fda.np, fds.np
    fda.np = fds.np = _FromBufferNumpy()
    try:
        yield
    finally:
        fda.np, fds.np = saved


def _reader(path: Path, kind: str):
    head = read_head(path, 15)
    if not head.startswith(MAGIC):
        raise DataError(path, f"not a Topcon .{kind} file (starts with {head[:8]!r}, expected {MAGIC!r})")
    if len(head) < 15:
        raise DataError(path, f"truncated header: {len(head)} bytes, a Topcon header has 15")
    readers = require("oct_converter.readers", "oct-converter", path, f"Topcon .{kind} files")
    try:
        with quiet(), _numpy_compat():
            return readers.FDA(path) if kind == "fda" else readers.FDS(path)
    except Exception as exc:  # noqa: BLE001 - a damaged chunk list fails in numpy/construct
        raise DataError(path, f"cannot read the .{kind} chunk list, the file is truncated or damaged "
                              f"({type(exc).__name__})") from None


def _oct_geometry(path: Path, reader, kind: str) -> tuple[int, int, int]:
    """(B-scans, H, W) from the OCT chunk's header, read with the uocte-documented layout."""
    for name, (ow, oh, on) in _OCT_CHUNKS[kind].items():
        if name in reader.chunk_dict:
            loc, size = reader.chunk_dict[name]
            loc, size = (loc[0], size[0]) if isinstance(loc, list) else (loc, size)
            with open(path, "rb") as fh:
                fh.seek(int(loc))
                raw = fh.read(on + 4)
            if len(raw) < on + 4:
                raise DataError(path, f"truncated {name.decode()} chunk")
            (w,), (h,), (n,) = (struct.unpack_from("<I", raw, o) for o in (ow, oh, on))
            return n, h, w
    names = ", ".join(n.decode() for n in _OCT_CHUNKS[kind])
    raise DataError(path, f"holds no OCT B-scans (no {names} chunk)")


def _identifiers(meta: dict) -> Identifiers:
    p = meta.get("patient_info_02") or meta.get("patient_info") or {}
    names = [str(p.get("last_name") or "").strip(), str(p.get("first_name") or "").strip()]
    dob = None
    try:
        dob = _dt.date(*[int(x) for x in p.get("birth_date")][:3]).isoformat()
    except (TypeError, ValueError):
        pass
    return Identifiers(name="^".join(x for x in names if x) or None,
                       patient_id=str(p.get("patient_id") or "").strip() or None, birth_date=dob)


def topcon_header(path: Path, kind: str) -> ClinicHeader:
    """Geometry, spacing, laterality and identifiers, without decoding B-scans."""
    reader = _reader(path, kind)
    n, h, w = _oct_geometry(path, reader, kind)
    if n == 0:
        raise DataError(path, "holds zero B-scans (the OCT chunk's B-scan count is 0)")
    meta, ps = {}, None
    with quiet(), _numpy_compat():
        try:  # records octseg cannot parse leave the fields unknown; the B-scans may still be fine
            meta = reader.read_all_metadata() or {}
        except Exception:  # noqa: BLE001
            meta = {}
        try:
            ps = reader.read_scan_params({"width": w, "height": h, "number_slices": n})
        except Exception:  # noqa: BLE001
            ps = None
    spacing = Spacing(row=float(ps[2]), col=float(ps[0]), slice=float(ps[1]) if n > 1 else None) \
        if ps and all(ps) else None
    cap = meta.get("capture_info_02") or meta.get("capture_info") or {}
    lat = {0: "OD", 1: "OS"}.get(cap.get("eye")) if isinstance(cap, dict) else None
    fundus = b"@IMG_FUNDUS" in reader.chunk_dict or b"@IMG_TRC_02" in reader.chunk_dict or \
        b"@IMG_OBS" in reader.chunk_dict
    return ClinicHeader(path=path, format=f"topcon-{kind}", vendor="topcon", n_bscans=n, shape=(h, w),
                        spacing=spacing, laterality=lat, identifiers=_identifiers(meta), has_localizer=fundus,
                        spacing_source="oct-converter: @PARAM_SCAN (scan size / pixels, axial resolution)",
                        details={"chunks": len(reader.chunk_dict)})


def read_topcon(path: Path, kind: str) -> ClinicScan:
    header = topcon_header(path, kind)
    reader = _reader(path, kind)
    try:
        with quiet(), _numpy_compat():
            vol = reader.read_oct_volume()
            fundus = None
            if header.has_localizer:
                try:
                    f = reader.read_fundus_image()
                    if f is None and kind == "fda":
                        f = reader.read_fundus_image_gray_scale()
                    fundus = None if f is None else f.image
                except Exception:  # noqa: BLE001 - an undecodable fundus photo is not the scan
                    fundus = None
    except (OctsegError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise DataError(path, f"cannot decode the .{kind} B-scans, the file is truncated or damaged "
                              f"({type(exc).__name__})") from None
    loc = gray_u8(fundus, path)
    header.has_localizer = loc is not None
    if header.laterality is None:
        header.laterality = laterality(vol.laterality)
    return ClinicScan(header, check_stack(list(vol.volume or []), path, header.n_bscans), loc)
