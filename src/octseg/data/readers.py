"""Readers: find OCT B-scans on disk in the layouts users have, without reading pixels.

Three layouts:

* ``clinic``: vendor files (Heidelberg ``.vol``/``.e2e``/XML export, Topcon ``.fda``/``.fds``, Zeiss
  ``.img``, DICOM OCT), one file or a folder of them, read through :mod:`octseg.io.vendor`; labels
  optional, from a ``<stem>_reference.nii.gz``/``.nii``/``.mhd`` volume beside the file.
* ``retouch``: the RETOUCH challenge folders ``RETOUCH-TrainingSet-<Vendor>/TRAINxxx/oct.mhd``
  (+ ``reference.mhd`` labels), read with SimpleITK.
* ``folders``: 2-D images (``images/`` + ``masks/``, the Kaggle RETOUCH copy's
  ``train_edge_maps/train`` + ``train_masks/train``, explicit folders, or a folder of
  images only), grouped into volumes by parsing file stems.

:func:`scan_source` returns a :class:`DatasetSource` whose volumes know their size
from file headers; pixels are read only by ``VolumeSource.load()``, one volume at a time.

This module decides which files form which volume; reading each file format is left to
:mod:`octseg.io` (``files``: what a path is, ``images``, ``volumes``, ``tables``).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from octseg.constants import FLUID_CLASSES, RETOUCH_CLASSES
from octseg.data.class_folders import CLASS_FOLDER_VOLUME_REGEX, class_folder_images
from octseg.data.prepared import is_prepared
from octseg.errors import ConfigError, DataError
from octseg.io.files import entry_kind, find_named, not_folder, regular_files, skipped_note
from octseg.io.images import (IMAGE_EXTENSIONS, MaskEncoding, header_size, mask_array, read_image, survey_masks,
                              to_uint8)
from octseg.io.tables import read_class_names, read_volumes_csv
from octseg.io.volumes import Volume, check_labels, mhd_info
from octseg.records import BScan, DatasetSource, Spacing, VolumeSource

#: Default stem pattern: ``TRAIN001_045`` -> (TRAIN001, 45), ``Subject_01_11`` -> (Subject_01, 11).
DEFAULT_VOLUME_REGEX = r"^(?P<volume>.+?)[_-](?P<slice>\d+)$"
#: (images, masks) sub-folder pairs tried under a root, in order.
FOLDER_PAIRS = (
    ("images", "masks"),
    ("images", "labels"),
    ("train_edge_maps/train", "train_masks/train"),
)
_RETOUCH_DIR = re.compile(r"^RETOUCH[-_](?:Training|Test)Set[-_](?P<vendor>[A-Za-z]+)$", re.IGNORECASE)
_MASK_SUFFIX = re.compile(r"[_-](?:mask|masks|label|labels|seg|gt)$", re.IGNORECASE)
_MAX_DEPTH = 5  # root/[wrapper/[wrapper/]]RETOUCH-TrainingSet-X/TRAIN001/oct.mhd


def _warn(msgs: list[str], msg: str) -> None:
    msgs.append(msg)
    warnings.warn(msg, UserWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------
# RETOUCH (.mhd) layout


def find_oct_files(root: Path, skipped: Optional[list[str]] = None) -> list[Path]:
    """Every ``oct.mhd`` under ``root`` (a few folder levels deep), sorted; see
    :func:`~octseg.io.files.find_named` for symlinked folders and what lands in ``skipped``."""
    return find_named(root, "oct.mhd", _MAX_DEPTH, skipped)


def _vendor_of(oct_path: Path) -> tuple[Optional[str], Optional[str]]:
    """(vendor lower-cased, vendor as spelled in the folder name) from RETOUCH-...Set-<Vendor>."""
    for parent in list(oct_path.parents)[1:4]:
        m = _RETOUCH_DIR.match(parent.name)
        if m:
            return m.group("vendor").lower(), m.group("vendor")
    return None, None


def _retouch_volume(oct_path: Path, volume: str, vendor: Optional[str], meta: dict,
                    n_classes: int) -> VolumeSource:
    size, sp, data_files = mhd_info(oct_path)
    ref_path = oct_path.with_name("reference.mhd") if oct_path.name == "oct.mhd" else None
    ref_kind = entry_kind(ref_path) if ref_path is not None else "missing"
    if ref_kind not in ("file", "missing"):
        raise DataError(ref_path, f"not a regular file ({ref_kind}); remove it to read {oct_path} as unlabelled")
    labelled = ref_kind == "file"
    paths = [oct_path, *data_files]
    if labelled:
        rsize, _, rfiles = mhd_info(ref_path)
        if rsize != size:
            raise DataError(ref_path, f"size {rsize} (W, H, S) differs from {oct_path.name}'s {size}")
        paths += [ref_path, *rfiles]
    spacing = Spacing(row=sp[1], col=sp[0], slice=sp[2] or None) if sp[0] > 0 and sp[1] > 0 else None
    if vendor is None and volume in meta:
        vendor = meta[volume].get("vendor") or vendor
    W, H, S = size

    def load() -> Iterator[BScan]:
        oct_vol = Volume(oct_path)
        img = to_uint8(oct_vol.array, source=oct_path)
        ref = None
        if labelled:
            ref_vol = Volume(ref_path)
            ref = ref_vol.array
            if ref.shape != img.shape:
                raise DataError(ref_path, f"array shape {ref.shape} differs from {oct_path.name}'s {img.shape}")
            ref = check_labels(ref, n_classes, ref_path)
        for k in range(img.shape[0]):
            yield BScan(
                id=f"{volume}_{k:03d}", volume=volume, slice_index=k,
                # copies: img/ref may be views into SimpleITK memory freed after this generator
                image=np.array(img[k]),
                mask=None if ref is None else np.array(ref[k]),
                vendor=vendor, spacing=spacing, source=f"{oct_path}#{k}",
            )

    return VolumeSource(volume=volume, n_slices=S, shape=(H, W), load=load, vendor=vendor,
                        spacing=spacing, labelled=labelled, paths=tuple(str(p) for p in paths))


def _scan_retouch(path: Path, classes) -> DatasetSource:
    msgs: list[str] = []
    if entry_kind(path) == "file":
        if path.suffix.lower() != ".mhd":
            raise DataError(path, "not an .mhd volume")
        oct_files, root = [path], path.parent
    else:
        skipped: list[str] = []
        oct_files, root = find_oct_files(path, skipped), path
        if skipped:
            _warn(msgs, skipped_note(path, skipped))
        if not oct_files:
            raise DataError(path, "no oct.mhd volumes found (expected RETOUCH-*Set-<Vendor>/<CASE>/oct.mhd)")
    meta = read_volumes_csv(root)
    classes = tuple(classes) if classes else RETOUCH_CLASSES
    vols, seen = [], {}
    for f in oct_files:
        vendor, spelled = _vendor_of(f)
        case = f.parent.name if f.name == "oct.mhd" else f.stem
        vid = f"{spelled}_{case}" if spelled else case
        if vid in seen:
            rel = f.parent.relative_to(root) if f.parent != root and root in f.parents else Path(case)
            vid = "_".join(rel.parts)
            if vid in seen:
                raise DataError(f, f"volume id {vid!r} also used by {seen[vid]}")
        seen[vid] = f
        vols.append(_retouch_volume(f, vid, vendor, meta, len(classes)))
    return DatasetSource(root=str(root), layout="retouch", classes=classes, volumes=vols, warnings=msgs)


# ---------------------------------------------------------------------------------------------
# Image/mask folders


def _list_images(folder: Path, msgs: list[str], what: str) -> list[Path]:
    """Image files in ``folder``: regular files only (symlinks followed); anything else (FIFO,
    socket, device, broken symlink, symlink loop, unreadable entry) is skipped with a warning."""
    kind = entry_kind(folder)
    if kind != "folder":
        raise DataError(folder, f"{what} folder {not_folder(kind)}")
    try:
        files, odd = regular_files(folder)
    except OSError as exc:
        raise DataError(folder, f"cannot list the {what} folder ({exc.strerror or exc})") from None
    images = [p for p in files if os.path.splitext(p.name)[1].lower() in IMAGE_EXTENSIONS]
    stray = [p.name for p in files if os.path.splitext(p.name)[1].lower() not in IMAGE_EXTENSIONS]
    if odd:
        _warn(msgs, skipped_note(folder, odd))
    if stray:
        _warn(msgs, f"{folder}: skipped {len(stray)} non-image file(s) among the {what}: "
                    f"{', '.join(stray[:10])}{' ...' if len(stray) > 10 else ''}")
    if not images:
        hint = ("; expected image files, images/ + masks/ folders or RETOUCH-*Set-<Vendor>/<CASE>/oct.mhd"
                if what == "images" else "")
        raise DataError(folder, f"no {what} found (looked for {', '.join(IMAGE_EXTENSIONS)}){hint}")
    return images


def _infer_classes(mask_paths: list[Path], msgs: list[str],
                   root: Optional[Path] = None) -> tuple[tuple[str, ...], MaskEncoding]:
    """Read every mask once and decide the dataset's label set and its one mask encoding
    (:func:`~octseg.io.images.survey_masks`): max label <= 1 (or only 0/255) -> FLUID_CLASSES,
    else RETOUCH_CLASSES."""
    union, kind, first = survey_masks(mask_paths, root)
    if union <= {0, 1}:
        classes = FLUID_CLASSES
    elif union <= {0, 255}:
        _warn(msgs, "masks contain only 0 and 255: read as binary fluid masks (255 -> fluid)")
        classes = FLUID_CLASSES
    else:
        classes = RETOUCH_CLASSES
    return classes, MaskEncoding(len(classes), kind, first, root)


def _resolve_folders(path: Optional[Path], images, masks) -> tuple[Path, Path, Optional[Path], bool]:
    """(root, image folder, mask folder or None, single_file)."""
    if images is not None:
        images = Path(images)
        root = path if path is not None and path.is_dir() else images.parent
        return root, images, Path(masks) if masks is not None else None, False
    if masks is not None:
        raise ConfigError("--masks needs --images")
    if entry_kind(path) == "file":
        return path.parent, path, None, True
    for im_name, mk_name in FOLDER_PAIRS:
        if (path / im_name).is_dir():
            mk = path / mk_name
            kind = entry_kind(mk)
            if kind not in ("folder", "missing"):  # not silently unlabelled
                raise DataError(mk, f"{not_folder(kind)}; expected the masks of {path / im_name}")
            return path, path / im_name, mk if kind == "folder" else None, False
    return path, path, None, False


def _pair(images: list[Path], masks: list[Path], pair_by_order: bool, image_dir: Path,
          mask_dir: Path, msgs: list[str]) -> dict[Path, Optional[Path]]:
    if pair_by_order:
        if len(images) != len(masks):
            raise DataError(mask_dir, f"--pair-by-order needs as many masks as images: "
                                      f"{len(masks)} masks, {len(images)} images in {image_dir}")
        return dict(zip(images, masks))
    by_stem: dict[str, Path] = {}
    for p in images:
        if p.stem in by_stem:
            raise DataError(p, f"two images share the stem {p.stem!r} (also {by_stem[p.stem].name})")
        by_stem[p.stem] = p
    pairs: dict[Path, Optional[Path]] = {p: None for p in images}
    orphans = []
    for m in masks:
        stem = m.stem
        if stem not in by_stem:
            stem = _MASK_SUFFIX.sub("", stem)
        img = by_stem.get(stem)
        if img is None:
            orphans.append(m)
            continue
        if pairs[img] is not None:
            raise DataError(m, f"second mask for image {img.name} (also {pairs[img].name})")
        pairs[img] = m
    if orphans:
        raise DataError(orphans[0], f"mask without an image in {image_dir} "
                                    f"({len(orphans)} such mask(s): {', '.join(o.name for o in orphans[:5])})")
    n_missing = sum(1 for v in pairs.values() if v is None)
    if n_missing:
        _warn(msgs, f"{n_missing} of {len(images)} images in {image_dir} have no mask in {mask_dir}: "
                    f"read as unlabelled B-scans")
    return pairs


def _scan_folders(path: Optional[Path], images, masks, pair_by_order: bool, volume_regex, classes) -> DatasetSource:
    msgs: list[str] = []
    root, image_dir, mask_dir, single = _resolve_folders(path, images, masks)
    by_class = None
    if single:
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(path, f"not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})")
        image_files = [path]
    elif mask_dir is None and (by_class := class_folder_images(image_dir)) is not None:
        image_files, names = by_class  # e.g. Kermany OCT2017: unlabelled, one volume per patient
        _warn(msgs, f"{image_dir}: read {len(image_files)} unlabelled B-scans from the class folders "
                    f"{', '.join(names)} (a folder name is a diagnosis, not a label map); volume = patient")
        volume_regex = volume_regex or CLASS_FOLDER_VOLUME_REGEX
    else:
        image_files = _list_images(image_dir, msgs, "images")
    mask_files = _list_images(mask_dir, msgs, "masks") if mask_dir is not None else []
    pairs = _pair(image_files, mask_files, pair_by_order, image_dir, mask_dir, msgs) if mask_dir is not None \
        else {p: None for p in image_files}

    if classes is None:
        classes = read_class_names(root)
    labelled_masks = [m for m in pairs.values() if m is not None]
    encoding = None
    if classes is None:
        classes, encoding = _infer_classes(labelled_masks, msgs, root) if labelled_masks \
            else (RETOUCH_CLASSES, None)
    classes = tuple(classes)
    n_classes = len(classes)
    if encoding is None:  # classes given: the first mask loaded that is not all 0 decides
        encoding = MaskEncoding(n_classes, root=root)

    # Image/mask sizes from headers (no pixel decoding), so mismatches fail before any writing.
    sizes: dict[Path, tuple[int, int]] = {}
    for img, m in pairs.items():
        sizes[img] = header_size(img)
        if m is not None:
            ms = header_size(m)
            if ms != sizes[img]:
                raise DataError(m, f"mask size {ms[1]}x{ms[0]} (WxH) differs from image {img} "
                                   f"size {sizes[img][1]}x{sizes[img][0]}")
    groups = _group_by_volume(list(pairs), volume_regex, msgs)
    meta = read_volumes_csv(root)
    vols = []
    for vol in sorted(groups):
        items = sorted(groups[vol], key=lambda t: (t[0], t[1].name))
        if by_class:  # a patient's B-scans have no positions: number them in order
            items = [(k, p) for k, (_, p) in enumerate(items)]
        for (a, pa), (b, pb) in zip(items, items[1:]):
            if a == b:
                raise DataError(pb, f"same volume {vol!r} and slice {a} as {pa.name}")
        vols.append(_folder_volume(vol, items, pairs, sizes, encoding, meta.get(vol, {})))
    return DatasetSource(root=str(root), layout="folders", classes=classes, volumes=vols, warnings=msgs)


def _group_by_volume(images: list[Path], volume_regex: Optional[str], msgs: list[str]
                     ) -> dict[str, list[tuple[int, Path]]]:
    """{volume: [(slice, image)]} from the file stems; a stem the pattern does not match is its own
    volume (slice 0), with one warning for all of them."""
    try:
        rx = re.compile(volume_regex or DEFAULT_VOLUME_REGEX)
    except re.error as exc:
        raise ConfigError(f"--volume-regex {volume_regex!r} is not a valid regular expression: {exc}") from None
    if volume_regex and not {"volume", "slice"} <= set(rx.groupindex):
        raise ConfigError(f"--volume-regex {volume_regex!r} needs named groups (?P<volume>...) and (?P<slice>...)")
    groups: dict[str, list[tuple[int, Path]]] = {}
    unmatched = 0
    for img in images:
        m = rx.match(img.stem)
        if m:
            try:
                vol, sl = m.group("volume"), int(m.group("slice"))
            except (ValueError, IndexError):
                m = None
        if not m:
            unmatched += 1
            vol, sl = img.stem, 0
        groups.setdefault(vol, []).append((sl, img))
    if unmatched:
        _warn(msgs, f"{unmatched} of {len(images)} image names do not match the volume pattern "
                    f"{rx.pattern!r}: each such image is its own volume, so a split by volume may put "
                    f"B-scans of one eye on both sides (use --volume-regex)")
    return groups


def _folder_volume(vol: str, items: list[tuple[int, Path]], pairs: dict, sizes: dict, encoding: MaskEncoding,
                   meta: dict) -> VolumeSource:
    shapes = {sizes[p] for _, p in items}
    vendor, spacing = meta.get("vendor"), meta.get("spacing")

    def load() -> Iterator[BScan]:
        for sl, p in items:
            img = read_image(p)
            m = pairs[p]
            mask = None
            if m is not None:
                mask = encoding.map(mask_array(m), m)
                if mask.shape != img.shape:
                    raise DataError(m, f"mask shape {mask.shape} differs from image {p} shape {img.shape}")
            yield BScan(id=p.stem, volume=vol, slice_index=sl, image=img, mask=mask,
                        vendor=vendor, spacing=spacing, source=str(p))

    paths: list[str] = []
    for _, p in items:
        paths.append(str(p))
        if pairs[p] is not None:
            paths.append(str(pairs[p]))
    return VolumeSource(volume=vol, n_slices=len(items), shape=next(iter(shapes)) if len(shapes) == 1 else None,
                        load=load, vendor=vendor, spacing=spacing,
                        labelled=any(pairs[p] is not None for _, p in items), paths=tuple(paths))


# ---------------------------------------------------------------------------------------------
# Clinic formats (vendor files)

#: Label volumes looked for beside a clinic file: ``<stem>_reference<suffix>``.
CLINIC_REFERENCE_SUFFIXES = (".nii.gz", ".nii", ".mhd")


def clinic_reference(scan: Path) -> Optional[Path]:
    """The label volume of a clinic file, ``<stem>_reference.nii.gz`` (or ``.nii``, ``.mhd``) beside it."""
    for suffix in CLINIC_REFERENCE_SUFFIXES:
        p = scan.with_name(f"{scan.stem}_reference{suffix}")
        kind = entry_kind(p)
        if kind == "file":
            return p
        if kind != "missing":
            raise DataError(p, f"not a regular file ({kind}); remove it to read {scan} as unlabelled")
    return None


def _clinic_volume(header, volume: str, n_classes: int, keep_identifiers: bool) -> VolumeSource:
    from octseg.io.vendor import read as read_clinic
    from octseg.io.volumes import volume_header

    path = header.path
    ref = clinic_reference(path)
    S, (H, W) = header.n_bscans, header.shape
    if ref is not None:
        size = tuple(int(x) for x in volume_header(ref).GetSize())
        if size != (W, H, S):
            raise DataError(ref, f"size {size} (W, H, S) differs from {path.name}'s {(W, H, S)}")
    source = header.source(keep_identifiers)

    def load() -> Iterator[BScan]:
        scan = read_clinic(path, series=header.series or None)[0]
        img, mask = scan.bscans, None
        if ref is not None:
            vol = Volume(ref)
            if vol.array.shape != img.shape:
                raise DataError(ref, f"array shape {vol.array.shape} differs from {path.name}'s {img.shape}")
            mask = check_labels(np.array(vol.array), n_classes, ref)
        for k in range(img.shape[0]):
            yield BScan(id=f"{volume}_{k:03d}", volume=volume, slice_index=k, image=np.array(img[k]),
                        mask=None if mask is None else mask[k], vendor=header.vendor, spacing=header.spacing,
                        source=f"{source}#{k}")

    paths = [str(path)] + ([str(ref)] if ref is not None else [])
    return VolumeSource(volume=volume, n_slices=S, shape=(H, W), load=load, vendor=header.vendor,
                        spacing=header.spacing, labelled=ref is not None, paths=tuple(paths))


def _scan_clinic(path: Path, classes, keep_identifiers: bool = False) -> DatasetSource:
    from octseg.io.vendor import clinic_format, find_clinic_files, probe

    msgs: list[str] = []
    if clinic_format(path):
        files, root = [path], path.parent
    else:
        try:
            files, odd = find_clinic_files(path)
        except OSError as exc:
            raise DataError(path, f"cannot list the folder ({exc.strerror or exc})") from None
        if odd:
            _warn(msgs, skipped_note(path, odd))
        if not files:
            raise DataError(path, "no clinic OCT files found (.vol, .e2e, HEYEX XML, .fda, .fds, .img, .dcm)")
        root = path
    classes = tuple(classes) if classes else RETOUCH_CLASSES
    vols, seen = [], set()
    for f in files:
        for h in probe(f):
            vid, i = h.volume_id(keep_identifiers), 2
            while vid in seen:
                vid = f"{h.volume_id(keep_identifiers)}_{i}"
                i += 1
            seen.add(vid)
            vols.append(_clinic_volume(h, vid, len(classes), keep_identifiers))
    return DatasetSource(root=str(root), layout="clinic", classes=classes, volumes=vols, warnings=msgs)


# ---------------------------------------------------------------------------------------------


def detect_layout(path: Path) -> str:
    """``retouch`` when ``path`` is an .mhd file or holds oct.mhd volumes, ``clinic`` when it is a
    vendor file (or HEYEX XML export) or a folder of them without images, else ``folders``."""
    from octseg.io.vendor import clinic_format, find_clinic_files

    kind = entry_kind(path)
    if kind != "folder":
        if kind == "file" and path.suffix.lower() == ".mhd":
            return "retouch"
        return "clinic" if kind == "file" and clinic_format(path) else "folders"
    if find_oct_files(path):
        return "retouch"
    if clinic_format(path):
        return "clinic"
    try:
        clinic = find_clinic_files(path)[0]
        if not clinic or any((path / im).is_dir() for im, _ in FOLDER_PAIRS):
            return "folders"
        # a folder of images stays one (a stray .dcm among them does not make it clinic)
        images = [f for f in regular_files(path)[0] if f.suffix.lower() in IMAGE_EXTENSIONS]
        return "folders" if images else "clinic"
    except OSError:
        return "folders"


def scan_source(path, layout: str = "auto", images=None, masks=None, pair_by_order: bool = False,
                volume_regex: Optional[str] = None, classes: Optional[Sequence[str]] = None,
                keep_identifiers: bool = False) -> DatasetSource:
    """Find the volumes under ``path`` (see the module docstring for the layouts).

    Reads only headers, except that with ``classes=None`` in the folders layout every mask is
    read once to infer the label set (max label <= 1 -> two classes, else RETOUCH's four).
    Warnings (skipped files, unlabelled images, unparsable names) are emitted with
    ``warnings.warn`` and also kept in ``DatasetSource.warnings``.

    Only regular files are read (symlinks followed): listed entries that are anything else
    (FIFO, socket, device, broken symlink, symlink loop) are skipped with a warning, and such a
    ``path`` itself is a DataError; nothing is opened before it is checked, so nothing blocks.
    One dataset's masks use one encoding (labels 0..K-1 or values spread over 0..255); image
    files with several frames, NaN/inf pixels or more pixels than ``OCTSEG_MAX_IMAGE_PIXELS``
    (PIL's decompression-bomb limit by default) are DataErrors naming the file.

    Clinic files: patient identifiers in their headers are removed from volume ids and sources
    unless ``keep_identifiers``.
    """
    if layout not in ("auto", "retouch", "folders", "clinic"):
        raise ConfigError(f"layout must be auto, retouch, folders or clinic, not {layout!r}")
    if classes is not None and len(tuple(classes)) < 2:
        raise ConfigError(f"classes needs at least two names, got {classes!r}")
    p = Path(path) if path is not None else None
    if p is not None:
        kind = entry_kind(p)
        if kind == "missing":
            raise DataError(p, "no such file or folder")
        if kind not in ("file", "folder"):
            raise DataError(p, f"not a regular file or folder ({kind})")
    if p is None and images is None:
        raise ConfigError("give a data folder or --images")
    if p is not None and p.is_dir() and is_prepared(p):
        raise DataError(p, "is already a prepared dataset; use it directly instead of preparing it again")
    if images is not None or masks is not None:
        if layout == "retouch":
            raise ConfigError("--images/--masks apply to the folders layout, not retouch")
        layout = "folders"
    if layout == "auto":
        layout = detect_layout(p)
    if layout == "retouch":
        return _scan_retouch(p, classes)
    if layout == "clinic":
        return _scan_clinic(p, classes, keep_identifiers)
    return _scan_folders(p, images, masks, pair_by_order, volume_regex, classes)
