"""Encoder pretraining without internet: ``octseg pretrain``.

ImageNet weights cannot be downloaded everywhere octseg runs, so this pretrains the encoder of the
same segmentation-models-pytorch U-Net that ``octseg train`` builds, on OCT the user has:

- ``synthetic``: supervised 4-class segmentation (Dice + cross-entropy) on ``octseg synth`` volumes,
  generated once into a cache, with their exact masks;
- ``mim``: masked-image modelling: square patches of the normalised B-scan are blanked and a
  1-channel regression head reconstructs them (loss on the masked pixels only);
- ``denoise``: the same head reconstructs the clean B-scan from a speckle-noised copy.

``mim`` and ``denoise`` read unlabelled B-scans from any layout ``octseg prepare`` reads (Kermany
class folders, image folders, RETOUCH volumes, clinic files, prepared datasets) and/or the synthetic
volumes' images. Intensities go through the project's normalisation, ``(x / 255 - mean) / std`` with
the pretraining data's own statistics, as ``octseg train`` does with its data: fine-tuning sees
standardised inputs either way. The result is an *encoder file* (``torch.save`` of
``{"octseg_encoder": meta, "state_dict": encoder weights}``, plain data, loaded weights-only) that
``model.encoder_weights=PATH`` loads; its metadata names the encoder, input channels, objective,
data, steps and normalisation, so a mismatched file is a clear error (see ``octseg.models``).

Resumable: a checkpoint beside the encoder file (``ENCODER.pth.pretrain.ckpt``, atomic, every
``checkpoint_every`` steps and at the end) holds the network, optimiser and random-generator state;
``resume=True`` continues it exactly (the batches and masks of an uninterrupted run).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from octseg import __version__
from octseg.errors import CheckpointError, ConfigError, DataError
from octseg.models import ENCODER_META_KEY

#: Objectives ``octseg pretrain`` offers.
OBJECTIVES = ("synthetic", "mim", "denoise")
#: Bumped when the meaning of an encoder file's contents changes incompatibly.
ENCODER_FORMAT = 1
#: Suffix of the resumable checkpoint written beside the encoder file.
CHECKPOINT_SUFFIX = ".pretrain.ckpt"
#: Settings that may change on ``--resume`` (longer training, another device, progress output).
_RESUMABLE_CHANGES = {"steps", "checkpoint_every", "device", "progress", "overwrite", "cache_dir"}


@dataclass
class PretrainConfig:
    """One pretraining run. ``size``: (H, W) every B-scan is resized to; ``patch``: side of the
    masked squares for ``mim`` (0: a sixteenth of the shorter side); ``noise``: speckle strength
    for ``denoise`` (log-std of the multiplicative noise)."""

    out: Path
    objective: str
    data: list = field(default_factory=list)
    synthetic_volumes: int = 0
    synthetic_slices: int = 12
    encoder: str = "resnet18"
    arch: str = "Unet"
    encoder_depth: int = 5
    decoder_channels: Optional[list] = None
    size: tuple = (256, 384)
    steps: int = 1000
    batch: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    seed: int = 0
    mask_ratio: float = 0.6
    patch: int = 0
    noise: float = 0.5
    checkpoint_every: int = 100
    device: str = "auto"
    cache_dir: Optional[Path] = None
    progress: bool = True
    overwrite: bool = False


@dataclass
class PretrainResult:
    out: Path
    checkpoint: Path
    meta: dict

    def summary(self) -> str:
        m = self.meta
        return (f"encoder file: {self.out} ({m['encoder']}, objective {m['objective']}, {m['steps']} steps, "
                f"final loss {m['final_loss']:.4f})\nuse it with: octseg train RECIPE model.encoder={m['encoder']} "
                f"model.encoder_weights={self.out}")


def checkpoint_path(out) -> Path:
    out = Path(out)
    return out.with_name(out.name + CHECKPOINT_SUFFIX)


# ----------------------------------------------------------------------------- checks


def _check_config(cfg: PretrainConfig) -> None:
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"--objective {cfg.objective!r}: choose one of {', '.join(OBJECTIVES)}")
    if len(cfg.size) != 2 or min(int(s) for s in cfg.size) < 32:
        raise ConfigError(f"--size {list(cfg.size)}: expected H W, each at least 32")
    for name, lo in (("steps", 1), ("batch", 1), ("checkpoint_every", 1), ("synthetic_volumes", 0),
                     ("synthetic_slices", 1), ("seed", 0), ("warmup_steps", 0), ("patch", 0)):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ConfigError(f"--{name.replace('_', '-')} {v!r}: expected an integer >= {lo}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ConfigError(f"--lr {cfg.lr}: expected a positive number")
    if not 0.0 < cfg.mask_ratio < 1.0:
        raise ConfigError(f"--mask-ratio {cfg.mask_ratio}: expected a fraction in (0, 1)")
    if not cfg.noise > 0:
        raise ConfigError(f"--noise {cfg.noise}: expected a positive number")
    if cfg.objective == "synthetic":
        if cfg.data:
            raise ConfigError("--objective synthetic learns from octseg synth volumes and their exact masks; "
                              "--data is for the unlabelled objectives (mim, denoise)")
        if cfg.synthetic_volumes < 1:
            raise ConfigError("--objective synthetic needs --synthetic-volumes N (N >= 1)")
    elif not cfg.data and cfg.synthetic_volumes < 1:
        raise ConfigError(f"--objective {cfg.objective} needs B-scans: --data PATH (unlabelled OCT in any layout "
                          f"octseg reads) and/or --synthetic-volumes N")
    for p in cfg.data:
        if not Path(p).expanduser().exists():
            raise DataError(p, "--data: no such file or folder")


def _settings(cfg: PretrainConfig) -> dict:
    """The run's settings as plain data (paths as absolute strings)."""
    d = dataclasses.asdict(cfg)
    d["out"] = str(Path(cfg.out).absolute())
    d["data"] = [str(Path(p).expanduser().absolute()) for p in cfg.data]
    d["size"] = [int(s) for s in cfg.size]
    d["cache_dir"] = None if cfg.cache_dir is None else str(cfg.cache_dir)
    d["decoder_channels"] = None if cfg.decoder_channels is None else [int(c) for c in cfg.decoder_channels]
    return d


# ----------------------------------------------------------------------------- data


@dataclass
class PretrainData:
    """uint8 B-scans at the pretraining size (memory-mapped prepared arrays, gathered per batch),
    their masks for the synthetic objective, and where they came from."""

    sources: list  # [(name, images (N, H, W) uint8, masks or None)]
    origins: list  # [{"path": ..., "n_bscans": ...}] for the encoder file
    norm: dict

    @property
    def n(self) -> int:
        return sum(len(s[1]) for s in self.sources)

    def batch(self, rows: np.ndarray, size) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(images uint8 (B, H, W), masks uint8 (B, H, W) or None) of global row indices."""
        from octseg.transforms import resize_image_u8, resize_mask_u8

        offsets = np.cumsum([0] + [len(s[1]) for s in self.sources])
        imgs, masks = [], []
        for r in rows:
            k = int(np.searchsorted(offsets, r, side="right") - 1)
            _, im, mk = self.sources[k]
            i = int(r - offsets[k])
            imgs.append(resize_image_u8(np.array(im[i]), size))
            if mk is not None:
                masks.append(resize_mask_u8(np.array(mk[i]), size))
        x = torch.from_numpy(np.stack(imgs))
        return x, (torch.from_numpy(np.stack(masks)) if len(masks) == len(imgs) else None)


def _synthetic_folder(cfg: PretrainConfig) -> Path:
    """``octseg synth`` volumes for pretraining, generated once into the cache (reused by later runs
    with the same count, slices, scale and seed)."""
    from octseg.data.prepare import cache_root
    from octseg.data.synthetic.vendors import GEOMETRY
    from octseg.data.synthetic.writer import write_synthetic_dataset

    H, W = (int(s) for s in cfg.size)
    # generated at least as large as the target in both directions (shrinking averages the speckle)
    scale = min(1.0, max(max(H / g.rows, W / g.cols) for g in GEOMETRY.values()))
    key = f"v{cfg.synthetic_volumes}-sl{cfg.synthetic_slices}-sc{scale:.4f}-seed{cfg.seed}"
    folder = cache_root(cfg.cache_dir).parent / "pretrain-synthetic" / key
    done = folder / "octseg-pretrain-synthetic.json"
    if not done.is_file():
        write_synthetic_dataset(folder, cfg.synthetic_volumes, fmt="mhd", slices=cfg.synthetic_slices, scale=scale,
                                seed=cfg.seed, progress=cfg.progress, overwrite=True)
        from octseg.io.outputs import atomic_write_text

        atomic_write_text(done, json.dumps({"volumes": cfg.synthetic_volumes, "slices": cfg.synthetic_slices,
                                            "scale": scale, "seed": cfg.seed, "octseg_version": __version__}))
    return folder


def load_pretrain_data(cfg: PretrainConfig) -> PretrainData:
    """Every --data source and the synthetic volumes, prepared (cached) at ``cfg.size``."""
    from octseg.data.prepare import ensure_prepared
    from octseg.training.data import intensity_stats

    size = tuple(int(s) for s in cfg.size)
    sources, origins = [], []
    for p in cfg.data:
        p = Path(p).expanduser()
        ds = ensure_prepared(p, size, cache_dir=cfg.cache_dir, progress=cfg.progress)
        if len(ds) == 0:
            raise DataError(p, "no B-scans found")
        sources.append((str(p), ds.images, None))
        origins.append({"path": str(p.absolute()), "n_bscans": len(ds)})
    if cfg.synthetic_volumes:
        folder = _synthetic_folder(cfg)
        ds = ensure_prepared(folder, size, cache_dir=cfg.cache_dir, progress=cfg.progress)
        if len(ds.classes) != 4:
            raise DataError(folder, f"synthetic cache holds {len(ds.classes)} classes, expected 4; delete it")
        masks = ds.masks if cfg.objective == "synthetic" else None
        sources.append((f"synthetic:{folder}", ds.images, masks))
        origins.append({"path": f"octseg synth ({cfg.synthetic_volumes} volumes x {cfg.synthetic_slices} B-scans, "
                              f"seed {cfg.seed})", "n_bscans": len(ds)})
    # the project's normalisation statistics, from an even subsample of every source
    sample = []
    for _, images, _ in sources:
        rows = np.arange(len(images))[:: max(1, len(images) // 128)][:128]
        sample.append(np.stack([_resized(images[int(r)], size) for r in rows]))
    sample = np.concatenate(sample)
    norm = intensity_stats(sample, np.arange(len(sample)))
    return PretrainData(sources, origins, norm)


def _resized(img, size) -> np.ndarray:
    from octseg.transforms import resize_image_u8

    return resize_image_u8(np.array(img), size)


# ----------------------------------------------------------------------------- objectives


def _augment(x: torch.Tensor, y: Optional[torch.Tensor], g: torch.Generator):
    """Left/right flips (left and right eyes are mirror images), per sample."""
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if y is not None:
        y = torch.where(flip[:, None, None], y.flip(-1), y)
    return x, y


def patch_mask(n: int, size, patch: int, ratio: float, g: torch.Generator) -> torch.Tensor:
    """(n, 1, H, W) bool: ``ratio`` of the ``patch`` x ``patch`` squares of each image, chosen at random."""
    H, W = size
    gh, gw = math.ceil(H / patch), math.ceil(W / patch)
    k = max(1, round(ratio * gh * gw))
    order = torch.rand(n, gh * gw, generator=g).argsort(dim=1)
    grid = torch.zeros(n, gh * gw, dtype=torch.bool)
    grid.scatter_(1, order[:, :k], True)
    grid = grid.view(n, 1, gh, gw)
    return grid.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[:, :, :H, :W]


def speckle(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """OCT-like corruption of [0, 1] images: multiplicative log-normal speckle, smoothed over 2x2
    pixels (speckle grains span a few pixels), plus a weak additive noise floor."""
    n = torch.randn(x.shape, generator=g)
    n = F.avg_pool2d(F.pad(n, (0, 1, 0, 1), mode="replicate"), 2, stride=1) * 2.0
    floor = torch.randn(x.shape, generator=g) * (0.05 * strength)
    return (x * torch.exp(strength * n - strength ** 2 / 2) + floor).clamp_(0.0, 1.0)


def _loss(cfg: PretrainConfig, net, seg_loss, x_unit: torch.Tensor, y, norm: dict, g: torch.Generator, device):
    """One step's loss on a batch of [0, 1] images (and labels for ``synthetic``)."""
    from octseg.transforms import normalise

    if cfg.objective == "synthetic":
        logits = net(normalise(x_unit, norm).to(device))
        return seg_loss(logits.float(), y.to(device).long())
    clean = normalise(x_unit, norm)
    if cfg.objective == "mim":
        patch = cfg.patch or max(2, min(cfg.size) // 16)
        mask = patch_mask(x_unit.shape[0], tuple(x_unit.shape[-2:]), patch, cfg.mask_ratio, g)
        inp = clean.masked_fill(mask, 0.0)  # 0 = the data's mean after normalisation
        pred = net(inp.to(device)).float()
        m = mask.to(device)
        return ((pred - clean.to(device)) ** 2 * m).sum() / m.sum().clamp_min(1)
    inp = normalise(speckle(x_unit, cfg.noise, g), norm)
    pred = net(inp.to(device)).float()
    return F.mse_loss(pred, clean.to(device))


# ----------------------------------------------------------------------------- the run


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: choose auto, cpu or cuda")
    return torch.device(name)


def _lr_factor(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then a cosine decay to zero over ``cfg.steps``."""
    warm = min(cfg.warmup_steps, max(0, cfg.steps - 1))
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _check_out(cfg: PretrainConfig, ckpt: Path) -> None:
    from octseg.io.outputs import check_output_file

    out = Path(cfg.out)
    check_output_file(out, overwrite=True, protect=cfg.data)  # a folder, or one of the inputs: refused
    if cfg.overwrite:
        ckpt.unlink(missing_ok=True)  # the earlier run's: never resumed into this one
        return
    if ckpt.is_file():
        raise ConfigError(f"{ckpt}: a pretraining checkpoint for {out} exists; continue it with --resume, or "
                          f"pass --overwrite to start again")
    if out.exists():
        raise DataError(out, "exists; choose another --out, or pass --overwrite to replace it")


def pretrain(cfg: PretrainConfig, resume: bool = False) -> PretrainResult:
    """Pretrain an encoder and write the encoder file ``cfg.out`` (atomically, at the end)."""
    from octseg.checkpoint import atomic_torch_save, safe_load
    from octseg.losses import LossConfig, SegmentationLoss
    from octseg.models import ModelConfig, build_model

    _check_config(cfg)
    out, ckpt_path = Path(cfg.out), checkpoint_path(cfg.out)
    settings = _settings(cfg)
    state = None
    if resume:
        if not ckpt_path.is_file():
            raise ConfigError(f"{ckpt_path}: nothing to resume (no pretraining checkpoint beside {out})")
        state = safe_load(ckpt_path)
        saved = (state.get("octseg_pretrain") or {}).get("settings")
        if not isinstance(saved, dict) or not isinstance(state.get("model"), dict):
            raise CheckpointError(f"{ckpt_path}: not an octseg pretraining checkpoint")
        diffs = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.items()
                 if k not in _RESUMABLE_CHANGES and saved.get(k) != v]
        if diffs:
            raise ConfigError(f"{ckpt_path}: --resume with different settings: " + "; ".join(diffs))
        from octseg.io.outputs import check_output_file

        check_output_file(out, overwrite=True, protect=cfg.data)
    else:
        _check_out(cfg, ckpt_path)

    device = _resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    n_out = 4 if cfg.objective == "synthetic" else 1
    mcfg = ModelConfig(arch=cfg.arch, encoder=cfg.encoder, encoder_weights="none", encoder_depth=cfg.encoder_depth,
                       decoder_channels=cfg.decoder_channels)
    try:
        net = build_model(mcfg, n_out).to(device)
    except (ValueError, TypeError, AssertionError) as exc:
        raise ConfigError(f"--arch {cfg.arch} --encoder {cfg.encoder}: cannot build this network ({exc})") from None
    data = load_pretrain_data(cfg)  # after the network: a wrong --encoder fails before any data is read
    seg_loss = SegmentationLoss(LossConfig(name="dice_ce"), 4).to(device) if cfg.objective == "synthetic" else None
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    step, history, seconds = 0, [], 0.0
    if state is not None:
        try:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            g.set_state(state["generator"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{ckpt_path}: cannot continue from this checkpoint ({exc})") from None
        meta = state["octseg_pretrain"]
        step, history, seconds = int(meta["step"]), list(meta.get("history", [])), float(meta.get("seconds", 0.0))
        data.norm = dict(meta["norm"])  # the statistics the run started with
        print(f"resuming pretraining at step {step} of {cfg.steps} from {ckpt_path}")

    def save_checkpoint():
        atomic_torch_save({"octseg_pretrain": {"format": ENCODER_FORMAT, "settings": settings, "step": step,
                                               "norm": data.norm, "history": history, "seconds": seconds,
                                               "octseg_version": __version__},
                           "model": net.state_dict(), "optimizer": opt.state_dict(), "generator": g.get_state()},
                          ckpt_path)

    origin = ", ".join(f"{s['n_bscans']} from {s['path']}" for s in data.origins)
    print(f"pretraining {cfg.arch}-{cfg.encoder} ({cfg.objective}) on {data.n} B-scans at {cfg.size[0]}x{cfg.size[1]} "
          f"({origin}); {cfg.steps} steps of {cfg.batch} "
          f"on {device}; checkpoint {ckpt_path}")
    from tqdm.auto import tqdm

    from octseg.transforms import to_unit

    size = tuple(int(s) for s in cfg.size)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    net.train()
    running = None
    t0 = time.time()
    with tqdm(total=cfg.steps, initial=min(step, cfg.steps), desc=f"pretrain {cfg.objective}", unit="step",
              disable=not cfg.progress) as bar:
        while step < cfg.steps:
            rows = torch.randint(data.n, (cfg.batch,), generator=g).numpy()
            x_u8, y = data.batch(rows, size)
            x = to_unit(x_u8)
            x, y = _augment(x, y, g)
            for pg in opt.param_groups:
                pg["lr"] = cfg.lr * _lr_factor(step, cfg)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = _loss(cfg, net, seg_loss, x, y, data.norm, g, device)
            if not torch.isfinite(loss):
                raise ConfigError(f"pretraining diverged at step {step} (loss {loss.item()}); lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            v = float(loss.item())
            running = v if running is None else 0.9 * running + 0.1 * v
            history.append(round(v, 6))
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                seconds, t0 = seconds + time.time() - t0, time.time()
                save_checkpoint()
    tail = history[-min(len(history), 20):]
    meta = {
        "format": ENCODER_FORMAT, "encoder": cfg.encoder, "in_channels": 1, "arch": cfg.arch,
        "encoder_depth": cfg.encoder_depth, "decoder_channels": settings["decoder_channels"],
        "objective": cfg.objective, "data": data.origins, "steps": step, "batch": cfg.batch, "lr": cfg.lr,
        "seed": cfg.seed, "size": list(size), "normalisation": dict(data.norm),
        "final_loss": float(np.mean(tail)) if tail else float("nan"), "first_loss": history[0] if history else None,
        "seconds": round(seconds, 1), "octseg_version": __version__,
        "settings_hash": hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16],
    }
    if cfg.objective == "mim":
        meta.update(mask_ratio=cfg.mask_ratio, patch=cfg.patch or max(2, min(size) // 16))
    elif cfg.objective == "denoise":
        meta["noise"] = cfg.noise
    encoder_state = {k: v.detach().cpu().clone() for k, v in net.encoder.state_dict().items()}
    atomic_torch_save({ENCODER_META_KEY: meta, "state_dict": encoder_state}, out)
    return PretrainResult(out, ckpt_path, meta)
