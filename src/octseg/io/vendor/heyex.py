"""Heidelberg Spectralis (HEYEX) exports: ``.vol``, ``.e2e`` and XML folders, through eyepy.

Why eyepy: it is the maintained reader of all three HEYEX exports, with voxel spacing, laterality
and the SLO localizer (oct-converter reads E2E but not VOL or XML). octseg checks a ``.vol``
header itself first (magic, sizes, B-scan count against the file size, from the published
layout), so a truncated or foreign file fails with a clear error before eyepy parses it.

Intensities: ``.vol`` and ``.e2e`` hold linear reflectances (float32); they are mapped to 8 bits
with eyepy's HEYEX display transform (``log``, as HEYEX shows them), XML exports hold 8-bit images.
"""

from __future__ import annotations

import datetime as _dt
import struct
from pathlib import Path
from typing import Optional

import numpy as np

from octseg.errors import DataError, OctsegError
from octseg.io.vendor.common import (ClinicHeader, ClinicScan, Identifiers, check_stack, file_size, gray_u8,
                                     laterality, quiet, read_head, require)
from octseg.records import Spacing

VOL_MAGIC = b"HSF-OCT-"
VOL_HEADER = 2048
E2E_MAGIC = b"CMDb"
#: eyepy's conversion of visual angle to retina distance for E2E (a medium eye), µm per degree.
_UM_PER_DEG = 289.6
_PATTERNS = {0: "unknown", 1: "line", 2: "circle", 3: "volume (ART)", 4: "fast volume", 5: "radial"}


def _eyepy(path, what: str):
    return require("eyepy.io", "eyepy", path, what)


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("latin-1").strip()


def _excel_date(days: float) -> Optional[str]:
    """A HEYEX date (days since 1899-12-30) as YYYY-MM-DD; None when unset or absurd."""
    if not np.isfinite(days) or days <= 0 or days > 200_000:
        return None
    return (_dt.date(1899, 12, 30) + _dt.timedelta(days=int(days))).isoformat()


# ----------------------------------------------------------------------------------------- .vol


def vol_header(path: Path) -> ClinicHeader:
    """The header of a HEYEX ``.vol`` file, checked against the file size (no pixels read)."""
    head = read_head(path, VOL_HEADER)
    if not head.startswith(VOL_MAGIC):
        raise DataError(path, f"not a Heidelberg .vol file (starts with {head[:8]!r}, expected {VOL_MAGIC!r})")
    if len(head) < VOL_HEADER:
        raise DataError(path, f"truncated header: {len(head)} bytes, a .vol header has {VOL_HEADER}")
    W, S, H = struct.unpack_from("<III", head, 12)
    scale_x, distance, scale_y = struct.unpack_from("<ddd", head, 24)
    ws, hs = struct.unpack_from("<II", head, 48)
    pattern, hdr_size = struct.unpack_from("<iI", head, 96)
    if S == 0:
        raise DataError(path, "holds zero B-scans (the header's B-scan count is 0)")
    if W == 0 or H == 0:
        raise DataError(path, f"B-scans of {W} x {H} pixels in the header")
    if hdr_size < 256:
        raise DataError(path, f"B-scan header size {hdr_size} in the file header (at least 256)")
    need = VOL_HEADER + ws * hs + S * (hdr_size + W * H * 4)
    have = file_size(path)
    if have < need:
        raise DataError(path, f"truncated: {have} bytes, the header needs {need} ({S} B-scans of {W} x {H} "
                              f"float32 after a {ws} x {hs} SLO image)")
    spacing = Spacing(row=scale_y, col=scale_x, slice=distance if S > 1 and distance > 0 else None) \
        if scale_x > 0 and scale_y > 0 else None
    ids = Identifiers(patient_id=_cstr(head[140:164]) or None,
                      birth_date=_excel_date(struct.unpack_from("<d", head, 164)[0]))
    return ClinicHeader(path=path, format="heyex-vol", vendor="spectralis", n_bscans=S, shape=(H, W),
                        spacing=spacing, spacing_source="file header (ScaleY, ScaleX, Distance)",
                        laterality=laterality(_cstr(head[84:88])), has_localizer=ws * hs > 0, identifiers=ids,
                        details={"version": _cstr(head[:12]), "scan pattern": _PATTERNS.get(pattern, str(pattern)),
                                 "stored as": "float32 reflectance"})


def read_vol(path: Path) -> ClinicScan:
    header = vol_header(path)
    _eyepy(path, "Heidelberg .vol files")
    from eyepy.core.utils import intensity_transforms
    from eyepy.io import HeVolReader

    try:
        with quiet():
            parsed = HeVolReader(path).parsed_file
            raw = np.stack([b.data for b in parsed.bscans]).astype(np.float32, copy=False)
            localizer = np.asarray(parsed.localizer) if header.has_localizer else None
    except (OctsegError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - construct's parse errors come in many types
        raise DataError(path, f"cannot read the .vol file ({type(exc).__name__}: {_short(exc)})") from None
    bscans = intensity_transforms["vol"](raw)  # HEYEX display mapping, in place on our copy
    return ClinicScan(header, check_stack(bscans, path, header.n_bscans), gray_u8(localizer, path))


def _short(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else "")[:200]


# ----------------------------------------------------------------------------------------- .e2e


def _e2e_series_header(path: Path, s) -> Optional[ClinicHeader]:
    meta = s.get_bscan_meta()
    if not meta:
        return None  # a series without B-scans (e.g. a fundus photograph)
    n = int(s.n_bscans)
    H, W = int(meta[0]["size_y"]), int(meta[0]["size_x"])
    axial = float(meta[0].get("scale_y") or 0)
    lateral = (s.get_x_scale_derivation().get("scaling_x_um_per_pixel") or 0) / 1000.0
    between = None
    if n > 1:
        centers = [float(m.get("center_y", 0.0)) for m in meta]
        span = max(centers) - min(centers)
        between = span * _UM_PER_DEG / 1000.0 / (n - 1) if span > 0 else None
    spacing = Spacing(row=axial, col=lateral, slice=between) if axial > 0 and lateral > 0 else None
    try:
        pat = s.get_heyex_metadata()["Patient"]
        names = [pat.get("Surname"), pat.get("First Name")]
        ids = Identifiers(name="^".join(x for x in names if x) or None, patient_id=pat.get("Patient ID") or None,
                          birth_date=pat.get("Date of Birth") or None)
    except Exception:  # noqa: BLE001 - no patient record: nothing to hide
        ids = Identifiers()
    try:
        lat = laterality(str(s.laterality()).rsplit(".", 1)[-1])
    except Exception:  # noqa: BLE001 - no laterality record
        lat = None
    return ClinicHeader(path=path, format="heyex-e2e", vendor="spectralis", n_bscans=n, shape=(H, W),
                        spacing=spacing, laterality=lat, identifiers=ids, series=str(s.id),
                        spacing_source="E2E B-scan header (axial); lateral and between B-scans from the scan "
                                       "angles at 0.2896 mm/degree (eyepy's provisional derivation)",
                        has_localizer=True,
                        details={"scan pattern": _PATTERNS.get(int(meta[0].get("scan_pattern", 0) or 0), "?"),
                                 "stored as": "float32 reflectance"})


def read_e2e(path: Path, pixels: bool = True) -> list:
    """Every OCT series of an ``.e2e`` file: headers, or (``pixels``) :class:`ClinicScan` objects."""
    head = read_head(path, 36)
    if not head.startswith(E2E_MAGIC):
        raise DataError(path, f"not a Heidelberg .e2e file (starts with {head[:8]!r}, expected {E2E_MAGIC!r})")
    if len(head) < 36:
        raise DataError(path, f"truncated header: {len(head)} bytes")
    _eyepy(path, "Heidelberg .e2e files")
    from eyepy.core.utils import intensity_transforms
    from eyepy.io import HeE2eReader

    out = []
    try:
        with quiet(), HeE2eReader(path) as reader:
            for s in reader.series:
                h = _e2e_series_header(path, s)
                if h is None:
                    continue
                try:
                    loc = np.asarray(s.get_localizer().data)
                except Exception:  # noqa: BLE001 - a series without a localizer
                    loc = None
                h.has_localizer = loc is not None
                if not pixels:
                    out.append(h)
                    continue
                raw = np.asarray(s.get_bscans(), dtype=np.float32).copy()
                out.append(ClinicScan(h, check_stack(intensity_transforms["e2e"](raw), path, h.n_bscans),
                                      gray_u8(loc, path)))
    except (OctsegError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise DataError(path, f"cannot read the .e2e file ({type(exc).__name__}: {_short(exc)})") from None
    if not out:
        raise DataError(path, "holds zero B-scans (no OCT series in the .e2e file)")
    return out


# ----------------------------------------------------------------------------------------- XML


def xml_file(path: Path) -> Path:
    """The XML file of a HEYEX export: ``path`` itself, or the one HEYEX XML in the folder ``path``."""
    if path.is_dir():
        from octseg.io.vendor import is_heyex_xml

        xmls = sorted(p for p in path.iterdir() if p.suffix.lower() == ".xml" and is_heyex_xml(p))
        if len(xmls) != 1:
            raise DataError(path, f"expected one HEYEX XML file in the export folder, found {len(xmls)}")
        return xmls[0]
    return path


def _xml_reader(path: Path):
    _eyepy(path, "Heidelberg XML exports")
    from eyepy.io import HeXmlReader

    xml = xml_file(path)
    try:
        with quiet():
            return xml, HeXmlReader(xml)
    except Exception as exc:  # noqa: BLE001 - ElementTree and eyepy errors
        raise DataError(xml, f"cannot read the HEYEX XML export ({type(exc).__name__}: {_short(exc)})") from None


def _iso_date(value) -> Optional[str]:
    s = str(value or "")[:10]
    return None if not s or s.startswith("0001") else s


def xml_header(path: Path) -> ClinicHeader:
    xml, reader = _xml_reader(path)
    pv = reader.parsed_values
    n = int(pv.get("n_bscans") or 0)
    if n == 0:
        raise DataError(xml, "holds zero B-scans (no OCT images in the XML export)")
    H, W = int(pv.get("size_y") or 0), int(pv.get("size_x") or 0)
    between = None
    if n > 1:
        try:
            with quiet():
                between = float(reader.meta["scale_z"])
        except Exception as exc:  # noqa: BLE001
            raise DataError(xml, f"cannot read the B-scan positions ({type(exc).__name__}: {_short(exc)})") from None
    sx, sy = float(pv.get("scale_x") or 0), float(pv.get("scale_y") or 0)
    spacing = Spacing(row=sy, col=sx, slice=between if between and between > 0 else None) if sx > 0 and sy > 0 \
        else None
    p = reader.patient
    names = [p.get("lastname"), p.get("firstname")]
    ids = Identifiers(name="^".join(x for x in names if x) or None,
                      patient_id=p.get("patient_id") or None, birth_date=_iso_date(p.get("dob")))
    loc = reader.xml_root[0].find(".//ImageType[Type='LOCALIZER']../ImageData/ExamURL")
    return ClinicHeader(path=xml, format="heyex-xml", vendor="spectralis", n_bscans=n, shape=(H, W),
                        spacing=spacing, laterality=laterality(pv.get("scan_position")), identifiers=ids,
                        spacing_source="XML ScaleY/ScaleX; between B-scans from their start/end positions",
                        has_localizer=loc is not None, details={"stored as": "8-bit images"})


def read_xml(path: Path) -> ClinicScan:
    header = xml_header(path)
    xml, reader = _xml_reader(path)
    try:
        with quiet():
            if header.has_localizer:
                vol = reader.volume
                bscans = np.asarray(vol.data)
                loc = np.asarray(vol.localizer.data) if vol.localizer is not None else None
            else:  # eyepy's volume needs the localizer: read the B-scan images it lists
                from octseg.io.images import read_image

                bscans = [read_image(xml.parent / m["scan_name"]) for m in reader.bscan_meta]
                loc = None
    except FileNotFoundError as exc:
        raise DataError(xml, f"an image of the export is missing: {exc.filename or _short(exc)}") from None
    except Exception as exc:  # noqa: BLE001
        raise DataError(xml, f"cannot read the export's images ({type(exc).__name__}: {_short(exc)})") from None
    return ClinicScan(header, check_stack(bscans, xml, header.n_bscans), gray_u8(loc, xml))
