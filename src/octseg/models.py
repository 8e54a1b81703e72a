"""Segmentation networks: any segmentation-models-pytorch architecture, 1 input channel, logits out."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import torch
from torch import nn

from octseg.errors import ConfigError

#: Seconds allowed to reach the weights hub before `imagenet` weights are declared unavailable.
HUB_PROBE_TIMEOUT = 5.0


@dataclass
class ModelConfig:
    """Which network to build. ``encoder_weights``: ``none``, ``imagenet`` or a path to a weights file."""

    arch: str = "Unet"
    encoder: str = "resnet50"
    encoder_weights: str = "none"
    encoder_depth: int = 5
    decoder_channels: Optional[list[int]] = None


def _smp():
    import segmentation_models_pytorch as smp

    return smp


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> tuple[bool, str]:
    """One quick TCP connection to the weights hub, instead of the hub client's minute of retries."""
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
        if constants.HF_HUB_OFFLINE:
            return False, "HF_HUB_OFFLINE is set"
    except Exception:  # pragma: no cover - very old huggingface_hub
        endpoint = "https://huggingface.co"
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, ""
    except OSError as exc:
        return False, f"cannot reach {host}:{port} ({exc})"


def _imagenet_cached(encoder: str) -> bool:
    """True when the hub client already holds the encoder's ImageNet weights locally."""
    try:
        from huggingface_hub import hf_hub_download
        from segmentation_models_pytorch.encoders import encoders

        settings = encoders[encoder]["pretrained_settings"]["imagenet"]
        hf_hub_download(settings["repo_id"], filename="model.safetensors", revision=settings["revision"],
                        local_files_only=True)
        return True
    except Exception:
        return False


def load_weights_file(path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or torch file, loaded without running pickled code."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path}: cannot load weights ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: not a state dict (found {type(obj).__name__})")
    return obj


def _load_encoder_file(model: nn.Module, path: Path) -> dict:
    """Load a local encoder weights file; keys may be bare or prefixed (``encoder.``, ``student.encoder.``)."""
    state = load_weights_file(path)
    enc_keys = set(model.encoder.state_dict())
    cleaned = {}
    for k, v in state.items():
        for prefix in ("student.encoder.", "model.encoder.", "encoder.", ""):
            if k.startswith(prefix) and k[len(prefix):] in enc_keys:
                cleaned[k[len(prefix):]] = v
                break
        else:
            cleaned[k] = v
    enc_state = model.encoder.state_dict()
    # A 3-channel first convolution becomes a 1-channel one by summing over colour channels.
    for k, v in list(cleaned.items()):
        if k in enc_state and v.ndim == 4 and enc_state[k].ndim == 4 and v.shape[1] == 3 and enc_state[k].shape[1] == 1:
            cleaned[k] = v.sum(dim=1, keepdim=True)
    result = model.encoder.load_state_dict(cleaned, strict=False)
    report = {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
    print(f"loaded encoder weights from {path}: {len(cleaned) - len(report['unexpected'])} tensors, "
          f"{len(report['missing'])} missing keys, {len(report['unexpected'])} unexpected keys")
    for kind in ("missing", "unexpected"):
        if report[kind]:
            shown = ", ".join(report[kind][:8]) + (" ..." if len(report[kind]) > 8 else "")
            print(f"  {kind}: {shown}")
    return report


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """A network that maps (N, 1, H, W) float images to (N, num_classes, H, W) logits."""
    smp = _smp()
    weights = (cfg.encoder_weights or "none").strip()
    kwargs = dict(encoder_name=cfg.encoder, encoder_depth=cfg.encoder_depth, in_channels=1, classes=num_classes)
    if cfg.decoder_channels:
        kwargs["decoder_channels"] = list(cfg.decoder_channels)
    try:
        archs = {a.lower(): a for a in _arch_names(smp)}
        if cfg.arch.lower() not in archs:
            raise ConfigError(f"model.arch={cfg.arch!r} is not a segmentation-models-pytorch architecture; "
                              f"choose one of {sorted(archs.values())}")
        if weights.lower() in ("none", "null", ""):
            return smp.create_model(archs[cfg.arch.lower()], encoder_weights=None, **kwargs)
        if weights.lower() == "imagenet":
            if not _imagenet_cached(cfg.encoder):
                t0 = time.monotonic()
                ok, why = _hub_reachable()
                if not ok:
                    raise ConfigError(
                        f"model.encoder_weights=imagenet: the ImageNet weights of {cfg.encoder!r} are not cached "
                        f"and cannot be downloaded ({why}, after {time.monotonic() - t0:.1f}s). Train from scratch "
                        f"with model.encoder_weights=none, or point model.encoder_weights at a local weights file "
                        f"(.pth or .safetensors)."
                    )
            return smp.create_model(archs[cfg.arch.lower()], encoder_weights="imagenet", **kwargs)
        path = Path(os.path.expanduser(weights))
        if not path.is_file():
            raise ConfigError(f"model.encoder_weights={weights!r}: not 'none', 'imagenet' or an existing file")
        model = smp.create_model(archs[cfg.arch.lower()], encoder_weights=None, **kwargs)
        _load_encoder_file(model, path)
        return model
    except KeyError as exc:
        raise ConfigError(f"model: {exc.args[0] if exc.args else exc}") from None


def _arch_names(smp) -> list[str]:
    try:
        from segmentation_models_pytorch import MODEL_ARCHITECTURES_MAPPING

        return [cls.__name__ for cls in MODEL_ARCHITECTURES_MAPPING.values()]
    except ImportError:  # older smp
        return ["Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus", "PAN"]

