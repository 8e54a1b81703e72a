"""Checkpoints: written atomically, read without running pickled code, self-describing.

No Lightning import here: prediction loads checkpoints without the training stack.

Every octseg checkpoint is a Lightning checkpoint with one extra entry, ``"octseg"``, that
holds all a user needs to run the model (architecture, classes, input size, intensity
normalisation, octseg version) as plain data.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

import torch
from torch import nn

from octseg import __version__
from octseg.errors import CheckpointError

#: Bumped when the meaning of a checkpoint's contents changes incompatibly.
CHECKPOINT_FORMAT = 1


def atomic_write(path, write: Callable[[BinaryIO], object]) -> Path:
    """Write through ``write(fh)`` into a temporary file beside ``path``, fsync, then rename over it,
    so a crash never leaves a half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_torch_save(obj: Any, path) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


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
    meta = ckpt.get("octseg")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not an octseg checkpoint (no 'octseg' entry)")
    fmt = meta.get("format_version")
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {fmt} was written by octseg {meta.get('octseg_version', '?')}; "
            f"this octseg ({__version__}) reads format {CHECKPOINT_FORMAT}"
        )
    return meta


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
        raise CheckpointError(f"{path}: weights do not fit the recorded architecture ({exc})") from None
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


def checkpoint_meta(model_cfg: dict, classes, input_size, norm: dict, method: str, networks, default_weights: str,
                    config: Optional[dict] = None) -> dict:
    """The ``"octseg"`` entry of a checkpoint: everything needed to rebuild and run the model."""
    model_cfg = dict(model_cfg, encoder_weights="none")  # the weights are in the checkpoint
    return {
        "format_version": CHECKPOINT_FORMAT,
        "octseg_version": __version__,
        "model": model_cfg,
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
