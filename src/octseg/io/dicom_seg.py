"""Label volumes as DICOM Segmentation objects (highdicom), for PACS and DICOM viewers.

* A DICOM OCT input: the SEG references the source image (its study, series, SOP instance and
  frames), so a viewer lays the masks over the scan it came from.
* Any other input (``.vol``, ``.fda``, ...): there is no DICOM series to refer to, so the B-scans
  are written beside the SEG as a DICOM OCT file (``<name>_oct.dcm``, Ophthalmic Tomography Image
  Storage, with the input's spacing and laterality) and the SEG references that.

One binary segment per fluid class (label = class name; category Substance, type Body fluid,
region Retina, algorithm type AUTOMATIC by octseg), every frame kept (B-scans x segments), so
frame ``k`` of segment ``c`` is B-scan ``k``. Patient name, id and birth date are left empty
unless ``keep_identifiers`` (a SEG meant for the PACS that holds the scan needs them: pass
``--keep-identifiers``). Files are written atomically.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from octseg.errors import DataError, OctsegError
from octseg.io.outputs import atomic_write
from octseg.io.vendor.common import Identifiers, require
from octseg.records import Spacing

OPT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
_PATIENT_KEYS = ("PatientName", "PatientID", "PatientBirthDate")


def _save(path: Path, ds) -> Path:
    return atomic_write(path, lambda fh: ds.save_as(fh, enforce_file_format=True), fsync=False)


def _deidentified(ds, identifiers: Optional[Identifiers], keep: bool):
    """A header copy whose patient fields are empty, or (``keep``) the input's."""
    ds = ds.copy()
    if not keep:
        for key in _PATIENT_KEYS:
            setattr(ds, key, "")
    elif identifiers is not None:
        ds.PatientName = identifiers.name or ds.get("PatientName", "")
        ds.PatientID = identifiers.patient_id or ds.get("PatientID", "")
        ds.PatientBirthDate = (identifiers.birth_date or "").replace("-", "") or ds.get("PatientBirthDate", "")
    for key in ("PatientSex", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        if key not in ds:
            setattr(ds, key, "")
    if "FrameOfReferenceUID" not in ds:  # OPT files need not have one; highdicom's SEG does
        from pydicom.uid import generate_uid

        ds.FrameOfReferenceUID = generate_uid()
    return ds


def oct_dataset(bscans: np.ndarray, spacing: Optional[Spacing], laterality: Optional[str] = None,
                description: str = "", identifiers: Optional[Identifiers] = None, keep_identifiers: bool = False):
    """B-scans (uint8 (S, H, W)) as a DICOM OCT (Ophthalmic Tomography Image Storage) dataset, the
    series a SEG of a non-DICOM input refers to."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from octseg import __version__

    S, H, W = bscans.shape
    now = _dt.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = OPT_SOP_CLASS
    ds.SOPClassUID = OPT_SOP_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ids = identifiers if keep_identifiers and identifiers is not None else Identifiers()
    ds.PatientName, ds.PatientID = ids.name or "", ids.patient_id or ""
    ds.PatientBirthDate, ds.PatientSex = (ids.birth_date or "").replace("-", ""), ""
    ds.StudyDate, ds.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "OPT", 1, 1
    ds.SeriesDescription = description[:64]
    ds.Manufacturer, ds.SoftwareVersions = "octseg", __version__
    ds.ImageType = ["DERIVED", "SECONDARY"]
    if laterality in ("OD", "OS"):
        ds.ImageLaterality = ds.Laterality = "R" if laterality == "OD" else "L"
    ds.Rows, ds.Columns, ds.NumberOfFrames = H, W, S
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    shared = Dataset()
    po = Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = [po]
    between = (spacing.slice if spacing is not None and spacing.slice else 1.0)
    if spacing is not None:
        pm = Dataset()
        pm.PixelSpacing = [float(spacing.row), float(spacing.col)]
        pm.SliceThickness = pm.SpacingBetweenSlices = float(between)
        shared.PixelMeasuresSequence = [pm]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in range(S):
        pp = Dataset()
        pp.ImagePositionPatient = [0.0, 0.0, k * float(between)]
        f = Dataset()
        f.PlanePositionSequence = [pp]
        frames.append(f)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.ascontiguousarray(bscans, dtype=np.uint8).tobytes()
    return ds


def segment_descriptions(classes: Sequence[str]):
    """One highdicom SegmentDescription per fluid class (classes[1:])."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from octseg import __version__

    algo = hd.AlgorithmIdentificationSequence(name="octseg", version=__version__,
                                              family=codes.DCM.ArtificialIntelligence)
    return [hd.seg.SegmentDescription(
        segment_number=k, segment_label=str(name)[:64], segmented_property_category=codes.SCT.Substance,
        segmented_property_type=codes.SCT.BodyFluid, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo, anatomic_regions=[codes.SCT.Retina])
        for k, name in enumerate(classes[1:], start=1)]


def write_segmentation(path, labels: np.ndarray, classes: Sequence[str], *, source=None,
                       bscans: Optional[np.ndarray] = None, spacing: Optional[Spacing] = None,
                       laterality: Optional[str] = None, identifiers: Optional[Identifiers] = None,
                       keep_identifiers: bool = False, oct_path=None, description: str = "") -> list[Path]:
    """Write ``labels`` ((S, H, W), values 0..K-1) as a DICOM SEG at ``path``; returns the files written.

    ``source``: the DICOM OCT input's header (pydicom Dataset, no pixels needed). Without it,
    ``bscans`` are written first as a DICOM OCT file at ``oct_path`` and the SEG refers to it.
    The SEG is written last, so a SEG under its final name always has its referenced series."""
    require("highdicom", "highdicom", path, "writing DICOM Segmentations")
    import highdicom as hd
    from pydicom.uid import generate_uid

    from octseg import __version__

    path = Path(path)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    if len(classes) < 2:
        raise DataError(path, "a segmentation needs at least one class besides the background")
    written: list[Path] = []
    if source is None:
        if bscans is None or oct_path is None:
            raise ValueError("without a DICOM source, give bscans and oct_path")
        src = oct_dataset(np.asarray(bscans), spacing, laterality, description, identifiers, keep_identifiers)
        written.append(_save(Path(oct_path), src))
    else:
        src = _deidentified(source, identifiers, keep_identifiers)
    n_frames = int(src.get("NumberOfFrames", 1) or 1)
    if labels.shape != (n_frames, int(src.Rows), int(src.Columns)):
        raise DataError(path, f"labels of shape {labels.shape} do not match the source's {n_frames} frames of "
                              f"{src.Columns} x {src.Rows}")
    K = len(classes)
    binary = np.stack([labels == c for c in range(1, K)], axis=-1)  # (S, H, W, K-1): one segment per class
    try:
        seg = hd.seg.Segmentation(
            source_images=[src], pixel_array=binary, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segment_descriptions(classes), series_instance_uid=generate_uid(),
            series_number=900, sop_instance_uid=generate_uid(), instance_number=1, manufacturer="octseg",
            manufacturer_model_name="octseg", software_versions=__version__, device_serial_number="0",
            series_description=(f"octseg fluid {description}".strip())[:64], omit_empty_frames=False)
    except (OctsegError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - highdicom checks the source's attributes
        raise DataError(path, f"cannot build the DICOM Segmentation ({type(exc).__name__}: {str(exc)[:200]})") \
            from None
    if not keep_identifiers:
        for key in _PATIENT_KEYS:
            setattr(seg, key, "")
    written.append(_save(path, seg))
    return written
