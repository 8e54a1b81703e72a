"""The common interface every semi-supervised method implements.

A method owns its network(s) and turns one labelled batch and one unlabelled batch into a
loss; the engine does everything else (data, optimiser, logging, checkpoints). Adding a
method (e.g. FixMatch) means one new file here and one entry in ``METHODS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass
class MethodConfig:
    """``name``: supervised | mean_teacher. The other fields are Mean Teacher's (see mean_teacher.py)."""

    name: str = "mean_teacher"
    ema_decay_rampup: float = 0.99
    ema_decay: float = 0.999
    consistency_weight: float = 10.0
    consistency_rampup_epochs: float = 5.0
    noise_std: float = 0.1
    consistency_on_labelled: bool = True


@dataclass
class StepContext:
    """What a method may know about the current step. ``generator`` drives all its randomness."""

    epoch: int
    global_step: int
    generator: torch.Generator


class Method(nn.Module):
    """Base class. Subclasses set ``self.student`` and implement ``training_loss``."""

    #: Which of ``networks()`` is used for inference by default.
    default_weights: str = "student"
    #: Whether the method learns from unlabelled B-scans (the sampler draws none for it otherwise).
    uses_unlabelled: bool = True

    def __init__(self, student: nn.Module, cfg: MethodConfig, supervised_loss: nn.Module):
        super().__init__()
        self.student = student
        self.cfg = cfg
        self.supervised_loss = supervised_loss

    def training_loss(
        self, x_l: torch.Tensor, y_l: torch.Tensor, x_u: Optional[torch.Tensor], ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss to minimise for one step, and scalar values to log."""
        raise NotImplementedError

    def after_optimizer_step(self, ctx: StepContext) -> None:
        """Called once after every optimiser step (e.g. to update an EMA teacher)."""

    def trainable_parameters(self):
        """The parameters the optimiser updates (the student's; a method with two trained
        networks returns both)."""
        return self.student.parameters()

    def networks(self) -> dict[str, nn.Module]:
        """The networks worth evaluating and saving, by name."""
        return {"student": self.student}
