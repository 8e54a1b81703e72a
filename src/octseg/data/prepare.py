"""Turn a raw data folder into a prepared dataset (see :mod:`octseg.data.prepared`).

Written volume by volume into memory-mapped ``.npy`` files inside ``OUT.tmp-<pid>``, which
is renamed to ``OUT`` only when complete: an interrupted or failed run never leaves
something that looks like a dataset, and RAM use is one volume, not the dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from octseg import __version__
from octseg.data.prepared import (
    FORMAT_NAME,
    FORMAT_VERSION,
    PreparedDataset,
    SliceInfo,
    is_prepared,
    read_slice_table,
    write_slice_table,
)
from octseg.data.readers import scan_source
from octseg.constants import UNLABELLED
from octseg.records import DatasetSource
from octseg.errors import ConfigError, DataError
from octseg.io.outputs import atomic_write_text, write_error
from octseg.transforms import resize_image_u8, resize_mask_u8


def source_signature(ds: DatasetSource) -> str:
    """Hash of the layout, classes and every source file's path, size and mtime."""
    h = hashlib.sha256()
    h.update(json.dumps([ds.layout, list(ds.classes)]).encode())
    for v in ds.volumes:
        h.update(f"\0{v.volume}".encode())
        for p in v.paths:
            try:
                st = os.stat(p)
                h.update(f"\0{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"\0{p}\0missing".encode())
    return h.hexdigest()


def _check_size(size) -> Optional[tuple[int, int]]:
    if size is None:
        return None
    try:
        H, W = (int(x) for x in size)
    except (TypeError, ValueError):
        raise ConfigError(f"size must be two integers (H, W), not {size!r}") from None
    if H < 1 or W < 1:
        raise ConfigError(f"size must be positive, not {H}x{W}")
    return H, W


def _native_size(ds: DatasetSource) -> tuple[int, int]:
    shapes = Counter(v.shape for v in ds.volumes)
    if len(shapes) == 1 and None not in shapes:
        return next(iter(shapes))
    parts = [f"{s[0]}x{s[1]} ({n} volume{'s' * (n > 1)})" for s, n in sorted(
        ((s, n) for s, n in shapes.items() if s is not None))]
    mixed = [v.volume for v in ds.volumes if v.shape is None]
    if mixed:
        parts.append(f"mixed sizes within volume(s) {', '.join(mixed[:5])}")
    raise DataError(ds.root, f"B-scans have different sizes (HxW): {'; '.join(parts)}; "
                             f"pass --size H W to resize them all to one size")


#: What a prepared dataset folder holds; re-preparing replaces it whole, so anything else stops it.
PREPARED_ENTRIES = frozenset({"images.npy", "masks.npy", "slices.csv", "dataset.json", "splits"})


def _check_out(out: Path, src: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise DataError(out, "exists and is not a folder")
        if not is_prepared(out) and any(out.iterdir()):
            raise DataError(out, "exists and is not a prepared dataset; not overwriting it")
        foreign = sorted(e.name for e in out.iterdir() if e.name not in PREPARED_ENTRIES)
        foreign += sorted(f"splits/{e.name}" for e in (out / "splits").glob("*")
                          if (out / "splits").is_dir() and not e.name.endswith(".json"))
        if foreign:
            raise DataError(out, f"is a prepared dataset that also holds files octseg did not write "
                                 f"({', '.join(foreign[:5])}); re-preparing replaces the folder whole, so move "
                                 f"them out first or prepare into another folder")
    s, o = src.resolve(), out.resolve()
    if s == o:
        raise DataError(out, "output folder is the source folder")


def _remove_stale_temps(out: Path) -> None:
    """Delete ``OUT.tmp-<pid>`` / ``OUT.old-<pid>`` folders left by runs that were killed."""
    for p in out.parent.glob(f"{out.name}.*-*"):
        kind, _, pid = p.name[len(out.name) + 1:].partition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _publish(tmp: Path, out: Path) -> None:
    """Swap the finished temp folder in. A directory cannot be os.replace'd onto a non-empty
    one, so an existing dataset is moved aside first and deleted after the swap."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _carry_splits(out: Path, tmp: Path, ids: list[str]) -> None:
    """Keep an existing dataset's splits when re-preparing yields the same B-scan ids."""
    splits = out / "splits"
    if not (is_prepared(out) and splits.is_dir()):
        return
    try:
        old_ids = [s.id for s in read_slice_table(out / "slices.csv")]
    except (OSError, KeyError, ValueError):
        return
    if old_ids == ids:
        shutil.copytree(splits, tmp / "splits")


def write_prepared(ds: DatasetSource, out, size=None, progress: bool = True,
                   reader_options: Optional[dict] = None) -> PreparedDataset:
    """Write an already scanned source to ``out`` (atomically); see :func:`prepare_dataset`."""
    from tqdm.auto import tqdm

    out = Path(out).absolute()
    size = _check_size(size)
    N = ds.n_slices
    if N == 0 or not ds.volumes:
        raise DataError(ds.root, "no B-scans found")
    _check_out(out, Path(ds.root))
    H, W = size if size is not None else _native_size(ds)

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(out)
        need = 2 * N * H * W + (1 << 20)
        free = shutil.disk_usage(out.parent).free
        if free < need:  # a memmap on a full disk dies with SIGBUS, not an exception
            raise DataError(out.parent, f"needs {need / 1e9:.2f} GB for {N} B-scans at {H}x{W}, "
                                        f"only {free / 1e9:.2f} GB free")
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as exc:
        raise write_error(exc, out) from None
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(N, H, W))
        masks = np.lib.format.open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8, shape=(N, H, W))
        rows: list[SliceInfo] = []
        seen: dict[str, str] = {}
        i = 0
        with tqdm(total=N, desc=f"prepare {out.name}", unit="B-scan", disable=not progress) as bar:
            for vol in ds.volumes:
                start = i
                for b in vol.load():
                    if i - start >= vol.n_slices:
                        raise DataError(vol.paths[0] if vol.paths else vol.volume,
                                        f"volume {vol.volume} yields more than the {vol.n_slices} B-scans "
                                        f"its header announces")
                    if b.id in seen:
                        raise DataError(b.source, f"B-scan id {b.id!r} is also used by {seen[b.id]}")
                    seen[b.id] = b.source
                    images[i] = resize_image_u8(b.image, (H, W))
                    masks[i] = UNLABELLED if b.mask is None else resize_mask_u8(b.mask, (H, W))
                    h, w = b.image.shape
                    rows.append(SliceInfo(id=b.id, volume=b.volume, vendor=b.vendor, slice_index=b.slice_index,
                                          orig_height=h, orig_width=w, spacing=b.spacing,
                                          labelled=b.mask is not None, source=b.source))
                    i += 1
                    bar.update(1)
                if i - start != vol.n_slices:
                    raise DataError(vol.paths[0] if vol.paths else vol.volume,
                                    f"volume {vol.volume} yielded {i - start} B-scans, expected {vol.n_slices}")
        images.flush()
        masks.flush()
        del images, masks
        write_slice_table(tmp / "slices.csv", rows)
        n_lab = sum(r.labelled for r in rows)
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "classes": list(ds.classes),
            "source": str(Path(ds.root).absolute()),
            "layout": ds.layout,
            "size": [H, W],
            "resized": size is not None,
            "n_slices": N,
            "n_labelled": n_lab,
            "n_volumes": len(ds.volumes),
            "vendors": sorted({r.vendor for r in rows if r.vendor}),
            "octseg_version": __version__,
            "warnings": list(ds.warnings),
            "source_signature": source_signature(ds),
            "reader": reader_options or {},
        }
        _carry_splits(out, tmp, [r.id for r in rows])
        # dataset.json last: is_prepared() looks for it.
        atomic_write_text(tmp / "dataset.json", json.dumps(meta, indent=2, sort_keys=True) + "\n", fsync=False)
        _publish(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, DataError):
            raise write_error(exc, out) from None
        raise
    return PreparedDataset(out)


def _reader_options(**kw) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in kw.items()}


def prepare_dataset(src, out, size=None, layout: str = "auto", images=None, masks=None,
                    pair_by_order: bool = False, volume_regex: Optional[str] = None,
                    progress: bool = True, classes=None, keep_identifiers: bool = False) -> PreparedDataset:
    """Read ``src`` (any layout :func:`octseg.data.readers.scan_source` knows) and write a
    prepared dataset to ``out``.

    ``size=(H, W)`` resizes every B-scan (images box/bilinear, masks nearest); ``None`` keeps
    the native size, which must then be the same for all B-scans. Re-running with the same
    source and size rewrites ``out`` atomically with identical bytes, keeping its splits.
    Patient identifiers of clinic files stay out of ids and sources unless ``keep_identifiers``.
    """
    ds = scan_source(src, layout=layout, images=images, masks=masks, pair_by_order=pair_by_order,
                     volume_regex=volume_regex, classes=classes, keep_identifiers=keep_identifiers)
    opts = _reader_options(layout=layout, images=images, masks=masks, pair_by_order=pair_by_order,
                           volume_regex=volume_regex, **({"keep_identifiers": True} if keep_identifiers else {}))
    return write_prepared(ds, out, size=size, progress=progress, reader_options=opts)


def cache_root(cache_dir=None) -> Path:
    """``cache_dir``, else ``$OCTSEG_CACHE/prepared``, else ``~/.cache/octseg/prepared``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("OCTSEG_CACHE"):
        return Path(os.environ["OCTSEG_CACHE"]) / "prepared"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "octseg" / "prepared"


def ensure_prepared(path, size, cache_dir=None, **reader_kwargs) -> PreparedDataset:
    """A prepared dataset for ``path``: itself if it is one (at whatever size it has; callers
    resize on the fly), else a cached preparation, rebuilt when the source files changed.

    The cache folder is ``<name>-<hash of absolute path, size and reader options>``; the
    source signature (file sizes and mtimes) stored in its dataset.json decides reuse.
    """
    if is_prepared(path):
        return PreparedDataset(path)
    progress = reader_kwargs.pop("progress", True)
    size = _check_size(size)
    ds = scan_source(path, **reader_kwargs)
    sig = source_signature(ds)
    abs_path = Path(path).absolute()
    opts = _reader_options(**reader_kwargs)
    key = hashlib.sha256(json.dumps([str(abs_path), size and list(size), opts], sort_keys=True).encode())
    name = (abs_path.stem if abs_path.is_file() else abs_path.name) or "data"
    folder = cache_root(cache_dir) / f"{name}-{key.hexdigest()[:16]}"
    if is_prepared(folder):
        try:
            cached = PreparedDataset(folder)
            if cached.meta.get("source_signature") == sig:
                return cached
        except DataError:
            pass
    return write_prepared(ds, folder, size=size, progress=progress, reader_options=opts)
