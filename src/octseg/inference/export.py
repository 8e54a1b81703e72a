"""Export a checkpoint's network to ONNX, self-describing like the checkpoint itself.

The graph maps normalised float images (N, 1, H, W) at the checkpoint's input size to logits
(N, K, H, W); the batch axis is dynamic. A 2.5D checkpoint (``context_slices`` k) takes
(N, 2k+1, H, W): each B-scan with its k neighbours on each side, in slice order. Everything needed to use it (classes, input size,
intensity normalisation, octseg version) is stored as JSON in the model's metadata_props
under the key ``"octseg"``, so :class:`octseg.inference.predictor.Predictor` can run a bare .onnx file.

An ensemble (several checkpoints or a CV folder, :mod:`octseg.inference.ensemble`) exports as one
graph whose output is the log of the members' mean probability (``"output_kind":
"log_probabilities"`` in the metadata, which also lists the ``members``); argmax and softmax
of it mean what they mean for one network's logits. Members normalised otherwise than the first
(CV folds) carry their input map in the graph (:class:`octseg.inference.ensemble.Renormalised`).
A CV folder's post-processing (``min_sizes`` chosen on its out-of-fold predictions, and the
``at_size`` they count pixels at) travels in the metadata as ``"postprocessing"``, and a
:class:`~octseg.inference.predictor.Predictor` on the .onnx file applies it as it would the folder's.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Optional

from octseg.errors import CheckpointError

#: ONNX opset used for export (>= 17: LayerNormalization etc. are native).
OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
META_KEY = "octseg"


def onnx_meta(meta: dict, postprocessing: Optional[dict] = None) -> dict:
    """The subset of a checkpoint's meta that a runtime needs, plus which weights were exported, and
    the ``postprocessing`` a CV folder recorded (``{"min_sizes": ..., "at_size": ...}``), if any."""
    from octseg import __version__
    from octseg.checkpoint import context_slices

    return {
        "format_version": meta.get("format_version"),
        "octseg_version": __version__,
        "checkpoint_octseg_version": meta.get("octseg_version"),
        "classes": list(meta["classes"]),
        "input_size": [int(s) for s in meta["input_size"]],
        "normalization": {"mean": float(meta["normalization"]["mean"]), "std": float(meta["normalization"]["std"])},
        "model": meta.get("model", {}),
        "context_slices": context_slices(meta),
        "method": meta.get("method"),
        "weights": meta.get("weights"),
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "layout": "NCHW float32, normalised: (x/255 - mean) / std; C = 2 * context_slices + 1 (the B-scan and its "
                  "neighbours in slice order, the B-scan in the middle)",
        "output_kind": "log_probabilities" if meta.get("members") else "logits",
        **({"members": meta["members"], "cv_folders": meta.get("cv_folders") or []} if meta.get("members") else {}),
        **({"postprocessing": postprocessing} if postprocessing else {}),
    }


def _torch_export(model, dummy, buf) -> None:
    import torch

    kwargs = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=OPSET,
                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, do_constant_folding=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # The TorchScript-based exporter: no onnxscript needed, seconds instead of a minute
            # for a ResNet50-UNet, and dynamic_axes work as documented.
            torch.onnx.export(model, (dummy,), buf, dynamo=False, **kwargs)
        except TypeError:  # torch without the `dynamo` argument: legacy is the only exporter
            torch.onnx.export(model, (dummy,), buf, **kwargs)


def export_bytes(model, meta: dict) -> bytes:
    """An eval-mode network + ``meta`` (see :func:`onnx_meta`) -> checked ONNX model bytes."""
    import onnx
    import torch

    model = model.to("cpu").eval()
    h, w = meta["input_size"]
    buf = io.BytesIO()
    channels = 2 * int(meta.get("context_slices", 0) or 0) + 1  # 2.5D input: the B-scan and its neighbours
    _torch_export(model, torch.zeros(1, channels, int(h), int(w)), buf)
    proto = onnx.load_from_string(buf.getvalue())
    del buf
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    proto.producer_name = "octseg"
    proto.doc_string = f"octseg segmentation network; classes {meta['classes']}, input {h}x{w}"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_model(model, meta: dict, out) -> Path:
    """:func:`export_bytes` written atomically to ``out``."""
    from octseg.io.outputs import atomic_write

    data = export_bytes(model, meta)
    return atomic_write(Path(out), lambda fh: fh.write(data))


def export_onnx(checkpoint, out, weights: Optional[str] = None, overwrite: bool = False) -> Path:
    """``octseg export``: checkpoint (teacher or student weights) -> checked ONNX file at ``out``.

    ``checkpoint`` may be a list of checkpoints and/or CV folders: one graph of the whole ensemble.
    An existing ``out`` is replaced only when octseg wrote it, or with ``overwrite``."""
    from octseg.inference.ensemble import load_models, resolve_sources
    from octseg.io.outputs import check_output_file

    try:
        import onnx  # noqa: F401
    except ImportError:
        raise CheckpointError("ONNX export needs the onnx package: pip install 'octseg[onnx]'") from None
    sources = resolve_sources(checkpoint)
    out = check_output_file(out, overwrite, protect=sources.paths)
    model, meta, _ = load_models(sources.checkpoints, weights, "cpu", sources=sources)
    sizes, at_size = sources.min_sizes(), sources.min_sizes_at()
    post = {"min_sizes": sizes, "at_size": list(at_size) if at_size else None} if sizes else None
    return export_model(model, onnx_meta(meta, post), out)


def read_onnx_meta(session_or_path) -> dict:
    """The ``"octseg"`` metadata of an exported model (an onnxruntime session or a path)."""
    if isinstance(session_or_path, (str, os.PathLike)):
        import onnx

        path = Path(session_or_path)
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
        props = {p.key: p.value for p in proto.metadata_props}
        where = path
    else:
        props = dict(session_or_path.get_modelmeta().custom_metadata_map)
        where = "ONNX model"
    if META_KEY not in props:
        raise CheckpointError(f"{where}: not exported by octseg (no {META_KEY!r} metadata)")
    try:
        meta = json.loads(props[META_KEY])
        for key in ("classes", "input_size", "normalization"):
            meta[key]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{where}: invalid octseg metadata ({exc})") from None
    return meta
