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
    from octseg.io.vendor import read as read_clinic
    from octseg.overlay import montage

    from octseg.io.vendor import probe

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
        S = images.shape[0]
        name = R._unique(run, vs.volume)
        conf = np.zeros(S, np.float32)
        with run.timed("infer"):
            labels = predictor.predict_u8(images, progress=bar.update, confidence=conf)
            counts = R._class_pixels(labels, len(run.classes))
        run.confidence.extend((name, f"{name}_{k:03d}", k, float(conf[k])) for k in range(S))
        if run.images is not None:
            run.images[name] = images
        sp = vs.spacing
        with run.timed("masks"):
            if run.fmt_volumes == "png":
                for k in range(S):
                    R._save_png(run, f"masks/{name}/{name}_{k:03d}.png", labels[k])
            elif run.fmt_volumes == "dcm":
                write_seg(run, name, labels, images, scan, keep)
            else:
                spacing = (sp.col, sp.row, sp.slice or 1.0) if sp is not None else None
                R._write_sitk(run, f"masks/{name}{R._EXT[run.fmt_volumes]}", labels, spacing)
            write_enface_png(run.folder.file(f"enface/{name}.png"), labels, run.classes, sp)
        fluid = counts[:, 1:].sum(axis=1)
        px_area = sp.row * sp.col if sp else None
        tiles = [(images[k], labels[k], f"B-scan {k}: " + (f"{fluid[k] * px_area:.3f} mm^2" if px_area else
                                                             f"{fluid[k]} px")) for k in R._montage_slices(fluid)]
        vox = R._voxel_mm3(sp)
        total = f"{fluid.sum() * vox:.3f} mm^3 fluid" if vox else f"{int(fluid.sum())} fluid voxels"
        with run.timed("overlays"):
            R._save_png(run, f"overlays/{name}.png", montage(tiles, run.classes, title=f"{name}: {total}"))
        source = header.source(keep)
        ids = [f"{name}_{k:03d}" for k in range(S)]
        R._bscan_rows(run, name, ids, range(S), counts, sp, [f"{source}#{k}" for k in range(S)])
        R._add_volume(run, name, counts, sp, source, S)
        run.n_bscans += S
        run.n_volumes += 1


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
