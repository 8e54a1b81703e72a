"""Readers: every layout, every RETOUCH vendor geometry, which files form which volume, and bad
layouts named in the error. (Reading each file format is tested in tests/io/.)"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from _odd_inputs import all_bscans, finishes
from fakes import RETOUCH_GEOMETRY, save_image, write_mhd, write_png_folder, write_retouch_case

from octseg.constants import FLUID_CLASSES, RETOUCH_CLASSES
from octseg.data.prepare import prepare_dataset
from octseg.data.readers import scan_source
from octseg.errors import DataError


# --- RETOUCH layout ---------------------------------------------------------------------------------


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
    scans = all_bscans(src)
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


def test_retouch_size_mismatch(tmp_path):
    folder = write_retouch_case(tmp_path, "Cirrus", slices=2, height=8)
    write_mhd(folder / "reference.mhd", np.zeros((3, 8, 512), np.uint8))
    with pytest.raises(DataError, match="reference.mhd.*differs"):
        scan_source(tmp_path)


def test_retouch_tree_with_fifo_loops_and_linked_case(tmp_path):
    root = tmp_path / "src"
    vendor = write_retouch_case(root, "Cirrus", "TRAIN001", slices=2, height=16).parent
    elsewhere = write_retouch_case(tmp_path / "other", "Cirrus", "TRAIN002", slices=2, height=16, seed=1)
    os.symlink(elsewhere, vendor / "TRAIN002")  # a valid symlinked case folder is read
    os.symlink(".", root / "again")  # loops: must neither hang nor duplicate volumes
    os.symlink("..", vendor / "TRAIN001" / "up")
    os.symlink(root, vendor / "root")
    (vendor / "TRAIN003").mkdir()
    os.mkfifo(vendor / "TRAIN003" / "oct.mhd")
    (vendor / "TRAIN004").mkdir()
    os.symlink("oct.mhd", vendor / "TRAIN004" / "oct.mhd")
    src = finishes(lambda: scan_source(root), vendor / "TRAIN003" / "oct.mhd")
    assert [v.volume for v in src.volumes] == ["Cirrus_TRAIN001", "Cirrus_TRAIN002"]
    (msg,) = src.warnings
    assert "skipped 2 entries" in msg and "TRAIN003/oct.mhd (FIFO)" in msg and "TRAIN004/oct.mhd (symlink loop)" in msg
    ds = finishes(lambda: prepare_dataset(root, tmp_path / "out", progress=False), vendor / "TRAIN003" / "oct.mhd")
    assert len(ds) == 4


# --- image/mask folders -----------------------------------------------------------------------------


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
    assert set(np.unique(all_bscans(src)[0].mask)) == {0, 1}


def test_kaggle_folder_names(tmp_path):
    write_png_folder(tmp_path, ["TRAIN001_000", "TRAIN001_001"], image_dir="train_edge_maps/train",
                     mask_dir="train_masks/train", encoding="scaled")
    src = scan_source(tmp_path)
    assert src.volumes[0].volume == "TRAIN001" and src.volumes[0].labelled and src.classes == RETOUCH_CLASSES


def test_explicit_images_masks(tmp_path):
    write_png_folder(tmp_path, ["x_1", "x_2"], image_dir="imgs", mask_dir="labs")
    src = scan_source(None, images=tmp_path / "imgs", masks=tmp_path / "labs")
    assert [b.id for b in all_bscans(src)] == ["x_1", "x_2"] and all(b.mask is not None for b in all_bscans(src))


def test_pair_by_order(tmp_path):
    write_png_folder(tmp_path, ["v_1", "v_2"], image_dir="images", mask_dir="m0")
    (tmp_path / "masks").mkdir()
    for i, p in enumerate(sorted((tmp_path / "m0").iterdir())):
        p.rename(tmp_path / "masks" / f"label{i}.png")
    with pytest.raises(DataError, match="label0.png.*without an image"):
        scan_source(tmp_path)
    src = scan_source(tmp_path, pair_by_order=True)
    assert all(b.mask is not None for b in all_bscans(src))
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


def test_custom_volume_regex(tmp_path):
    for name in ["eye7-s3", "eye7-s1"]:
        save_image(tmp_path / f"{name}.png", np.zeros((4, 4), np.uint8))
    src = scan_source(tmp_path, volume_regex=r"^(?P<volume>eye\d+)-s(?P<slice>\d+)$")
    assert [(b.volume, b.slice_index) for b in all_bscans(src)] == [("eye7", 1), ("eye7", 3)]


# --- bad layouts: DataError naming the file (or warn + skip) ----------------------------------------


def test_image_mask_size_mismatch(tmp_path):
    write_png_folder(tmp_path, ["a_0"], size=(8, 8))
    save_image(tmp_path / "masks" / "a_0.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(DataError, match=r"masks/a_0.png.*images/a_0.png"):
        scan_source(tmp_path)


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


def test_no_warnings_for_clean_real_layout(tmp_path):
    write_png_folder(tmp_path, ["S01_00", "S01_01"], n_classes=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scan_source(tmp_path)


# --- real data --------------------------------------------------------------------------------------


def test_real_duke_headers_only(shared_data):
    src = scan_source(shared_data / "duke-dme-train", classes=FLUID_CLASSES)
    assert [v.volume for v in src.volumes] == ["S01", "S02", "S03", "S04", "S05"]
    assert all(v.n_slices == 11 and v.shape == (496, 768) and v.labelled for v in src.volumes)
    u = scan_source(shared_data / "duke-subject01-unlabeled")
    (v,) = u.volumes
    assert v.volume == "Subject_01" and v.n_slices == 61 and not v.labelled
