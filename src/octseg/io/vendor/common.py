"""What every clinic-format reader returns, the optional-library check, and identifier redaction.

A vendor file is read into a :class:`ClinicScan` (B-scans + :class:`ClinicHeader`). The header
holds geometry, voxel spacing in mm (axial, lateral, between B-scans), laterality and the vendor,
plus the patient :class:`Identifiers` found in it, which octseg never prints or writes unless a
user asks (``--keep-identifiers``): :meth:`Identifiers.redact` removes them from any text
derived from a file (volume ids, output names, CSV sources).
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from octseg.errors import DataError
from octseg.records import Spacing

#: The pip extra that installs the clinic-format libraries.
FORMATS_EXTRA = "octseg[formats]"
#: What a redacted identifier becomes in names and text.
REDACTED = "anon"


def require(module: str, package: str, path, what: str):
    """Import ``module`` (an optional library) or stop with an error naming the file and the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(path, f"reading {what} needs the optional package {package}: "
                              f"pip install '{FORMATS_EXTRA}'") from None


@contextlib.contextmanager
def quiet():
    """Silence a library's prints and log lines (oct-converter prints, eyepy logs warnings):
    they may carry header fields, and octseg reports what matters itself."""
    import logging

    levels = {}
    for name in ("eyepy", "oct_converter", "highdicom", "pydicom"):
        lg = logging.getLogger(name)
        levels[name] = lg.level
        lg.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _date_forms(value: str) -> list[str]:
    """A birth date as the spellings that may turn up in names and text (20010203, 2001-02-03, ...)."""
    digits = re.sub(r"\D", "", value)
    if len(digits) < 8:
        return [value]
    y, m, d = digits[:4], digits[4:6], digits[6:8]
    forms = {value, f"{y}{m}{d}", f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{m}-{d}-{y}", f"{d}{m}{y}", f"{m}/{d}/{y}",
             f"{int(m)}-{int(d)}-{y}"}
    return sorted(forms, key=len, reverse=True)


@dataclass(frozen=True)
class Identifiers:
    """Patient identifiers a header holds (name, patient id, birth date, as found)."""

    name: Optional[str] = None
    patient_id: Optional[str] = None
    birth_date: Optional[str] = None

    def present(self) -> dict[str, str]:
        """The fields that are set, by name (for ``octseg info --keep-identifiers``)."""
        return {k: v for k, v in (("patient name", self.name), ("patient id", self.patient_id),
                                  ("birth date", self.birth_date)) if v}

    def values(self) -> list[str]:
        """Every string to remove from derived text, longest first: the id, the whole name and its
        parts of 3+ characters, the birth date in common spellings."""
        vals: set[str] = set()
        if self.patient_id and len(self.patient_id.strip()) >= 2:
            vals.add(self.patient_id.strip())
        if self.name:
            whole = self.name.strip()
            if len(whole) >= 3:
                vals.add(whole)
            vals.update(p for p in re.split(r"[\^\s,]+", whole) if len(p) >= 3)
        if self.birth_date:
            vals.update(_date_forms(self.birth_date.strip()))
        return sorted((v for v in vals if v), key=len, reverse=True)

    def redact(self, text: str) -> str:
        """``text`` with every identifier replaced by ``anon`` (case-insensitive)."""
        for v in self.values():
            text = re.sub(re.escape(v), REDACTED, text, flags=re.IGNORECASE)
        return text


@dataclass
class ClinicHeader:
    """What a clinic file holds, known before (or without) reading the B-scans."""

    path: Path
    format: str  # e.g. "heyex-vol", see octseg.io.vendor.FORMATS
    vendor: str  # "spectralis", "topcon", "cirrus", or the DICOM manufacturer
    n_bscans: int
    shape: tuple[int, int]  # (H, W): rows = depth
    spacing: Optional[Spacing] = None  # mm: row = axial, col = lateral, slice = between B-scans
    spacing_source: str = ""  # where the spacing comes from, e.g. "file header"
    laterality: Optional[str] = None  # "OD" (right) or "OS" (left)
    has_localizer: bool = False
    identifiers: Identifiers = field(default_factory=Identifiers)
    series: str = ""  # a series of a multi-series file (E2E), "" otherwise
    details: dict = field(default_factory=dict)  # non-identifying extras: scan pattern, bit depth, device

    def volume_id(self, keep_identifiers: bool = False) -> str:
        """The volume id: the file's stem (an XML export's folder name), with ``_<series>`` for one
        series of several, and every header identifier redacted unless ``keep_identifiers``."""
        stem = self.path.parent.name if self.format == "heyex-xml" else self.path.stem
        vid = f"{stem}_{self.series}" if self.series else stem
        vid = re.sub(r"[^\w.+-]+", "_", vid).strip("_") or "scan"
        return vid if keep_identifiers else self.identifiers.redact(vid)

    def source(self, keep_identifiers: bool = False) -> str:
        """The file's path for tables and logs, identifiers redacted unless ``keep_identifiers``."""
        s = str(self.path) + (f"#series{self.series}" if self.series else "")
        return s if keep_identifiers else self.identifiers.redact(s)


@dataclass
class ClinicScan:
    """A clinic file's B-scans (uint8 (S, H, W)), its localizer / fundus image (uint8 gray) when
    it has one, and for DICOM the source dataset's header (no pixels) a DICOM SEG refers to."""

    header: ClinicHeader
    bscans: np.ndarray
    localizer: Optional[np.ndarray] = None
    dicom: Optional[object] = None


def laterality(value) -> Optional[str]:
    """"OD"/"OS" from the many spellings (R, L, OD, OS, right, left); None when unknown."""
    v = str(value or "").strip().upper().rstrip("\0")
    if v in ("R", "OD", "RIGHT"):
        return "OD"
    if v in ("L", "OS", "LEFT"):
        return "OS"
    return None


def gray_u8(image, path) -> Optional[np.ndarray]:
    """A localizer / fundus image as uint8 gray (colour -> luminance); None when absent."""
    if image is None:
        return None
    from octseg.io.images import to_uint8

    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if a.ndim != 2:
        return None
    return to_uint8(a, source=path)


def check_stack(bscans, path, n_expected: Optional[int] = None) -> np.ndarray:
    """The B-scans as a uint8 (S, H, W) array (16-bit/float scaled once per volume), checked."""
    from octseg.io.images import to_uint8

    if isinstance(bscans, (list, tuple)):
        if not bscans:
            raise DataError(path, "holds zero B-scans")
        shapes = {np.shape(b) for b in bscans}
        if len(shapes) != 1:
            raise DataError(path, f"B-scans of different sizes {sorted(shapes)}")
        bscans = np.stack([np.asarray(b) for b in bscans])
    a = np.asarray(bscans)
    if a.ndim != 3 or 0 in a.shape:
        raise DataError(path, "holds zero B-scans" if a.ndim == 3 and a.shape[0] == 0
                        else f"expected B-scans (S, H, W), found an array of shape {a.shape}")
    if n_expected is not None and a.shape[0] != n_expected:
        raise DataError(path, f"the header announces {n_expected} B-scans, the file holds {a.shape[0]}")
    return to_uint8(a, source=path)


def file_size(path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError as exc:
        raise DataError(path, f"cannot read ({exc.strerror or exc})") from None


def read_head(path, n: int) -> bytes:
    """The first ``n`` bytes of a regular file (a FIFO or device is refused before opening)."""
    from octseg.io.files import open_regular

    with open_regular(Path(path)) as fh:
        try:
            return fh.read(n)
        except OSError as exc:
            raise DataError(path, f"cannot read ({exc.strerror or exc})") from None
