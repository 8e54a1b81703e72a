"""Training a recipe into a run folder: the Lightning trainer, checkpoints, resume checks, the
final evaluation of the best checkpoint, and the run folder's files."""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader

from octseg.checkpoint import atomic_torch_save, safe_load
from octseg.config import Config, config_to_dict, save_config
from octseg.errors import ConfigError, DataError
from octseg.io.outputs import atomic_write_text, json_default
from octseg.inference.predictor import resolve_device
from octseg.models import build_model
from octseg.training.curves import plot_learning_curves
from octseg.training.data import (EvalDataset, StepDataset, StepLoader, StepSampler, TrainData, intensity_stats,
                                  load_train_data)
from octseg.training.module import SegmentationModule


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O: atomic writes, weights-only reads."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return safe_load(path, map_location=map_location or "cpu")


@dataclass
class TrainResult:
    run_dir: Path
    best: Path
    last: Path
    metrics: dict

    def summary(self) -> str:
        lines = [f"run folder: {self.run_dir}", f"best checkpoint: {self.best}"]
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        for name, rep in self.metrics.get("val", {}).items():
            per = ", ".join(f"{c} {fmt(v)}" for c, v in rep["pooled"]["dice"].items())
            lines.append(f"val {name}: mean foreground Dice {fmt(rep['mean_foreground_dice']['pooled'])} ({per})")
        return "\n".join(lines)


def _check_resume_config(cfg: Config, run_dir: Path) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text())
    now = config_to_dict(cfg)
    diffs = []
    for section, values in now.items():
        if section == "trainer":
            continue  # longer training or another device is a legitimate reason to resume
        old = saved.get(section)
        if isinstance(values, dict):
            # a key added since the run started (model.context_slices) reads as its default
            born = {"model": {"context_slices": 0}}.get(section, {})
            diffs += [f"{section}.{k}: {(old or {}).get(k)!r} -> {v!r}" for k, v in values.items()
                      if (old or {}).get(k, born.get(k)) != v]
        elif old != values:
            diffs.append(f"{section}: {old!r} -> {values!r}")
    if diffs:
        raise ConfigError(f"{saved_path}: --resume with a different configuration: " + "; ".join(diffs))


def _network_input_size(cfg: Config, data: TrainData) -> list[int]:
    size = list(cfg.data.size) if cfg.data.size else list(data.size)
    if len(size) != 2 or min(size) < 32:
        raise ConfigError(f"data.size={size}: expected [H, W], each at least 32")
    return size


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """``auto``: bf16 mixed precision where the hardware does bf16 natively, else full precision."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 / AMX): elsewhere oneDNN emulates it,
    several times slower than float32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _mid_epoch_checkpoints(cfg: Config, run_dir: Path) -> list:
    """``last.ckpt`` inside epochs, every ``trainer.checkpoint_every_steps`` steps and/or
    ``checkpoint_every_minutes`` minutes (Lightning's ModelCheckpoint; one callback per trigger)."""
    import datetime

    from lightning.pytorch.callbacks import ModelCheckpoint

    class MidEpochCheckpoint(ModelCheckpoint):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            # an epoch's last step: the epoch-end checkpoint follows (after validation), which resumes cleanly
            if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
                super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    t, out = cfg.trainer, []
    common = dict(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                  enable_version_counter=False, save_on_train_epoch_end=False)
    if t.checkpoint_every_steps:
        out.append(MidEpochCheckpoint(every_n_train_steps=t.checkpoint_every_steps, **common))
    if t.checkpoint_every_minutes:
        out.append(MidEpochCheckpoint(train_time_interval=datetime.timedelta(minutes=t.checkpoint_every_minutes),
                                      **common))
    return out


def build_trainer(cfg: Config, run_dir: Path, callbacks=(), logger=True, **trainer_kwargs) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    t = cfg.trainer
    # Two callbacks: Lightning's save_last only writes when a top-k checkpoint was written.
    best = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/mean_fg_dice", mode="max",
                           save_top_k=1, enable_version_counter=False, auto_insert_metric_name=False)
    last = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                           every_n_epochs=1, enable_version_counter=False)
    callbacks = [*_mid_epoch_checkpoints(cfg, run_dir), *callbacks]
    loggers = []
    if logger:
        loggers.append(CSVLogger(save_dir=str(run_dir), name="logs", version=""))
        try:
            from lightning.pytorch.loggers import TensorBoardLogger
            import tensorboard  # noqa: F401

            loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
        except ImportError:
            pass
    accel = t.accelerator
    on_cpu = accel == "cpu" or (accel == "auto" and not torch.cuda.is_available())
    deterministic = t.deterministic if on_cpu or not t.deterministic else "warn"
    trainer = L.Trainer(
        accelerator=accel, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
        precision=resolve_precision(t.precision, accel),
        max_epochs=t.max_epochs, max_steps=t.max_steps,
        max_time={"minutes": t.max_minutes} if t.max_minutes else None,
        check_val_every_n_epoch=t.val_every_n_epochs, log_every_n_steps=t.log_every_n_steps,
        deterministic=deterministic, enable_progress_bar=t.progress, enable_model_summary=False,
        callbacks=[best, last, *callbacks], logger=loggers or False, plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False, num_sanity_val_steps=0, default_root_dir=str(run_dir), **trainer_kwargs,
    )
    # Deterministic mode also makes PyTorch fill every new uninitialised tensor with NaN, a debugging aid that
    # reproducibility does not need: half of the kernel launches of a launch-bound GPU step (3,200 of 6,400 per
    # UNet-ResNet50 Mean Teacher step on an H200, benchmarks/results/gpu_predict_profile_profile_resnet50.txt).
    torch.utils.deterministic.fill_uninitialized_memory = False
    return trainer


def evaluate_networks(ckpt_path: Path, data: TrainData, part: str = "val", device="cpu", batch: int = 16) -> dict:
    """Honest per-class figures of every network in a checkpoint on one part of the split."""
    from octseg.checkpoint import load_networks
    from octseg.metrics import score_networks

    nets, meta = load_networks(ckpt_path, device)
    rows = data.parts[part]
    # (2.5D: the neighbours come from the whole dataset, not only from this part's B-scans)
    return score_networks(nets, meta, data.stacked(rows), np.asarray(data.masks[rows]),
                          volumes=[data.volumes[r] for r in rows], vendors=[data.vendors[r] for r in rows],
                          device=device, batch=batch, tables="per_volume")


def _is_run_folder(path: Path) -> bool:
    """A run folder written by an octseg from before output records (config.yaml + checkpoints/)."""
    return (path / "config.yaml").is_file() and (path / "checkpoints").is_dir()


def _check_resume_split(split: dict, run_dir: Path) -> None:
    """A resumed run must train on the split it started with, never on a split file changed since."""
    saved_path = run_dir / "split.json"
    if not saved_path.is_file():
        return
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(saved_path, f"cannot read the run's split ({exc})") from None
    old, new = saved.get("parts", {}), split.get("parts", {})
    if old == new:
        return
    changed = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, []), new.get(k, [])
        if a != b:
            changed.append(f"{k} {len(a)} -> {len(b)} B-scans" if len(a) != len(b) else f"{k} changed")
    raise DataError(saved_path, f"--resume: the split {split.get('name')!r} of the dataset differs from the one this "
                                f"run started with ({'; '.join(changed)}); restore the original split file, or start "
                                f"a new run in another folder")


def train(cfg: Config, out_dir=None, resume: bool = False, extra_callbacks=(), overwrite: bool = False) -> TrainResult:
    """Train one recipe into a run folder (config, split, logs, checkpoints, metrics, curves).

    The folder must be new, empty or an octseg run folder (``overwrite`` allows a folder with
    other files, which are left alone); only one process trains into it at a time."""
    from octseg.io.outputs import OutputFolder

    run_dir = Path(out_dir) if out_dir else Path("runs") / cfg.name
    with OutputFolder(run_dir, "train", whole=True, overwrite=overwrite, legacy=_is_run_folder,
                      protect=[cfg.data.path, *cfg.data.extra_unlabelled]):
        return _train(cfg, run_dir, resume, extra_callbacks)


#: below this best validation mean foreground Dice, ``best.ckpt`` was picked among near-zero scores
UNINFORMATIVE_VAL_DICE = 0.05


def uninformative_selection(best_val_dice: float, n_val: int) -> str | None:
    """Why ``best.ckpt`` says little, or None: when no validation of the run found the fluid its validation B-scans
    show, the "best" epoch is the one with a few lucky pixels, often an early, barely trained one (seen on Duke
    with 1 labelled subject: a self-trained student whose every epoch scored 0-0.01 kept its fourth epoch, which
    scored 0 on test)."""
    if not best_val_dice < UNINFORMATIVE_VAL_DICE:
        return None
    return (f"the best validation mean foreground Dice of the run is {best_val_dice:.3f}: on its {n_val} validation "
            f"B-scans no epoch found the fluid, so checkpoints/best.ckpt was picked among near-zero scores and may be "
            f"an early, barely trained epoch; compare checkpoints/last.ckpt, or validate on B-scans that show more "
            f"of each class")


def _train(cfg: Config, run_dir: Path, resume: bool, extra_callbacks) -> TrainResult:
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume:
        if not last.is_file():
            raise ConfigError(f"{last}: nothing to resume (no last checkpoint in {run_dir})")
        _check_resume_config(cfg, run_dir)
    elif last.is_file():
        raise ConfigError(f"{run_dir} already holds a run; use --resume to continue it or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer = build_trainer(cfg, run_dir, callbacks=extra_callbacks)
    # Under DDP every process runs this function; only rank 0 writes the run folder's files
    # (Lightning writes checkpoints from rank 0 only).
    rank0 = trainer.is_global_zero
    log = run_dir / "logs" / "metrics.csv"
    if resume and rank0:  # a checkpoint write that a kill interrupted left its temporary file (never a .ckpt)
        from octseg.io.outputs import TMP_PREFIX

        for tmp in (run_dir / "checkpoints").glob(f"{TMP_PREFIX}*"):
            tmp.unlink(missing_ok=True)
    if resume and log.is_file() and rank0:  # Lightning's CSV logger would overwrite the earlier part
        log.rename(log.with_name(f"metrics.part{len(list(log.parent.glob('metrics.part*.csv'))) + 1}.csv"))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = load_train_data(cfg)
    input_size = _network_input_size(cfg, data)
    if resume:
        _check_resume_split(data.split, run_dir)
    if rank0:
        save_config(cfg, run_dir / "config.yaml")
        atomic_write_text(run_dir / "split.json", json.dumps(data.split, indent=1, sort_keys=True))
    norm = intensity_stats(data.images, np.concatenate([data.parts["labelled"], data.parts.get("unlabelled", [])]).astype(np.int64))
    n_lab = len(data.parts["labelled"])
    n_unl = len(data.parts.get("unlabelled", ()))
    steps = cfg.trainer.steps_per_epoch or max(1, math.ceil(n_lab / cfg.data.labelled_batch))

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*predict_dataloader.*|.*val_dataloader.*workers.*")
        net = build_model(cfg.model, len(data.classes)) if not resume else build_model(
            dataclasses.replace(cfg.model, encoder_weights="none"), len(data.classes))
        module = SegmentationModule(cfg, net, data.classes, input_size, norm, steps)
        if not module.method.uses_unlabelled and cfg.augment.fourier_style_p == 0:
            n_unl = 0  # (with augment.fourier_style_p, the unlabelled batch is the labelled views' style source)
        sampler = StepSampler(n_lab, n_unl, cfg.data.labelled_batch, cfg.data.unlabelled_batch, steps, cfg.seed,
                              rank=trainer.global_rank, world=trainer.world_size)
        train_loader = StepLoader(StepDataset(data), sampler=sampler, batch_size=None, num_workers=0)
        val_loader = DataLoader(EvalDataset(data, "val", cfg.trainer.val_batch, trainer.global_rank, trainer.world_size),
                                batch_size=None, num_workers=0)
        if rank0:
            print(f"training {cfg.method.name} ({cfg.model.arch}-{cfg.model.encoder}) on {n_lab} labelled + "
              f"{n_unl} unlabelled B-scans, validating on {len(data.parts['val'])}; {steps} steps/epoch, "
              f"input {input_size[0]}x{input_size[1]}, classes {list(data.classes)}; "
              f"{trainer.strategy.root_device.type}, precision {trainer.precision}"
              + (f"; 2.5D input: each B-scan with {cfg.model.context_slices} neighbour(s) on each side"
                 if cfg.model.context_slices else "")
              + (f"; {trainer.world_size} processes, each its own B-scans" if trainer.world_size > 1 else ""))
            if data.label_bands is not None:
                print(f"data.fluid_band_margin={cfg.data.fluid_band_margin}: labelled columns per volume (outside: "
                      f"unlabelled) " + ", ".join(f"{v} {'all (no fluid)' if b is None else f'{b[0]}-{b[1]}'}"
                                                  for v, b in data.label_bands.items()))
        if resume:  # its metrics.csv was kept as metrics.partN.csv above: nothing of it will be deleted
            warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
        t0 = time.time()
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resume else None)
    best = run_dir / "checkpoints" / "best.ckpt"
    if not best.is_file():
        best = last
    metrics = {"train_seconds": time.time() - t0, "best_checkpoint": str(best), "epochs": trainer.current_epoch,
               "global_step": trainer.global_step}
    best_score = next((c.best_model_score for c in trainer.checkpoint_callbacks if c.monitor == "val/mean_fg_dice"),
                      None)
    problem = None if best_score is None else uninformative_selection(float(best_score), len(data.parts["val"]))
    if problem and trainer.is_global_zero:
        metrics["selection_warning"] = problem
        warnings.warn(f"{run_dir}: {problem}", stacklevel=2)
    if trainer.is_global_zero:
        metrics["val"] = evaluate_networks(best, data, "val", device=resolve_device("auto"))
        atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=json_default))
        plot_learning_curves(run_dir)
    return TrainResult(run_dir, best, last, metrics)
