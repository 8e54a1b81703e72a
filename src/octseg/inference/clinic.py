"""``octseg predict`` on clinic files (Heidelberg, Topcon, Zeiss, DICOM OCT): each OCT series is
one volume, predicted like an ``.mhd`` volume, with its masks written as

* ``mhd`` / ``nii``: ``masks/<volume>.mhd`` or ``.nii.gz`` with the file's voxel spacing (mm);
* ``dcm``: ``masks/<volume>.dcm``, a DICOM Segmentation referencing the input DICOM OCT image,
  or, for other formats, ``masks/<volume>_oct.dcm`` (the B-scans as DICOM OCT) that it references;
* ``png``: one PNG per B-scan, as for any volume;

and ``enface/<volume>.png``: the en-face fluid map (fluid thickness per A-scan, per class, over
the B-scan x A-scan plane), the picture ``octseg report`` draws, from the same numbers.

Volume ids and the ``source`` column carry no patient identifiers from the file's header unless
the job was planned with ``keep_identifiers`` (``--keep-identifiers``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from octseg.errors import DataError


def clinic_n_bscans(path: Path) -> int:
    """B-scans in a clinic file (all its OCT series), from the headers."""
    from octseg.io.vendor import probe

    return sum(h.n_bscans for h in probe(path))


def write_enface_png(path, labels: np.ndarray, classes, spacing=None) -> Path:
    """The en-face fluid map of a predicted volume as a PNG (see :func:`octseg.overlay.enface_image`)."""
    from octseg.io.images import write_png
    from octseg.overlay import enface_image

    return write_png(path, enface_image(labels, classes, spacing))


def predict_clinic(run, predictor, job, bar) -> None:
    """Predict every OCT series of the clinic file ``job.path`` into ``run``'s output folder."""
    from octseg.data.readers import scan_source
    from octseg.inference import run as R
    from octseg.io.vendor import probe
    from octseg.io.vendor import read as read_clinic

    keep = bool(getattr(job, "keep_identifiers", False))
    with run.timed("read"):
        src = scan_source(job.path, layout="clinic", classes=run.classes, keep_identifiers=keep)
        headers = probe(job.path)  # in the order scan_source made its volumes
    for vs, header in zip(src.volumes, headers):
        with run.timed("read"):
            scan = None
            if run.fmt_volumes == "dcm":  # the SEG needs the input's DICOM header (or the B-scans to write one)
                scan = read_clinic(job.path, series=header.series or None)[0]
                images = scan.bscans
            else:
                S, (H, W) = vs.n_slices, vs.shape
                images = np.empty((S, H, W), dtype=np.uint8)
                for b in vs.load():
                    images[b.slice_index] = b.image
        sp = vs.spacing

        def write_masks(name, labels, images=images, scan=scan, sp=sp):
            if run.fmt_volumes == "dcm":
                write_seg(run, name, labels, images, scan, keep)
            elif run.fmt_volumes != "png":
                spacing = (sp.col, sp.row, sp.slice or 1.0) if sp is not None else None
                R._write_sitk(run, f"masks/{name}{R._EXT[run.fmt_volumes]}", labels, spacing)
            write_enface_png(run.folder.file(f"enface/{name}.png"), labels, run.classes, sp)

        R._predict_stack(run, predictor, bar, vs.volume, images, sp, header.source(keep), write_masks)


def write_seg(run, name: str, labels: np.ndarray, images: np.ndarray, scan, keep: bool) -> None:
    """``masks/<name>.dcm`` (+ ``masks/<name>_oct.dcm`` for a non-DICOM input), recorded as the run's
    before they are written."""
    from octseg.io.dicom_seg import write_segmentation

    h = scan.header
    seg = run.folder.file(f"masks/{name}.dcm")
    oct_path = None if scan.dicom is not None else run.folder.file(f"masks/{name}_oct.dcm")
    if scan.bscans.shape != labels.shape:
        raise DataError(h.path, f"predicted {labels.shape} for B-scans of {scan.bscans.shape}")
    write_segmentation(seg, labels, run.classes, source=scan.dicom, bscans=images, spacing=h.spacing,
                       laterality=h.laterality, identifiers=h.identifiers, keep_identifiers=keep,
                       oct_path=oct_path, description=name)


def write_seg_plain(run, name: str, labels: np.ndarray, images: np.ndarray, spacing) -> None:
    """``--format dcm`` for a volume that is not a clinic file (``.mhd``): the B-scans as DICOM OCT
    (``masks/<name>_oct.dcm``) and the SEG referencing them (``masks/<name>.dcm``)."""
    from octseg.io.dicom_seg import write_segmentation

    seg = run.folder.file(f"masks/{name}.dcm")
    oct_path = run.folder.file(f"masks/{name}_oct.dcm")
    write_segmentation(seg, labels, run.classes, bscans=images, spacing=spacing, oct_path=oct_path, description=name)
