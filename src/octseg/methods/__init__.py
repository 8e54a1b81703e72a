"""Semi-supervised methods, one file each, over the interface in ``base.py``.

``METHODS`` is the registry. ``MethodConfig`` is made from it: ``method.name`` picks the method and
every method with options has its own section ``method.<name>.*`` (its ``Config`` dataclass), so
switching ``method.name`` keeps each method's settings and an unknown key is still an error."""

from __future__ import annotations

import dataclasses

from torch import nn

from octseg.errors import ConfigError
from octseg.methods.base import Method, StepContext
from octseg.methods.bcp import BCP
from octseg.methods.cps import CPS
from octseg.methods.fixmatch import FixMatch
from octseg.methods.mean_teacher import MeanTeacher
from octseg.methods.self_training import SelfTraining
from octseg.methods.supervised import Supervised
from octseg.methods.unimatch import UniMatch

METHODS: dict[str, type[Method]] = {"supervised": Supervised, "mean_teacher": MeanTeacher, "fixmatch": FixMatch,
                                    "unimatch": UniMatch, "cps": CPS, "bcp": BCP,
                                    "self_training": SelfTraining}

MethodConfig = dataclasses.make_dataclass(
    "MethodConfig",
    [("name", str, dataclasses.field(default="mean_teacher"))]
    + [(name, cls.Config, dataclasses.field(default_factory=cls.Config)) for name, cls in METHODS.items()
       if cls.Config is not None],
)
MethodConfig.__doc__ = "``name``: one of METHODS; one section per method with options (``method.<name>.*``)."
MethodConfig.__module__ = __name__


def build_method(cfg, student: nn.Module, supervised_loss: nn.Module) -> Method:
    """The method ``cfg.name`` with its own config section."""
    try:
        cls = METHODS[cfg.name]
    except KeyError:
        raise ConfigError(f"method.name={cfg.name!r}: choose one of {sorted(METHODS)}") from None
    return cls(student, getattr(cfg, cfg.name, None), supervised_loss)


__all__ = ["METHODS", "Method", "MethodConfig", "StepContext", "build_method"]
