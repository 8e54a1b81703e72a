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
    #: 2.5D input: the B-scan and this many neighbours on each side as 2k+1 channels
    #: (:mod:`octseg.data.context`); 0 = 2-D input.
    context_slices: int = 0


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


#: Key of the metadata entry of an encoder file written by ``octseg pretrain``.
ENCODER_META_KEY = "octseg_encoder"


def read_weights_file(path) -> tuple[dict[str, torch.Tensor], Optional[dict]]:
    """(state dict, encoder metadata or None) from a .safetensors or torch file, loaded without
    running pickled code. The metadata is that of an ``octseg pretrain`` encoder file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), None
        except Exception as exc:
            raise ConfigError(f"{path}: cannot load weights ({type(exc).__name__}: {exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path}: cannot load weights ({type(exc).__name__}: {exc})") from exc
    meta = obj.get(ENCODER_META_KEY) if isinstance(obj, dict) else None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: not a state dict (found {type(obj).__name__})")
    return obj, meta if isinstance(meta, dict) else None


def load_weights_file(path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or torch file, loaded without running pickled code."""
    return read_weights_file(path)[0]


def _check_encoder_meta(meta: dict, cfg: "ModelConfig", path: Path) -> None:
    """An ``octseg pretrain`` file says which encoder it holds: a mismatch is an error naming both."""
    what = f"an encoder file for {meta.get('encoder')!r} (objective {meta.get('objective', '?')}, octseg " \
           f"{meta.get('octseg_version', '?')})"
    if meta.get("encoder") != cfg.encoder:
        raise ConfigError(f"{path}: {what}, but model.encoder={cfg.encoder!r}; set model.encoder="
                          f"{meta.get('encoder')} or pretrain a {cfg.encoder} encoder")
    model_in = 2 * int(getattr(cfg, "context_slices", 0) or 0) + 1
    if meta.get("in_channels", 1) not in (1, model_in):
        raise ConfigError(f"{path}: {what} with {meta.get('in_channels')} input channels; this model takes "
                          f"{model_in}")
    depth = meta.get("encoder_depth")
    if isinstance(depth, int) and depth < cfg.encoder_depth:
        raise ConfigError(f"{path}: {what} of depth {depth}, but model.encoder_depth={cfg.encoder_depth}: its "
                          f"deepest stages would stay random; pretrain with the same depth")


def encoder_file_problem(path, cfg: "ModelConfig") -> Optional[str]:
    """Why an ``octseg pretrain`` encoder file does not fit ``cfg`` (None when it fits, or when the file
    is not one: other files are checked when they load). For config validation, before any data is read."""
    meta = None
    try:
        _, meta = read_weights_file(path)
        if meta is not None:
            _check_encoder_meta(meta, cfg, Path(path))
    except ConfigError as exc:
        return str(exc) if meta is not None else None
    return None


def _load_encoder_file(model: nn.Module, path: Path, cfg: Optional["ModelConfig"] = None) -> dict:
    """Load a local encoder weights file; keys may be bare or prefixed (``encoder.``, ``student.encoder.``)."""
    state, meta = read_weights_file(path)
    if meta is not None and cfg is not None:
        _check_encoder_meta(meta, cfg, path)
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
        # ... and a 1-channel one (octseg pretrain) feeds a 2.5D model's 2k+1 channels equally.
        elif k in enc_state and v.ndim == 4 and enc_state[k].ndim == 4 and v.shape[1] == 1 and enc_state[k].shape[1] > 1:
            cleaned[k] = v.repeat(1, enc_state[k].shape[1], 1, 1) / enc_state[k].shape[1]
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(enc_state[k].shape)})" for k, v in cleaned.items()
             if k in enc_state and hasattr(v, "shape") and tuple(v.shape) != tuple(enc_state[k].shape)]
    if wrong:
        raise ConfigError(f"{path}: these weights do not fit model.encoder={getattr(cfg, 'encoder', '?')!r} "
                          f"(another encoder or input channels?): {len(wrong)} tensors of the wrong shape, e.g. "
                          + "; ".join(wrong[:3]))
    if enc_state and not any(k in enc_state for k in cleaned):
        raise ConfigError(f"{path}: none of its {len(cleaned)} tensors belongs to model.encoder="
                          f"{getattr(cfg, 'encoder', '?')!r} (weights of another encoder?)")
    model.encoder.load_state_dict(cleaned, strict=False)  # smp's own ResNet/VGG encoders return None here
    report = {"missing": sorted(enc_keys - set(cleaned)), "unexpected": sorted(set(cleaned) - enc_keys)}
    print(f"loaded encoder weights from {path}: {len(cleaned) - len(report['unexpected'])} tensors, "
          f"{len(report['missing'])} missing keys, {len(report['unexpected'])} unexpected keys")
    if meta is not None:
        print(f"  pretrained with octseg pretrain: objective {meta.get('objective')}, {meta.get('steps')} steps at "
              f"{meta.get('size')}, data {[d.get('path') for d in meta.get('data') or [] if isinstance(d, dict)]}")
    for kind in ("missing", "unexpected"):
        if report[kind]:
            shown = ", ".join(report[kind][:8]) + (" ..." if len(report[kind]) > 8 else "")
            print(f"  {kind}: {shown}")
    return report


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """A network that maps (N, 2k+1, H, W) float images (k = ``context_slices``, 1 channel for 2-D
    input) to (N, num_classes, H, W) logits."""
    smp = _smp()
    weights = (cfg.encoder_weights or "none").strip()
    kwargs = dict(encoder_name=cfg.encoder, encoder_depth=cfg.encoder_depth,
                  in_channels=2 * int(cfg.context_slices) + 1, classes=num_classes)
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
        _load_encoder_file(model, path, cfg)
        return model
    except KeyError as exc:
        raise ConfigError(f"model: {exc.args[0] if exc.args else exc}") from None


def _arch_names(smp) -> list[str]:
    try:
        from segmentation_models_pytorch import MODEL_ARCHITECTURES_MAPPING

        return [cls.__name__ for cls in MODEL_ARCHITECTURES_MAPPING.values()]
    except ImportError:  # older smp
        return ["Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus", "PAN"]

