"""A prepared dataset on disk: the one format training, evaluation and splits read.

Layout of a prepared folder::

    images.npy    uint8 (N, H, W)   B-scans resized to one size
    masks.npy     uint8 (N, H, W)   labels 0..K-1, 255 = unlabelled B-scan
    slices.csv    one row per B-scan: id, volume, vendor, slice_index, orig_height,
                  orig_width, spacing_row, spacing_col, spacing_slice, labelled, source
    dataset.json  classes, source, layout, size, counts, octseg version
    splits/       NAME.json files written by `octseg split`

Arrays are opened memory-mapped, so a dataset larger than RAM can be used.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from octseg.records import Spacing
from octseg.errors import DataError

FORMAT_NAME = "octseg-prepared"
FORMAT_VERSION = 1
SLICE_COLUMNS = (
    "id",
    "volume",
    "vendor",
    "slice_index",
    "orig_height",
    "orig_width",
    "spacing_row",
    "spacing_col",
    "spacing_slice",
    "labelled",
    "source",
)


@dataclass(frozen=True)
class SliceInfo:
    """One row of ``slices.csv``."""

    id: str
    volume: str
    vendor: Optional[str]
    slice_index: int
    orig_height: int
    orig_width: int
    spacing: Optional[Spacing]
    labelled: bool
    source: str


def is_prepared(path) -> bool:
    """True when ``path`` is a complete prepared dataset folder."""
    p = Path(path)
    return (p / "dataset.json").is_file() and (p / "images.npy").is_file()


def _opt_float(text: str) -> Optional[float]:
    return float(text) if text not in ("", None) else None


def read_slice_table(path) -> list[SliceInfo]:
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            sr, sc = _opt_float(row["spacing_row"]), _opt_float(row["spacing_col"])
            spacing = Spacing(sr, sc, _opt_float(row["spacing_slice"])) if sr and sc else None
            rows.append(
                SliceInfo(
                    id=row["id"],
                    volume=row["volume"],
                    vendor=row["vendor"] or None,
                    slice_index=int(row["slice_index"]),
                    orig_height=int(row["orig_height"]),
                    orig_width=int(row["orig_width"]),
                    spacing=spacing,
                    labelled=row["labelled"] in ("1", "true", "True"),
                    source=row["source"],
                )
            )
    return rows


def write_slice_table(path, rows: list[SliceInfo]) -> None:
    """``slices.csv``, through octseg's one file writer (atomic; a full disk is a DataError naming it)."""
    import io

    from octseg.io.outputs import atomic_write_text

    fh = io.StringIO()
    w = csv.writer(fh)
    w.writerow(SLICE_COLUMNS)
    for r in rows:
        s = r.spacing
        w.writerow(
            [
                r.id,
                r.volume,
                r.vendor or "",
                r.slice_index,
                r.orig_height,
                r.orig_width,
                "" if s is None else repr(s.row),
                "" if s is None else repr(s.col),
                "" if s is None or s.slice is None else repr(s.slice),
                1 if r.labelled else 0,
                r.source,
            ]
        )
    atomic_write_text(path, fh.getvalue(), fsync=False)


class PreparedDataset:
    """Read access to a prepared dataset (memory-mapped arrays + slice table)."""

    def __init__(self, path):
        self.path = Path(path)
        meta_path = self.path / "dataset.json"
        if not meta_path.is_file():
            raise DataError(self.path, "not a prepared dataset (no dataset.json); run `octseg prepare` first")
        try:
            self.meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(meta_path, f"invalid JSON ({exc})") from exc
        if self.meta.get("format") != FORMAT_NAME:
            raise DataError(meta_path, f"not an octseg prepared dataset (format={self.meta.get('format')!r})")
        self.classes: tuple[str, ...] = tuple(self.meta["classes"])
        try:
            self.images = np.load(self.path / "images.npy", mmap_mode="r")
            self.masks = np.load(self.path / "masks.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(self.path, f"cannot read images.npy/masks.npy ({exc})") from exc
        self.slices = read_slice_table(self.path / "slices.csv")
        if not (len(self.slices) == len(self.images) == len(self.masks)):
            raise DataError(
                self.path,
                f"inconsistent sizes: {len(self.slices)} rows in slices.csv, "
                f"{len(self.images)} images, {len(self.masks)} masks",
            )
        self._index = {s.id: i for i, s in enumerate(self.slices)}

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def labelled(self) -> np.ndarray:
        return np.array([s.labelled for s in self.slices], dtype=bool)

    def indices(self, ids) -> np.ndarray:
        """Row indices of slice ids; an unknown id is an error naming it."""
        try:
            return np.array([self._index[i] for i in ids], dtype=np.int64)
        except KeyError as exc:
            raise DataError(self.path, f"slice id {exc.args[0]!r} is not in this dataset") from None

    def split(self, name: str) -> dict:
        """Load ``splits/NAME.json`` (parts -> lists of slice ids), checked: a damaged or hand-edited
        split is a DataError naming the file, never a traceback in training."""
        p = self.path / "splits" / f"{name}.json"
        if not p.is_file():
            avail = sorted(q.stem for q in (self.path / "splits").glob("*.json"))
            raise DataError(p, f"no such split; available: {avail or 'none (run `octseg split`)'}")
        try:
            doc = json.loads(p.read_bytes().decode("utf-8"))
        except OSError as exc:
            raise DataError(p, f"cannot read ({exc.strerror or exc})") from None
        except UnicodeDecodeError as exc:
            raise DataError(p, f"not a UTF-8 JSON file (bad byte at offset {exc.start})") from None
        except ValueError as exc:  # JSONDecodeError, or numbers too long for int()
            raise DataError(p, f"invalid JSON ({' '.join(str(exc).split())[:200]})") from None
        except RecursionError:
            raise DataError(p, "invalid JSON (nested too deeply)") from None
        self._check_split(doc, p)
        return doc

    def _check_split(self, doc, p: Path) -> None:
        if not isinstance(doc, dict) or not isinstance(doc.get("parts"), dict):
            raise DataError(p, "not an octseg split (no 'parts' mapping of part name -> slice ids)")
        for part, ids in doc["parts"].items():
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise DataError(p, f"part {part!r} must be a list of slice ids (strings)")
            unknown = [i for i in ids if i not in self._index]
            if unknown:
                raise DataError(p, f"part {part!r}: slice id {unknown[0]!r} is not in {self.path}"
                                   + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
        for key in ("fractions",):
            if key in doc and not isinstance(doc[key], dict):
                raise DataError(p, f"'{key}' must be a mapping")
