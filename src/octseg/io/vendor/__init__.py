"""Clinic OCT formats: Heidelberg (``.vol``, ``.e2e``, XML), Topcon (``.fda``, ``.fds``), Zeiss
(``.img``) and DICOM OCT, read into :class:`ClinicScan` records (uint8 B-scans, spacing in mm,
laterality, localizer, redactable patient identifiers).

The libraries are an optional extra (``pip install 'octseg[formats]'``: eyepy, oct-converter,
pydicom, highdicom); without them octseg still runs, and reading such a file is an error naming
the file and the extra. One module per vendor, each saying why it uses the library it uses:
``heyex`` (eyepy), ``topcon`` and ``zeiss`` (oct-converter), ``dicom`` (pydicom).

* :func:`clinic_format` tells a clinic file (or HEYEX XML export folder) from anything else;
* :func:`probe` reads headers only where the format allows (``.vol``, XML, ``.img``, DICOM,
  Topcon), so a bad file fails before anything is written;
* :func:`read` returns the B-scans (one :class:`ClinicScan` per OCT series; an ``.e2e`` may hold several).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from octseg.errors import DataError
from octseg.io.files import entry_kind, regular_files
from octseg.io.vendor.common import FORMATS_EXTRA, ClinicHeader, ClinicScan, Identifiers, read_head

__all__ = ["FORMATS", "FORMATS_EXTRA", "ClinicHeader", "ClinicScan", "Identifiers", "clinic_format",
           "find_clinic_files", "is_heyex_xml", "probe", "read", "CLINIC_SUFFIXES"]


@dataclass(frozen=True)
class Format:
    """One clinic format: its name, what it is, and the library that reads it."""

    key: str
    description: str
    library: str


FORMATS = {f.key: f for f in (
    Format("heyex-vol", "Heidelberg Spectralis HEYEX .vol", "eyepy"),
    Format("heyex-e2e", "Heidelberg Spectralis HEYEX .e2e", "eyepy"),
    Format("heyex-xml", "Heidelberg Spectralis HEYEX XML export", "eyepy"),
    Format("topcon-fda", "Topcon .fda", "oct-converter"),
    Format("topcon-fds", "Topcon .fds", "oct-converter"),
    Format("zeiss-img", "Zeiss Cirrus .img", "oct-converter"),
    Format("dicom-opt", "DICOM OCT (Ophthalmic Tomography Image Storage)", "pydicom"),
)}
CLINIC_SUFFIXES = {".vol": "heyex-vol", ".e2e": "heyex-e2e", ".xml": "heyex-xml", ".fda": "topcon-fda",
                   ".fds": "topcon-fds", ".img": "zeiss-img", ".dcm": "dicom-opt", ".dicom": "dicom-opt"}


def is_heyex_xml(path: Path) -> bool:
    """Whether an .xml file is a HEYEX export (its root element is ``HEDX``), from its first bytes."""
    try:
        head = read_head(path, 4096)
    except DataError:
        return False
    return b"<HEDX" in head


def clinic_format(path) -> Optional[str]:
    """The clinic format of ``path`` (a key of :data:`FORMATS`), or None: by suffix, an .xml only
    when it is a HEYEX export, a folder when it holds exactly one HEYEX XML file."""
    path = Path(path)
    kind = entry_kind(path)
    if kind == "folder":
        try:
            files, _ = regular_files(path, hidden=False)
        except OSError:
            return None
        xmls = [f for f in files if f.suffix.lower() == ".xml" and is_heyex_xml(f)]
        return "heyex-xml" if len(xmls) == 1 else None
    fmt = CLINIC_SUFFIXES.get(path.suffix.lower())
    if fmt == "heyex-xml" and kind == "file" and not is_heyex_xml(path):
        return None
    return fmt


def find_clinic_files(folder) -> tuple[list[Path], list[str]]:
    """(clinic files in ``folder`` sorted by name, "name (kind)" of entries that are not regular
    files); sub-folders that are HEYEX XML exports count as clinic inputs too."""
    folder = Path(folder)
    files, odd = regular_files(folder, hidden=False)
    found = [f for f in files if clinic_format(f)]
    try:
        subdirs = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and entry_kind(p) == "folder")
    except OSError:
        subdirs = []
    found += [d for d in subdirs if clinic_format(d) == "heyex-xml"]
    return sorted(found, key=lambda p: p.name), odd


def _fmt(path: Path) -> str:
    fmt = clinic_format(path)
    if fmt is None:
        raise DataError(path, f"not a clinic OCT file (expected {', '.join(sorted(set(CLINIC_SUFFIXES)))} "
                              f"or a HEYEX XML export folder)")
    return fmt


def probe(path) -> list[ClinicHeader]:
    """The header of each OCT series in ``path`` (one, except for multi-series .e2e files)."""
    from octseg.io.vendor import dicom, heyex, topcon, zeiss

    path = Path(path)
    fmt = _fmt(path)
    if fmt == "heyex-vol":
        return [heyex.vol_header(path)]
    if fmt == "heyex-e2e":
        return heyex.read_e2e(path, pixels=False)
    if fmt == "heyex-xml":
        return [heyex.xml_header(path)]
    if fmt in ("topcon-fda", "topcon-fds"):
        return [topcon.topcon_header(path, fmt[-3:])]
    if fmt == "zeiss-img":
        return [zeiss.img_header(path)]
    return [dicom.dicom_header(path)]


def read(path, series: Optional[str] = None) -> list[ClinicScan]:
    """The B-scans of each OCT series in ``path`` (``series``: only that one)."""
    from octseg.io.vendor import dicom, heyex, topcon, zeiss

    path = Path(path)
    fmt = _fmt(path)
    if fmt == "heyex-vol":
        scans = [heyex.read_vol(path)]
    elif fmt == "heyex-e2e":
        scans = heyex.read_e2e(path, pixels=True)
    elif fmt == "heyex-xml":
        scans = [heyex.read_xml(path)]
    elif fmt in ("topcon-fda", "topcon-fds"):
        scans = [topcon.read_topcon(path, fmt[-3:])]
    elif fmt == "zeiss-img":
        scans = [zeiss.read_img(path)]
    else:
        scans = [dicom.read_dicom(path)]
    if series:
        scans = [s for s in scans if s.header.series == series]
        if not scans:
            raise DataError(path, f"has no OCT series {series!r}")
    return scans


def describe(headers: list[ClinicHeader], keep_identifiers: bool = False) -> str:
    """What ``octseg info`` prints: format, geometry, spacing, laterality, localizer, vendor, and the
    patient fields present (their values only with ``keep_identifiers``)."""
    lines = []
    for h in headers:
        S, (H, W) = h.n_bscans, h.shape
        fmt = FORMATS[h.format]
        lines.append(f"{h.source(keep_identifiers)}: {fmt.description} (read with {fmt.library})")
        if h.series:
            lines.append(f"  series        {h.series}")
        lines.append(f"  volume id     {h.volume_id(keep_identifiers)}")
        lines.append(f"  vendor        {h.vendor}")
        lines.append(f"  B-scans       {S} of {H} x {W} pixels (rows = depth x A-scans)")
        if h.spacing is not None:
            sp = h.spacing
            between = f"{sp.slice:.6g} mm" if sp.slice else "-"
            lines.append(f"  spacing       axial {sp.row:.6g} mm, lateral {sp.col:.6g} mm, between B-scans {between}")
            if h.spacing_source:
                lines.append(f"                ({h.spacing_source})")
            lines.append(f"  extent        {H * sp.row:.3f} mm deep x {W * sp.col:.3f} mm wide"
                         + (f" x {S * sp.slice:.3f} mm" if sp.slice else ""))
        else:
            lines.append("  spacing       unknown (volumes are reported in voxels)")
        lines.append(f"  laterality    {h.laterality or 'unknown'}")
        lines.append(f"  localizer     {'yes' if h.has_localizer else 'no'}")
        for k, v in h.details.items():
            if v not in (None, ""):
                lines.append(f"  {k:<13} {v}")
        present = h.identifiers.present()
        if present:
            if keep_identifiers:
                lines += [f"  {k:<13} {v}" for k, v in present.items()]
            else:
                lines.append(f"  patient       {', '.join(present)}: redacted (--keep-identifiers shows them)")
        else:
            lines.append("  patient       no identifiers in the header")
    return "\n".join(lines)
