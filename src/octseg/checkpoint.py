"""Checkpoints: written atomically, read without running pickled code, self-describing.

No Lightning import here: prediction loads checkpoints without the training stack.

Every octseg checkpoint is a Lightning checkpoint with one extra entry, ``"octseg"``, that
holds all a user needs to run the model (architecture, classes, input size, intensity
normalisation, octseg version) as plain data.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from octseg import __version__
from octseg.data.context import MAX_CONTEXT_SLICES
from octseg.errors import CheckpointError
from octseg.io.outputs import atomic_write

#: Bumped when the meaning of a checkpoint's contents changes incompatibly.
CHECKPOINT_FORMAT = 1


def atomic_torch_save(obj: Any, path) -> None:
    """``torch.save`` atomically. The object is serialised in memory first, so a full disk is an
    OSError naming the file ("no space left on device"), not torch's zip-writer message."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, lambda fh: fh.write(buf.getbuffer()))


def safe_load(path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; a clear CheckpointError for every failure."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: this checkpoint needs pickled code to load, which octseg never runs "
            f"(weights_only=True). Detail: {str(exc).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint (found {type(obj).__name__})")
    return obj


def read_meta(ckpt: dict, path="checkpoint") -> dict:
    """The checkpoint's ``"octseg"`` entry, checked field by field: a hand-edited or damaged checkpoint
    is a CheckpointError naming the file and the field, never NaN masks or a traceback later."""
    meta = ckpt.get("octseg")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not an octseg checkpoint (no 'octseg' entry)")
    fmt = meta.get("format_version")
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {fmt} was written by octseg {meta.get('octseg_version', '?')}; "
            f"this octseg ({__version__}) reads format {CHECKPOINT_FORMAT}"
        )
    problems = _meta_problems(meta) or _state_problems(ckpt, meta)
    if problems:
        raise CheckpointError(f"{path}: damaged or hand-edited checkpoint: " + "; ".join(problems))
    return {**meta, "context_slices": context_slices(meta)}  # (checkpoints from before 2.5D input: 0)


#: Largest input side a checkpoint may ask for (a typo such as 25600 would exhaust memory).
MAX_INPUT_SIDE = 16384


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite(v) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_names(v, least: int) -> bool:
    """A list of at least ``least`` distinct non-empty strings."""
    return (isinstance(v, list) and len(v) >= least and all(isinstance(s, str) and s for s in v)
            and len(set(v)) == len(v))


def _model_ok(m) -> bool:
    """What build_model needs: known ModelConfig fields, string arch and encoder, sane depth/channels."""
    import dataclasses

    from octseg.models import ModelConfig

    if not isinstance(m, dict) or not set(m) <= {f.name for f in dataclasses.fields(ModelConfig)}:
        return False
    dc = m.get("decoder_channels")
    k = m.get("context_slices", 0)
    if not (_is_int(k) and 0 <= k <= MAX_CONTEXT_SLICES):
        return False
    return (all(isinstance(m.get(k), str) and m.get(k) for k in ("arch", "encoder"))
            and (_is_int(m.get("encoder_depth", 5)) and 1 <= m.get("encoder_depth", 5) <= 5)
            and (dc is None or (isinstance(dc, list) and dc and all(_is_int(c) and c >= 1 for c in dc))))


#: (field, check, what is allowed) for the ``"octseg"`` entry written by :func:`checkpoint_meta`.
_META_RULES = (
    ("classes", lambda v: _is_names(v, 2), "a list of at least 2 distinct class names"),
    ("input_size", lambda v: isinstance(v, (list, tuple)) and len(v) == 2
     and all(_is_int(s) and 1 <= s <= MAX_INPUT_SIDE for s in v), f"[H, W], two integers in [1, {MAX_INPUT_SIDE}]"),
    ("normalization", lambda v: isinstance(v, dict) and _is_finite(v.get("mean")) and _is_finite(v.get("std"))
     and v["std"] > 0, "{mean, std}: finite numbers, std > 0"),
    ("model", _model_ok, "a mapping with string 'arch' and 'encoder' (and the other model.* fields)"),
    ("method", lambda v: isinstance(v, str) and v, "the training method's name"),
    ("networks", lambda v: _is_names(v, 1), "a non-empty list of network names"),
    ("default_weights", lambda v: isinstance(v, str) and v, "one of the networks"),
)


def _meta_problems(meta: dict) -> list[str]:
    missing = object()
    problems = []
    for key, ok, allowed in _META_RULES:
        value = meta.get(key, missing)
        if value is missing:
            problems.append(f"'{key}' is missing (must be {allowed})")
        elif not ok(value):
            problems.append(f"'{key}'={value!r}: must be {allowed}")
    k = meta.get("context_slices", 0)
    if not (_is_int(k) and 0 <= k <= MAX_CONTEXT_SLICES):
        problems.append(f"'context_slices'={k!r}: must be an integer in [0, {MAX_CONTEXT_SLICES}]")
    elif not problems and k != meta["model"].get("context_slices", 0):
        problems.append(f"'context_slices'={k!r} differs from the model's {meta['model'].get('context_slices', 0)!r}")
    if not problems and meta["default_weights"] not in meta["networks"]:
        problems.append(f"'default_weights'={meta['default_weights']!r}: must be one of 'networks' {meta['networks']}")
    return problems


def _state_problems(ckpt: dict, meta: dict) -> list[str]:
    """The weights: a state dict with tensors for every network, none NaN or infinite."""
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        return ["'state_dict' (the weights) is missing" if state is None
                else f"'state_dict' is a {type(state).__name__}, not a mapping of weights"]
    problems = []
    for name in meta["networks"]:
        prefix = f"method.{name}."
        tensors = {k: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
        if not tensors:
            problems.append(f"'state_dict' has no weights for network {name!r} (keys '{prefix}*')")
            continue
        for k, v in tensors.items():
            if not isinstance(v, torch.Tensor):
                problems.append(f"'state_dict' entry {k!r} is a {type(v).__name__}, not a tensor")
                break
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                problems.append(f"'state_dict' entry {k!r} holds NaN or infinite weights")
                break
    return problems

def network_state(ckpt: dict, name: str) -> dict:
    prefix = f"method.{name}."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    return state


def _build_network(ckpt: dict, meta: dict, name: str, path, device) -> nn.Module:
    from octseg.models import ModelConfig, build_model

    model = build_model(ModelConfig(**{**meta["model"], "encoder_weights": "none"}), len(meta["classes"]))
    try:
        model.load_state_dict(network_state(ckpt, name))
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{path}: weights do not fit the recorded architecture ({first})") from None
    return model.to(device).eval()


def load_network(path, weights: Optional[str] = None, device="cpu") -> tuple[nn.Module, dict]:
    """The network (eval mode) and meta of a checkpoint. ``weights``: teacher | student | None (default)."""
    ckpt = safe_load(path)
    meta = read_meta(ckpt, path)
    name = weights or meta["default_weights"]
    if name not in meta["networks"]:
        fallback = meta["default_weights"]
        print(f"note: {path} has no {name!r} weights (method {meta['method']}); using {fallback!r}")
        name = fallback
    return _build_network(ckpt, meta, name, path, device), dict(meta, weights=name)


def load_networks(path, device="cpu") -> tuple[dict[str, nn.Module], dict]:
    """Every network of a checkpoint (e.g. teacher and student), reading the file once."""
    ckpt = safe_load(path)
    meta = read_meta(ckpt, path)
    return {name: _build_network(ckpt, meta, name, path, device) for name in meta["networks"]}, meta


def context_slices(meta: dict) -> int:
    """The 2.5D neighbours on each side a model reads (``2k+1`` input channels): the meta's
    ``context_slices``, else its model's; 0 (2-D input) for checkpoints from before 2.5D input."""
    if "context_slices" in meta:
        return int(meta["context_slices"] or 0)
    model = meta.get("model")
    return int(model.get("context_slices", 0) or 0) if isinstance(model, dict) else 0


def checkpoint_meta(model_cfg: dict, classes, input_size, norm: dict, method: str, networks, default_weights: str,
                    config: Optional[dict] = None) -> dict:
    """The ``"octseg"`` entry of a checkpoint: everything needed to rebuild and run the model."""
    model_cfg = dict(model_cfg, encoder_weights="none")  # the weights are in the checkpoint
    return {
        "format_version": CHECKPOINT_FORMAT,
        "octseg_version": __version__,
        "model": model_cfg,
        "context_slices": int(model_cfg.get("context_slices", 0) or 0),
        "classes": list(classes),
        "input_size": [int(s) for s in input_size],
        "normalization": {"mean": float(norm["mean"]), "std": float(norm["std"])},
        "method": method,
        "networks": list(networks),
        "default_weights": default_weights,
        "config": config or {},
    }


def save_inference_checkpoint(path, networks: dict[str, nn.Module], meta: dict) -> Path:
    """A minimal octseg checkpoint (weights + meta, no optimiser state), e.g. for tests or sharing."""
    state = {f"method.{name}.{k}": v.detach().cpu() for name, net in networks.items()
             for k, v in net.state_dict().items()}
    atomic_torch_save({"state_dict": state, "octseg": meta}, path)
    return Path(path)
