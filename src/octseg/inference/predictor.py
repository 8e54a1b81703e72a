"""The :class:`Predictor` API: segment B-scans of any size with a checkpoint (PyTorch) or an
exported ONNX model, on CPU or GPU, with optional flip TTA and small-component removal.

Nothing here imports training code (engine, methods, losses, Lightning).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import numpy as np

from octseg.errors import CheckpointError, ConfigError, DataError, OctsegError


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
    :func:`octseg.io.images.to_uint8` over the whole stack, as the readers do for a volume:
    kept when within 0..255, else scaled to 0..255 with the 99.9th percentile as white.
    Floats within [0, 1] are scaled by 255; other floats are min-max scaled per image.
    NaN or infinite values are a :class:`DataError` (never silently 0).
    """
    from octseg.io.images import nonfinite_problem, to_uint8

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
        problem = nonfinite_problem(a, "values")
        if problem:
            raise DataError("input array", problem)
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

    def __init__(self, session, outputs_log_probs: bool = False):
        self.session = session
        self.input = session.get_inputs()[0].name
        #: an exported ensemble outputs log mean-probabilities: flip TTA then averages probabilities
        self.outputs_log_probs = outputs_log_probs

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
            self.outputs_log_probs = getattr(inner, "outputs_log_probs", False)  # an ensemble's, for TTA

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


def _load_torch(sources, weights, device):
    """One checkpoint's network, or an ensemble's (:func:`octseg.inference.ensemble.load_models`)."""
    from octseg.inference.ensemble import load_models

    try:
        model, meta, _ = load_models(sources.checkpoints, weights, device, sources=sources)
        return model, meta
    except OctsegError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{sources.describe()}: malformed octseg metadata ({type(exc).__name__}: {exc})") \
            from None


def _is_log_probs(meta: dict) -> bool:
    """Whether an ONNX model's output is log-probabilities (an exported ensemble), not logits."""
    return meta.get("output_kind") == "log_probabilities"


# ----------------------------------------------------------------------------------------- API


class Predictor:
    """Segment B-scans of any size with a trained checkpoint (PyTorch) or an exported ONNX model.

    >>> p = Predictor.from_checkpoint("model.ckpt", device="auto", tta=True)
    >>> labels = p.predict(bscan)          # (H, W) uint8 class indices
    >>> probs = p.predict_proba(stack)     # (N, K, H, W) float32
    >>> ens = Predictor.from_checkpoint(["a.ckpt", "b.ckpt"])   # or a CV folder: an ensemble

    A 2.5D model (``context_slices`` k > 0, :mod:`octseg.data.context`) reads each B-scan with its
    k neighbours on each side: a stack given to ``predict``/``predict_proba``/``predict_u8`` is
    **one volume**, in slice order (or in the order of ``slice_indices``), its edge B-scans
    repeated; a single (H, W) B-scan is its own neighbour, with a warning. Predict a volume per
    call, never a batch of B-scans from different volumes.

    Images are resized to the model's input size and the class probabilities back to the input's
    size (bilinear; :func:`octseg.transforms.resize_scores`), where labels are their arg-max (as
    ``octseg evaluate`` scores them), so ``predict == argmax(predict_proba)`` when no ``min_sizes`` are set.

    ``min_sizes`` count pixels of the output (the input's own size), unless ``min_sizes_at`` (H, W)
    says they count pixels at that size (a CV folder's ``at_size``): each B-scan then removes
    components below the sizes scaled by its pixel area over ``min_sizes_at``'s
    (:func:`~octseg.inference.postprocess.scale_min_sizes`). Assigning ``min_sizes`` sets output
    pixels again (``min_sizes_at = None``).
    """

    def __init__(self, net, meta: dict, *, device: str = "cpu", backend: str = "torch", tta: bool = False,
                 min_sizes: Optional[Mapping] = None, batch: int = 8, source: str = "",
                 min_sizes_at: Optional[tuple] = None):
        from octseg.checkpoint import context_slices

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
        self.min_sizes = min_sizes
        #: (H, W) at which ``min_sizes`` count pixels; None: pixels of the output
        self.min_sizes_at: Optional[tuple[int, int]] = (None if min_sizes_at is None
                                                        else tuple(int(v) for v in min_sizes_at))
        #: an ensemble's members (checkpoint, weights, method, model), None for one model
        self.members: Optional[list] = meta.get("members")
        #: 2.5D input: neighbours on each side of every B-scan (0 = 2-D input)
        self.context_slices: int = context_slices(meta)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def min_sizes(self) -> dict[int, int]:
        """``{class index: pixels}``: components of a class smaller than that are removed."""
        return self._min_sizes

    @min_sizes.setter
    def min_sizes(self, value) -> None:
        # e.g. --min-size given by the user: pixels of the output, not of a CV folder's at_size
        from octseg.inference.postprocess import check_min_sizes

        self._min_sizes: dict[int, int] = check_min_sizes(value, self.classes)
        self.min_sizes_at = None

    def min_sizes_for(self, out_size) -> dict[int, int]:
        """``min_sizes`` in pixels of an output B-scan of ``out_size`` (H, W)."""
        from octseg.inference.postprocess import scale_min_sizes

        return scale_min_sizes(self.min_sizes, self.min_sizes_at, out_size)

    def __repr__(self) -> str:
        shown = self.source.startswith("ensemble of")  # else an exported ensemble's .onnx file
        members = f", ensemble of {len(self.members)}" if self.members and not shown else ""
        return (f"Predictor({self.source or '?'}{members}, backend={self.backend}, device={self.device}, "
                f"classes={list(self.classes)}, input_size={self.input_size}, tta={self.tta})")

    # --- construction

    @classmethod
    def from_checkpoint(cls, path, device: str = "auto", weights: Optional[str] = None, tta: bool = False,
                        backend: str = "torch", min_sizes: Optional[Mapping] = None, batch: int = 8,
                        channels_last: Optional[bool] = None) -> "Predictor":
        """From an octseg checkpoint; ``backend="onnx"`` also takes an exported ``.onnx`` file
        (a checkpoint is then exported in memory first, which takes a few seconds).

        ``path`` may also be a list of checkpoints and/or CV folders (``octseg cv``), or one CV
        folder: their :class:`~octseg.inference.ensemble.Ensemble` predicts the members' mean
        probability (with ``tta``: over members x flips). A CV folder's recorded ``min_sizes``
        apply unless ``min_sizes`` is given (``{}`` for none), scaled from the CV's ``at_size`` to
        each B-scan's size; a given ``min_sizes`` counts output pixels. ``weights`` applies to every member.

        ``channels_last`` (torch backend): default on for CPU, where it was measured faster;
        off for CUDA, where it was not measured."""
        from octseg.inference.ensemble import resolve_sources

        if backend not in ("torch", "onnx"):
            raise ConfigError(f"backend must be torch or onnx, not {backend!r}")
        sources = resolve_sources(path)
        path = sources.checkpoints[0]
        min_sizes_at = None
        if min_sizes is None:
            min_sizes, min_sizes_at = sources.min_sizes(), sources.min_sizes_at()
        if not sources.is_ensemble and path.suffix.lower() == ".onnx":
            if backend != "onnx":
                raise CheckpointError(f"{path}: an ONNX model; run it with backend onnx (--backend onnx)")
            return cls.from_onnx(path, device=device, tta=tta, min_sizes=min_sizes, batch=batch)
        explicit = device not in (None, "auto")
        dev = resolve_device(device)
        source = sources.describe()
        if backend == "torch":
            model, meta = _load_torch(sources, weights, dev)
            if channels_last if channels_last is not None else dev == "cpu":
                model = _channels_last(model)
            return cls(model, meta, device=dev, backend="torch", tta=tta, min_sizes=min_sizes, batch=batch,
                       source=source, min_sizes_at=min_sizes_at)
        from octseg.inference.export import export_bytes, onnx_meta

        model, meta = _load_torch(sources, weights, "cpu")
        meta = onnx_meta(meta)
        session = _onnx_session(export_bytes(model, meta), dev, explicit)
        return cls(_OnnxNet(session, _is_log_probs(meta)), meta, device="cpu", backend="onnx", tta=tta,
                   min_sizes=min_sizes, batch=batch, source=source, min_sizes_at=min_sizes_at)

    @classmethod
    def from_checkpoints(cls, paths, **kwargs) -> "Predictor":
        """An ensemble of checkpoints and/or CV folders: :meth:`from_checkpoint` with a list."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        return cls.from_checkpoint(list(paths), **kwargs)

    @classmethod
    def from_onnx(cls, path, device: str = "auto", tta: bool = False, min_sizes: Optional[Mapping] = None,
                  batch: int = 8) -> "Predictor":
        """From a model written by ``octseg export`` (its metadata holds classes, size, normalisation, and
        an exported CV folder's post-processing, which applies unless ``min_sizes`` is given)."""
        from octseg.inference.ensemble import parse_postprocessing
        from octseg.inference.export import read_onnx_meta

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
        min_sizes_at = None
        if min_sizes is None:
            min_sizes, min_sizes_at = parse_postprocessing(meta.get("postprocessing"), path)
        # pre/post-processing stays on the CPU: onnxruntime takes and returns host arrays
        return cls(_OnnxNet(session, _is_log_probs(meta)), meta, device="cpu", backend="onnx", tta=tta,
                   min_sizes=min_sizes, batch=batch, source=str(path), min_sizes_at=min_sizes_at)

    # --- prediction

    def _context_rows(self, n: int, slice_indices) -> Optional[np.ndarray]:
        """(N, 2k+1) neighbour rows of a stack that is one volume; None for a 2-D model."""
        if not self.context_slices:
            return None
        from octseg.data.context import context_rows

        if slice_indices is not None and len(slice_indices) != n:
            raise ConfigError(f"{len(slice_indices)} slice indices for {n} B-scans")
        return context_rows(None, slice_indices, self.context_slices, n=n)

    def _batch_u8(self, images: np.ndarray, rows: Optional[np.ndarray], sl: slice) -> np.ndarray:
        """uint8 input of one batch: (b, H, W), or (b, 2k+1, H, W) for a 2.5D model."""
        if rows is None:
            return images[sl]
        from octseg.data.context import stack_context

        return stack_context(images, rows, np.arange(sl.start, sl.stop))

    def predict(self, array, slice_indices=None) -> np.ndarray:
        """Label map(s) uint8, (H, W) or (N, H, W) like the input, post-processed if ``min_sizes``.
        (A 2.5D model: the stack is one volume, see the class doc.)"""
        images, single = to_uint8_stack(array)
        labels = self.predict_u8(images, slice_indices=slice_indices)
        return labels[0] if single else labels

    def predict_proba(self, array, slice_indices=None) -> np.ndarray:
        """Class probabilities float32, (K, H, W) or (N, K, H, W); no post-processing."""
        import torch

        from octseg.inference.forward import batched, predict_logits
        from octseg.transforms import resize_images, resize_scores, to_model_input

        images, single = to_uint8_stack(array)
        n, h, w = images.shape
        rows = self._context_rows(n, slice_indices)
        out = np.empty((n, self.num_classes, h, w), dtype=np.float32)
        with torch.inference_mode():
            for sl in batched(n, self.batch):
                x = to_model_input(torch.from_numpy(np.ascontiguousarray(self._batch_u8(images, rows, sl)))
                                   .to(self.device), self.normalization)
                x = resize_images(x, self.input_size)
                p = resize_scores(predict_logits(self.net, x, self.tta).float().softmax(1), (h, w))
                out[sl] = p.cpu().numpy()
        return out[0] if single else out

    def predict_u8(self, images: np.ndarray, progress: Optional[Callable[[int], object]] = None,
                   confidence: Optional[np.ndarray] = None, slice_indices=None) -> np.ndarray:
        """uint8 (N, H, W) -> uint8 labels (N, H, W); the hot path of ``octseg predict``.

        ``confidence``: optional float (N,) array filled with each B-scan's mean maximum softmax
        probability at the model's input size (before ``min_sizes`` post-processing).
        A 2.5D model reads ``images`` as one volume (ordered by ``slice_indices`` when given)."""
        from octseg.inference.forward import batched, predict_labels
        from octseg.inference.postprocess import remove_small_components

        rows = self._context_rows(len(images), slice_indices)
        out = np.empty(images.shape, dtype=np.uint8)
        min_sizes = self.min_sizes_for(images.shape[-2:])  # a CV folder's: scaled to these B-scans' size
        for sl in batched(len(images), self.batch):
            out[sl] = predict_labels(self.net, self._batch_u8(images, rows, sl), self.normalization, self.input_size,
                                     batch=self.batch, device=self.device, tta=self.tta,
                                     confidence=None if confidence is None else confidence[sl])
            if min_sizes:
                out[sl] = remove_small_components(out[sl], min_sizes)
            if progress is not None:
                progress(sl.stop - sl.start)
        return out
