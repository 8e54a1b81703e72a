"""DICOM OCT (Ophthalmic Tomography Image Storage, modality OPT) through pydicom.

Why pydicom and not oct-converter: OPT is standard DICOM, and pydicom reads its headers and
pixels (compressed transfer syntaxes through its pixel handlers); oct-converter's DICOM reader
only returns pixels and refuses Zeiss's files. Spacing: ``PixelSpacing`` (axial, lateral) from
the Pixel Measures functional group; between B-scans ``SpacingBetweenSlices``, else the distance
between the frames' ``ImagePositionPatient``, else ``SliceThickness``. The localizer is the
DICOM image in the same folder whose SOP Instance UID the OPT file references.

Zeiss's own DICOM variant (Cirrus/Plex exports with scrambled JPEG 2000 frames) cannot be
decoded by pydicom, and oct-converter 0.7 dropped its ZEISSDCM reader: such a file is an error
that says so (export the scan as ``.img`` or as standard DICOM instead).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from octseg.errors import DataError, OctsegError
from octseg.io.vendor.common import (ClinicHeader, ClinicScan, Identifiers, check_stack, file_size, gray_u8,
                                     laterality, read_head, require)
from octseg.records import Spacing

OPT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.4"  # Ophthalmic Tomography Image Storage
_UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
_VENDORS = (("heidelberg", "spectralis"), ("topcon", "topcon"), ("zeiss", "cirrus"), ("optovue", "optovue"),
            ("nidek", "nidek"), ("canon", "canon"))
MAX_SIBLINGS = 200  # DICOM files looked at for the referenced localizer


def is_dicom(path: Path) -> bool:
    head = read_head(path, 132)
    return len(head) >= 132 and head[128:132] == b"DICM"


def _read(path: Path, pixels: bool):
    pydicom = require("pydicom", "pydicom", path, "DICOM OCT files")
    head = read_head(path, 132)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise DataError(path, "not a DICOM file (no 'DICM' marker at byte 128)" if len(head) >= 132
                        else f"truncated header: {len(head)} bytes, not a DICOM file")
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged files
        raise DataError(path, f"cannot read the DICOM header, the file is truncated or damaged "
                              f"({type(exc).__name__})") from None


def _item(ds, seq: str):
    s = ds.get(seq)
    return s[0] if s else None


def _spacing(ds) -> tuple[Optional[Spacing], str]:
    pm = None
    for name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        grp = _item(ds, name)
        if grp is not None and _item(grp, "PixelMeasuresSequence") is not None:
            pm = _item(grp, "PixelMeasuresSequence")
            break
    src = pm if pm is not None and "PixelSpacing" in pm else ds
    ps = src.get("PixelSpacing")
    if not ps or len(ps) < 2:
        return None, ""
    row, col = float(ps[0]), float(ps[1])
    between, how = None, ""
    for obj in (pm, ds):
        if obj is not None and obj.get("SpacingBetweenSlices"):
            between, how = float(obj.SpacingBetweenSlices), "SpacingBetweenSlices"
            break
    if between is None:
        pos = []
        for f in ds.get("PerFrameFunctionalGroupsSequence") or []:
            pp = _item(f, "PlanePositionSequence")
            if pp is not None and pp.get("ImagePositionPatient") is not None:
                pos.append([float(x) for x in pp.ImagePositionPatient])
        if len(pos) >= 2:
            d = np.linalg.norm(np.diff(np.asarray(pos), axis=0), axis=1)
            if d.size and d.mean() > 0:
                between, how = float(d.mean()), "frame positions (ImagePositionPatient)"
    if between is None:
        for obj in (pm, ds):
            if obj is not None and obj.get("SliceThickness"):
                between, how = float(obj.SliceThickness), "SliceThickness"
                break
    if row <= 0 or col <= 0:
        return None, ""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    return Spacing(row=row, col=col, slice=between if n > 1 else None), \
        "PixelSpacing" + (f" + {how}" if how and n > 1 else "")


def _laterality(ds) -> Optional[str]:
    for obj in (ds, _item(ds, "SharedFunctionalGroupsSequence")):
        if obj is None:
            continue
        for key in ("ImageLaterality", "Laterality"):
            lat = laterality(obj.get(key))
            if lat:
                return lat
        fa = _item(obj, "FrameAnatomySequence")
        if fa is not None and laterality(fa.get("FrameLaterality")):
            return laterality(fa.get("FrameLaterality"))
    return None


def _vendor(ds) -> str:
    m = str(ds.get("Manufacturer") or "").lower()
    for key, vendor in _VENDORS:
        if key in m:
            return vendor
    return m.strip() or "unknown"


def _referenced_uids(ds) -> set[str]:
    uids = set()
    for name in ("ReferencedImageSequence", "SourceImageSequence"):
        for item in ds.get(name) or []:
            uid = item.get("ReferencedSOPInstanceUID")
            if uid:
                uids.add(str(uid))
    return uids


def _find_localizer(path: Path, ds) -> Optional[Path]:
    """The DICOM file beside ``path`` whose SOP Instance UID ``ds`` references (e.g. the SLO/fundus)."""
    import pydicom

    uids = _referenced_uids(ds)
    if not uids:
        return None
    from octseg.io.files import regular_files

    try:
        files, _ = regular_files(path.parent, hidden=False)
    except OSError:
        return None
    for f in [f for f in files if f != path and f.suffix.lower() in ("", ".dcm", ".dicom")][:MAX_SIBLINGS]:
        try:
            other = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        except Exception:  # noqa: BLE001 - not DICOM: not the localizer
            continue
        if str(other.get("SOPInstanceUID", "")) in uids:
            return f
    return None


def dicom_header(path: Path, ds=None) -> ClinicHeader:
    ds = ds if ds is not None else _read(path, pixels=False)
    sop = str(ds.get("SOPClassUID", ""))
    if sop != OPT_SOP_CLASS:
        name = getattr(ds.get("SOPClassUID"), "name", "") or "unknown"
        raise DataError(path, f"not a DICOM OCT volume: SOP class {sop or '?'} ({name}); octseg reads "
                              f"Ophthalmic Tomography Image Storage ({OPT_SOP_CLASS})")
    n = int(ds.get("NumberOfFrames", 1) or 0)
    H, W = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if n == 0:
        raise DataError(path, "holds zero B-scans (NumberOfFrames is 0)")
    if H == 0 or W == 0:
        raise DataError(path, f"B-scans of {W} x {H} pixels (Columns x Rows)")
    bits = int(ds.get("BitsAllocated", 8) or 8)
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if ts in _UNCOMPRESSED:
        need = n * H * W * (bits // 8)
        have = file_size(path)
        if have < need:
            raise DataError(path, f"truncated: {have} bytes, {n} frames of {W} x {H} at {bits} bits need {need}")
    spacing, how = _spacing(ds)
    ids = Identifiers(name=str(ds.get("PatientName") or "") or None, patient_id=str(ds.get("PatientID") or "") or None,
                      birth_date=str(ds.get("PatientBirthDate") or "") or None)
    loc = _find_localizer(path, ds)
    return ClinicHeader(path=path, format="dicom-opt", vendor=_vendor(ds), n_bscans=n, shape=(H, W), spacing=spacing,
                        spacing_source=how, laterality=_laterality(ds), has_localizer=loc is not None,
                        identifiers=ids, details={"bits": bits, "syntax": ts,
                                                  "model": str(ds.get("ManufacturerModelName") or "")})


def read_dicom(path: Path) -> ClinicScan:
    ds = _read(path, pixels=True)
    header = dicom_header(path, ds)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        if header.vendor == "cirrus":
            raise DataError(path, "Zeiss DICOM variant whose frames neither pydicom nor oct-converter decodes; "
                                  "export the scan from Cirrus as .img (or as standard DICOM)") from None
        raise DataError(path, f"cannot decode the pixel data ({type(exc).__name__}: {str(exc)[:160]})") from None
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4:  # colour frames
        arr = np.stack([gray_u8(f, path) for f in arr])
    loc = None
    loc_path = _find_localizer(path, ds)
    if loc_path is not None:
        try:
            other = _read(loc_path, pixels=True)
            la = np.asarray(other.pixel_array)
            loc = gray_u8(la[0] if la.ndim == 3 and la.shape[-1] not in (3, 4) else la, loc_path)
        except OctsegError:
            loc = None
        except Exception:  # noqa: BLE001 - an undecodable localizer is not the scan
            loc = None
    header.has_localizer = loc is not None
    ref = ds.copy()
    if "PixelData" in ref:
        del ref.PixelData
    return ClinicScan(header, check_stack(arr, path, header.n_bscans), loc, dicom=ref)
