"""Clinic files through the commands: ``octseg predict CKPT scan.vol OUT --format dcm`` (a DICOM
SEG read back by pydicom and highdicom), ``info``, ``prepare`` and ``evaluate``; and the privacy
rule: patient names, ids and birth dates from headers never reach output files, file names, tables
or the console unless ``--keep-identifiers``."""

from __future__ import annotations

import os

import numpy as np
import pytest

from _clinic_files import PATIENT, synthetic_stack, write_dicom_opt, write_heyex_vol, write_heyex_xml
from octseg.cli import main

pytest.importorskip("eyepy")
pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

#: What must never leak: the header's identifiers, in the spellings a leak would take.
SECRETS = [PATIENT["id"], "Doe", "Jane", PATIENT["dob"], "1952-03-17"]


def _leaks(folder, text: str = "") -> list[str]:
    found = [s for s in SECRETS if s.lower() in text.lower()]
    for dirpath, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(dirpath, name)
            found += [f"{s} in the name {p}" for s in SECRETS if s.lower() in p.lower()]
            with open(p, "rb") as fh:
                data = fh.read().lower()
            found += [f"{s} in {p}" for s in SECRETS if s.lower().encode() in data]
    return found


@pytest.fixture
def scans(tmp_path):
    """A folder of three clinic files with patient identifiers in their headers."""
    d = tmp_path / "clinic"
    d.mkdir()
    stack = synthetic_stack(3, 48, 40, seed=3)
    write_heyex_vol(d / "scan.vol", stack)
    write_dicom_opt(d / "scan2.dcm", stack)
    write_heyex_xml(d / "export", stack)
    return d


def test_predict_vol_as_dicom_seg(tmp_path, tiny_checkpoint, scans, one_thread, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(tiny_checkpoint), str(scans / "scan.vol"), str(out), "--format", "dcm",
                 "--device", "cpu"]) == 0
    seg_path, oct_path = out / "masks" / "scan.dcm", out / "masks" / "scan_oct.dcm"
    import pydicom

    seg = pydicom.dcmread(seg_path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.NumberOfFrames == 3 * 3
    hseg = hd.seg.segread(seg_path)
    assert [s.SegmentLabel for s in hseg.SegmentSequence] == ["IRF", "SRF", "PED"]
    src = pydicom.dcmread(oct_path)
    labels = hseg.get_pixels_by_source_frame(source_sop_instance_uid=src.SOPInstanceUID,
                                             source_frame_numbers=[1, 2, 3], combine_segments=True)
    assert labels.shape == (3, 48, 40) and labels.max() < 4
    assert (out / "enface" / "scan.png").is_file() and (out / "fluid.csv").is_file()
    assert "scan.vol" in (out / "fluid.csv").read_text()
    assert not _leaks(out, capsys.readouterr().out)


def test_predict_dicom_seg_references_dicom_input(tmp_path, tiny_checkpoint, scans, one_thread):
    out = tmp_path / "out"
    assert main(["predict", str(tiny_checkpoint), str(scans / "scan2.dcm"), str(out), "--format", "dcm",
                 "--device", "cpu"]) == 0
    import pydicom

    seg = pydicom.dcmread(out / "masks" / "scan2.dcm")
    src = pydicom.dcmread(scans / "scan2.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert not (out / "masks" / "scan2_oct.dcm").exists()


def test_identifiers_stay_out_of_outputs(tmp_path, tiny_checkpoint, scans, one_thread, capsys, caplog):
    """predict (masks, overlays, CSVs, report), prepare and info over a folder of .vol, DICOM and XML."""
    # a file named after its patient: the identifiers its header holds (a .vol has id and birth
    # date, no name) are redacted from every name derived from it
    write_heyex_vol(scans / "MRN-98765_19520317_OD.vol", synthetic_stack(2, 48, 40))
    out = tmp_path / "pred"
    assert main(["predict", str(tiny_checkpoint), str(scans), str(out), "--device", "cpu", "--report"]) == 0
    assert main(["prepare", str(scans), str(tmp_path / "prep")]) == 0
    assert main(["info", str(scans / "scan2.dcm")]) == 0
    assert main(["info", str(scans / "export")]) == 0
    console = capsys.readouterr()
    vols = {line.split(",")[1] for line in (out / "fluid.csv").read_text().splitlines()[1:]}
    assert vols == {"scan", "scan2", "export", "anon_anon_OD"}
    leaks = _leaks(out, console.out + console.err + caplog.text) + _leaks(tmp_path / "prep")
    assert not leaks, leaks
    assert "redacted" in console.out


def test_keep_identifiers_lets_them_through(tmp_path, tiny_checkpoint, scans, one_thread, capsys):
    assert main(["info", str(scans / "scan2.dcm"), "--keep-identifiers"]) == 0
    shown = capsys.readouterr().out
    assert PATIENT["id"] in shown and "Doe^Jane" in shown
    named = scans / "MRN-98765.vol"
    write_heyex_vol(named, synthetic_stack(2, 48, 40))
    out = tmp_path / "out"
    assert main(["predict", str(tiny_checkpoint), str(named), str(out), "--device", "cpu", "--format", "dcm",
                 "--keep-identifiers"]) == 0
    import pydicom

    seg = pydicom.dcmread(out / "masks" / "MRN-98765.dcm")
    assert seg.PatientID == PATIENT["id"]


def test_evaluate_clinic_file_with_reference(tmp_path, tiny_checkpoint, one_thread):
    """A label volume ``<stem>_reference.nii.gz`` beside a clinic file makes it labelled data."""
    from octseg.evaluate import evaluate
    from octseg.io.volumes import write_volume

    stack = synthetic_stack(2, 48, 40, seed=4)
    p = write_heyex_vol(tmp_path / "scan.vol", stack)
    labels = np.zeros(stack.shape, np.uint8)
    labels[:, 20:30, 10:20] = 1
    write_volume(tmp_path / "scan_reference.nii.gz", labels)
    result = evaluate(tiny_checkpoint, p, device="cpu", progress=False)
    assert "pooled" in result and result["per_bscan_table"]


def test_a_failing_clinic_file_is_reported_without_its_patients_name(tmp_path, tiny_checkpoint, one_thread,
                                                                      capsys, monkeypatch):
    """Failures name a clinic file by its redacted path (header read) or ``input #k`` (no header)."""
    import octseg.inference.clinic as C
    from octseg.errors import DataError

    d = tmp_path / "cohort"
    d.mkdir()
    stack = synthetic_stack(2, 48, 40, seed=4)
    write_heyex_vol(d / "scan.vol", stack)
    write_dicom_opt(d / "DOE_JANE_OD.dcm", stack)  # its header names Doe^Jane: redacted
    (d / "Jane_Doe_MRN-98765.vol").write_bytes(b"not a vol file at all" * 10)  # no header to read
    real = C.predict_clinic

    def failing(run, predictor, job, bar):
        if job.path.suffix == ".dcm":
            raise DataError(job.path, "cannot decode the B-scans")
        return real(run, predictor, job, bar)

    monkeypatch.setattr(C, "predict_clinic", failing)
    out = tmp_path / "out"
    assert main(["predict", str(tiny_checkpoint), str(d), str(out), "--device", "cpu"]) == 1  # 1: failures
    console = capsys.readouterr()
    assert "FAILED: 2 input(s)" in console.out
    assert "anon_anon_OD.dcm: cannot decode the B-scans" in console.out
    assert "input #" in console.out
    leaks = _leaks(out, console.out + console.err)
    assert not leaks, leaks
    assert main(["predict", str(tiny_checkpoint), str(d), str(out), "--device", "cpu", "--resume"]) == 1
    console = capsys.readouterr()
    assert "resumed: 1 finished input(s) skipped" in console.out
    leaks = _leaks(out, console.out + console.err)
    assert not leaks, leaks


def test_a_clinic_file_failing_part_way_leaves_no_figures(tmp_path, tiny_checkpoint, one_thread, capsys,
                                                           monkeypatch):
    """A multi-series file whose later series fails: its earlier series' rows, confidences, volumes
    and counts are taken back (simulated: the file's one series succeeds, then it fails)."""
    import octseg.inference.clinic as C
    from octseg.errors import DataError

    d = tmp_path / "cohort"
    d.mkdir()
    stack = synthetic_stack(2, 48, 40, seed=4)
    write_heyex_vol(d / "good.vol", stack)
    write_heyex_vol(d / "partial.vol", stack)
    real = C.predict_clinic

    def failing_late(run, predictor, job, bar):
        real(run, predictor, job, bar)
        if job.path.stem == "partial":
            raise DataError(job.path, "series 2 cannot be read")

    monkeypatch.setattr(C, "predict_clinic", failing_late)
    out = tmp_path / "out"
    assert main(["predict", str(tiny_checkpoint), str(d), str(out), "--device", "cpu"]) == 1
    console = capsys.readouterr().out
    assert "predicted 2 B-scan(s) (1 volume(s)" in console and "series 2 cannot be read" in console
    for table in ("fluid.csv", "confidence.csv"):
        text = (out / table).read_text()
        assert "good" in text and "partial" not in text, table
