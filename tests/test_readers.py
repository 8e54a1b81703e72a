"""Readers: every layout, every RETOUCH vendor geometry, and bad inputs named in the error."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from fakes import RETOUCH_GEOMETRY, save_image, write_mhd, write_png_folder, write_retouch_case
from PIL import Image

from octseg.data.readers import read_image, scan_source, to_uint8
from octseg.constants import FLUID_CLASSES, RETOUCH_CLASSES
from octseg.errors import DataError


def _all(src):
    return [b for v in src.volumes for b in v.load()]


# --- RETOUCH layout ------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", ["Cirrus", "Spectralis", "Topcon"])
def test_retouch_vendor_geometry(tmp_path, vendor):
    (W, H, S), spacing, etype = RETOUCH_GEOMETRY[vendor]
    write_retouch_case(tmp_path, vendor, "TRAIN001", slices=2)
    write_retouch_case(tmp_path, vendor, "TRAIN002", slices=2, labelled=False, seed=1)
    src = scan_source(tmp_path)
    assert src.layout == "retouch" and src.classes == RETOUCH_CLASSES
    assert [v.volume for v in src.volumes] == [f"{vendor}_TRAIN001", f"{vendor}_TRAIN002"]
    v = src.volumes[0]
    assert v.n_slices == 2 and v.shape == (H, W) and v.vendor == vendor.lower() and v.labelled
    assert v.spacing.row == pytest.approx(spacing[1]) and v.spacing.col == pytest.approx(spacing[0])
    assert v.spacing.slice == pytest.approx(spacing[2])
    assert not src.volumes[1].labelled
    scans = list(v.load())
    assert [b.id for b in scans] == [f"{vendor}_TRAIN001_000", f"{vendor}_TRAIN001_001"]
    assert all(b.image.dtype == np.uint8 and b.image.shape == (H, W) for b in scans)
    assert set(np.unique(scans[1].mask)) == {0, 2}
    assert all(b.mask is None for b in src.volumes[1].load())


def test_retouch_uint8_values_kept_and_slice_axis(tmp_path):
    arr = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    write_mhd(tmp_path / "RETOUCH-TrainingSet-Cirrus" / "TRAIN007" / "oct.mhd", arr, (0.1, 0.2, 0.3))
    src = scan_source(tmp_path)
    scans = _all(src)
    assert src.volumes[0].shape == (4, 5)
    for k, b in enumerate(scans):
        np.testing.assert_array_equal(b.image, arr[k])
        assert b.slice_index == k
    assert src.volumes[0].spacing.row == pytest.approx(0.2)


def test_retouch_full_spectralis_geometry(tmp_path):
    folder = write_retouch_case(tmp_path, "Spectralis", "TRAIN001", slices=None)
    src = scan_source(folder)  # one TRAINxxx folder directly
    (v,) = src.volumes
    assert (v.n_slices, *v.shape) == (49, 496, 512)
    scans = list(v.load())
    assert len(scans) == 49 and scans[0].image.dtype == np.uint8
    assert scans[0].image.max() == 255 and scans[0].image.std() > 10  # 16-bit scaled, not flattened


def test_retouch_test_set_and_single_file_and_nested(tmp_path):
    write_retouch_case(tmp_path / "wrap" / "data", "Topcon", "TEST003", slices=1, labelled=False, test_set=True)
    src = scan_source(tmp_path)
    assert [v.volume for v in src.volumes] == ["Topcon_TEST003"]
    f = tmp_path / "wrap" / "data" / "RETOUCH-TestSet-Topcon" / "TEST003" / "oct.mhd"
    src2 = scan_source(f, layout="retouch")
    assert src2.volumes[0].volume == "Topcon_TEST003" and src2.volumes[0].vendor == "topcon"


def test_retouch_missing_raw(tmp_path):
    folder = write_retouch_case(tmp_path, "Cirrus", slices=1)
    (folder / "oct.raw").unlink()
    with pytest.raises(DataError, match="oct.mhd") as e:
        scan_source(tmp_path)
    assert "oct.raw" in str(e.value) and "missing" in str(e.value)


def test_retouch_short_raw(tmp_path):
    folder = write_retouch_case(tmp_path, "Topcon", slices=2)
    raw = folder / "reference.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(DataError, match="reference.mhd.*too short"):
        scan_source(tmp_path)


def test_retouch_size_mismatch(tmp_path):
    folder = write_retouch_case(tmp_path, "Cirrus", slices=2, height=8)
    write_mhd(folder / "reference.mhd", np.zeros((3, 8, 512), np.uint8))
    with pytest.raises(DataError, match="reference.mhd.*differs"):
        scan_source(tmp_path)


def test_retouch_bad_label_values(tmp_path):
    folder = write_retouch_case(tmp_path, "Cirrus", slices=1, height=8)
    ref = np.zeros((1, 8, 512), np.uint8)
    ref[0, 0, 0] = 7
    write_mhd(folder / "reference.mhd", ref)
    (v,) = scan_source(tmp_path).volumes
    with pytest.raises(DataError, match=r"reference.mhd.*\[0, 7\]"):
        list(v.load())


def test_to_uint8_16bit_clips_outliers():
    a = np.full((1, 100, 100), 1000, np.uint16)
    a[0, :50] = 3000
    a[0, 0, 0] = 65535  # one specular outlier must not darken everything
    out = to_uint8(a)
    assert out.dtype == np.uint8 and out[0, 60, 0] > 60 and out[0, 10, 10] == 255


# --- image/mask folders --------------------------------------------------------------------


def test_folders_images_masks_by_stem(tmp_path):
    names = ["TRAIN001_002", "TRAIN001_010", "TRAIN001_001", "TRAIN002_000"]
    write_png_folder(tmp_path, names, labelled=set(names[:3]), encoding="index")
    with pytest.warns(UserWarning, match="1 of 4 images"):
        src = scan_source(tmp_path)
    assert src.layout == "folders" and src.classes == RETOUCH_CLASSES
    assert [v.volume for v in src.volumes] == ["TRAIN001", "TRAIN002"]
    scans = list(src.volumes[0].load())
    assert [b.slice_index for b in scans] == [1, 2, 10]  # numeric order
    assert [b.id for b in scans] == ["TRAIN001_001", "TRAIN001_002", "TRAIN001_010"]
    assert src.volumes[0].shape == (12, 16)
    # masks paired by stem, not order: TRAIN001_010 was written 2nd -> label 2
    assert scans[2].mask.max() == 3 and 2 in scans[2].mask
    assert not src.volumes[1].labelled and list(src.volumes[1].load())[0].mask is None
    assert any("no mask" in w for w in src.warnings)


def test_folders_binary_masks_infer_fluid_classes(tmp_path):
    write_png_folder(tmp_path, ["S01_00", "S01_01"], n_classes=2)
    src = scan_source(tmp_path)
    assert src.classes == FLUID_CLASSES
    assert set(np.unique(_all(src)[0].mask)) == {0, 1}


def test_folders_scaled_mask_mapping(tmp_path):
    write_png_folder(tmp_path, ["a_0", "a_1", "a_2"], encoding="scaled")
    src = scan_source(tmp_path)
    assert src.classes == RETOUCH_CLASSES
    masks = [b.mask for b in _all(src)]
    assert {int(v) for m in masks for v in np.unique(m)} == {0, 1, 2, 3}
    raw = np.asarray(Image.open(tmp_path / "masks" / "a_1.png"))
    np.testing.assert_array_equal(masks[1], raw // 85)


def test_kaggle_folder_names(tmp_path):
    write_png_folder(tmp_path, ["TRAIN001_000", "TRAIN001_001"], image_dir="train_edge_maps/train",
                     mask_dir="train_masks/train", encoding="scaled")
    src = scan_source(tmp_path)
    assert src.volumes[0].volume == "TRAIN001" and src.volumes[0].labelled and src.classes == RETOUCH_CLASSES


def test_explicit_images_masks(tmp_path):
    write_png_folder(tmp_path, ["x_1", "x_2"], image_dir="imgs", mask_dir="labs")
    src = scan_source(None, images=tmp_path / "imgs", masks=tmp_path / "labs")
    assert [b.id for b in _all(src)] == ["x_1", "x_2"] and all(b.mask is not None for b in _all(src))


def test_pair_by_order(tmp_path):
    write_png_folder(tmp_path, ["v_1", "v_2"], image_dir="images", mask_dir="m0")
    (tmp_path / "masks").mkdir()
    for i, p in enumerate(sorted((tmp_path / "m0").iterdir())):
        p.rename(tmp_path / "masks" / f"label{i}.png")
    with pytest.raises(DataError, match="label0.png.*without an image"):
        scan_source(tmp_path)
    src = scan_source(tmp_path, pair_by_order=True)
    assert all(b.mask is not None for b in _all(src))
    (tmp_path / "masks" / "label1.png").unlink()
    with pytest.raises(DataError, match="masks.*1 masks, 2 images"):
        scan_source(tmp_path, pair_by_order=True)


def test_images_only_folder_and_unmatched_names(tmp_path):
    for name in ["scanA", "scanB"]:
        save_image(tmp_path / f"{name}.png", np.zeros((5, 6), np.uint8))
    with pytest.warns(UserWarning, match="leak|both sides"):
        src = scan_source(tmp_path)
    assert [v.volume for v in src.volumes] == ["scanA", "scanB"]
    assert all(not v.labelled for v in src.volumes)
    assert any("both sides" in w for w in src.warnings)


def test_rgb_and_16bit_images(tmp_path):
    g = np.arange(12 * 16).reshape(12, 16) % 256
    rgb = save_image(tmp_path / "rgb.png", g, "RGB")
    sixteen = save_image(tmp_path / "deep.png", g * 257, "I;16")
    Image.fromarray(np.stack([g] * 4, -1).astype(np.uint8), "RGBA").save(tmp_path / "rgba.png")
    a = read_image(rgb)
    assert a.dtype == np.uint8 and a.shape == (12, 16)
    expect = np.asarray(Image.open(rgb).convert("L"))
    np.testing.assert_array_equal(a, expect)
    b = read_image(sixteen)
    assert b.dtype == np.uint8 and abs(int(b.max()) - 255) <= 1 and np.corrcoef(b.ravel(), g.ravel())[0, 1] > 0.99
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), g.astype(np.uint8))


def test_custom_volume_regex(tmp_path):
    for name in ["eye7-s3", "eye7-s1"]:
        save_image(tmp_path / f"{name}.png", np.zeros((4, 4), np.uint8))
    src = scan_source(tmp_path, volume_regex=r"^(?P<volume>eye\d+)-s(?P<slice>\d+)$")
    assert [(b.volume, b.slice_index) for b in _all(src)] == [("eye7", 1), ("eye7", 3)]


def test_volumes_csv_gives_vendor_and_spacing(tmp_path):
    write_png_folder(tmp_path, ["V1_0", "V1_1"])
    (tmp_path / "volumes.csv").write_text(
        "volume,vendor,spacing_row,spacing_col,spacing_slice\nV1,Topcon,0.0026,0.0117,0.047\n")
    (v,) = scan_source(tmp_path).volumes
    assert v.vendor == "topcon" and v.spacing.row == pytest.approx(0.0026)
    assert list(v.load())[0].spacing.slice == pytest.approx(0.047)


# --- bad inputs: DataError naming the file (or warn + skip) --------------------------------


def test_truncated_png(tmp_path):
    write_png_folder(tmp_path, ["a_0", "a_1"], size=(64, 64))
    p = tmp_path / "images" / "a_1.png"
    p.write_bytes(p.read_bytes()[:200])
    src = scan_source(tmp_path)  # header is intact: found, size known
    with pytest.raises(DataError, match="a_1.png"):
        _all(src)
    p.write_bytes(b"\x89PNG\r\n")  # not even a header
    with pytest.raises(DataError, match="a_1.png"):
        scan_source(tmp_path)


def test_image_mask_size_mismatch(tmp_path):
    write_png_folder(tmp_path, ["a_0"], size=(8, 8))
    save_image(tmp_path / "masks" / "a_0.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(DataError, match=r"masks/a_0.png.*images/a_0.png"):
        scan_source(tmp_path)


def test_mask_value_7(tmp_path):
    write_png_folder(tmp_path, ["a_0", "a_1"])
    m = np.zeros((12, 16), np.uint8)
    m[3, 3] = 7
    save_image(tmp_path / "masks" / "a_1.png", m)
    with pytest.raises(DataError, match=r"a_1.png.*\[0, 7\]"):
        scan_source(tmp_path)
    with pytest.raises(DataError, match=r"a_1.png.*\[0, 7\]"):  # explicit classes: found at load
        _all(scan_source(tmp_path, classes=RETOUCH_CLASSES))


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        scan_source(tmp_path / "empty")


def test_stray_files_skipped_with_warning(tmp_path):
    write_png_folder(tmp_path, ["a_0"])
    for stray in ("notes.txt", ".DS_Store", "Thumbs.db"):
        (tmp_path / "images" / stray).write_text("x")
    with pytest.warns(UserWarning) as rec:
        src = scan_source(tmp_path)
    msg = " ".join(str(w.message) for w in rec)
    assert "notes.txt" in msg and ".DS_Store" in msg and "Thumbs.db" in msg
    assert src.n_slices == 1


@pytest.mark.filterwarnings("ignore:.*no mask")
def test_undecodable_image_extension_is_error(tmp_path):
    write_png_folder(tmp_path, ["a_0"])
    (tmp_path / "images" / "a_1.png").write_text("not a png")
    with pytest.raises(DataError, match="a_1.png"):
        scan_source(tmp_path)


def test_no_warnings_for_clean_real_layout(tmp_path):
    write_png_folder(tmp_path, ["S01_00", "S01_01"], n_classes=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scan_source(tmp_path)


# --- real data ----------------------------------------------------------------------------


def test_real_duke_headers_only(shared_data):
    src = scan_source(shared_data / "duke-dme-train", classes=FLUID_CLASSES)
    assert [v.volume for v in src.volumes] == ["S01", "S02", "S03", "S04", "S05"]
    assert all(v.n_slices == 11 and v.shape == (496, 768) and v.labelled for v in src.volumes)
    u = scan_source(shared_data / "duke-subject01-unlabeled")
    (v,) = u.volumes
    assert v.volume == "Subject_01" and v.n_slices == 61 and not v.labelled
