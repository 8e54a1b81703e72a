"""Semi-supervised methods, one file each, over the interface in ``base.py``."""

from __future__ import annotations

from torch import nn

from octseg.errors import ConfigError
from octseg.methods.base import Method, MethodConfig, StepContext
from octseg.methods.mean_teacher import MeanTeacher
from octseg.methods.supervised import Supervised

METHODS: dict[str, type[Method]] = {"supervised": Supervised, "mean_teacher": MeanTeacher}


def build_method(cfg: MethodConfig, student: nn.Module, supervised_loss: nn.Module) -> Method:
    try:
        cls = METHODS[cfg.name]
    except KeyError:
        raise ConfigError(f"method.name={cfg.name!r}: choose one of {sorted(METHODS)}") from None
    return cls(student, cfg, supervised_loss)


__all__ = ["METHODS", "Method", "MethodConfig", "StepContext", "build_method"]
