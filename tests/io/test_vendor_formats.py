"""Clinic formats read through octseg.io.vendor: files written here from synthetic volumes (HEYEX
.vol from its published layout, a HEYEX XML export, DICOM OCT with pydicom, Topcon .fda/.fds
containers, a Zeiss .img cube) read back exactly, with spacing within 1e-6 mm; E2E (which cannot
be written here) through monkeypatched eyepy objects; bad files give one-line errors naming them."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from _clinic_files import (PATIENT, heyex_vol_bytes, synthetic_stack, topcon_bytes, write_dicom_opt, write_heyex_vol,
                           write_heyex_xml, write_topcon, write_zeiss_img)
from octseg.errors import DataError
from octseg.io import vendor
from octseg.records import Spacing

SP = Spacing(row=0.0039, col=0.0114, slice=0.1234)


def _close(a: Spacing, b: Spacing, tol: float = 1e-6) -> bool:
    return all(abs(x - y) <= tol for x, y in ((a.row, b.row), (a.col, b.col), (a.slice, b.slice)))


@pytest.fixture
def stack():
    return synthetic_stack(3, 40, 32, seed=1)


# ------------------------------------------------------------------------------------- round trips


def test_heyex_vol_round_trip(tmp_path, stack):
    pytest.importorskip("eyepy")
    slo = np.tile(np.arange(64, dtype=np.uint8), (48, 1))
    p = write_heyex_vol(tmp_path / "scan.vol", stack, laterality="OS", slo=slo)
    (h,) = vendor.probe(p)
    assert (h.format, h.vendor, h.n_bscans, h.shape, h.laterality) == ("heyex-vol", "spectralis", 3, (40, 32), "OS")
    (scan,) = vendor.read(p)
    assert scan.bscans.dtype == np.uint8 and np.array_equal(scan.bscans, stack)
    assert _close(scan.header.spacing, SP)
    assert np.array_equal(scan.localizer, slo)
    assert scan.header.identifiers.patient_id == PATIENT["id"]
    assert scan.header.identifiers.birth_date == "1952-03-17"


def test_heyex_vol_no_data_pixels_read_as_zero(tmp_path, stack):
    pytest.importorskip("eyepy")
    p = write_heyex_vol(tmp_path / "scan.vol", stack, invalid=(1, 5, 7))
    (scan,) = vendor.read(p)
    expected = stack.copy()
    expected[1, 5, 7] = 0
    assert np.array_equal(scan.bscans, expected)


def test_heyex_vol_49_bscans_full_size_round_trip(tmp_path):
    """A full Spectralis cube reads pixel-exact (its speed is benchmarks/clinic_read.py's, not a test's)."""
    pytest.importorskip("eyepy")
    a = synthetic_stack(49, 496, 512, seed=2)
    p = write_heyex_vol(tmp_path / "spectralis.vol", a)
    (scan,) = vendor.read(p)
    assert np.array_equal(scan.bscans, a)


def test_heyex_xml_round_trip_file_and_folder(tmp_path, stack):
    pytest.importorskip("eyepy")
    xml = write_heyex_xml(tmp_path / "export", stack, laterality="R")
    for p in (xml, xml.parent):
        assert vendor.clinic_format(p) == "heyex-xml"
        (scan,) = vendor.read(p)
        assert np.array_equal(scan.bscans, stack)
        assert _close(scan.header.spacing, SP)
        assert scan.header.laterality == "OD" and scan.localizer.shape == (48, 64)
        assert scan.header.volume_id() == "export"
        assert scan.header.identifiers.name == "Doe^Jane"


@pytest.mark.parametrize("bits", [8, 16])
def test_dicom_opt_round_trip(tmp_path, stack, bits):
    pytest.importorskip("pydicom")
    p = write_dicom_opt(tmp_path / "scan.dcm", stack, bits=bits, laterality="L")
    (h,) = vendor.probe(p)
    assert (h.format, h.vendor, h.n_bscans, h.shape, h.laterality) == ("dicom-opt", "spectralis", 3, (40, 32), "OS")
    (scan,) = vendor.read(p)
    assert np.array_equal(scan.bscans, stack)  # 16-bit: v * 257 scales back exactly
    assert _close(scan.header.spacing, SP)
    assert scan.dicom is not None and "PixelData" not in scan.dicom


def test_dicom_spacing_from_frame_positions(tmp_path, stack):
    pytest.importorskip("pydicom")
    p = write_dicom_opt(tmp_path / "scan.dcm", stack, spacing_between=False, between=0.25)
    (h,) = vendor.probe(p)
    assert abs(h.spacing.slice - 0.25) < 1e-9  # SliceThickness is 0.25 too, but positions come first
    assert "positions" in h.spacing_source


def test_dicom_localizer_found_by_reference(tmp_path, stack):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    slo = write_dicom_opt(tmp_path / "slo.dcm", synthetic_stack(1, 24, 20, seed=5))
    ref = pydicom.dcmread(slo)
    p = write_dicom_opt(tmp_path / "scan.dcm", stack)
    ds = pydicom.dcmread(p)
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ref.SOPClassUID, ref.SOPInstanceUID
    ds.ReferencedImageSequence = [item]
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(p)
    (scan,) = vendor.read(p)
    assert scan.header.has_localizer and scan.localizer.shape == (24, 20)


def test_zeiss_img_round_trip(tmp_path, stack):
    pytest.importorskip("oct_converter")
    p = write_zeiss_img(tmp_path, stack)
    (h,) = vendor.probe(p)
    assert (h.vendor, h.n_bscans, h.shape, h.laterality) == ("cirrus", 3, (40, 32), "OD")
    (scan,) = vendor.read(p)
    assert np.array_equal(scan.bscans, stack)
    assert _close(scan.header.spacing, Spacing(row=2.0 / 40, col=6.0 / 32, slice=6.0 / 3))
    # the P<digits> prefix is the patient id: gone from the volume id unless asked
    assert h.identifiers.patient_id == "P4711" and "P4711" not in h.volume_id()
    assert h.volume_id(keep_identifiers=True).startswith("P4711")


@pytest.mark.parametrize("suffix", [".fda", ".fds"])
def test_topcon_round_trip(tmp_path, stack, suffix):
    pytest.importorskip("oct_converter")
    fundus = np.tile(np.arange(64, dtype=np.uint8) * 3, (48, 1))
    p = write_topcon(tmp_path / f"scan{suffix}", stack, fundus=fundus, eye=1)
    (h,) = vendor.probe(p)
    assert (h.format, h.vendor, h.n_bscans, h.shape, h.laterality) == (f"topcon{suffix.replace('.', '-')}",
                                                                       "topcon", 3, (40, 32), "OS")
    (scan,) = vendor.read(p)
    assert np.array_equal(scan.bscans, stack)
    assert _close(scan.header.spacing, Spacing(row=0.0026, col=6.0 / 32, slice=6.0 / 3))
    assert h.identifiers == vendor.Identifiers(name="Doe^Jane", patient_id=PATIENT["id"], birth_date="1952-03-17")
    if suffix == ".fda":  # a JPEG fundus photograph: present, not pixel-exact
        assert scan.localizer.shape == (48, 64)
        assert np.abs(scan.localizer.astype(int) - fundus).mean() < 3


# ------------------------------------------------------------------------------------- E2E (monkeypatched eyepy)


class _FakeSeries:
    """The parts of eyepy's E2ESeriesStructure octseg uses."""

    def __init__(self, sid, data, n_meta=True):
        self.id, self._data = sid, data
        self.n_bscans = len(data)
        S, H, W = data.shape
        self._meta = [{"size_y": H, "size_x": W, "scale_y": 0.0039, "center_y": 1.0 + 0.5 * k, "scan_pattern": 3}
                      for k in range(S)] if n_meta else []

    def get_bscan_meta(self):
        return self._meta

    def get_x_scale_derivation(self):
        return {"scaling_x_um_per_pixel": 11.4}

    def get_heyex_metadata(self):
        return {"Patient": {"First Name": "Jane", "Surname": "Doe", "Patient ID": PATIENT["id"], "Date of Birth": None}}

    def laterality(self):
        return "LateralityEnum.OD"

    def get_bscans(self):
        return self._data

    def get_localizer(self):
        class L:
            data = np.full((20, 20), 7, np.uint8)
        return L()


def test_e2e_adapter_against_eyepy_objects(tmp_path, monkeypatch, stack):
    eyepy_io = pytest.importorskip("eyepy.io")
    from eyepy.core.utils import to_vol_intensity

    refl = to_vol_intensity(stack)  # eyepy's own inverse of the display mapping

    class FakeReader:
        def __init__(self, path):
            self.series = [_FakeSeries(1, refl), _FakeSeries(2, refl[:0], n_meta=False), _FakeSeries(3, refl[:2])]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(eyepy_io, "HeE2eReader", FakeReader, raising=False)
    p = tmp_path / "Doe_Jane.e2e"
    p.write_bytes(b"CMDb".ljust(64, b"\0"))
    heads = vendor.probe(p)
    assert [(h.series, h.n_bscans, h.laterality) for h in heads] == [("1", 3, "OD"), ("3", 2, "OD")]
    sp = heads[0].spacing
    assert abs(sp.row - 0.0039) < 1e-12 and abs(sp.col - 0.0114) < 1e-12
    assert abs(sp.slice - 0.5 * 0.2896) < 1e-9  # 0.5 degrees between B-scans at 0.2896 mm/degree
    assert heads[0].volume_id() == "anon_anon_1"  # the name in the file name is redacted
    scans = vendor.read(p)
    assert np.abs(scans[0].bscans.astype(int) - stack).max() <= 1
    assert scans[0].localizer.shape == (20, 20)
    (only,) = vendor.read(p, series="3")
    assert only.bscans.shape == (2, 40, 32)


# ------------------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("case, expected", [
    ("magic", "not a Heidelberg .vol file"),
    ("short header", "truncated header"),
    ("zero", "zero B-scans"),
    ("truncated", "truncated: "),
])
def test_bad_vol_files(tmp_path, stack, case, expected):
    data = heyex_vol_bytes(stack)
    if case == "magic":
        data = b"NOT-A-VOL!!\0" + data[12:]
    elif case == "short header":
        data = data[:1000]
    elif case == "zero":
        data = heyex_vol_bytes(stack[:0])
    else:
        data = data[:-100]
    p = tmp_path / "bad.vol"
    p.write_bytes(data)
    with pytest.raises(DataError, match=expected) as err:
        vendor.read(p)
    assert str(p) in str(err.value) and "\n" not in str(err.value)


def test_bad_dicom_files(tmp_path, stack):
    pytest.importorskip("pydicom")
    good = write_dicom_opt(tmp_path / "good.dcm", stack).read_bytes()
    cases = {"notdicom.dcm": (b"\0" * 200, "not a DICOM file"),
             "short.dcm": (good[:100], "truncated header"),
             "truncated.dcm": (good[:-500], "truncated")}
    for name, (data, expected) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(DataError, match=expected) as err:
            vendor.read(p)
        assert str(p) in str(err.value)
    zero = write_dicom_opt(tmp_path / "zero.dcm", stack[:1])
    import pydicom

    ds = pydicom.dcmread(zero)
    ds.NumberOfFrames = 0
    ds.save_as(zero)
    with pytest.raises(DataError, match="zero B-scans"):
        vendor.probe(zero)


def test_dicom_other_sop_class_is_refused(tmp_path, stack):
    pydicom = pytest.importorskip("pydicom")
    p = write_dicom_opt(tmp_path / "ct.dcm", stack)
    ds = pydicom.dcmread(p)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT
    ds.save_as(p)
    with pytest.raises(DataError, match="not a DICOM OCT volume"):
        vendor.probe(p)


def test_bad_topcon_and_img_and_e2e_files(tmp_path, stack):
    pytest.importorskip("oct_converter")
    p = tmp_path / "bad.fda"
    p.write_bytes(topcon_bytes(stack, magic=b"XXXX"))
    with pytest.raises(DataError, match="not a Topcon .fda file"):
        vendor.read(p)
    p.write_bytes(topcon_bytes(stack)[:12])
    with pytest.raises(DataError, match="truncated header"):
        vendor.read(p)
    p.write_bytes(topcon_bytes(stack, n_header=0))
    with pytest.raises(DataError, match="zero B-scans"):
        vendor.read(p)
    p.write_bytes(topcon_bytes(stack)[:300])
    with pytest.raises(DataError, match=str(p)):
        vendor.read(p)
    img = write_zeiss_img(tmp_path, stack)
    img.write_bytes(img.read_bytes()[:-7])
    with pytest.raises(DataError, match="not a whole number"):
        vendor.read(img)
    noname = tmp_path / "renamed.img"
    noname.write_bytes(b"\0" * 64)
    with pytest.raises(DataError, match="A-scans>x<B-scans"):
        vendor.probe(noname)
    e2e = tmp_path / "bad.e2e"
    e2e.write_bytes(b"JUNK" * 20)
    with pytest.raises(DataError, match="not a Heidelberg .e2e file"):
        vendor.probe(e2e)


def test_missing_library_names_the_extra(tmp_path, stack, monkeypatch):
    p = write_heyex_vol(tmp_path / "scan.vol", stack)
    for mod in [m for m in sys.modules if m == "eyepy" or m.startswith("eyepy.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "eyepy", None)  # import eyepy -> ImportError
    monkeypatch.setitem(sys.modules, "eyepy.io", None)
    with pytest.raises(DataError, match=r"needs the optional package eyepy: pip install 'octseg\[formats\]'") as err:
        vendor.read(p)
    assert str(p) in str(err.value)


def test_clinic_format_detection(tmp_path, stack):
    (tmp_path / "notes.xml").write_text("<notes/>")
    assert vendor.clinic_format(tmp_path / "notes.xml") is None
    assert vendor.clinic_format(tmp_path / "a.png") is None
    write_heyex_vol(tmp_path / "a.vol", stack)
    write_heyex_xml(tmp_path / "exp", stack)
    files, _ = vendor.find_clinic_files(tmp_path)
    assert [f.name for f in files] == ["a.vol", "exp"]


def test_identifier_redaction():
    ids = vendor.Identifiers(name="Doe^Jane", patient_id="MRN-98765", birth_date="1952-03-17")
    text = "DOE_jane_MRN-98765_19520317_17.03.1952_scan"
    assert ids.redact(text) == "anon_anon_anon_anon_anon_scan"
    assert vendor.Identifiers(name="Li^Al").redact("Li_Al_scan") == "Li_Al_scan"  # too short to be safe to replace
