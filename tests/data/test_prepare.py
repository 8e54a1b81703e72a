"""prepare: memory-mapped round trip, resizing rules, atomic and idempotent writes, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fakes import save_image, write_png_folder, write_retouch_case
from PIL import Image

from octseg.cli import main
from octseg.data.prepare import ensure_prepared, prepare_dataset
from octseg.transforms import resize_mask_u8 as resize_mask
from octseg.data.prepared import FORMAT_NAME, PreparedDataset, is_prepared
from octseg.data.readers import scan_source
from octseg.constants import FLUID_CLASSES, RETOUCH_CLASSES, UNLABELLED
from octseg.errors import DataError


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_round_trip_native_size(tmp_path):
    names = ["V1_0", "V1_1", "V2_0"]
    write_png_folder(tmp_path / "src", names, size=(10, 14), labelled={"V1_0", "V2_0"})
    with pytest.warns(UserWarning):
        ds = prepare_dataset(tmp_path / "src", tmp_path / "out", progress=False)
    assert isinstance(ds.images, np.memmap) and ds.images.dtype == np.uint8
    assert ds.size == (10, 14) and len(ds) == 3 and ds.classes == RETOUCH_CLASSES
    with pytest.warns(UserWarning):
        expected = [b for v in scan_source(tmp_path / "src").volumes for b in v.load()]
    for i, b in enumerate(expected):
        np.testing.assert_array_equal(ds.images[i], b.image)
        if b.mask is None:
            assert (ds.masks[i] == UNLABELLED).all()
        else:
            np.testing.assert_array_equal(ds.masks[i], b.mask)
    assert list(ds.labelled) == [True, False, True]
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["format"] == FORMAT_NAME and meta["n_slices"] == 3 and meta["n_labelled"] == 2
    assert meta["n_volumes"] == 2 and meta["size"] == [10, 14] and meta["source"] == str(tmp_path / "src")
    assert meta["warnings"] and meta["source_signature"]
    reopened = PreparedDataset(tmp_path / "out")
    assert reopened.slices[1].id == "V1_1" and reopened.slices[1].orig_width == 14


def test_resize_retouch_masks_nearest(tmp_path):
    write_retouch_case(tmp_path / "src", "Cirrus", "TRAIN001", slices=2, height=64)
    write_retouch_case(tmp_path / "src", "Topcon", "TRAIN002", slices=2, height=48, seed=3)
    with pytest.raises(DataError, match="different sizes.*--size"):
        prepare_dataset(tmp_path / "src", tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()
    ds = prepare_dataset(tmp_path / "src", tmp_path / "out", size=(32, 40), progress=False)
    assert ds.size == (32, 40) and ds.masks.shape == (4, 32, 40)
    assert set(np.unique(ds.masks)) <= {0, 1, 2, 3}
    assert {s.vendor for s in ds.slices} == {"cirrus", "topcon"}
    assert ds.slices[0].orig_height == 64 and ds.slices[0].spacing.col == pytest.approx(0.01171875)
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["vendors"] == ["cirrus", "topcon"]


def test_resize_mask_never_interpolates():
    m = np.zeros((9, 9), np.uint8)
    m[::2, ::2] = 3
    m[1::2, 1::2] = 1
    for size in [(4, 4), (20, 13), (9, 30)]:
        assert set(np.unique(resize_mask(m, size))) <= {0, 1, 3}


def test_atomic_no_output_when_second_volume_bad(tmp_path):
    write_png_folder(tmp_path / "src", ["A_0", "A_1", "B_0", "B_1"])
    bad = np.zeros((12, 16), np.uint8)
    bad[2, 2] = 7
    save_image(tmp_path / "src" / "masks" / "B_1.png", bad)
    with pytest.raises(DataError, match="B_1.png"):
        # explicit classes: the bad value is met while writing volume B, after volume A
        prepare_dataset(tmp_path / "src", tmp_path / "out", progress=False, classes=RETOUCH_CLASSES)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.glob("out*")) == []


def test_failed_rerun_keeps_previous_dataset(tmp_path):
    write_png_folder(tmp_path / "src", ["A_0", "B_0"])
    prepare_dataset(tmp_path / "src", tmp_path / "out", progress=False)
    before = _files(tmp_path / "out")
    p = tmp_path / "src" / "images" / "B_0.png"
    p.write_bytes(p.read_bytes()[:60])
    with pytest.raises(DataError, match="B_0.png"):
        prepare_dataset(tmp_path / "src", tmp_path / "out", progress=False)
    assert _files(tmp_path / "out") == before


def test_idempotent_rerun_keeps_splits(tmp_path):
    from octseg.data.splits import make_split

    write_png_folder(tmp_path / "src", [f"V{v}_{k}" for v in range(3) for k in range(2)])
    prepare_dataset(tmp_path / "src", tmp_path / "out", size=(8, 8), progress=False)
    make_split(tmp_path / "out", labelled=1.0, val=0.3, seed=0)
    first = _files(tmp_path / "out")
    prepare_dataset(tmp_path / "src", tmp_path / "out", size=(8, 8), progress=False)
    assert _files(tmp_path / "out") == first
    assert "splits/volume-l1-v0.3-t0-s0.json" in first  # named after its parameters


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    write_png_folder(tmp_path / "src", ["A_0"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("x")
    with pytest.raises(DataError, match="not a prepared dataset"):
        prepare_dataset(tmp_path / "src", tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "precious.txt").exists()


def test_full_spectralis_volume_prepares(tmp_path):
    write_retouch_case(tmp_path / "src", "Spectralis", "TRAIN001", slices=None)
    ds = prepare_dataset(tmp_path / "src", tmp_path / "out", progress=False)
    assert ds.images.shape == (49, 496, 512) and ds.slices[48].id == "Spectralis_TRAIN001_048"
    assert ds.labelled.all() and set(np.unique(ds.masks[:3])) <= {0, 1, 2, 3}


def test_empty_dataset(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(DataError, match="src"):
        prepare_dataset(tmp_path / "src", tmp_path / "out", progress=False)


def test_ensure_prepared_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("OCTSEG_CACHE", str(tmp_path / "cache"))
    write_png_folder(tmp_path / "src", ["A_0", "A_1"])
    a = ensure_prepared(tmp_path / "src", (8, 8), progress=False)
    assert a.path.parent == tmp_path / "cache" / "prepared" and a.size == (8, 8)
    mtime = (a.path / "images.npy").stat().st_mtime_ns
    b = ensure_prepared(tmp_path / "src", (8, 8), progress=False)
    assert b.path == a.path and (b.path / "images.npy").stat().st_mtime_ns == mtime
    assert ensure_prepared(a.path, (16, 16)).path == a.path  # already prepared: returned as is
    Image.fromarray(np.full((12, 16), 9, np.uint8)).save(tmp_path / "src" / "images" / "A_2.png")
    with pytest.warns(UserWarning, match="no mask"):
        c = ensure_prepared(tmp_path / "src", (8, 8), progress=False)
    assert len(c) == 3


# --- CLI ----------------------------------------------------------------------------------


def test_cli_prepare(tmp_path, capsys):
    write_retouch_case(tmp_path / "src", "Cirrus", "TRAIN001", slices=2, height=16)
    assert main(["prepare", str(tmp_path / "src"), str(tmp_path / "out"), "--size", "8", "16"]) == 0
    assert "prepared 2 B-scans (2 labelled" in capsys.readouterr().out
    assert is_prepared(tmp_path / "out")


def test_cli_prepare_bad_input_exit_2(tmp_path, capsys):
    folder = write_retouch_case(tmp_path / "src", "Cirrus", "TRAIN001", slices=1, height=8)
    (folder / "oct.raw").unlink()
    assert main(["prepare", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "oct.mhd" in err and "oct.raw" in err and "Traceback" not in err


# --- real data ----------------------------------------------------------------------------


def test_real_duke_prepare(shared_data, tmp_path):
    ds = prepare_dataset(shared_data / "duke-dme-train", tmp_path / "duke", size=(256, 384), progress=False)
    assert len(ds) == 55 and ds.labelled.all() and ds.classes == FLUID_CLASSES
    assert sorted({s.volume for s in ds.slices}) == ["S01", "S02", "S03", "S04", "S05"]
    assert ds.size == (256, 384) and set(np.unique(ds.masks)) == {0, 1}


def test_real_duke_unlabelled_native(shared_data, tmp_path):
    ds = prepare_dataset(shared_data / "duke-subject01-unlabeled", tmp_path / "u", progress=False)
    assert len(ds) == 61 and not ds.labelled.any() and ds.size == (496, 768)
    assert {s.volume for s in ds.slices} == {"Subject_01"}
    assert [s.slice_index for s in ds.slices] == list(range(1, 62))
    np.testing.assert_array_equal(ds.images[10], np.asarray(Image.open(
        shared_data / "duke-subject01-unlabeled" / "Subject_01_11.png")))
