"""Optimisers and learning-rate schedules by name: one registry each, which the config checks
choices against when it loads (so a typo fails before any data is read)."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from octseg.errors import ConfigError

#: optim.name -> (parameters, OptimConfig) -> optimiser. Adam with weight decay is the original project's.
OPTIMIZERS: dict[str, Callable] = {
    "adam": lambda params, o: torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay),
    "adamw": lambda params, o: torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay),
    "sgd": lambda params, o: torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                                             nesterov=True),
}


def _plateau(opt, o, total_steps: int) -> dict:
    """ReduceLROnPlateau on the epoch's supervised loss (the total of a semi-supervised method also
    moves with its unlabelled term, which says nothing about progress on the labels)."""
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=o.plateau_factor,
                                                       patience=o.plateau_patience)
    return {"scheduler": sched, "monitor": "train/loss_sup_epoch", "interval": "epoch"}


def _per_step(shape: Callable[[float, object], float]) -> Callable:
    """A per-step schedule: linear warm-up over ``warmup_steps``, then ``shape(t, o)`` for t in [0, 1]."""

    def build(opt, o, total_steps: int) -> dict:
        warm = o.warmup_steps

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return shape(min(1.0, (step - warm) / max(1, total_steps - warm)), o)

        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor), "interval": "step"}

    return build


#: optim.scheduler -> (optimiser, OptimConfig, total steps) -> Lightning scheduler dict, or None.
SCHEDULERS: dict[str, Callable] = {
    "plateau": _plateau,
    "poly": _per_step(lambda t, o: (1.0 - t) ** o.poly_power),
    "cosine": _per_step(lambda t, o: 0.5 * (1.0 + math.cos(math.pi * t))),
    "none": lambda opt, o, total_steps: None,
}


def configure_optimization(params: Iterable[torch.nn.Parameter], o, total_steps: int):
    """What ``LightningModule.configure_optimizers`` returns for an ``OptimConfig``."""
    if o.name not in OPTIMIZERS:
        raise ConfigError(f"optim.name={o.name!r}: choose one of {', '.join(OPTIMIZERS)}")
    if o.scheduler not in SCHEDULERS:
        raise ConfigError(f"optim.scheduler={o.scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    opt = OPTIMIZERS[o.name]([p for p in params if p.requires_grad], o)
    sched = SCHEDULERS[o.scheduler](opt, o, total_steps)
    return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}
