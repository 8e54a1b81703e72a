"""Training on Lightning: data path, LightningModule, callbacks, run folder.

Speed choices (CPU and GPU alike): the prepared uint8 arrays sit in memory (or stay
memory-mapped); a step's batch is a fancy index into them, moved to the device as uint8;
augmentation and normalisation run there on the whole batch; no loader workers. Data order
and all step randomness are functions of (seed, epoch, step), so a resumed run repeats an
uninterrupted one exactly on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, Dataset, Sampler

from octseg.checkpoint import atomic_torch_save, checkpoint_meta, safe_load
from octseg.config import Config, config_to_dict, save_config
from octseg.data.augment import augment_batch
from octseg.data.prepared import PreparedDataset
from octseg.errors import ConfigError, DataError
from octseg.io.outputs import atomic_write_text
from octseg.inference import predict_labels
from octseg.constants import IGNORE_INDEX
from octseg.losses import SegmentationLoss
from octseg.methods import StepContext, build_method
from octseg.models import build_model
from octseg.transforms import normalise, resize_images, resize_labels


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O: atomic writes, weights-only reads."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return safe_load(path, map_location=map_location or "cpu")


# ----------------------------------------------------------------------------- data


@dataclass
class TrainData:
    """The arrays and index sets one run trains and validates on."""

    images: np.ndarray  # uint8 (N, H, W)
    masks: np.ndarray  # uint8 (N, H, W), 255 = unlabelled
    parts: dict  # part -> row indices into images/masks
    classes: tuple
    size: tuple  # (H, W) of the arrays
    split: dict  # the split as written to disk
    dataset_path: str
    volumes: list  # volume id per row
    vendors: list  # vendor per row


def _split_name(cfg: Config) -> str:
    d = cfg.data
    if d.split:
        return d.split
    lab = f"n{d.labeled_count}" if d.labeled_count is not None else f"l{d.labeled:g}"
    return f"{d.split_by}-{lab}-v{d.val:g}-t{d.test:g}-s{cfg.seed}"


def _open_dataset(path: str, size, cfg: Config) -> PreparedDataset:
    from octseg.data.prepare import ensure_prepared

    if not path:
        raise ConfigError("data.path is empty: set it to a prepared dataset or a raw data folder")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(p, "data.path does not exist")
    return ensure_prepared(p, tuple(size) if size else None, layout=cfg.data.layout,
                           volume_regex=cfg.data.volume_regex)


def load_train_data(cfg: Config) -> TrainData:
    """Open (or prepare) the dataset, create or reuse the split, gather extra unlabelled data."""
    from octseg.data.splits import make_split, split_indices

    ds = _open_dataset(cfg.data.path, cfg.data.size, cfg)
    name = _split_name(cfg)
    split_path = ds.path / "splits" / f"{name}.json"
    if not split_path.is_file():
        make_split(ds.path, labeled=None if cfg.data.labeled_count is not None else cfg.data.labeled,
                   labeled_count=cfg.data.labeled_count, val=cfg.data.val, test=cfg.data.test,
                   seed=cfg.seed, by=cfg.data.split_by, name=name)
    split = ds.split(name)
    parts = {k: np.asarray(v, dtype=np.int64) for k, v in split_indices(ds, split).items()}
    images = np.asarray(ds.images) if cfg.data.in_memory else ds.images
    masks = np.asarray(ds.masks) if cfg.data.in_memory else ds.masks
    volumes = [s.volume for s in ds.slices]
    vendors = [s.vendor for s in ds.slices]
    if cfg.data.extra_unlabeled:
        extra_imgs = []
        for extra in cfg.data.extra_unlabeled:
            e = _open_dataset(extra, ds.size, cfg)
            if e.size != ds.size:
                raise DataError(e.path, f"extra unlabelled data is {e.size}, the training data {ds.size}")
            extra_imgs.append(np.asarray(e.images))
            volumes += [f"extra:{s.volume}" for s in e.slices]
            vendors += [s.vendor for s in e.slices]
        n0 = len(images)
        images = np.concatenate([np.asarray(images)] + extra_imgs)
        n_extra = len(images) - n0
        masks = np.concatenate([np.asarray(masks), np.full((n_extra, *ds.size), 255, np.uint8)])
        parts["unlabelled"] = np.concatenate([parts.get("unlabelled", np.zeros(0, np.int64)),
                                              np.arange(n0, n0 + n_extra)])
    if len(parts.get("labelled", ())) == 0:
        raise DataError(ds.path, f"split {name!r} has no labelled B-scans to train on")
    if len(parts.get("val", ())) == 0:
        raise DataError(ds.path, f"split {name!r} has no validation B-scans (set data.val > 0)")
    return TrainData(images, masks, parts, ds.classes, ds.size, split, str(ds.path), volumes, vendors)


def intensity_stats(images: np.ndarray, rows: np.ndarray, max_images: int = 256) -> dict:
    """Mean/std of training intensities in [0, 1] (a fixed subsample, so it is cheap and reproducible)."""
    rows = np.sort(rows)[:: max(1, len(rows) // max_images)][:max_images]
    x = np.asarray(images[rows], dtype=np.float32) / 255.0
    return {"mean": float(x.mean()), "std": float(max(x.std(), 1e-3))}


def _stream(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """``count`` indices from successive random permutations of range(n)."""
    if n == 0 or count == 0:
        return np.zeros(0, dtype=np.int64)
    reps = math.ceil(count / n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:count]


class StepSampler(Sampler):
    """Yields, per training step, (labelled positions, unlabelled positions).

    The order is a pure function of (seed, epoch): Lightning calls ``set_epoch`` each epoch,
    and a resumed run therefore draws the same batches. Each DDP rank takes its own slice.
    """

    def __init__(self, n_lab, n_unlab, lab_batch, unlab_batch, steps, seed, rank=0, world=1):
        self.n_lab, self.n_unlab = n_lab, n_unlab
        self.lb, self.ub = lab_batch, unlab_batch if n_unlab > 0 else 0
        self.steps, self.seed, self.rank, self.world = steps, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        lab = _stream(np.random.default_rng([self.seed, self.epoch, 0]), self.n_lab, self.steps * self.lb * self.world)
        unl = _stream(np.random.default_rng([self.seed, self.epoch, 1]), self.n_unlab, self.steps * self.ub * self.world)
        for s in range(self.steps):
            i = s * self.world + self.rank
            yield lab[i * self.lb:(i + 1) * self.lb], unl[i * self.ub:(i + 1) * self.ub]


class StepDataset(Dataset):
    """Maps a sampler key (labelled positions, unlabelled positions) to one uint8 batch."""

    def __init__(self, data: TrainData):
        self.images, self.masks = data.images, data.masks
        self.lab_rows, self.unl_rows = data.parts["labelled"], data.parts.get("unlabelled", np.zeros(0, np.int64))

    def __len__(self):
        return len(self.lab_rows)

    def __getitem__(self, key):
        lab, unl = key
        rl, ru = self.lab_rows[lab], self.unl_rows[unl]
        return {
            "x_l": torch.from_numpy(np.asarray(self.images[rl])),
            "y_l": torch.from_numpy(np.asarray(self.masks[rl])),
            "x_u": torch.from_numpy(np.asarray(self.images[ru]).reshape(len(ru), *self.images.shape[1:])),
        }


class EvalDataset(Dataset):
    def __init__(self, data: TrainData, part: str, batch: int):
        self.images, self.masks, self.rows, self.batch = data.images, data.masks, data.parts[part], batch

    def __len__(self):
        return math.ceil(len(self.rows) / self.batch)

    def __getitem__(self, i):
        r = self.rows[i * self.batch:(i + 1) * self.batch]
        return {"x": torch.from_numpy(np.asarray(self.images[r])), "y": torch.from_numpy(np.asarray(self.masks[r]))}


# ----------------------------------------------------------------------------- module


def dice_from_confusion(conf: torch.Tensor) -> torch.Tensor:
    """Per-class Dice from a pooled (K, K) confusion matrix; NaN where the class is absent in both."""
    conf = conf.double()
    tp = conf.diag()
    denom = conf.sum(0) + conf.sum(1)
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.full_like(tp, float("nan")))


class SegmentationModule(L.LightningModule):
    """One semi-supervised method, its optimiser and its validation, for Lightning."""

    def __init__(self, cfg: Config, network: torch.nn.Module, classes, input_size, norm: dict, steps_per_epoch: int):
        super().__init__()
        self.cfg, self.classes, self.input_size, self.norm = cfg, list(classes), list(input_size), dict(norm)
        self.steps_per_epoch = steps_per_epoch
        self.num_classes = len(classes)
        if cfg.trainer.channels_last:
            network = network.to(memory_format=torch.channels_last)
        self.method = build_method(cfg.method, network, SegmentationLoss(cfg.loss, self.num_classes))
        self._val_conf: dict[str, torch.Tensor] = {}

    # -- batch preparation on the device
    def _generator(self, salt: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed((self.cfg.seed * 1_000_003 + self.global_step * 7919 + salt * 104_729 + self.global_rank) % 2**63)
        return g

    def _to_float(self, u8: torch.Tensor) -> torch.Tensor:
        x = u8.to(torch.float32).div_(255.0).unsqueeze(1)
        return resize_images(x, self.input_size)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = normalise(x, self.norm)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.trainer.channels_last else x

    def training_step(self, batch, batch_idx):
        g = self._generator(0)
        n_l = batch["x_l"].shape[0]
        x = self._to_float(torch.cat([batch["x_l"], batch["x_u"]], 0))
        y = resize_labels(batch["y_l"].long(), self.input_size)
        y_all = torch.cat([y, torch.full((x.shape[0] - n_l, *y.shape[1:]), IGNORE_INDEX, dtype=y.dtype, device=y.device)])
        x, y_all = augment_batch(x, y_all, self.cfg.augment, g)
        x = self._normalise(x)
        ctx = StepContext(epoch=self.current_epoch, global_step=self.global_step + 1, generator=g)
        loss, logs = self.method.training_loss(x[:n_l], y_all[:n_l], x[n_l:] if x.shape[0] > n_l else None, ctx)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        for k, v in logs.items():
            self.log(f"train/{k}", v, on_step=True, on_epoch=True, batch_size=x.shape[0])
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # Lightning has stepped the optimiser; global_step now counts that step.
        self.method.after_optimizer_step(StepContext(self.current_epoch, self.global_step, self._generator(1)))

    # -- validation: hard label maps, pooled confusion per network
    def on_validation_epoch_start(self):
        self._val_conf = {n: torch.zeros(self.num_classes, self.num_classes, dtype=torch.long, device=self.device)
                          for n in self.method.networks()}

    def validation_step(self, batch, batch_idx):
        x = self._normalise(self._to_float(batch["x"]))
        y = resize_labels(batch["y"].long(), self.input_size)
        valid = y != IGNORE_INDEX
        k = self.num_classes
        for name, net in self.method.networks().items():
            pred = net(x).argmax(1)
            idx = (y[valid] * k + pred[valid]).flatten()
            self._val_conf[name] += torch.bincount(idx, minlength=k * k).view(k, k)

    def on_validation_epoch_end(self):
        default = self.method.default_weights
        for name, conf in self._val_conf.items():
            conf = self.trainer.strategy.reduce(conf.float(), reduce_op="sum") if self.trainer.world_size > 1 else conf
            dice = dice_from_confusion(conf)
            for c in range(1, self.num_classes):
                if not torch.isnan(dice[c]):
                    self.log(f"val/{name}/dice_{self.classes[c]}", dice[c].float())
            fg = dice[1:][~torch.isnan(dice[1:])]
            mean_fg = fg.mean().float() if len(fg) else torch.tensor(0.0)
            self.log(f"val/{name}/mean_fg_dice", mean_fg, prog_bar=(name == default))
            if name == default:
                self.log("val/mean_fg_dice", mean_fg)

    # -- optimiser
    def configure_optimizers(self):
        o = self.cfg.optim
        params = [p for p in self.method.student.parameters() if p.requires_grad]
        if o.name == "adam":
            opt = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        elif o.name == "adamw":
            opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        elif o.name == "sgd":
            opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=True)
        else:
            raise ConfigError(f"optim.name={o.name!r}: choose adam, adamw or sgd")
        if o.scheduler == "none":
            return opt
        if o.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=o.plateau_factor,
                                                               patience=o.plateau_patience)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "train/loss_epoch",
                                                       "interval": "epoch"}}
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.max_epochs * self.steps_per_epoch
        warm = o.warmup_steps

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = min(1.0, (step - warm) / max(1, total - warm))
            if o.scheduler == "poly":
                return (1.0 - t) ** o.poly_power
            if o.scheduler == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * t))
            raise ConfigError(f"optim.scheduler={o.scheduler!r}: choose plateau, poly, cosine or none")

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoint contents
    def checkpoint_meta(self) -> dict:
        nets = self.method.networks()
        return checkpoint_meta(dataclasses.asdict(self.cfg.model), self.classes, self.input_size, self.norm,
                               self.cfg.method.name, list(nets), self.method.default_weights, config_to_dict(self.cfg))

    def on_save_checkpoint(self, checkpoint):
        checkpoint["octseg"] = self.checkpoint_meta()
        checkpoint.pop("hyper_parameters", None)


# ----------------------------------------------------------------------------- run


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
            diffs += [f"{section}.{k}: {old.get(k)!r} -> {v!r}" for k, v in values.items() if (old or {}).get(k) != v]
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
    try:
        native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        native = False
    return "bf16-mixed" if native else "32"


def build_trainer(cfg: Config, run_dir: Path, callbacks=(), logger=True, **trainer_kwargs) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    t = cfg.trainer
    # Two callbacks: Lightning's save_last only writes when a top-k checkpoint was written.
    best = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/mean_fg_dice", mode="max",
                           save_top_k=1, enable_version_counter=False, auto_insert_metric_name=False)
    last = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                           every_n_epochs=1, enable_version_counter=False)
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
    return L.Trainer(
        accelerator=accel, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
        precision=resolve_precision(t.precision, accel),
        max_epochs=t.max_epochs, max_steps=t.max_steps,
        max_time={"minutes": t.max_minutes} if t.max_minutes else None,
        check_val_every_n_epoch=t.val_every_n_epochs, log_every_n_steps=t.log_every_n_steps,
        deterministic=deterministic, enable_progress_bar=t.progress, enable_model_summary=False,
        callbacks=[best, last, *callbacks], logger=loggers or False, plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False, num_sanity_val_steps=0, default_root_dir=str(run_dir), **trainer_kwargs,
    )


def evaluate_networks(ckpt_path: Path, data: TrainData, part: str = "val", device="cpu", batch: int = 16) -> dict:
    """Honest per-class figures of every network in a checkpoint on one part of the split."""
    from octseg.checkpoint import load_networks
    from octseg.metrics import segmentation_report

    nets, meta = load_networks(ckpt_path, device)
    rows = data.parts[part]
    images, gt = np.asarray(data.images[rows]), np.asarray(data.masks[rows])
    vols = [data.volumes[r] for r in rows]
    vendors = [data.vendors[r] for r in rows]
    out = {}
    for name, net in nets.items():
        pred = predict_labels(net, images, meta["normalization"], meta["input_size"], batch=batch, device=device)
        out[name] = segmentation_report(gt, pred, len(meta["classes"]), class_names=meta["classes"], volumes=vols,
                                        vendors=vendors if any(vendors) else None)
        out[name].pop("per_bscan_table", None)
    return out


def plot_learning_curves(run_dir: Path) -> Optional[Path]:
    """learning_curves.png from the CSV log: training loss and validation Dice per epoch."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = sorted((run_dir / "logs").glob("metrics.part*.csv"), key=lambda p: int(p.stem.split("part")[1]))
    logs += [p for p in [run_dir / "logs" / "metrics.csv"] if p.is_file()]
    if not logs:
        return None
    rows = [r for p in logs for r in csv.DictReader(p.open())]
    def series(key):
        pts = [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        return zip(*pts) if pts else ((), ())
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in [("train/loss_epoch", "total"), ("train/loss_sup_epoch", "supervised"),
                       ("train/loss_cons_epoch", "consistency")]:
        xs, ys = series(key)
        if xs:
            a1.plot(xs, ys, marker="o", ms=3, label=label)
    a1.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    a1.legend()
    keys = sorted({k for r in rows for k in r if k.startswith("val/") and k.count("/") == 2})
    for key in keys:
        xs, ys = series(key)
        if xs:
            a2.plot(xs, ys, marker="o", ms=3, label=key[4:], ls="-" if "teacher" in key or "mean_fg" in key else "--")
    a2.set(xlabel="epoch", ylabel="Dice (hard masks, pooled)", title="Validation Dice", ylim=(0, 1))
    a2.legend(fontsize=7)
    fig.tight_layout()
    out = run_dir / "learning_curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


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
    if saved.get("parts") == split.get("parts"):
        return
    changed = [f"{k} {len(saved.get('parts', {}).get(k, []))} -> {len(split.get('parts', {}).get(k, []))} B-scans"
               if len(saved.get("parts", {}).get(k, [])) != len(split.get("parts", {}).get(k, [])) else f"{k} changed"
               for k in sorted(set(saved.get("parts", {})) | set(split.get("parts", {})))
               if saved.get("parts", {}).get(k) != split.get("parts", {}).get(k)]
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
                      protect=[cfg.data.path, *cfg.data.extra_unlabeled]):
        return _train(cfg, run_dir, resume, extra_callbacks)


def _train(cfg: Config, run_dir: Path, resume: bool, extra_callbacks) -> TrainResult:
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume:
        if not last.is_file():
            raise ConfigError(f"{last}: nothing to resume (no last checkpoint in {run_dir})")
        _check_resume_config(cfg, run_dir)
    elif last.is_file():
        raise ConfigError(f"{run_dir} already holds a run; use --resume to continue it or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "logs" / "metrics.csv"
    if resume and log.is_file():  # Lightning's CSV logger would overwrite the earlier part
        log.rename(log.with_name(f"metrics.part{len(list(log.parent.glob('metrics.part*.csv'))) + 1}.csv"))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = load_train_data(cfg)
    input_size = _network_input_size(cfg, data)
    if resume:
        _check_resume_split(data.split, run_dir)
    save_config(cfg, run_dir / "config.yaml")
    atomic_write_text(run_dir / "split.json", json.dumps(data.split, indent=1, sort_keys=True))
    norm = intensity_stats(data.images, np.concatenate([data.parts["labelled"], data.parts.get("unlabelled", [])]).astype(np.int64))
    n_lab = len(data.parts["labelled"])
    n_unl = len(data.parts.get("unlabelled", ()))
    steps = cfg.trainer.steps_per_epoch or max(1, math.ceil(n_lab / cfg.data.labeled_batch))
    if cfg.method.name == "supervised":
        n_unl = 0  # the baseline never sees unlabelled B-scans

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*predict_dataloader.*|.*val_dataloader.*workers.*")
        trainer = build_trainer(cfg, run_dir, callbacks=extra_callbacks)
        net = build_model(cfg.model, len(data.classes)) if not resume else build_model(
            dataclasses.replace(cfg.model, encoder_weights="none"), len(data.classes))
        module = SegmentationModule(cfg, net, data.classes, input_size, norm, steps)
        sampler = StepSampler(n_lab, n_unl, cfg.data.labeled_batch, cfg.data.unlabeled_batch, steps, cfg.seed,
                              rank=trainer.global_rank, world=trainer.world_size)
        train_loader = DataLoader(StepDataset(data), sampler=sampler, batch_size=None, num_workers=0)
        val_loader = DataLoader(EvalDataset(data, "val", cfg.trainer.val_batch), batch_size=None, num_workers=0)
        print(f"training {cfg.method.name} ({cfg.model.arch}-{cfg.model.encoder}) on {n_lab} labelled + "
              f"{n_unl} unlabelled B-scans, validating on {len(data.parts['val'])}; {steps} steps/epoch, "
              f"input {input_size[0]}x{input_size[1]}, classes {list(data.classes)}")
        t0 = time.time()
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resume else None)
    best = run_dir / "checkpoints" / "best.ckpt"
    if not best.is_file():
        best = last
    metrics = {"train_seconds": time.time() - t0, "best_checkpoint": str(best), "epochs": trainer.current_epoch,
               "global_step": trainer.global_step}
    if trainer.is_global_zero:
        metrics["val"] = evaluate_networks(best, data, "val", device="cpu" if not torch.cuda.is_available() else "cuda")
        atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=_json_default))
        plot_learning_curves(run_dir)
    return TrainResult(run_dir, best, last, metrics)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
