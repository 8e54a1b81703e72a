"""The typed recipe: one dataclass per section. Sections owned by a concept live with it
(ModelConfig in models, LossConfig in losses, MethodConfig in methods, AugmentConfig in augment);
the data, optimiser and trainer sections live here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from octseg.data.augment import AugmentConfig
from octseg.losses import LossConfig
from octseg.methods import MethodConfig
from octseg.models import ModelConfig


@dataclass
class DataConfig:
    """Where the B-scans come from and how they are split and batched.

    ``path`` is a prepared dataset or any raw layout the readers accept (prepared on the fly
    into a cache at ``size``). ``split`` empty (the default) names the split after its parameters
    (``volume-l0.16-v0.04-t0-s0``): created from the fractions below with the run's seed, reused only
    by runs with the same ones. A named split (e.g. from ``octseg split --name``) is used as written.
    """

    path: str = ""
    size: Optional[list[int]] = None
    split: str = ""
    labelled: Optional[float] = 0.16
    labelled_count: Optional[int] = None
    val: float = 0.04
    test: float = 0.0
    split_by: str = "volume"
    labelled_batch: int = 1
    unlabelled_batch: int = 5
    extra_unlabelled: list[str] = field(default_factory=list)
    in_memory: bool = True
    layout: str = "auto"
    volume_regex: Optional[str] = None
    #: data graded only in a band of columns (Duke DME): in training, columns farther than this many
    #: pixels (of the prepared size) from a labelled volume's fluid extent are unlabelled; None = off, and
    #: best left off: on Duke the network then marks fluid outside the band (README, "Labels graded in a band")
    fluid_band_margin: Optional[int] = None


@dataclass
class OptimConfig:
    """Adam + ReduceLROnPlateau on the training loss is the original project's; AdamW/SGD with poly/cosine too."""

    name: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 2e-4
    momentum: float = 0.9
    scheduler: str = "plateau"
    plateau_factor: float = 0.1
    plateau_patience: int = 2
    poly_power: float = 0.9
    warmup_steps: int = 0


@dataclass
class TrainerConfig:
    """Passed to Lightning. An epoch is ``steps_per_epoch`` steps (default: one pass over the labelled set)."""

    max_epochs: int = 200
    max_steps: int = -1
    steps_per_epoch: Optional[int] = None
    max_minutes: Optional[float] = None
    precision: str = "32"
    accelerator: str = "auto"
    devices: Union[int, str, list] = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    val_every_n_epochs: int = 1
    log_every_n_steps: int = 10
    deterministic: bool = True
    progress: bool = True
    channels_last: bool = False
    val_batch: int = 16
    #: mid-epoch ``last.ckpt`` (with the data position, RNG states and EMA teacher) every this many
    #: optimiser steps and/or minutes, so a killed run loses at most that much (None: only at epoch ends)
    checkpoint_every_steps: Optional[int] = None
    checkpoint_every_minutes: Optional[float] = 10.0


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
