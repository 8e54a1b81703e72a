"""Prediction on users' scans: the :class:`Predictor` API and ``octseg predict``.

``octseg predict CHECKPOINT INPUT OUT`` takes one image, a folder of images, an ``oct.mhd``
volume or a folder of volumes and writes into OUT:

* ``masks/``: label maps (values 0..K-1) at each input's native size: ``<stem>.png`` per image,
  ``<volume>.mhd`` (or ``.nii.gz``) per volume with the input's spacing, origin and direction;
* ``overlays/``: ``<stem>.png`` per image; ``<volume>.png`` per volume, a montage of the (up to
  8) B-scans with the most predicted fluid;
* ``fluid.csv``: one row per (volume, class) with the voxel count and volume in mm^3 (= µL), and
  one row per (B-scan, class) with the area in pixels and mm^2 (blank where spacing is unknown).

Unreadable inputs in a folder are skipped, listed at the end, and make the exit status 1.
Nothing here imports training code (engine, methods, losses).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import numpy as np

from octseg.errors import CheckpointError, ConfigError, DataError, OctsegError
from octseg.io.outputs import TMP_PREFIX, OutputFolder, atomic_write, atomic_write_text, write_error

#: How many B-scans with the most fluid a volume's overlay montage shows.
MONTAGE_BSCANS = 8
FLUID_CSV_COLUMNS = ("level", "volume", "bscan", "slice_index", "class", "pixels", "area_mm2", "volume_mm3",
                     "source")


# ----------------------------------------------------------------------------------------- helpers


def resolve_device(device: Optional[str]) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; a clear error for a missing GPU."""
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: torch sees no CUDA GPU here; use device cpu or auto")
        return device
    raise ConfigError(f"device must be cpu, cuda or auto, not {device!r}")


def to_uint8_stack(array) -> tuple[np.ndarray, bool]:
    """Any B-scan array -> (uint8 (N, H, W), was_single).

    uint8 is used as is. Other integer types (e.g. uint16 OCT) go through
    :func:`octseg.data.readers.to_uint8` over the whole stack, as the readers do for a volume:
    kept when within 0..255, else scaled to 0..255 with the 99.9th percentile as white.
    Floats within [0, 1] are scaled by 255; other floats are min-max scaled per image.
    NaN or infinite values are a :class:`DataError` (never silently 0).
    """
    from octseg.data.readers import to_uint8

    a = np.asarray(array)
    if a.ndim == 2:
        single = True
        a = a[None]
    elif a.ndim == 3:
        single = False
        if a.shape[-1] in (3, 4) and a.shape[1] > 4:
            raise DataError("input array", f"shape {a.shape} looks like a colour image (H, W, C); "
                                           f"pass gray B-scans (H, W) or (N, H, W)")
    else:
        raise DataError("input array", f"expected a B-scan (H, W) or a stack (N, H, W), got shape {a.shape}")
    if a.shape[1] < 1 or a.shape[2] < 1:
        raise DataError("input array", f"empty B-scans: shape {a.shape}")
    if a.dtype == np.uint8:
        return a, single
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        if not finite.all():
            n_nan = int(np.isnan(a).sum())
            n_bad = int(a.size - np.count_nonzero(finite))
            raise DataError("input array", f"{n_bad} NaN/inf values ({n_nan} NaN, {n_bad - n_nan} inf) among "
                                           f"{a.size}; replace them with finite intensities")
        big = a.dtype.itemsize > 4 and a.size and np.abs(a).max() > np.finfo(np.float32).max
        a = a.astype(np.float64 if big else np.float32, copy=False)  # float32 would make them inf
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            return np.rint(a * 255.0).astype(np.uint8), single
        lo = a.min(axis=(1, 2), keepdims=True)
        span = a.max(axis=(1, 2), keepdims=True) - lo
        scaled = (a - lo) * np.where(span > 0, 255.0 / np.where(span > 0, span, 1.0), 0.0)
        return np.rint(scaled).astype(np.uint8), single
    if a.dtype.kind in "biu":
        return to_uint8(a), single
    raise DataError("input array", f"unsupported dtype {a.dtype}; use uint8, uint16 or float")


class _OnnxNet:
    """An onnxruntime session that looks like a torch module to :func:`octseg.inference.predict_logits`."""

    def __init__(self, session):
        self.session = session
        self.input = session.get_inputs()[0].name

    def __call__(self, x):
        import torch

        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = torch.from_numpy(self.session.run(None, {self.input: arr})[0])
        # channels-last logits: the argmax over classes that follows is ~5x faster on CPU
        return out.contiguous(memory_format=torch.channels_last)


def _channels_last(net):
    """Wrap a CPU network to run in channels-last memory format: measured 1.6x (idle) to 2.5x
    (busy CPU) faster for the ResNet50-UNet, and it makes the class argmax ~5x faster."""
    import torch

    class ChannelsLast(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner.to(memory_format=torch.channels_last)

        def forward(self, x):
            return self.inner(x.contiguous(memory_format=torch.channels_last))

    return ChannelsLast(net).eval()


def _onnx_session(model: Union[str, os.PathLike, bytes], device: str, explicit: bool):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("backend onnx needs onnxruntime: pip install 'octseg[onnx]'") from None
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No busy-waiting between operators: measured 20% faster when other processes share the
    # CPU and no slower alone (benchmarks/predict_throughput.py). OCTSEG_ORT_SPIN=1 restores it.
    opts.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("OCTSEG_ORT_SPIN", "0"))
    threads = os.environ.get("OCTSEG_ORT_THREADS")
    if threads:
        opts.intra_op_num_threads = int(threads)
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        elif explicit:
            raise ConfigError("device cuda with backend onnx: this onnxruntime has no CUDAExecutionProvider "
                              "(install onnxruntime-gpu) - use device cpu, or backend torch")
    where = "ONNX model" if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise CheckpointError(f"{where}: onnxruntime cannot load it ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _load_torch(path, weights, device):
    from octseg.checkpoint import load_network

    try:
        return load_network(path, weights, device)
    except OctsegError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: malformed octseg metadata ({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------------------- API


class Predictor:
    """Segment B-scans of any size with a trained checkpoint (PyTorch) or an exported ONNX model.

    >>> p = Predictor.from_checkpoint("model.ckpt", device="auto", tta=True)
    >>> labels = p.predict(bscan)          # (H, W) uint8 class indices
    >>> probs = p.predict_proba(stack)     # (N, K, H, W) float32

    Images are resized to the model's input size and the result back to the input's size:
    labels with nearest neighbour (as ``octseg evaluate`` scores them), probabilities with the
    same nearest mapping, so ``predict == argmax(predict_proba)`` when no ``min_sizes`` are set.
    """

    def __init__(self, net, meta: dict, *, device: str = "cpu", backend: str = "torch", tta: bool = False,
                 min_sizes: Optional[Mapping] = None, batch: int = 8, source: str = ""):
        from octseg.postprocess import check_min_sizes

        if int(batch) < 1:
            raise ConfigError(f"batch must be >= 1, got {batch}")
        self.net = net
        self.meta = meta
        self.classes: tuple[str, ...] = tuple(meta["classes"])
        self.input_size: tuple[int, int] = tuple(int(s) for s in meta["input_size"])
        self.normalization: dict = {k: float(v) for k, v in meta["normalization"].items()}
        self.device = device
        self.backend = backend
        self.tta = bool(tta)
        self.batch = int(batch)
        self.source = source
        self.min_sizes: dict[int, int] = check_min_sizes(min_sizes, self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"Predictor({self.source or '?'}, backend={self.backend}, device={self.device}, "
                f"classes={list(self.classes)}, input_size={self.input_size}, tta={self.tta})")

    # --- construction

    @classmethod
    def from_checkpoint(cls, path, device: str = "auto", weights: Optional[str] = None, tta: bool = False,
                        backend: str = "torch", min_sizes: Optional[Mapping] = None, batch: int = 8,
                        channels_last: Optional[bool] = None) -> "Predictor":
        """From an octseg checkpoint; ``backend="onnx"`` also takes an exported ``.onnx`` file
        (a checkpoint is then exported in memory first, which takes a few seconds).

        ``channels_last`` (torch backend): default on for CPU, where it was measured faster;
        off for CUDA, where it was not measured."""
        path = Path(path)
        if backend not in ("torch", "onnx"):
            raise ConfigError(f"backend must be torch or onnx, not {backend!r}")
        if path.suffix.lower() == ".onnx":
            if backend != "onnx":
                raise CheckpointError(f"{path}: an ONNX model; run it with backend onnx (--backend onnx)")
            return cls.from_onnx(path, device=device, tta=tta, min_sizes=min_sizes, batch=batch)
        explicit = device not in (None, "auto")
        dev = resolve_device(device)
        if backend == "torch":
            model, meta = _load_torch(path, weights, dev)
            if channels_last if channels_last is not None else dev == "cpu":
                model = _channels_last(model)
            return cls(model, meta, device=dev, backend="torch", tta=tta, min_sizes=min_sizes, batch=batch,
                       source=str(path))
        from octseg.export import export_bytes, onnx_meta

        model, meta = _load_torch(path, weights, "cpu")
        meta = onnx_meta(meta)
        session = _onnx_session(export_bytes(model, meta), dev, explicit)
        return cls(_OnnxNet(session), meta, device="cpu", backend="onnx", tta=tta, min_sizes=min_sizes,
                   batch=batch, source=str(path))

    @classmethod
    def from_onnx(cls, path, device: str = "auto", tta: bool = False, min_sizes: Optional[Mapping] = None,
                  batch: int = 8) -> "Predictor":
        """From a model written by ``octseg export`` (its metadata holds classes, size, normalisation)."""
        from octseg.export import read_onnx_meta

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: ONNX model file not found")
        explicit = device not in (None, "auto")
        try:
            dev = resolve_device(device)
        except ConfigError:
            if explicit:
                raise
            dev = "cpu"
        session = _onnx_session(path, dev, explicit)
        meta = read_onnx_meta(session)
        # pre/post-processing stays on the CPU: onnxruntime takes and returns host arrays
        return cls(_OnnxNet(session), meta, device="cpu", backend="onnx", tta=tta, min_sizes=min_sizes,
                   batch=batch, source=str(path))

    # --- prediction

    def predict(self, array) -> np.ndarray:
        """Label map(s) uint8, (H, W) or (N, H, W) like the input, post-processed if ``min_sizes``."""
        images, single = to_uint8_stack(array)
        labels = self.predict_u8(images)
        return labels[0] if single else labels

    def predict_proba(self, array) -> np.ndarray:
        """Class probabilities float32, (K, H, W) or (N, K, H, W); no post-processing."""
        import torch

        from octseg.inference import batched, predict_logits
        from octseg.transforms import resize_images, to_model_input

        images, single = to_uint8_stack(array)
        n, h, w = images.shape
        out = np.empty((n, self.num_classes, h, w), dtype=np.float32)
        with torch.inference_mode():
            for sl in batched(n, self.batch):
                x = to_model_input(torch.from_numpy(np.ascontiguousarray(images[sl])).to(self.device),
                                   self.normalization)
                x = resize_images(x, self.input_size)
                p = predict_logits(self.net, x, self.tta).float().softmax(1)
                if tuple(p.shape[-2:]) != (h, w):  # the mapping resize_labels uses
                    p = torch.nn.functional.interpolate(p, size=(h, w), mode="nearest-exact")
                out[sl] = p.cpu().numpy()
        return out[0] if single else out

    def predict_u8(self, images: np.ndarray, progress: Optional[Callable[[int], object]] = None) -> np.ndarray:
        """uint8 (N, H, W) -> uint8 labels (N, H, W); the hot path of ``octseg predict``."""
        from octseg.inference import batched, predict_labels
        from octseg.postprocess import remove_small_components

        out = np.empty(images.shape, dtype=np.uint8)
        for sl in batched(len(images), self.batch):
            out[sl] = predict_labels(self.net, images[sl], self.normalization, self.input_size, batch=self.batch,
                                     device=self.device, tta=self.tta)
            if self.min_sizes:
                out[sl] = remove_small_components(out[sl], self.min_sizes)
            if progress is not None:
                progress(sl.stop - sl.start)
        return out


# ----------------------------------------------------------------------------------------- CLI: inputs


@dataclass
class _Job:
    kind: str  # "image" | "volume"
    path: Path
    n: int = 1  # B-scans (volumes: from the header)


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

    @contextmanager
    def timed(self, stage: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t


def _volume_header(path: Path):
    """SimpleITK header of a volume, checked to be 3-D scalar (so a bad file fails before inference)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise DataError(path, f"cannot read the volume header ({lines[-1] if lines else exc})") from None
    dim, comps = reader.GetDimension(), reader.GetNumberOfComponents()
    if dim != 3 or comps != 1:
        raise DataError(path, f"expected a 3-D gray volume (columns x rows x B-scans), found a {dim}-D image "
                              f"of size {tuple(reader.GetSize())} with {comps} component(s)")
    return reader


def _plan(path: Path) -> tuple[list[_Job], list[str]]:
    """The inputs under ``path`` (no pixels read) and notes about skipped files.

    Only regular files (symlinks followed) become inputs; other entries (FIFO, socket, device,
    broken symlink, symlink loop) are skipped with a note naming them, and nothing is opened,
    so nothing blocks. A ``path`` that is itself no regular file or folder is a DataError."""
    from octseg.data.prepared import is_prepared
    from octseg.data.readers import (FOLDER_PAIRS, IMAGE_EXTENSIONS, entry_kind, find_oct_files,
                                     skipped_note)

    notes: list[str] = []
    kind = entry_kind(path)
    if kind == "missing":
        raise DataError(path, "no such file or folder")
    if kind == "file":
        suffix = path.suffix.lower()
        if suffix == ".mhd":
            return [_Job("volume", path)], notes
        if suffix in IMAGE_EXTENSIONS:
            return [_Job("image", path)], notes
        raise DataError(path, f"not an image ({', '.join(IMAGE_EXTENSIONS)}) or a MetaImage volume (.mhd)")
    if kind != "folder":
        raise DataError(path, f"not a regular file or folder ({kind})")
    if is_prepared(path):
        raise DataError(path, "is a prepared dataset (arrays resized for training); predict on the original "
                              "scans instead")
    skipped: list[str] = []
    vols = find_oct_files(path, skipped)
    if vols:
        if skipped:
            notes.append(skipped_note(path, skipped))
        return [_Job("volume", p) for p in vols], notes
    folder = path
    for im_dir, _ in FOLDER_PAIRS:
        if (path / im_dir).is_dir():
            folder = path / im_dir
            break
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(folder, f"cannot list the folder ({exc.strerror or exc})") from None
    images, mhds, other, odd = [], [], [], []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        kind = entry_kind(entry.path)
        if kind == "folder":
            continue
        if kind != "file":
            odd.append(f"{entry.name} ({kind})")
            continue
        ext = os.path.splitext(entry.name)[1].lower()
        if ext in IMAGE_EXTENSIONS:
            images.append(Path(entry.path))
        elif ext == ".mhd" and entry.name.lower() != "reference.mhd":
            mhds.append(Path(entry.path))
        elif ext not in (".raw", ".zraw", ".csv", ".json", ".txt", ".md"):
            other.append(entry.name)
    if odd:
        notes.append(skipped_note(folder, odd))
    if other:
        notes.append(f"skipped {len(other)} file(s) that are neither images nor volumes in {folder}: "
                     f"{', '.join(other[:5])}{' ...' if len(other) > 5 else ''}")
    if images:
        return [_Job("image", p) for p in images], notes
    if mhds:
        return [_Job("volume", p) for p in mhds], notes
    raise DataError(path, f"no images ({', '.join(IMAGE_EXTENSIONS)}) or oct.mhd volumes found")


def _read_bscans(path: Path, layout: str, classes):
    """The B-scans of one file through the readers (one image, or all B-scans of a volume)."""
    from octseg.data.readers import scan_source

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "name does not match the volume pattern": irrelevant here
        src = scan_source(path, layout=layout, classes=classes)
    if len(src.volumes) != 1:
        raise DataError(path, f"expected one volume, found {len(src.volumes)}")
    return src.volumes[0]


def _spacing_table(root: Path) -> dict:
    """Spacing per volume from an optional ``volumes.csv`` beside an image folder."""
    try:
        from octseg.data.readers import _read_volumes_csv
    except ImportError:  # pragma: no cover - reader refactored
        return {}
    out = {}
    for folder in dict.fromkeys([root, root.parent]):
        try:
            out = {**_read_volumes_csv(folder, []), **out}
        except DataError:
            pass
    return out


# ----------------------------------------------------------------------------------------- CLI: outputs


def _unique(run: PredictRun, name: str) -> str:
    base, i = name, 2
    while name in run.names:
        name = f"{base}_{i}"
        i += 1
    run.names.add(name)
    return name


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


def _voxel_mm3(spacing) -> Optional[float]:
    if spacing is None or not spacing.slice:
        return None
    return spacing.row * spacing.col * spacing.slice


def _write_csv(run: PredictRun) -> Path:
    """fluid.csv, written last and atomically: it is there only when it matches every mask of the run."""
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
    return atomic_write_text(run.folder.file("fluid.csv"), buf.getvalue())


def _save_png(run: PredictRun, rel: str, image) -> None:
    """A PIL image as PNG at ``OUT/rel``, atomically (a full disk never leaves half a mask)."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    atomic_write(run.folder.file(rel), lambda fh: image.save(fh, format="PNG", compress_level=1), fsync=False)


def _write_sitk(run: PredictRun, rel: str, labels: np.ndarray, spacing=None, origin=None, direction=None) -> None:
    """A label volume as .mhd (+ .zraw) or .nii.gz, written in a temporary folder and moved in
    data file first, header last, so a header under the final name always has its data."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(labels)
    if spacing is not None:
        img.SetSpacing(spacing)
    if origin is not None:
        img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    final = run.folder.file(rel)
    names = [final.name]
    if final.suffix == ".mhd":
        names.insert(0, final.with_suffix(".zraw").name)
        run.folder.file(str(Path(rel).with_suffix(".zraw")))
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=final.parent))
    try:
        sitk.WriteImage(img, str(tmp / final.name), True)  # zlib: label volumes shrink ~50x, cheaply
        for name in names:
            os.replace(tmp / name, final.parent / name)
    except RuntimeError as exc:
        if shutil.disk_usage(final.parent).free < labels.nbytes:
            raise DataError(final, "cannot write: no space left on device") from None
        raise DataError(final, f"cannot write ({str(exc).strip().splitlines()[-1]})") from None
    except OSError as exc:
        raise write_error(exc, final) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_EXT = {"mhd": ".mhd", "nii": ".nii.gz", "png": ".png"}


def _do_images(run: PredictRun, predictor: Predictor, jobs: list[_Job], root: Path, bar) -> None:
    from octseg.overlay import overlay_image

    spacings = _spacing_table(root if root.is_dir() else root.parent)
    pending: list = []

    def flush():
        if not pending:
            return
        with run.timed("infer"):
            labels = predictor.predict_u8(np.stack([b.image for b in pending]), progress=bar.update)
            counts = _class_pixels(labels, len(run.classes))
        for b, lab, cnt in zip(pending, labels, counts):
            name = _unique(run, Path(b.source).stem)
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
        pending.clear()

    for job in jobs:
        try:
            with run.timed("read"):
                vs = _read_bscans(job.path, "folders", run.classes)
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
        if pending and (pending[0].image.shape != b.image.shape or len(pending) >= predictor.batch):
            flush()
        pending.append(b)
    flush()


def _montage_slices(fluid: np.ndarray) -> list[int]:
    order = np.argsort(-fluid, kind="stable")
    chosen = [int(i) for i in order[:MONTAGE_BSCANS] if fluid[i] > 0]
    if not chosen:  # no fluid: a few B-scans across the volume for context
        chosen = sorted({int(round(x)) for x in np.linspace(0, len(fluid) - 1, min(4, len(fluid)))})
    return sorted(chosen)


def _do_volume(run: PredictRun, predictor: Predictor, job: _Job, bar) -> None:
    from octseg.overlay import montage

    with run.timed("read"):
        head = _volume_header(job.path)
        vs = _read_bscans(job.path, "retouch", run.classes)
        S, (H, W) = vs.n_slices, vs.shape
        images = np.empty((S, H, W), dtype=np.uint8)
        for b in vs.load():
            images[b.slice_index] = b.image
    name = _unique(run, vs.volume)
    with run.timed("infer"):
        labels = predictor.predict_u8(images, progress=bar.update)
        counts = _class_pixels(labels, len(run.classes))
    sp = vs.spacing
    with run.timed("masks"):
        if run.fmt_volumes == "png":
            for k in range(S):
                _save_png(run, f"masks/{name}/{name}_{k:03d}.png", labels[k])
        else:
            _write_sitk(run, f"masks/{name}{_EXT[run.fmt_volumes]}", labels, head.GetSpacing(), head.GetOrigin(),
                        head.GetDirection())
    fluid = counts[:, 1:].sum(axis=1)
    px_area = sp.row * sp.col if sp else None
    tiles = [(images[k], labels[k], f"B-scan {k}: " + (f"{fluid[k] * px_area:.3f} mm^2" if px_area else
                                                         f"{fluid[k]} px")) for k in _montage_slices(fluid)]
    vox = _voxel_mm3(sp)
    total = f"{fluid.sum() * vox:.3f} mm^3 fluid" if vox else f"{int(fluid.sum())} fluid voxels"
    with run.timed("overlays"):
        _save_png(run, f"overlays/{name}.png", montage(tiles, run.classes, title=f"{name}: {total}"))
    ids = [f"{name}_{k:03d}" for k in range(S)]
    _bscan_rows(run, name, ids, range(S), counts, sp, [f"{job.path}#{k}" for k in range(S)])
    _add_volume(run, name, counts, sp, str(job.path), S)
    run.n_bscans += S
    run.n_volumes += 1


def _summary(run: PredictRun, predictor: Predictor) -> str:
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


def _claim(out: Path, src: Path, overwrite: bool) -> OutputFolder:
    """OUT as octseg predict's folder: never the input, never over a user's files, one run at a time."""
    return OutputFolder(out, "predict", overwrite=overwrite, protect=[src])


def predict_path(predictor: Predictor, input, out, fmt: Optional[str] = None, progress: bool = True,
                 jobs: Optional[list] = None, overwrite: bool = False,
                 folder: Optional[OutputFolder] = None) -> PredictRun:
    """Predict every image/volume under ``input`` into ``out`` (see the module docstring).

    ``out`` must be new, empty, or hold only an earlier ``octseg predict``'s output, which is
    replaced only with ``overwrite`` (so masks and ``fluid.csv`` always come from one run); a
    folder with files octseg did not write is refused unless ``overwrite``. Failures of single
    files in a folder are collected in the result; a bad sole input, or an output that cannot be
    written, raises :class:`octseg.errors.DataError`.
    """
    out, src = Path(out), Path(input)
    if fmt not in (None, "png", "mhd", "nii"):
        raise ConfigError(f"mask format must be png, mhd or nii, not {fmt!r}")
    notes: list[str] = []
    if jobs is None:
        jobs, notes = _plan(src)
    if folder is None:
        with _claim(out, src, overwrite) as folder:
            return predict_path(predictor, src, out, fmt, progress, jobs, folder=folder)
    from tqdm import tqdm

    t0 = time.perf_counter()
    run = PredictRun(out=out, classes=predictor.classes, fmt_images=fmt or "png", fmt_volumes=fmt or "mhd",
                     folder=folder)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    single = len(jobs) == 1
    for job in jobs:  # header-level sizes for the progress bar; a bad header is a failure
        if job.kind == "volume":
            try:
                job.n = int(_volume_header(job.path).GetSize()[2])
            except DataError as exc:
                if single:
                    raise
                run.failures.append((str(job.path), exc.problem))
                job.n = 0
    ok_jobs = [j for j in jobs if j.n > 0]
    with tqdm(total=sum(j.n for j in ok_jobs), unit="B-scan", desc="predict", dynamic_ncols=True,
              disable=not progress) as bar:
        images = [j for j in ok_jobs if j.kind == "image"]
        if images:
            _do_images(run, predictor, images, src, bar)
        for job in (j for j in ok_jobs if j.kind == "volume"):
            try:
                _do_volume(run, predictor, job, bar)
            except DataError as exc:
                if single or out in Path(exc.path).parents:
                    raise  # the only input, or an output problem: nothing more to do
                run.failures.append((str(job.path), exc.problem))
                bar.update(job.n)
    if single and run.failures and run.n_bscans == 0:
        raise DataError(run.failures[0][0], run.failures[0][1])
    with run.timed("csv"):
        _write_csv(run)
    run.seconds = time.perf_counter() - t0
    return run


def predict_command(a) -> int:
    """``octseg predict``: returns 0, or 1 when some inputs failed (others were predicted)."""
    from octseg.postprocess import parse_min_sizes

    t0 = time.perf_counter()
    out, src = Path(a.out), Path(a.input)
    jobs, notes = _plan(src)  # a bad INPUT or OUT fails before the model loads
    with _claim(out, src, a.overwrite) as folder:
        predictor = Predictor.from_checkpoint(a.checkpoint, device=a.device, weights=a.weights,
                                              tta=getattr(a, "tta", "none") == "flip", backend=a.backend,
                                              batch=a.batch)
        predictor.min_sizes = parse_min_sizes(a.min_size, predictor.classes)
        for n in notes:
            print(f"note: {n}", file=sys.stderr)
        load_s = time.perf_counter() - t0
        run = predict_path(predictor, src, out, fmt=a.format, jobs=jobs, folder=folder)
    print(_summary(run, predictor))
    print(f"(model loaded in {load_s:.1f} s)")
    if run.n_bscans == 0:
        raise DataError(src, f"none of the {len(jobs)} input(s) could be predicted")
    return 1 if run.failures else 0
