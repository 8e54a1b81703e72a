"""The synthetic OCT generator: geometry, determinism, labels, realism checks, file layouts."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

from octseg.data.synthetic import (
    GEOMETRY,
    generate_bscans,
    generate_volume,
    write_synthetic_dataset,
)
from octseg.constants import VENDORS
from octseg.errors import ConfigError

SCALE = 0.2


def rng(*key):
    return np.random.default_rng(list(key))


def files_bytes(root: Path) -> dict:
    """The dataset's files (not octseg's output record, which holds times and process ids)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".octseg" not in p.relative_to(root).parts}


@pytest.fixture(scope="module")
def fluid_volumes():
    """A dozen small fluid volumes, shared by the label/realism tests."""
    return [generate_volume(VENDORS[i % 3], rng(7, i), slices=5, scale=SCALE) for i in range(12)]


def test_same_seed_same_volume_different_seed_different():
    a = generate_volume("spectralis", rng(1, 0), slices=3, scale=SCALE)
    b = generate_volume("spectralis", rng(1, 0), slices=3, scale=SCALE)
    c = generate_volume("spectralis", rng(2, 0), slices=3, scale=SCALE)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("vendor", VENDORS)
def test_geometry_spacing_and_dtypes(vendor):
    g = GEOMETRY[vendor]
    v = generate_volume(vendor.upper(), rng(3), slices=4, scale=SCALE)
    H, W = round(g.rows * SCALE), round(g.cols * SCALE)
    assert v.vendor == vendor
    assert v.image.shape == v.labels.shape == (4, H, W)
    assert v.image.dtype == np.uint8 and v.labels.dtype == np.uint8
    # same physical field of view at any scale; the slice spacing is the vendor's
    assert v.spacing.row * H == pytest.approx(g.spacing.row * g.rows)
    assert v.spacing.col * W == pytest.approx(g.spacing.col * g.cols)
    assert v.spacing.slice == pytest.approx(g.spacing.slice)
    assert set(np.unique(v.labels)) <= {0, 1, 2, 3}
    assert v.image.std() > 10 and v.image.max() > 150  # an image, not a constant


def test_default_slice_count_and_full_size_rows():
    v = generate_volume("spectralis", rng(4), scale=0.1)
    assert v.image.shape[0] == GEOMETRY["spectralis"].slices
    full = generate_volume("topcon", rng(4), slices=1)
    assert full.image.shape == (1, 885, 512)


@pytest.mark.parametrize("vendor", VENDORS)
def test_fluid_free_volume_has_no_labels(vendor):
    v = generate_volume(vendor, rng(5), slices=4, scale=SCALE, with_fluid=False)
    assert not v.labels.any() and not v.has_fluid


def test_every_fluid_class_appears_across_volumes(fluid_volumes):
    present = np.array([[(v.labels == c).any() for c in (1, 2, 3)] for v in fluid_volumes])
    assert present.any(axis=1).all(), "a fluid volume without fluid"
    counts = present.sum(axis=0)
    assert counts[0] >= 5 and counts[1] >= 2 and counts[2] >= 2, counts


@pytest.mark.parametrize("cls", [1, 2])
def test_fluid_is_darker_than_the_tissue_around_it(fluid_volumes, cls):
    inside, ring = [], []
    for v in fluid_volumes:
        for img, lab in zip(v.image, v.labels):
            m = lab == cls
            if m.sum() < 20:
                continue
            around = ndimage.binary_dilation(m, iterations=2) & (lab == 0)
            inside.append(img[m].mean())
            ring.append(img[around].mean())
    assert len(inside) >= 3
    assert np.mean(inside) < np.mean(ring) - 20, (np.mean(inside), np.mean(ring))


def test_labels_consistent_between_neighbouring_bscans():
    ious = []
    for i in range(4):
        v = generate_volume("cirrus", rng(8, i), slices=12, scale=SCALE)
        for a, b in zip(v.labels[:-1], v.labels[1:]):
            for c in (1, 2, 3):
                ma, mb = a == c, b == c
                if ma.sum() > 150 and mb.sum() > 150:  # large blobs only
                    ious.append((ma & mb).sum() / (ma | mb).sum())
    assert len(ious) >= 5
    assert np.mean(ious) > 0.6 and min(ious) < 1.0, ious  # consistent, yet not copies


def test_generate_bscans_size_and_determinism():
    x, y = generate_bscans(6, (64, 96), seed=3)
    assert x.shape == y.shape == (6, 64, 96) and x.dtype == y.dtype == np.uint8
    assert set(np.unique(y)) <= {0, 1, 2, 3} and (y > 0).any()
    x2, y2 = generate_bscans(6, (64, 96), seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_bad_vendor_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cirrus, spectralis, topcon"):
        generate_volume("heidelberg", rng(0))
    with pytest.raises(ConfigError, match="valid vendors"):
        write_synthetic_dataset(tmp_path, volumes=1, vendors=["cirrus", "oct2000"], fmt="png",
                                slices=1, scale=SCALE, seed=0, progress=False)


def _write(out, fmt, seed=0, volumes=3, **kw):
    kw = {"vendors": list(VENDORS), "slices": 3, "scale": SCALE, "progress": False, **kw}
    return write_synthetic_dataset(out, volumes=volumes, fmt=fmt, seed=seed, **kw)


def test_mhd_layout_is_retouch(tmp_path):
    s = _write(tmp_path, "mhd", volumes=4)
    assert s["volumes"] == 4 and s["bscans"] == 12 and "4 synthetic volumes" in s["text"]
    expect = {"Cirrus": ["TRAIN001", "TRAIN004"], "Spectralis": ["TRAIN002"], "Topcon": ["TRAIN003"]}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".octseg") == [f"RETOUCH-TrainingSet-{k}" for k in expect]
    for folder, names in expect.items():
        g = GEOMETRY[folder.lower()]
        vdir = tmp_path / f"RETOUCH-TrainingSet-{folder}"
        assert sorted(p.name for p in vdir.iterdir()) == names
        for name in names:
            d = vdir / name
            assert sorted(p.name for p in d.iterdir()) == ["oct.mhd", "oct.raw", "reference.mhd", "reference.raw"]
            H, W = round(g.rows * SCALE), round(g.cols * SCALE)
            header = (d / "oct.mhd").read_text()
            assert re.search(rf"DimSize = {W} {H} 3\b", header)
            assert "ElementDataFile = oct.raw" in header
            oct_ = sitk.ReadImage(str(d / "oct.mhd"))
            ref = sitk.ReadImage(str(d / "reference.mhd"))
            assert oct_.GetSize() == ref.GetSize() == (W, H, 3)
            sp = (g.spacing.col * g.cols / W, g.spacing.row * g.rows / H, g.spacing.slice)
            assert oct_.GetSpacing() == pytest.approx(sp, rel=1e-5)
            want = sitk.sitkUInt16 if folder == "Spectralis" else sitk.sitkUInt8
            assert oct_.GetPixelID() == want and ref.GetPixelID() == sitk.sitkUInt8
            a, lab = sitk.GetArrayFromImage(oct_), sitk.GetArrayFromImage(ref)
            assert (d / "oct.raw").stat().st_size == a.size * a.itemsize
            assert set(np.unique(lab)) <= {0, 1, 2, 3}
            if folder == "Spectralis":
                assert a.max() > 255 and not (a % 257).any()  # 8-bit render scaled to 16 bits


def test_png_layout_and_volume_table(tmp_path):
    _write(tmp_path, "png")
    imgs = sorted(p.name for p in (tmp_path / "images").iterdir())
    masks = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert imgs == masks == [f"TRAIN{v:03d}_{s:03d}.png" for v in (1, 2, 3) for s in range(3)]
    m = Image.open(tmp_path / "masks" / "TRAIN002_001.png")
    i = Image.open(tmp_path / "images" / "TRAIN002_001.png")
    assert m.mode == i.mode == "L" and i.size == (round(512 * SCALE), round(496 * SCALE))
    assert set(np.unique(np.asarray(m))) <= {0, 1, 2, 3}
    rows = list(csv.DictReader(open(tmp_path / "volumes.csv")))
    assert [r["volume"] for r in rows] == ["TRAIN001", "TRAIN002", "TRAIN003"]
    assert [r["vendor"] for r in rows] == list(VENDORS)
    assert float(rows[1]["spacing_slice"]) == pytest.approx(0.1195)
    assert set(rows[0]) == {"volume", "vendor", "spacing_row", "spacing_col", "spacing_slice", "has_fluid"}


@pytest.mark.parametrize("fmt", ["mhd", "png"])
def test_files_identical_for_same_seed(tmp_path, fmt):
    _write(tmp_path / "a", fmt, seed=5)
    _write(tmp_path / "b", fmt, seed=5)
    _write(tmp_path / "c", fmt, seed=6)
    a, b, c = (files_bytes(tmp_path / k) for k in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_volumes_do_not_depend_on_the_count(tmp_path):
    _write(tmp_path / "two", "png", volumes=2, seed=9)
    _write(tmp_path / "five", "png", volumes=5, seed=9)
    two, five = files_bytes(tmp_path / "two"), files_bytes(tmp_path / "five")
    shared = [k for k in two if k.startswith(("images/", "masks/"))]
    assert shared and all(two[k] == five[k] for k in shared)


def test_fluid_free_fraction(tmp_path):
    s = _write(tmp_path / "a", "png", volumes=10, slices=1, fluid_free_fraction=0.3)
    assert 2 <= s["fluid_free_volumes"] <= 4
    s = _write(tmp_path / "b", "png", volumes=10, slices=1, fluid_free_fraction=1.0)
    assert s["fluid_free_volumes"] == 10
    assert not any(np.asarray(Image.open(p)).any() for p in (tmp_path / "b" / "masks").iterdir())


def test_preview_written_with_real_reference(tmp_path):
    ref = tmp_path / "real.png"
    Image.fromarray((np.arange(64 * 96) % 256).reshape(64, 96).astype(np.uint8)).save(ref)
    out = tmp_path / "fig" / "preview.png"
    s = _write(tmp_path / "data", "png", preview=out, real_reference=ref, fluid_free_fraction=1.0)
    assert s["preview"] == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = Image.open(out).size
    assert w > h > 100
