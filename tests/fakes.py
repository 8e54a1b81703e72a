"""Tiny writers of raw test data in the exact on-disk formats users have (RETOUCH .mhd/.raw,
image/mask PNG folders). Deliberately independent of octseg's own synthetic generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: RETOUCH geometry per vendor: DimSize (W=A-scans, H=depth, S=B-scans), ElementSpacing (mm,
#: col, row, slice) and ElementType of oct.mhd, as in the challenge files.
RETOUCH_GEOMETRY = {
    "Cirrus": ((512, 1024, 128), (0.01171875, 0.001953125, 0.0472441), "MET_UCHAR"),
    "Spectralis": ((512, 496, 49), (0.01133, 0.003872, 0.1195), "MET_USHORT"),
    "Topcon": ((512, 885, 128), (0.01171875, 0.0026, 0.0472441), "MET_UCHAR"),
}
_NP = {"MET_UCHAR": np.uint8, "MET_USHORT": np.uint16, "MET_FLOAT": np.float32}


def write_mhd(path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), element_type: str = "MET_UCHAR",
              raw_name: str | None = None) -> Path:
    """Write ``array`` (S, H, W) as a MetaImage header + raw file, little-endian, RETOUCH style."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    S, H, W = array.shape
    raw_name = raw_name or path.with_suffix(".raw").name
    header = "\n".join([
        "ObjectType = Image",
        "NDims = 3",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        "CompressedData = False",
        "TransformMatrix = 1 0 0 0 1 0 0 0 1",
        "Offset = 0 0 0",
        "CenterOfRotation = 0 0 0",
        "AnatomicalOrientation = RAI",
        f"ElementSpacing = {spacing[0]} {spacing[1]} {spacing[2]}",
        f"DimSize = {W} {H} {S}",
        f"ElementType = {element_type}",
        f"ElementDataFile = {raw_name}",
    ]) + "\n"
    path.write_text(header)
    np.ascontiguousarray(array.astype(np.dtype(_NP[element_type]).newbyteorder("<"))).tofile(path.parent / raw_name)
    return path


def fake_volume(shape, dtype=np.uint8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(oct, reference) arrays (S, H, W): a bright band with a labelled blob per B-scan."""
    S, H, W = shape
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 40000
    oct_ = rng.integers(0, top // 4, size=shape).astype(dtype)
    oct_[:, H // 3: H // 2] += np.asarray(top // 2, dtype=dtype)
    ref = np.zeros(shape, np.uint8)
    for k in range(S):
        lab = 1 + k % 3
        ref[k, H // 3: H // 3 + max(1, H // 10), W // 4: W // 4 + max(1, W // 8)] = lab
    return oct_, ref


def write_retouch_case(root, vendor: str = "Cirrus", case: str = "TRAIN001", slices: int | None = 3,
                       height: int | None = None, labelled: bool = True, seed: int = 0,
                       test_set: bool = False) -> Path:
    """``root/RETOUCH-TrainingSet-<Vendor>/<case>/oct.mhd`` (+ reference.mhd) with the vendor's
    real header geometry; ``slices``/``height`` may shrink the volume to keep tests fast."""
    (W, H, S), spacing, etype = RETOUCH_GEOMETRY[vendor]
    S = slices or S
    H = height or H
    folder = Path(root) / f"RETOUCH-{'Test' if test_set else 'Training'}Set-{vendor}" / case
    oct_, ref = fake_volume((S, H, W), _NP[etype], seed)
    write_mhd(folder / "oct.mhd", oct_, spacing, etype)
    if labelled:
        write_mhd(folder / "reference.mhd", ref, spacing, "MET_UCHAR")
    return folder


def save_image(path, array: np.ndarray, mode: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        img = Image.fromarray(np.stack([array, array // 2, 255 - array], -1).astype(np.uint8), "RGB")
    elif mode == "I;16":
        img = Image.fromarray(array.astype(np.uint16))
    else:
        img = Image.fromarray(array.astype(np.uint8))
    img.save(path)
    return path


def write_png_folder(root, names, size=(12, 16), labelled=True, image_dir="images", mask_dir="masks",
                     encoding: str = "index", n_classes: int = 4, image_mode: str | None = None,
                     seed: int = 0) -> Path:
    """PNG B-scans ``root/<image_dir>/<name>.png`` and masks ``root/<mask_dir>/<name>.png``.

    ``labelled`` is True, False or a set of names that get masks. ``encoding``: "index"
    (labels 0..K-1) or "scaled" (0/85/170/255). ``image_mode``: None (L), "RGB" or "I;16".
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    H, W = size
    for k, name in enumerate(names):
        img = rng.integers(0, 256, size=(H, W), dtype=np.int64)
        if image_mode == "I;16":
            img = img * 257
        save_image(root / image_dir / f"{name}.png", img, image_mode)
        if labelled is True or (labelled and name in labelled):
            m = np.zeros((H, W), np.uint8)
            m[H // 4: H // 2, W // 4: W // 2] = 1 + k % (n_classes - 1)
            m[0, 0] = n_classes - 1
            if encoding == "scaled":
                m = m * (255 // (n_classes - 1))
            save_image(root / mask_dir / f"{name}.png", m)
    return root
