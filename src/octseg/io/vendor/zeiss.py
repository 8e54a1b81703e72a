"""Zeiss Cirrus ``.img`` cubes through oct-converter.

A Cirrus ``.img`` export has no header: it is the uint8 voxels alone. The geometry comes from the
name Cirrus gives it (``P<id>_Macular Cube 512x128_<date>_OD_sn<serial>_cube_z.img``: A-scans x
B-scans; depth = file size / (A-scans x B-scans)), which oct-converter's reader needs too; a file
renamed without it is an error that says so. Spacing is nominal: a Cirrus cube covers
6 x 6 mm over 2 mm of depth. The ``P<digits>`` prefix is the patient id and is treated as one.
"""

from __future__ import annotations

import re
from pathlib import Path

from octseg.errors import DataError, OctsegError
from octseg.io.vendor.common import (ClinicHeader, ClinicScan, Identifiers, check_stack, file_size, laterality,
                                     quiet, require)
from octseg.records import Spacing

_SHAPE = re.compile(r"(?<!\d)(\d{2,4})\s*x\s*(\d{1,4})(?!\d)", re.IGNORECASE)
CUBE_MM = (6.0, 6.0, 2.0)  # width, height (across B-scans), depth of a Cirrus cube


def img_header(path: Path) -> ClinicHeader:
    name = path.name
    shapes = _SHAPE.findall(name)
    if not shapes:
        raise DataError(path, "a Cirrus .img has no header: its name must keep the scan pattern Cirrus exports "
                              "with, '<A-scans>x<B-scans>' (e.g. 'P123_Macular Cube 512x128_..._OD_..._cube_z.img')")
    W, S = (int(x) for x in shapes[-1])
    size = file_size(path)
    if S == 0 or size == 0:
        raise DataError(path, "holds zero B-scans" + (" (empty file)" if size == 0 else ""))
    if W == 0 or size % (W * S):
        raise DataError(path, f"{size} bytes is not a whole number of {W} x {S} A-scans: truncated, or the name's "
                              f"scan pattern does not match the data")
    H = size // (W * S)
    oc = require("oct_converter.readers", "oct-converter", path, "Zeiss .img files")
    with quiet():
        meta = oc.IMG(path).get_metadata_from_filename()
    cube = "cube" in name.lower()
    spacing = Spacing(row=CUBE_MM[2] / H, col=CUBE_MM[0] / W, slice=CUBE_MM[1] / S if S > 1 else None) \
        if cube else None
    return ClinicHeader(path=path, format="zeiss-img", vendor="cirrus", n_bscans=S, shape=(H, W), spacing=spacing,
                        spacing_source="nominal Cirrus cube, 6 x 6 mm x 2 mm deep" if cube else "",
                        laterality=laterality(meta.get("laterality")),
                        identifiers=Identifiers(patient_id=meta.get("patient_id")),
                        details={"geometry from": "file name", "stored as": "uint8"})


def read_img(path: Path) -> ClinicScan:
    header = img_header(path)
    oc = require("oct_converter.readers", "oct-converter", path, "Zeiss .img files")
    H, W = header.shape
    try:
        with quiet():
            vol = oc.IMG(path).read_oct_volume(rows=H, cols=W)
    except (OctsegError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise DataError(path, f"cannot read the .img voxels ({type(exc).__name__}: {exc})") from None
    return ClinicScan(header, check_stack(list(vol.volume), path, header.n_bscans))
