"""DICOM Segmentation writing (highdicom): read back with pydicom and highdicom, frames, labels,
references to the source series, patient fields only when asked."""

from __future__ import annotations

import numpy as np
import pytest

from _clinic_files import PATIENT, synthetic_stack, write_dicom_opt
from octseg.io import vendor
from octseg.records import Spacing

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

CLASSES = ("background", "IRF", "SRF", "PED")


def _labels(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 4, size=shape).astype(np.uint8)


def _read_back(seg_path, src_path, n):
    seg = hd.seg.segread(seg_path)
    src = pydicom.dcmread(src_path)
    arr = seg.get_pixels_by_source_frame(source_sop_instance_uid=src.SOPInstanceUID,
                                         source_frame_numbers=list(range(1, n + 1)), combine_segments=True)
    return seg, src, arr


def test_seg_references_the_dicom_source(tmp_path):
    from octseg.io.dicom_seg import write_segmentation

    stack = synthetic_stack(4, 24, 20)
    src_path = write_dicom_opt(tmp_path / "scan.dcm", stack)
    (scan,) = vendor.read(src_path)
    labels = _labels(stack.shape)
    (out,) = write_segmentation(tmp_path / "seg.dcm", labels, CLASSES, source=scan.dicom,
                                identifiers=scan.header.identifiers)
    seg, src, arr = _read_back(out, src_path, 4)
    assert seg.NumberOfFrames == 4 * 3  # every B-scan x every fluid class
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["IRF", "SRF", "PED"]
    assert np.array_equal(arr, labels)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    raw = out.read_bytes()
    assert str(seg.PatientName) == "" and PATIENT["id"].encode() not in raw and b"Doe" not in raw


def test_seg_keeps_identifiers_when_asked(tmp_path):
    from octseg.io.dicom_seg import write_segmentation

    stack = synthetic_stack(2, 16, 12)
    (scan,) = vendor.read(write_dicom_opt(tmp_path / "scan.dcm", stack))
    (out,) = write_segmentation(tmp_path / "seg.dcm", _labels(stack.shape), CLASSES, source=scan.dicom,
                                identifiers=scan.header.identifiers, keep_identifiers=True)
    seg = pydicom.dcmread(out)
    assert (str(seg.PatientName), seg.PatientID, seg.PatientBirthDate) == ("Doe^Jane", PATIENT["id"], PATIENT["dob"])


def test_seg_of_a_non_dicom_volume_writes_its_oct_series(tmp_path):
    from octseg.io.dicom_seg import write_segmentation

    stack = synthetic_stack(3, 20, 16)
    labels = _labels(stack.shape, 1)
    oct_path, out = write_segmentation(tmp_path / "seg.dcm", labels, CLASSES, bscans=stack,
                                       spacing=Spacing(0.0039, 0.0114, 0.1234), laterality="OS",
                                       oct_path=tmp_path / "seg_oct.dcm")
    seg, src, arr = _read_back(out, oct_path, 3)
    assert np.array_equal(arr, labels) and seg.NumberOfFrames == 9
    (back,) = vendor.read(oct_path)  # the written DICOM OCT is itself a valid octseg input
    assert np.array_equal(back.bscans, stack) and back.header.laterality == "OS"
    assert abs(back.header.spacing.slice - 0.1234) < 1e-9
