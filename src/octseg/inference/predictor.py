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
        from octseg.inference.postprocess import check_min_sizes

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
        from octseg.inference.export import export_bytes, onnx_meta

        model, meta = _load_torch(path, weights, "cpu")
        meta = onnx_meta(meta)
        session = _onnx_session(export_bytes(model, meta), dev, explicit)
        return cls(_OnnxNet(session), meta, device="cpu", backend="onnx", tta=tta, min_sizes=min_sizes,
                   batch=batch, source=str(path))

    @classmethod
    def from_onnx(cls, path, device: str = "auto", tta: bool = False, min_sizes: Optional[Mapping] = None,
                  batch: int = 8) -> "Predictor":
        """From a model written by ``octseg export`` (its metadata holds classes, size, normalisation)."""
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

        from octseg.inference.forward import batched, predict_logits
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

    def predict_u8(self, images: np.ndarray, progress: Optional[Callable[[int], object]] = None,
                   confidence: Optional[np.ndarray] = None) -> np.ndarray:
        """uint8 (N, H, W) -> uint8 labels (N, H, W); the hot path of ``octseg predict``.

        ``confidence``: optional float (N,) array filled with each B-scan's mean maximum softmax
        probability at the model's input size (before ``min_sizes`` post-processing)."""
        from octseg.inference.forward import batched, predict_labels
        from octseg.inference.postprocess import remove_small_components

        out = np.empty(images.shape, dtype=np.uint8)
        for sl in batched(len(images), self.batch):
            out[sl] = predict_labels(self.net, images[sl], self.normalization, self.input_size, batch=self.batch,
                                     device=self.device, tta=self.tta,
                                     confidence=None if confidence is None else confidence[sl])
            if self.min_sizes:
                out[sl] = remove_small_components(out[sl], self.min_sizes)
            if progress is not None:
                progress(sl.stop - sl.start)
        return out
