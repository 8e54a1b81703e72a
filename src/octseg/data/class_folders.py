"""Image folders sorted into sub-folders by diagnosis, as public OCT classification sets ship
(Kermany OCT2017: ``CNV/ DME/ DRUSEN/ NORMAL/`` with ``<CLASS>-<patient>-<n>.jpeg``).

Such a folder is a pool of **unlabelled** B-scans: the folder name is a diagnosis, not a label map.
The B-scans of one patient form one volume (so a split by volume never puts a patient on both
sides), whatever folder they sit in; their order within a patient carries no geometry, so slice
indices are simply their position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from octseg.io.files import entry_kind, regular_files
from octseg.io.images import IMAGE_EXTENSIONS

#: ``CNV-1016042-1`` -> volume (patient) ``1016042``, slice 1; the diagnosis prefix is not part of it.
CLASS_FOLDER_VOLUME_REGEX = r"^(?P<diagnosis>[A-Za-z]+)[_-](?P<volume>[^_-]+)[_-](?P<slice>\d+)$"


def class_folder_images(folder: Path) -> Optional[tuple[list[Path], list[str]]]:
    """(images, sub-folder names) when ``folder`` holds no images itself but sub-folders of images;
    None otherwise (a plain folder of images, or nothing to read)."""
    try:
        files, _ = regular_files(folder)
    except OSError:
        return None
    if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in files):
        return None
    images, names = [], []
    for sub in sorted(p for p in folder.iterdir() if not p.name.startswith(".") and entry_kind(p) == "folder"):
        try:
            sub_files, _ = regular_files(sub)
        except OSError:
            continue
        found = [p for p in sub_files if p.suffix.lower() in IMAGE_EXTENSIONS]
        if found:
            images += found
            names.append(sub.name)
    return (images, names) if images else None
