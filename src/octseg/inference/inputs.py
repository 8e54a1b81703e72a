"""What ``octseg predict`` will read: the images or volumes under INPUT, found without reading
pixels, and each one's B-scans and voxel spacing when it is its turn."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from octseg.errors import DataError


@dataclass
class Job:
    """One input: an image file or a volume file."""

    kind: str  # "image" | "volume" | "clinic" (a vendor file: octseg.inference.clinic)
    path: Path
    n: int = 1  # B-scans (volumes: from the header)
    keep_identifiers: bool = False  # clinic files: patient identifiers may reach names and tables


def plan_inputs(path, keep_identifiers: bool = False) -> tuple[list[Job], list[str]]:
    """The inputs under ``path`` (no pixels read) and notes about skipped files.

    Clinic files (``.vol``, ``.e2e``, HEYEX XML exports, ``.fda``, ``.fds``, ``.img``, ``.dcm``) are
    "clinic" jobs; ``keep_identifiers`` lets their header's patient identifiers into names and tables.

    Only regular files (symlinks followed) become inputs; other entries (FIFO, socket, device,
    broken symlink, symlink loop) are skipped with a note naming them, and nothing is opened,
    so nothing blocks. A ``path`` that is itself no regular file or folder is a DataError."""
    from octseg.data.prepared import is_prepared
    from octseg.data.readers import FOLDER_PAIRS, find_oct_files
    from octseg.io.files import entry_kind, regular_files, skipped_note
    from octseg.io.images import IMAGE_EXTENSIONS
    from octseg.io.vendor import clinic_format, find_clinic_files

    path = Path(path)
    notes: list[str] = []
    kind = entry_kind(path)
    if kind == "missing":
        raise DataError(path, "no such file or folder")
    if kind == "file":
        suffix = path.suffix.lower()
        if suffix == ".mhd":
            return [Job("volume", path)], notes
        if suffix in IMAGE_EXTENSIONS:
            return [Job("image", path)], notes
        if clinic_format(path):
            return [Job("clinic", path, keep_identifiers=keep_identifiers)], notes
        raise DataError(path, f"not an image ({', '.join(IMAGE_EXTENSIONS)}), a MetaImage volume (.mhd) or a "
                              f"clinic OCT file (.vol, .e2e, .xml, .fda, .fds, .img, .dcm)")
    if kind != "folder":
        raise DataError(path, f"not a regular file or folder ({kind})")
    if clinic_format(path) == "heyex-xml":  # the folder of one HEYEX XML export
        return [Job("clinic", path, keep_identifiers=keep_identifiers)], notes
    if is_prepared(path):
        raise DataError(path, "is a prepared dataset (arrays resized for training); predict on the original "
                              "scans instead")
    skipped: list[str] = []
    vols = find_oct_files(path, skipped)
    if vols:
        if skipped:
            notes.append(skipped_note(path, skipped))
        return [Job("volume", p) for p in vols], notes
    folder = path
    for im_dir, _ in FOLDER_PAIRS:
        if (path / im_dir).is_dir():
            folder = path / im_dir
            break
    try:
        files, odd = regular_files(folder, hidden=False)
    except OSError as exc:
        raise DataError(folder, f"cannot list the folder ({exc.strerror or exc})") from None
    images, mhds, other = [], [], []
    for f in files:
        ext = f.suffix.lower()
        if ext in IMAGE_EXTENSIONS:
            images.append(f)
        elif ext == ".mhd" and f.name.lower() != "reference.mhd":
            mhds.append(f)
        elif ext not in (".raw", ".zraw", ".csv", ".json", ".txt", ".md"):
            other.append(f.name)
    if odd:
        notes.append(skipped_note(folder, odd))
    clinic: list = []
    if not images:  # a folder of images stays a folder of images (stray files skipped with a note)
        try:
            clinic = find_clinic_files(folder)[0]
        except OSError:
            clinic = []
        other = [n for n in other if not clinic_format(folder / n)]
    if other:
        notes.append(f"skipped {len(other)} file(s) that are neither images nor volumes in {folder}: "
                     f"{', '.join(other[:5])}{' ...' if len(other) > 5 else ''}")
    if images:
        return [Job("image", p) for p in images], notes
    if clinic:  # vendor files (HEYEX XML export folders among them), and any .mhd volumes beside them
        return ([Job("clinic", p, keep_identifiers=keep_identifiers) for p in clinic]
                + [Job("volume", p) for p in mhds]), notes
    if mhds:
        return [Job("volume", p) for p in mhds], notes
    raise DataError(path, f"no images ({', '.join(IMAGE_EXTENSIONS)}) or oct.mhd volumes found")


def read_bscans(path: Path, layout: str, classes):
    """The B-scans of one file through the readers (one image, or all B-scans of a volume)."""
    from octseg.data.readers import scan_source

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "name does not match the volume pattern": irrelevant here
        src = scan_source(path, layout=layout, classes=classes)
    if len(src.volumes) != 1:
        raise DataError(path, f"expected one volume, found {len(src.volumes)}")
    return src.volumes[0]


def spacing_table(root: Path) -> dict:
    """Spacing per volume from an optional ``volumes.csv`` beside an image folder."""
    from octseg.io.tables import read_volumes_csv

    out = {}
    for folder in dict.fromkeys([root, root.parent]):
        try:
            out = {**read_volumes_csv(folder), **out}
        except DataError:
            pass
    return out
