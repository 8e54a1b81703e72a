"""What a run trains on: the prepared arrays, the split, extra unlabelled pools, and the samplers
that turn them into per-step batches.

Speed choices: the prepared uint8 arrays sit in memory (or stay memory-mapped); a step's batch is a
fancy index into them, moved to the device as uint8; no loader workers. Data order is a function of
(seed, epoch), so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from octseg.config import Config
from octseg.data.context import context_rows, stack_context
from octseg.data.label_band import unlabel_outside_fluid_band
from octseg.data.prepared import PreparedDataset
from octseg.errors import ConfigError, DataError


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
    slice_indices: Optional[list] = None  # slice index per row (the order of a volume's B-scans)
    #: 2.5D input: int64 (N, 2k+1) rows of each row's B-scan and its neighbours
    #: (:func:`octseg.data.context.context_rows`); None for 2-D input
    context: Optional[np.ndarray] = None
    #: ``data.fluid_band_margin``: per labelled volume, the (first, last) column kept labelled (None: unchanged)
    label_bands: Optional[dict] = None

    def stacked(self, rows) -> np.ndarray:
        """uint8 images of ``rows``: (n, H, W), or (n, 2k+1, H, W) with 2.5D input."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.context is None:
            return np.asarray(self.images[rows]).reshape(len(rows), *self.images.shape[1:])
        return stack_context(self.images, self.context, rows)


def _split_name(cfg: Config) -> str:
    """``data.split``, or the name that encodes the split's parameters (see ``split_name_for``)."""
    from octseg.data.splits import split_name_for

    d = cfg.data
    if d.split:
        return d.split
    return split_name_for(d.split_by, None if d.labelled_count is not None else d.labelled, d.labelled_count, d.val,
                          d.test, cfg.seed)


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
        make_split(ds.path, labelled=None if cfg.data.labelled_count is not None else cfg.data.labelled,
                   labelled_count=cfg.data.labelled_count, val=cfg.data.val, test=cfg.data.test,
                   seed=cfg.seed, by=cfg.data.split_by, name=name)
    split = ds.split(name)
    if cfg.data.split:
        _note_named_split(split, cfg)
    parts = {k: np.asarray(v, dtype=np.int64) for k, v in split_indices(ds, split).items()}
    images = np.asarray(ds.images) if cfg.data.in_memory else ds.images
    masks = np.asarray(ds.masks) if cfg.data.in_memory else ds.masks
    volumes = [s.volume for s in ds.slices]
    vendors = [s.vendor for s in ds.slices]
    slice_indices = [s.slice_index for s in ds.slices]
    if cfg.data.extra_unlabelled:
        extra_imgs = []
        for extra in cfg.data.extra_unlabelled:
            e = _open_dataset(extra, ds.size, cfg)
            if e.size != ds.size:
                raise DataError(e.path, f"extra unlabelled data is {e.size}, the training data {ds.size}")
            extra_imgs.append(np.asarray(e.images))
            tag = "extra" if len(extra_imgs) == 1 else f"extra{len(extra_imgs)}"  # pools never share a volume
            volumes += [f"{tag}:{s.volume}" for s in e.slices]
            vendors += [s.vendor for s in e.slices]
            slice_indices += [s.slice_index for s in e.slices]
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
    label_bands = None
    if cfg.data.fluid_band_margin is not None:
        masks, label_bands = unlabel_outside_fluid_band(masks, parts["labelled"], volumes, cfg.data.fluid_band_margin)
    k = cfg.model.context_slices
    context = context_rows(volumes, slice_indices, k) if k > 0 else None
    return TrainData(images, masks, parts, ds.classes, ds.size, split, str(ds.path), volumes, vendors, slice_indices,
                     context, label_bands)


def _note_named_split(split: dict, cfg: Config) -> None:
    """A split named in the recipe is used as written; say so when its parameters differ from the recipe's."""
    d, made = cfg.data, split.get("fractions", {})
    want = {"labelled": None if d.labelled_count is not None else d.labelled, "labelled_count": d.labelled_count,
            "val": d.val, "test": d.test}
    made = {k.replace("labeled", "labelled"): v for k, v in made.items()}  # split files of octseg < 0.2
    differ = [f"{k} {made.get(k)!r} (recipe: {v!r})" for k, v in want.items() if made.get(k) != v]
    if split.get("seed") != cfg.seed:
        differ.append(f"seed {split.get('seed')!r} (recipe: {cfg.seed!r})")
    if split.get("by", d.split_by) != d.split_by:
        differ.append(f"by {split.get('by')!r} (recipe: {d.split_by!r})")
    if differ:
        warnings.warn(f"data.split={d.split!r} exists and is used as written: " + ", ".join(differ)
                      + "; leave data.split empty to split by the recipe's values", UserWarning, stacklevel=3)


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
    and a resumed run therefore draws the same batches. Each DDP rank takes its own slice (the
    ranks' batches of one step are disjoint within a pass over the data). ``position`` (steps
    handed out this epoch) is saved in mid-epoch checkpoints, so a resumed epoch continues where
    the killed one stopped instead of repeating its first batches.
    """

    def __init__(self, n_lab, n_unlab, lab_batch, unlab_batch, steps, seed, rank=0, world=1):
        self.n_lab, self.n_unlab = n_lab, n_unlab
        self.lb, self.ub = lab_batch, unlab_batch if n_unlab > 0 else 0
        self.steps, self.seed, self.rank, self.world = steps, seed, rank, world
        self.epoch = 0
        self.position = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Continue at ``position`` when the next pass is over the same epoch (a mid-epoch resume)."""
        self._resume = (int(state["epoch"]), int(state["position"]))

    def __iter__(self):
        start = 0
        if self._resume is not None:
            start = self._resume[1] if self._resume[0] == self.epoch else 0
            self._resume = None
        lab = _stream(np.random.default_rng([self.seed, self.epoch, 0]), self.n_lab, self.steps * self.lb * self.world)
        unl = _stream(np.random.default_rng([self.seed, self.epoch, 1]), self.n_unlab, self.steps * self.ub * self.world)
        self.position = start
        for s in range(start, self.steps):
            i = s * self.world + self.rank
            self.position = s + 1
            yield lab[i * self.lb:(i + 1) * self.lb], unl[i * self.ub:(i + 1) * self.ub]


class StepLoader(DataLoader):
    """The training loader, resumable mid-epoch: Lightning saves its ``state_dict`` (the sampler's
    epoch and position) in every checkpoint and restores it when a run resumes inside an epoch."""

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


class StepDataset(Dataset):
    """Maps a sampler key (labelled positions, unlabelled positions) to one uint8 batch."""

    def __init__(self, data: TrainData):
        self.data, self.masks = data, data.masks
        self.lab_rows, self.unl_rows = data.parts["labelled"], data.parts.get("unlabelled", np.zeros(0, np.int64))

    def __len__(self):
        return len(self.lab_rows)

    def __getitem__(self, key):
        lab, unl = key
        rl, ru = self.lab_rows[lab], self.unl_rows[unl]
        return {  # images (n, H, W), or (n, 2k+1, H, W) with 2.5D input; labels of the centre B-scans
            "x_l": torch.from_numpy(self.data.stacked(rl)),
            "y_l": torch.from_numpy(np.asarray(self.masks[rl])),
            "x_u": torch.from_numpy(self.data.stacked(ru)),
        }


class EvalDataset(Dataset):
    """Batches of one part of the split; under DDP each rank takes every ``world``-th B-scan (the
    ranks' confusion matrices are summed, so the figures equal a single process's)."""

    def __init__(self, data: TrainData, part: str, batch: int, rank: int = 0, world: int = 1):
        rows = data.parts[part]
        if world > 1 and len(rows) < world:
            raise ConfigError(f"{len(rows)} {part} B-scan(s) for {world} processes: each process needs at least one "
                              f"(raise data.{part} or use fewer devices)")
        self.data, self.masks, self.rows, self.batch = data, data.masks, rows[rank::world], batch

    def __len__(self):
        return math.ceil(len(self.rows) / self.batch)

    def __getitem__(self, i):
        r = self.rows[i * self.batch:(i + 1) * self.batch]
        return {"x": torch.from_numpy(self.data.stacked(r)), "y": torch.from_numpy(np.asarray(self.masks[r]))}
