"""Small metadata files beside the scans, all optional: what 2-D image files cannot say.

* ``volumes.csv``: ``volume,vendor,spacing_row,spacing_col,spacing_slice`` (spacing in mm; extra
  columns are ignored), read by :func:`read_volumes_csv`, written by :func:`write_volumes_csv`;
* ``classes.txt`` (one class name per line) or ``dataset.json`` (``{"classes": [...]}``):
  the dataset's class names, read by :func:`read_class_names`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterable, Optional, Sequence

from octseg.records import Spacing
from octseg.errors import DataError
from octseg.io.files import entry_kind, open_regular
from octseg.io.outputs import atomic_write_text

VOLUMES_CSV = "volumes.csv"
VOLUMES_CSV_COLUMNS = ("volume", "vendor", "spacing_row", "spacing_col", "spacing_slice")


def read_volumes_csv(folder) -> dict[str, dict]:
    """``folder/volumes.csv`` (columns volume,vendor,spacing_row,spacing_col,spacing_slice; spacing
    in mm, slice spacing optional) as ``{volume: {"vendor": lower-case or None, "spacing": Spacing
    or None}}``; ``{}`` when there is no such file. Anything there that is not a regular file, or
    a row with a bad number, is a DataError naming the file."""
    p = Path(folder) / VOLUMES_CSV
    if entry_kind(p) == "missing":
        return {}  # anything else that is not a regular file: a DataError from open_regular
    out = {}
    try:
        with io.TextIOWrapper(open_regular(p), newline="") as fh:
            for row in csv.DictReader(fh):
                if not row.get("volume"):
                    continue
                sp = None
                try:
                    if row.get("spacing_row") and row.get("spacing_col"):
                        sl = row.get("spacing_slice")
                        sp = Spacing(float(row["spacing_row"]), float(row["spacing_col"]),
                                     float(sl) if sl else None)
                except ValueError as exc:
                    raise DataError(p, f"bad spacing for volume {row['volume']!r} ({exc})") from None
                out[row["volume"]] = {"vendor": (row.get("vendor") or "").strip().lower() or None, "spacing": sp}
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise DataError(p, f"cannot read ({exc})") from None
    return out


def write_volumes_csv(path, rows: Iterable[Sequence], extra_columns: Sequence[str] = ()) -> Path:
    """Write ``path`` (a volumes.csv) atomically: one row per volume with the values of
    :data:`VOLUMES_CSV_COLUMNS` then ``extra_columns``, in that order."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*VOLUMES_CSV_COLUMNS, *extra_columns])
    w.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def read_class_names(root) -> Optional[tuple[str, ...]]:
    """Class names from ``dataset.json`` ("classes"; not a prepared dataset's, which has a "format")
    or ``classes.txt`` (one per line, at least two) in ``root``; None when neither gives them."""
    root = Path(root)
    j = root / "dataset.json"
    if entry_kind(j) != "missing":
        try:
            with open_regular(j) as fh:
                meta = json.loads(fh.read())
        except (OSError, ValueError) as exc:
            raise DataError(j, f"invalid JSON ({exc})") from None
        if isinstance(meta, dict) and isinstance(meta.get("classes"), list) and meta.get("format") is None:
            return tuple(str(c) for c in meta["classes"])
    t = root / "classes.txt"
    if entry_kind(t) != "missing":
        try:
            with open_regular(t) as fh:
                text = fh.read().decode()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(t, f"cannot read ({exc})") from None
        names = tuple(ln.strip() for ln in text.splitlines() if ln.strip())
        if len(names) >= 2:
            return names
        raise DataError(t, "needs at least two class names, one per line")
    return None
