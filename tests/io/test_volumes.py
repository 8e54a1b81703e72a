"""octseg.io.volumes: MetaImage/NIfTI volumes. Headers and data files are checked before any pixel
is read, bad values name the volume, and write_volume never leaves a header without its data."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk
from _odd_inputs import all_bscans, finishes
from fakes import write_mhd, write_retouch_case

from octseg.data.prepare import prepare_dataset
from octseg.data.readers import scan_source
from octseg.records import Spacing
from octseg.errors import DataError
from octseg.io import volumes
from octseg.io.outputs import TMP_PREFIX
from octseg.io.volumes import Volume, mhd_info, volume_data_file, volume_header, write_volume


# --- MetaImage headers and data files ---------------------------------------------------------------


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


def test_retouch_data_and_reference_files_that_are_not_regular_files(tmp_path):
    case = write_retouch_case(tmp_path / "a", "Cirrus", "TRAIN001", slices=1, height=8)
    (case / "oct.raw").unlink()
    os.mkfifo(case / "oct.raw")  # SimpleITK would block reading it
    with pytest.raises(DataError, match=r"oct\.mhd: its data file .*oct\.raw is not a regular file \(FIFO\)"):
        finishes(lambda: scan_source(tmp_path / "a"), case / "oct.raw")
    case = write_retouch_case(tmp_path / "b", "Cirrus", "TRAIN001", slices=1, height=8)
    for f in ("reference.mhd", "reference.raw"):
        (case / f).unlink()
    os.mkfifo(case / "reference.mhd")
    with pytest.raises(DataError, match=r"reference\.mhd: not a regular file \(FIFO\)"):
        finishes(lambda: scan_source(tmp_path / "b"), case / "reference.mhd")


def test_mhd_info_and_volume_header(tmp_path):
    arr = np.zeros((3, 4, 5), np.uint16)
    p = write_mhd(tmp_path / "v.mhd", arr, (0.1, 0.2, 0.3), "MET_USHORT")
    size, spacing, data = mhd_info(p)
    assert size == (5, 4, 3) and spacing == pytest.approx((0.1, 0.2, 0.3)) and data == [tmp_path / "v.raw"]
    assert tuple(volume_header(p).GetSize()) == (5, 4, 3)
    flat = write_volume(tmp_path / "flat.mhd", np.zeros((4, 5), np.uint8), (0.1, 0.2), compress=False)
    assert mhd_info(flat)[:2] == ((5, 4, 1), pytest.approx((0.1, 0.2, 0.0)))  # one B-scan
    with pytest.raises(DataError, match=r"flat\.mhd: expected a 3-D gray volume .* 2-D image of size \(5, 4\)"):
        volume_header(flat)
    bad = tmp_path / "bad.mhd"
    bad.write_text("not a header\n")
    with pytest.raises(DataError, match=r"bad\.mhd: cannot read the volume header"):
        volume_header(bad)
    with pytest.raises(DataError, match=r"bad\.mhd: not a MetaImage header"):
        mhd_info(bad)


# --- pixels -----------------------------------------------------------------------------------------


def test_float_mhd_volume_with_nan_inf_names_the_volume(tmp_path):
    v = np.random.default_rng(0).random((3, 10, 12)).astype(np.float32) * 500
    v[0, 1, 1], v[2, 3, 4] = np.nan, np.inf
    path = tmp_path / "case" / "oct.mhd"
    path.parent.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(v), str(path))
    src = scan_source(path)
    with pytest.raises(DataError, match=r"oct\.mhd: 2 NaN/inf pixel values \(1 NaN, 1 inf\)") as e:
        all_bscans(src)
    assert e.value.path == str(path)
    write_mhd(tmp_path / "root" / "RETOUCH-TrainingSet-Cirrus" / "TRAIN001" / "oct.mhd", v, element_type="MET_FLOAT")
    with pytest.raises(DataError, match="TRAIN001/oct.mhd: 2 NaN/inf"):
        prepare_dataset(tmp_path / "root", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_retouch_bad_label_values(tmp_path):
    folder = write_retouch_case(tmp_path, "Cirrus", slices=1, height=8)
    ref = np.zeros((1, 8, 512), np.uint8)
    ref[0, 0, 0] = 7
    write_mhd(folder / "reference.mhd", ref)
    (v,) = scan_source(tmp_path).volumes
    with pytest.raises(DataError, match=r"reference.mhd.*\[0, 7\]"):
        list(v.load())


# --- writing ----------------------------------------------------------------------------------------


_DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("name,compress,files", [("m.mhd", True, ["m.mhd", "m.zraw"]),
                                                  ("m.mhd", False, ["m.mhd", "m.raw"]),
                                                  ("m.nii.gz", True, ["m.nii.gz"])])
def test_write_volume_round_trip(tmp_path, name, compress, files):
    labels = (np.arange(3 * 4 * 5).reshape(3, 4, 5) % 4).astype(np.uint8)
    out = write_volume(tmp_path / name, labels, (0.01, 0.002, 0.05), (1.0, -2.0, 3.5), _DIRECTION,
                       compress=compress)
    assert out == tmp_path / name and sorted(os.listdir(tmp_path)) == files  # no temporary folder left
    data = volume_data_file(out, compress)
    assert (data.name if data else None) == (files[1] if len(files) > 1 else None)
    img = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), labels)
    assert img.GetSpacing() == pytest.approx((0.01, 0.002, 0.05), rel=1e-5)
    assert img.GetOrigin() == pytest.approx((1.0, -2.0, 3.5), abs=1e-5)
    assert img.GetDirection() == pytest.approx(_DIRECTION, abs=1e-5)
    vol = Volume(out)  # its array is a view, valid while vol lives
    np.testing.assert_array_equal(vol.array, labels)


def test_write_volume_spacing_record_and_2d(tmp_path):
    out = write_volume(tmp_path / "v.mhd", np.ones((2, 3, 4), np.uint16) * 1000, Spacing(0.2, 0.1, 0.3),
                       compress=False)
    assert mhd_info(out)[:2] == ((4, 3, 2), pytest.approx((0.1, 0.2, 0.3)))
    out = write_volume(tmp_path / "b.nii.gz", np.ones((3, 4), np.uint8), Spacing(0.2, 0.1))
    assert sitk.ReadImage(str(out)).GetSpacing() == pytest.approx((0.1, 0.2))


def test_write_volume_failure_leaves_no_file_under_the_final_names(tmp_path, monkeypatch):
    labels = np.zeros((2, 3, 4), np.uint8)

    def half_then_fail(img, path, compress):  # a writer dying half way: its data file, no header
        with open(os.path.join(os.path.dirname(path), "m.zraw"), "wb") as fh:
            fh.write(b"half")
        raise RuntimeError("Exception thrown in SimpleITK WriteImage:\nFailed to write image m.mhd")

    monkeypatch.setattr(sitk, "WriteImage", half_then_fail)
    with pytest.raises(DataError, match=r"m\.mhd: cannot write \(Failed to write image m\.mhd\)") as e:
        write_volume(tmp_path / "m.mhd", labels)
    assert e.value.path == str(tmp_path / "m.mhd") and os.listdir(tmp_path) == []
    monkeypatch.undo()

    real_replace = os.replace

    def header_fails(src, dst):  # the data file is moved in, then the disk is full
        if str(dst).endswith(".mhd"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(volumes.os, "replace", header_fails)
    with pytest.raises(DataError, match=r"m\.mhd: cannot write: no space left on device"):
        write_volume(tmp_path / "m.mhd", labels)
    assert os.listdir(tmp_path) == []  # neither the header nor its data file, nor the temporary folder
    monkeypatch.undo()

    write_volume(tmp_path / "m.mhd", labels)  # and the same call works once the disk has room
    assert sorted(os.listdir(tmp_path)) == ["m.mhd", "m.zraw"]
    assert not any(n.startswith(TMP_PREFIX) for n in os.listdir(tmp_path))


def test_multi_member_gzip_nifti_reads_whole(tmp_path):
    """A .nii.gz of two gzip members (as written by concatenating gzip streams) is not truncated."""
    import gzip

    arr = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)
    plain = tmp_path / "v.nii"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(plain), False)
    data = plain.read_bytes()
    two = tmp_path / "v.nii.gz"
    two.write_bytes(gzip.compress(data[:200]) + gzip.compress(data[200:]))
    assert volume_header(two).GetSize() == (6, 5, 4)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(two))), arr)
    assert volumes._inflated_size(two, 10 ** 9) == len(data)
    short = tmp_path / "s.nii.gz"  # a second member cut short is still too short
    short.write_bytes(gzip.compress(data[:200]) + gzip.compress(data[200:-50]))
    with pytest.raises(DataError, match="holds"):
        volume_header(short)
