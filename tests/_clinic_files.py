"""Small but valid clinic files written from synthetic volumes, for the vendor-format tests
(``from _clinic_files import ...``; tests/conftest.py puts tests/ on sys.path).

* :func:`write_heyex_vol`: a Heidelberg HEYEX ``.vol`` file, byte by byte from the published
  layout (2048-byte file header, the SLO image, then per B-scan a header of ``bscan_hdr_size``
  bytes and the float32 reflectances);
* :func:`write_heyex_xml`: a HEYEX XML export (one XML file + one PNG per B-scan and the localizer);
* :func:`write_dicom_opt`: a DICOM Ophthalmic Tomography Image (multi-frame, 8 bits) with pydicom;
* :func:`write_zeiss_img`: a Zeiss Cirrus ``.img`` (headerless uint8 cube; the shape is in the name).

Pixel values are uint8 B-scans; :func:`vol_reflectance` is the inverse of the display mapping
octseg applies to HEYEX reflectances, so a round trip is exact.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Optional

import numpy as np

PATIENT = {"name": "Doe^Jane", "first": "Jane", "last": "Doe", "id": "MRN-98765", "dob": "19520317"}


def synthetic_stack(n: int = 3, h: int = 40, w: int = 32, seed: int = 0) -> np.ndarray:
    """(n, h, w) uint8 B-scans with every grey value present and some structure."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
    a.flat[:256] = np.arange(256, dtype=np.uint8)  # every value, 0 and 255 included
    return a


def vol_reflectance(u8: np.ndarray) -> np.ndarray:
    """uint8 display values -> the float32 reflectances a .vol stores (HEYEX's log display mapping
    inverted: v = exp(u/255 * 8.285 - 8.3) - 2.44e-4)."""
    return (np.exp(u8.astype(np.float64) / 255.0 * 8.285 - 8.3) - 2.44e-4).astype(np.float32)


def _days_since_1899(yyyymmdd: str) -> float:
    import datetime as dt

    d = dt.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:]))
    return float((d - dt.date(1899, 12, 30)).days)


def heyex_vol_bytes(bscans: np.ndarray, scale_x=0.0114, scale_y=0.0039, distance=0.1234,
                    laterality="OD", slo: Optional[np.ndarray] = None, patient_id: str = PATIENT["id"],
                    dob: str = PATIENT["dob"], version: bytes = b"HSF-OCT-103\0", num_seg: int = 2,
                    bscan_hdr_size: Optional[int] = None, invalid: Optional[tuple] = None) -> bytes:
    """The bytes of a HEYEX .vol file holding ``bscans`` (uint8 (S, H, W), stored as reflectances).

    ``invalid=(s, y, x)`` marks one pixel as "no data" (FLT_MAX), which reads as 0."""
    S, H, W = bscans.shape
    if slo is None:
        slo = np.tile(np.arange(W * 2, dtype=np.uint8), (H, 1))[:, : W * 2]
    hs, ws = slo.shape
    hdr_size = bscan_hdr_size or (256 + num_seg * W * 4 + 64)
    head = bytearray(2048)
    struct.pack_into("<12s", head, 0, version)
    struct.pack_into("<III", head, 12, W, S, H)
    struct.pack_into("<ddd", head, 24, scale_x, distance, scale_y)
    struct.pack_into("<II", head, 48, ws, hs)
    struct.pack_into("<dd", head, 56, 0.0112, 0.0113)  # SLO pixel size in mm
    struct.pack_into("<I", head, 72, 30)  # field size (degrees)
    struct.pack_into("<d", head, 76, -1.25)  # scan focus (dpt)
    struct.pack_into("<4s", head, 84, laterality.encode("ascii"))
    struct.pack_into("<Q", head, 88, 131_000_000_000_000_000)  # exam time, 100 ns since 1601
    struct.pack_into("<i", head, 96, 3)  # scan pattern: volume (ART)
    struct.pack_into("<I", head, 100, hdr_size)
    struct.pack_into("<16s16s", head, 104, b"4711", b"4711")
    struct.pack_into("<I", head, 136, 123)  # internal patient id
    struct.pack_into("<24s", head, 140, patient_id.encode("ascii"))
    struct.pack_into("<d", head, 164, _days_since_1899(dob))
    struct.pack_into("<I", head, 172, 7)
    struct.pack_into("<24s", head, 176, b"#visit")
    struct.pack_into("<d", head, 200, _days_since_1899("20240102"))
    struct.pack_into("<34s", head, 224, b"prog")
    out = [bytes(head), np.ascontiguousarray(slo, np.uint8).tobytes()]
    refl = vol_reflectance(bscans)
    if invalid is not None:
        refl[invalid] = np.finfo(np.float32).max
    for k in range(S):
        bh = bytearray(hdr_size)
        struct.pack_into("<12sI", bh, 0, b"HSF-BS-103\0\0", hdr_size)
        y = k * distance
        struct.pack_into("<dddd", bh, 16, 0.0, y, W * scale_x, y)
        struct.pack_into("<IIfI", bh, 48, num_seg, 256, 30.0, 0)
        segs = np.full((num_seg, W), 10.0 + k, np.float32)
        bh[256:256 + segs.nbytes] = segs.tobytes()
        out.append(bytes(bh))
        out.append(refl[k].astype("<f4").tobytes())
    return b"".join(out)


def write_heyex_vol(path, bscans: np.ndarray, **kw) -> Path:
    path = Path(path)
    path.write_bytes(heyex_vol_bytes(bscans, **kw))
    return path


def write_heyex_xml(folder, bscans: np.ndarray, scale_x=0.0114, scale_y=0.0039, distance=0.1234,
                    laterality="L", localizer: Optional[np.ndarray] = None) -> Path:
    """A HEYEX XML export in ``folder``: ``export.xml`` + ``<n>.png`` per B-scan + ``slo.png``."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    S, H, W = bscans.shape
    if localizer is None:
        localizer = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))
    Image.fromarray(localizer).save(folder / "slo.png")
    date = "<Date><Year>{}</Year><Month>{}</Month><Day>{}</Day></Date>"
    images = [f"""<Image><ID>1</ID><ImageNumber>0</ImageNumber><ImageType><Type>LOCALIZER</Type></ImageType>
<OphthalmicAcquisitionContext><Width>{localizer.shape[1]}</Width><Height>{localizer.shape[0]}</Height>
<ScaleX>0.0112</ScaleX><ScaleY>0.0113</ScaleY><Angle>30</Angle><Focus>-1.25</Focus></OphthalmicAcquisitionContext>
<ImageData><ExamURL>C:\\HEYEX\\export\\slo.png</ExamURL></ImageData></Image>"""]
    for k in range(S):
        Image.fromarray(bscans[k]).save(folder / f"bscan_{k:03d}.png")
        y = k * distance
        images.append(f"""<Image><ID>{k + 2}</ID><ImageNumber>{k + 1}</ImageNumber><ImageType><Type>OCT</Type></ImageType>
<OphthalmicAcquisitionContext><Width>{W}</Width><Height>{H}</Height><ScaleX>{scale_x}</ScaleX><ScaleY>{scale_y}</ScaleY>
<Start><Coord><X>0.0</X><Y>{y!r}</Y></Coord></Start><End><Coord><X>{W * scale_x!r}</X><Y>{y!r}</Y></Coord></End>
<ImageQuality>30.0</ImageQuality></OphthalmicAcquisitionContext>
<ImageData><ExamURL>C:\\HEYEX\\export\\bscan_{k:03d}.png</ExamURL></ImageData></Image>""")
    dob = PATIENT["dob"]
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<HEDX><BODY><SWVersion><Version>5.1</Version></SWVersion>
<Patient><ID>42</ID><PatientID>{PATIENT['id']}</PatientID><LastName>{PATIENT['last']}</LastName>
<FirstNames>{PATIENT['first']}</FirstNames><Birthdate>{date.format(dob[:4], dob[4:6], dob[6:])}</Birthdate><Sex>F</Sex>
<Study><ID>5</ID><StudyDate>{date.format(2024, 1, 2)}</StudyDate>
<Series><ID>77</ID><Laterality>{laterality}</Laterality><Type>Volume</Type>
<ReferenceSeries><ID>77</ID><ExamDate>{date.format(2024, 1, 2)}</ExamDate></ReferenceSeries>
{''.join(images)}
</Series></Study></Patient></BODY></HEDX>
"""
    path = folder / "export.xml"
    path.write_text(xml, encoding="utf-8")
    return path


def write_dicom_opt(path, bscans: np.ndarray, axial=0.0039, lateral=0.0114, between=0.1234, laterality="R",
                    manufacturer="Heidelberg Engineering", bits: int = 8, with_positions: bool = True,
                    spacing_between: bool = True) -> Path:
    """A DICOM Ophthalmic Tomography Image (multi-frame) holding ``bscans``, written with pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, OphthalmicTomographyImageStorage, generate_uid

    S, H, W = bscans.shape
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = OphthalmicTomographyImageStorage
    ds.SOPClassUID = OphthalmicTomographyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality = "OPT"
    ds.Manufacturer = manufacturer
    ds.PatientName = PATIENT["name"]
    ds.PatientID = PATIENT["id"]
    ds.PatientBirthDate = PATIENT["dob"]
    ds.PatientSex = "F"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "20240102", "101500", "", ""
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 3, 1
    ds.Laterality = ds.ImageLaterality = laterality
    ds.Rows, ds.Columns, ds.NumberOfFrames = H, W, S
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    pm = Dataset()
    pm.PixelSpacing = [axial, lateral]
    pm.SliceThickness = between
    if spacing_between:
        pm.SpacingBetweenSlices = between
    po = Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared = Dataset()
    shared.PixelMeasuresSequence = [pm]
    shared.PlaneOrientationSequence = [po]
    ds.SharedFunctionalGroupsSequence = [shared]
    if with_positions:
        frames = []
        for k in range(S):
            pp = Dataset()
            pp.ImagePositionPatient = [0.0, 0.0, k * between]
            f = Dataset()
            f.PlanePositionSequence = [pp]
            frames.append(f)
        ds.PerFrameFunctionalGroupsSequence = frames
    data = bscans.astype(np.uint16) * 257 if bits == 16 else bscans
    ds.PixelData = np.ascontiguousarray(data).astype("<u2" if bits == 16 else np.uint8).tobytes()
    path = Path(path)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_zeiss_img(folder, bscans: np.ndarray, name: Optional[str] = None) -> Path:
    """A Zeiss Cirrus .img cube: uint8 voxels, A-scans contiguous (oct-converter's layout, read with
    Fortran order as (rows, columns, B-scans)), the shape in the file name."""
    S, H, W = bscans.shape
    name = name or f"P4711_Macular Cube {W}x{S}_1-2-2024_10-15-00_OD_sn1234_cube_z.img"
    path = Path(folder) / name
    path.write_bytes(np.transpose(bscans, (1, 2, 0)).tobytes(order="F"))
    return path


def topcon_bytes(bscans: np.ndarray, kind: str = "fda", width_mm: float = 6.0, height_mm: float = 6.0,
                 z_um: float = 2.6, eye: int = 0, fundus: Optional[np.ndarray] = None, n_header: Optional[int] = None,
                 magic: bytes = b"FOCT") -> bytes:
    """A Topcon .fda/.fds container (``FOCT`` + type + version, then ``@NAME`` chunks, as documented by
    uocte): the OCT chunk (16-bit, uncompressed), scan parameters, capture and patient records, and
    for .fda an optional JPEG fundus photograph."""
    S, H, W = bscans.shape
    out = [magic + (b"FDA" if kind == "fda" else b"FDS") + struct.pack("<II", 2, 1)]

    def chunk(name: bytes, data: bytes) -> None:
        out.append(bytes([len(name)]) + name + struct.pack("<I", len(data)) + data)

    vol16 = np.ascontiguousarray(bscans).astype("<u2")
    chunk(b"@IMG_MOT_COMP_03" if kind == "fda" else b"@IMG_SCAN_03",
          struct.pack("<BIIIIBI", 2, W, H, 16, S if n_header is None else n_header, 0, vol16.nbytes) + vol16.tobytes())
    chunk(b"@PARAM_SCAN_04", struct.pack("<III5d2B", 0, 0, 0, width_mm, height_mm, z_um, 0.0, 0.0, 0, 0))
    chunk(b"@CAPTURE_INFO_02", struct.pack("<BBI", eye, 2, 1) + b"3D macula".ljust(100, b"\0")
          + struct.pack("<6H", 2024, 1, 2, 10, 15, 0))
    dob = PATIENT["dob"]
    pat = (PATIENT["id"].encode().ljust(32, b"\0") + PATIENT["first"].encode().ljust(32, b"\0")
           + PATIENT["last"].encode().ljust(32, b"\0") + b"\0" * 8 + bytes([2])
           + struct.pack("<3H", int(dob[:4]), int(dob[4:6]), int(dob[6:])))
    chunk(b"@PATIENT_INFO_02", pat.ljust(1024, b"\0"))
    if fundus is not None and kind == "fda":
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.repeat(fundus[..., None], 3, axis=2)).save(buf, format="JPEG", quality=95)
        jpg = buf.getvalue()
        chunk(b"@IMG_FUNDUS", struct.pack("<IIII4sI", fundus.shape[1], fundus.shape[0], 24, 1, b"JPEG", len(jpg))
              + jpg)
    out.append(b"\0")
    return b"".join(out)


def write_topcon(path, bscans: np.ndarray, **kw) -> Path:
    path = Path(path)
    path.write_bytes(topcon_bytes(bscans, kind=path.suffix.lower().lstrip("."), **kw))
    return path
