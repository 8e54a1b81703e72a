"""``octseg predict``'s work: every image or volume under INPUT into OUT.

OUT receives:

* ``masks/``: label maps (values 0..K-1) at each input's native size: ``<stem>.png`` per image,
  ``<volume>.mhd`` (or ``.nii.gz``) per volume with the input's spacing, origin and direction,
  or with ``dcm`` a DICOM Segmentation per volume (clinic files: :mod:`octseg.inference.clinic`,
  which also writes ``enface/<volume>.png``);
* ``overlays/``: ``<stem>.png`` per image; ``<volume>.png`` per volume, a montage of the (up to
  8) B-scans with the most predicted fluid;
* ``fluid.csv``: one row per (volume, class) with the voxel count and volume in mm^3 (= µL), and
  one row per (B-scan, class) with the area in pixels and mm^2 (blank where spacing is unknown);
* ``confidence.csv``: the model's confidence per B-scan (mean maximum softmax probability at the
  model's input size) and its mean per volume (``octseg report`` flags low-confidence volumes).

OUT is claimed as an :class:`octseg.io.outputs.OutputFolder` (never the input, never over a
user's files, one run at a time). Unreadable inputs in a folder are skipped and listed.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from octseg.errors import ConfigError, DataError
from octseg.inference.inputs import Job, plan_inputs, read_bscans, spacing_table
from octseg.inference.predictor import Predictor
from octseg.io.images import write_png
from octseg.io.outputs import OutputFolder, atomic_write_text
from octseg.io.volumes import volume_header

#: How many B-scans with the most fluid a volume's overlay montage shows.
MONTAGE_BSCANS = 8
FLUID_CSV_COLUMNS = ("level", "volume", "bscan", "slice_index", "class", "pixels", "area_mm2", "volume_mm3",
                     "source")
CONFIDENCE_CSV_COLUMNS = ("level", "volume", "bscan", "slice_index", "confidence")


@dataclass
class PredictRun:
    """What :func:`predict_path` did: counts, per-volume fluid, failures and time per stage."""

    out: Path
    classes: tuple[str, ...]
    fmt_images: str
    fmt_volumes: str
    rows: list = field(default_factory=list)  # B-scan rows of fluid.csv
    failures: list = field(default_factory=list)  # (path, problem)
    names: set = field(default_factory=set)
    volumes: dict = field(default_factory=dict)  # volume id -> {"pixels", "spacing", "n", "source"}
    n_bscans: int = 0
    n_images: int = 0
    n_volumes: int = 0
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)  # stage -> seconds: read, infer, masks, overlays, csv
    folder: Optional[OutputFolder] = None  # the claimed OUT: every written file goes through it
    confidence: list = field(default_factory=list)  # (volume, bscan, slice_index, mean max softmax)
    #: with ``keep_images``: mask name -> the uint8 B-scan stack as predicted (for ``--report``)
    images: Optional[dict] = None
    #: ``--resume``'s journal of finished inputs (:mod:`octseg.inference.resume`)
    journal: Optional[object] = None
    added: Optional[dict] = None  # what the input being predicted adds to the tables (for the journal)

    @contextmanager
    def timed(self, stage: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t


# ----------------------------------------------------------------------------------------- CLI: outputs


def _unique(run: PredictRun, name: str) -> str:
    base, i = name, 2
    while name in run.names:
        name = f"{base}_{i}"
        i += 1
    run.names.add(name)
    if run.added is not None:
        run.added["names"].append(name)
    return name


def input_label(job, k: int) -> str:
    """How tables, logs and the console name input ``job`` (``k``: its 1-based position): its path,
    but for a clinic file without ``keep_identifiers`` (whose name often holds the patient's) the
    path with the header's identifiers redacted, or ``input #k`` where no header can be read."""
    if getattr(job, "kind", None) != "clinic" or getattr(job, "keep_identifiers", False):
        return str(job.path)
    try:
        from octseg.io.vendor import probe

        return probe(job.path)[0].source(False)
    except Exception:  # noqa: BLE001 - an unreadable header: nothing from the file is safe to show
        return f"input #{k}"


def _snapshot(run: PredictRun) -> tuple:
    """What :func:`_rollback` needs to take back one input's figures (volume and clinic jobs add
    new, uniquely named volumes: their entries follow the snapshot's in the dicts' order)."""
    return (len(run.rows), len(run.confidence), len(run.volumes), set(run.names),
            None if run.images is None else len(run.images), (run.n_bscans, run.n_images, run.n_volumes))


def _rollback(run: PredictRun, snap: tuple) -> None:
    """Take back the figures an input that failed part-way (a clinic file's later series) had added."""
    rows, conf, vols, names, images, counts = snap
    del run.rows[rows:], run.confidence[conf:]
    for key in list(run.volumes)[vols:]:
        del run.volumes[key]
    run.names = names
    if images is not None and run.images is not None:
        for key in list(run.images)[images:]:
            del run.images[key]
    run.n_bscans, run.n_images, run.n_volumes = counts


def _begin_input(run: PredictRun) -> None:
    """Start collecting one input's outputs and figures for the journal."""
    if run.journal is None:
        return
    run.folder.touched = []
    run.added = {"names": [], "rows": len(run.rows), "confidence": len(run.confidence), "volumes": [],
                 "counts": (run.n_bscans, run.n_images, run.n_volumes)}


def _finish_input(run: PredictRun, path) -> None:
    """Journal ``path`` as finished: its outputs are all in place (written atomically)."""
    if run.journal is None or run.added is None:
        return
    a, n0 = run.added, run.added["counts"]
    figures = {"names": a["names"], "rows": run.rows[a["rows"]:], "confidence": run.confidence[a["confidence"]:],
               "volumes": a["volumes"],
               "counts": [run.n_bscans - n0[0], run.n_images - n0[1], run.n_volumes - n0[2]]}
    run.journal.add(path, run.folder.touched, figures)
    run.folder.touched, run.added = None, None


def _replay_input(run: PredictRun, entry: dict) -> None:
    """A finished input's share of the tables, from the journal, as predicting it again would add it."""
    from octseg.records import Spacing

    run.names.update(entry["names"])
    run.rows += [tuple(r) for r in entry["rows"]]
    run.confidence += [tuple(c) for c in entry["confidence"]]
    for vol, pixels, sp, source, n in entry["volumes"]:
        _add_volume(run, vol, np.asarray(pixels, np.int64)[None], None if sp is None else Spacing(*sp), source, n)
    run.n_bscans += entry["counts"][0]
    run.n_images += entry["counts"][1]
    run.n_volumes += entry["counts"][2]


def _class_pixels(labels: np.ndarray, k: int) -> np.ndarray:
    """(N, H, W) labels -> (N, K) pixel counts per class."""
    flat = labels.reshape(len(labels), -1)
    if k <= 16:
        return np.stack([(flat == c).sum(axis=1) for c in range(k)], axis=1)
    return np.stack([np.bincount(r, minlength=k)[:k] for r in flat])


def _fmt(x: Optional[float]) -> str:
    return "" if x is None else f"{x:.6g}"


def _bscan_rows(run: PredictRun, volume: str, ids, slices, counts: np.ndarray, spacing, sources) -> None:
    px_area = spacing.row * spacing.col if spacing is not None else None
    for bid, sl, cnt, src in zip(ids, slices, counts, sources):
        for c in range(1, len(run.classes)):
            area = cnt[c] * px_area if px_area is not None else None
            run.rows.append(("bscan", volume, bid, sl, run.classes[c], int(cnt[c]), _fmt(area), "", src))


def _add_volume(run: PredictRun, volume: str, counts: np.ndarray, spacing, source: str, n: int) -> None:
    v = run.volumes.setdefault(volume, {"pixels": np.zeros(len(run.classes), np.int64), "spacing": spacing,
                                        "n": 0, "source": source})
    v["pixels"] += counts.sum(axis=0)
    v["n"] += n
    if v["spacing"] is None:
        v["spacing"] = spacing
    if run.added is not None:
        run.added["volumes"].append((volume, [int(x) for x in counts.sum(axis=0)], None if spacing is None else
                                     [spacing.row, spacing.col, spacing.slice], source, n))


def _voxel_mm3(spacing) -> Optional[float]:
    if spacing is None or not spacing.slice:
        return None
    return spacing.row * spacing.col * spacing.slice


def _write_csv(run: PredictRun, name: str = "fluid.csv") -> Path:
    """fluid.csv, written last and atomically: it is there only when it matches every mask of the run.
    (``name``: a shard's part, see :mod:`octseg.inference.shards`.)"""
    rows = []
    for vol, v in run.volumes.items():
        vox = _voxel_mm3(v["spacing"])
        for c in range(1, len(run.classes)):
            mm3 = v["pixels"][c] * vox if vox is not None else None
            rows.append(("volume", vol, "", "", run.classes[c], int(v["pixels"][c]), "", _fmt(mm3), v["source"]))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(FLUID_CSV_COLUMNS)
    w.writerows(rows)
    w.writerows(run.rows)
    return atomic_write_text(run.folder.file(name), buf.getvalue())


def _write_confidence_csv(run: PredictRun, name: str = "confidence.csv") -> Path:
    """confidence.csv: per B-scan and (mean) per volume, written before fluid.csv."""
    by_volume: dict = {}
    for vol, _, _, c in run.confidence:
        by_volume.setdefault(vol, []).append(c)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CONFIDENCE_CSV_COLUMNS)
    w.writerows(("volume", vol, "", "", f"{float(np.mean(cs)):.4f}") for vol, cs in by_volume.items())
    w.writerows(("bscan", vol, bid, sl, f"{c:.4f}") for vol, bid, sl, c in run.confidence)
    return atomic_write_text(run.folder.file(name), buf.getvalue())


def _save_png(run: PredictRun, rel: str, image) -> None:
    """A mask or overlay as PNG at ``OUT/rel``, recorded as octseg's and written atomically."""
    write_png(run.folder.file(rel), image)


def _write_sitk(run: PredictRun, rel: str, labels: np.ndarray, spacing=None, origin=None, direction=None) -> None:
    """A label volume as .mhd (+ .zraw) or .nii.gz, both files recorded as the run's before they
    are written (:func:`octseg.io.volumes.write_volume`: a header under the final name always
    has its data)."""
    from octseg.io.volumes import volume_data_file, write_volume

    final = run.folder.file(rel)
    data = volume_data_file(final)
    if data is not None:
        run.folder.file(str(Path(rel).with_name(data.name)))
    write_volume(final, labels, spacing, origin, direction, compress=True)  # zlib: label volumes shrink ~50x


_EXT = {"mhd": ".mhd", "nii": ".nii.gz", "png": ".png", "dcm": ".dcm"}


def _do_images(run: PredictRun, predictor: Predictor, jobs: list[Job], root: Path, bar) -> None:
    from octseg.overlay import overlay_image

    spacings = spacing_table(root if root.is_dir() else root.parent)
    volume_wise = getattr(predictor, "context_slices", 0) > 0
    pending: list = []
    pending_jobs: list = []

    def flush():
        if not pending:
            return
        conf = np.zeros(len(pending), np.float32)
        with run.timed("infer"):
            labels = predictor.predict_u8(np.stack([b.image for b in pending]), progress=bar.update, confidence=conf,
                                          slice_indices=[b.slice_index for b in pending] if volume_wise else None)
            counts = _class_pixels(labels, len(run.classes))
        for b, lab, cnt, cf, job in zip(pending, labels, counts, conf, pending_jobs):
            _begin_input(run)
            name = _unique(run, Path(b.source).stem)
            run.confidence.append((b.volume, name, b.slice_index, float(cf)))
            if run.images is not None:
                run.images[name] = b.image[None]
            sp = b.spacing or (spacings.get(b.volume) or {}).get("spacing")
            with run.timed("masks"):
                if run.fmt_images == "png":
                    _save_png(run, f"masks/{name}.png", lab)
                else:
                    _write_sitk(run, f"masks/{name}{_EXT[run.fmt_images]}", lab,
                                spacing=(sp.col, sp.row) if sp else None)
            fluid = int(cnt[1:].sum())
            caption = f"fluid {fluid * sp.row * sp.col:.4f} mm^2" if sp else f"fluid {fluid} px"
            with run.timed("overlays"):
                _save_png(run, f"overlays/{name}.png", overlay_image(b.image, lab, run.classes, caption=caption))
            _bscan_rows(run, b.volume, [name], [b.slice_index], cnt[None], sp, [b.source])
            _add_volume(run, b.volume, cnt[None], sp, str(Path(b.source).parent), 1)
            run.n_bscans += 1
            run.n_images += 1
            _finish_input(run, job.path)
        pending.clear()
        pending_jobs.clear()

    for job in jobs:
        entry = run.journal.finished(job.path) if run.journal is not None else None
        if entry is not None:  # --resume: finished, outputs verified; its figures in job order
            flush()
            _replay_input(run, entry)
            bar.update(1)
            continue
        try:
            with run.timed("read"):
                vs = read_bscans(job.path, "folders", run.classes)
                b = next(iter(vs.load()))
        except DataError as exc:
            run.failures.append((str(job.path), exc.problem))
            bar.update(1)
            continue
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - one unreadable file must not stop the others
            run.failures.append((str(job.path), f"cannot read ({type(exc).__name__}: {exc})"))
            bar.update(1)
            continue
        # a 2.5D model predicts a volume's B-scans together (its neighbours), in runs of consecutive files
        if pending and (pending[0].image.shape != b.image.shape or (
                pending[0].volume != b.volume if volume_wise else len(pending) >= predictor.batch)):
            flush()
        pending.append(b)
        pending_jobs.append(job)
    flush()


def _montage_slices(fluid: np.ndarray) -> list[int]:
    order = np.argsort(-fluid, kind="stable")
    chosen = [int(i) for i in order[:MONTAGE_BSCANS] if fluid[i] > 0]
    if not chosen:  # no fluid: a few B-scans across the volume for context
        chosen = sorted({int(round(x)) for x in np.linspace(0, len(fluid) - 1, min(4, len(fluid)))})
    return sorted(chosen)


def _do_volume(run: PredictRun, predictor: Predictor, job: Job, bar) -> None:
    if job.kind == "clinic":  # vendor files: octseg.inference.clinic
        from octseg.inference.clinic import predict_clinic

        return predict_clinic(run, predictor, job, bar)
    with run.timed("read"):
        head = volume_header(job.path)
        vs = read_bscans(job.path, "retouch", run.classes)
        S, (H, W) = vs.n_slices, vs.shape
        images = np.empty((S, H, W), dtype=np.uint8)
        for b in vs.load():
            images[b.slice_index] = b.image

    def write_masks(name: str, labels: np.ndarray) -> None:
        if run.fmt_volumes == "dcm":
            from octseg.inference.clinic import write_seg_plain

            write_seg_plain(run, name, labels, images, vs.spacing)
        elif run.fmt_volumes != "png":
            _write_sitk(run, f"masks/{name}{_EXT[run.fmt_volumes]}", labels, head.GetSpacing(), head.GetOrigin(),
                        head.GetDirection())

    _predict_stack(run, predictor, bar, vs.volume, images, vs.spacing, str(job.path), write_masks)


def _predict_stack(run: PredictRun, predictor: Predictor, bar, volume: str, images: np.ndarray, sp, source: str,
                   write_masks) -> None:
    """Predict one volume's uint8 B-scans ``images`` (S, H, W) and add its outputs to ``run``: the
    masks (PNGs per B-scan here; other formats by ``write_masks(name, labels)``, called within the
    masks stage for every format), the overlay montage, and its rows in the tables, ``source``
    naming it there (``source#k`` per B-scan). Shared by ``.mhd`` volumes and clinic series."""
    from octseg.overlay import montage

    S = images.shape[0]
    name = _unique(run, volume)
    conf = np.zeros(S, np.float32)
    with run.timed("infer"):
        labels = predictor.predict_u8(images, progress=bar.update, confidence=conf)
        counts = _class_pixels(labels, len(run.classes))
    run.confidence.extend((name, f"{name}_{k:03d}", k, float(conf[k])) for k in range(S))
    if run.images is not None:
        run.images[name] = images
    with run.timed("masks"):
        if run.fmt_volumes == "png":
            for k in range(S):
                _save_png(run, f"masks/{name}/{name}_{k:03d}.png", labels[k])
        write_masks(name, labels)
    fluid = counts[:, 1:].sum(axis=1)
    px_area = sp.row * sp.col if sp else None
    tiles = [(images[k], labels[k], f"B-scan {k}: " + (f"{fluid[k] * px_area:.3f} mm^2" if px_area else
                                                         f"{fluid[k]} px")) for k in _montage_slices(fluid)]
    vox = _voxel_mm3(sp)
    total = f"{fluid.sum() * vox:.3f} mm^3 fluid" if vox else f"{int(fluid.sum())} fluid voxels"
    with run.timed("overlays"):
        _save_png(run, f"overlays/{name}.png", montage(tiles, run.classes, title=f"{name}: {total}"))
    ids = [f"{name}_{k:03d}" for k in range(S)]
    _bscan_rows(run, name, ids, range(S), counts, sp, [f"{source}#{k}" for k in range(S)])
    _add_volume(run, name, counts, sp, source, S)
    run.n_bscans += S
    run.n_volumes += 1


def format_summary(run: PredictRun, predictor: Predictor) -> str:
    """The summary ``octseg predict`` prints: counts, speed, where the outputs are, fluid per volume, failures."""
    seconds = run.seconds
    lines = [f"predicted {run.n_bscans} B-scan(s) ({run.n_volumes} volume(s), {run.n_images} image(s)) in "
             f"{seconds:.1f} s ({run.n_bscans / max(seconds, 1e-9):.1f} B-scans/s; backend {predictor.backend}, "
             f"device {predictor.device}{', flip TTA' if predictor.tta else ''}) -> {run.out}",
             f"  masks in {run.out / 'masks'}, overlays in {run.out / 'overlays'}, "
             f"fluid table {run.out / 'fluid.csv'}"]
    if run.volumes:
        fluid_names = run.classes[1:]
        lines.append("fluid per volume: mm³ (= µL), or voxels where the spacing is unknown")
        width = max(len(v) for v in run.volumes)
        shown = list(run.volumes.items())
        for vol, v in shown[:50]:
            vox = _voxel_mm3(v["spacing"])
            cells = [f"{c} {v['pixels'][i + 1] * vox:.4f}" if vox else f"{c} {int(v['pixels'][i + 1])} vx"
                     for i, c in enumerate(fluid_names)]
            tot = v["pixels"][1:].sum()
            cells.append(f"total {tot * vox:.4f} mm³" if vox else f"total {int(tot)} vx")
            lines.append(f"  {vol.ljust(width)}  " + "  ".join(cells))
        if len(shown) > 50:
            lines.append(f"  ... and {len(shown) - 50} more volumes (see fluid.csv)")
    if run.failures:
        lines.append(f"FAILED: {len(run.failures)} input(s) could not be predicted:")
        lines += [f"  {p}: {why}" for p, why in run.failures]
    return "\n".join(lines)


def claim_output(out, src, overwrite: bool = False, shard=None, resume: bool = False, models=()) -> OutputFolder:
    """OUT as octseg predict's folder: never the input, never over a user's files, one run at a time
    (or, with a ``shard``, the shards of one run side by side: :mod:`octseg.inference.shards`);
    ``resume`` continues an earlier (killed) predict's output there instead of refusing it.
    ``models``: the checkpoints, CV folders or ONNX file, protected like the input."""
    if resume and overwrite:
        raise ConfigError("--resume continues an earlier prediction and --overwrite replaces it: give one of them")
    return OutputFolder(Path(out), "predict", overwrite=overwrite, reuse=resume,
                        protect=[Path(src), *(Path(m) for m in models)], part=None if shard is None else shard.part)


def predict_path(predictor: Predictor, input, out, fmt: Optional[str] = None, progress: bool = True,
                 jobs: Optional[list] = None, overwrite: bool = False,
                 folder: Optional[OutputFolder] = None, keep_images: bool = False, shard=None,
                 resume: bool = False) -> PredictRun:
    """Predict every image/volume under ``input`` into ``out`` (see the module docstring).

    ``out`` must be new, empty, or hold only an earlier ``octseg predict``'s output, which is
    replaced only with ``overwrite`` (so masks and ``fluid.csv`` always come from one run); a
    folder with files octseg did not write is refused unless ``overwrite``. Failures of single
    files in a folder are collected in the result; a bad sole input, or an output that cannot be
    written, raises :class:`octseg.errors.DataError`. ``keep_images`` keeps the predicted B-scans in
    ``run.images`` (mask name -> uint8 stack) for an HTML report written right after the run.
    With a ``shard`` (:class:`octseg.inference.shards.Shard`) only that shard's block of the inputs
    is predicted and the tables are written as its part (``octseg merge-csv`` joins the parts).
    Every run journals its finished inputs (:mod:`octseg.inference.resume`); ``resume`` skips those
    whose outputs are still intact, so a killed run continues with byte-identical final tables.
    """
    out, src = Path(out), Path(input)
    if fmt not in (None, "png", "mhd", "nii", "dcm"):
        raise ConfigError(f"mask format must be png, mhd, nii or dcm, not {fmt!r}")
    notes: list[str] = []
    if jobs is None:
        jobs, notes = plan_inputs(src)
    if folder is None:
        with claim_output(out, src, overwrite, shard, resume) as folder:
            return predict_path(predictor, src, out, fmt, progress, jobs, folder=folder, keep_images=keep_images,
                                shard=shard, resume=resume)
    t0 = time.perf_counter()
    run = PredictRun(out=out, classes=predictor.classes, fmt_images="png" if fmt in (None, "dcm") else fmt, fmt_volumes=fmt or "mhd",
                     folder=folder, images={} if keep_images else None)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    from octseg.inference.resume import Journal, run_settings

    run.journal = Journal(folder.own_record, out, run_settings(predictor, fmt, src), resume)
    if run.journal.note:
        print(f"note: {run.journal.note}", file=sys.stderr)
    try:
        return _predict_jobs(run, predictor, src, out, jobs, progress, shard, t0)
    finally:
        run.journal.close()


def _predict_jobs(run: PredictRun, predictor: Predictor, src: Path, out: Path, jobs: list, progress: bool, shard,
                  t0: float) -> PredictRun:
    from tqdm import tqdm

    single, n_jobs = len(jobs) == 1, len(jobs)
    if shard is not None:
        from octseg.inference.shards import select_jobs

        jobs = select_jobs(jobs, shard)
    position = {id(j): k for k, j in enumerate(jobs, 1)}  # 1-based: names an input in messages
    for job in jobs:  # header-level sizes for the progress bar; a bad header is a failure
        if job.kind in ("volume", "clinic"):
            try:
                if job.kind == "clinic":
                    from octseg.inference.clinic import clinic_n_bscans

                    job.n = clinic_n_bscans(job.path)
                else:
                    job.n = int(volume_header(job.path).GetSize()[2])
            except DataError as exc:
                if single:
                    raise
                run.failures.append((input_label(job, position[id(job)]), exc.problem))
                job.n = 0
    ok_jobs = [j for j in jobs if j.n > 0]
    with tqdm(total=sum(j.n for j in ok_jobs), unit="B-scan", desc="predict", dynamic_ncols=True,
              disable=not progress) as bar:
        images = [j for j in ok_jobs if j.kind == "image"]
        if images:
            _do_images(run, predictor, images, src, bar)
        for job in (j for j in ok_jobs if j.kind in ("volume", "clinic")):
            k = position[id(job)]
            entry = run.journal.finished(job.path, lambda: input_label(job, k)) if run.journal is not None else None
            if entry is not None:  # --resume: finished, outputs verified
                _replay_input(run, entry)
                bar.update(job.n)
                continue
            snap = _snapshot(run)
            try:
                _begin_input(run)
                _do_volume(run, predictor, job, bar)
                _finish_input(run, job.path)
            except DataError as exc:
                run.folder.touched, run.added = None, None
                _rollback(run, snap)  # none of a failed input's figures: its tables as if it were absent
                if single or out in Path(exc.path).parents:
                    raise  # the only input, or an output problem: nothing more to do
                run.failures.append((input_label(job, k), exc.problem))
                bar.update(job.n)
    if single and run.failures and run.n_bscans == 0:
        raise DataError(run.failures[0][0], run.failures[0][1])
    with run.timed("csv"):
        if shard is not None:
            from octseg.inference.shards import write_part

            write_part(run, shard, src, n_jobs)
        else:
            _write_confidence_csv(run)
            _write_csv(run)
    run.seconds = time.perf_counter() - t0
    return run
