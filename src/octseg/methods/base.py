"""The common interface every semi-supervised method implements.

A method owns its network(s), its trainable parameters and its config section, and turns one
labelled batch and one unlabelled batch into a loss; the engine does everything else (data,
the weak views, optimiser, logging, checkpoints). Adding a method (e.g. UniMatch) means one new
file here and one entry in ``METHODS``: its config dataclass becomes ``method.<name>.*``.

What a method receives (``training_loss(x_l, y_l, x_u, ctx)``):

* ``x_l`` (N_l, 1, H, W) and ``x_u`` (N_u, 1, H, W): **weak views in [0, 1]**, not normalised —
  every method sees the same labelled view for a given seed and step (paired runs);
* ``y_l`` (N_l, H, W): labels, ``IGNORE_INDEX`` where the weak view pulled pixels from outside
  the B-scan; ``ctx.valid_u`` (N_u, H, W): the same validity for the unlabelled views;
* ``ctx.normalise(x)``: the checkpoint's intensity normalisation, to apply before a network;
* ``ctx.augmenter``: the strong augmentations (:class:`octseg.data.augment.Augmenter`: intensity,
  blur, speckle, cutout, CutMix) for methods that perturb further;
* ``ctx.generator``: the step's random generator (all of a step's randomness comes from it);
  ``ctx.total_steps`` / ``ctx.steps_per_epoch`` for schedules and ramp-ups per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

import torch
from torch import nn


@dataclass
class StepContext:
    """What a method may know about the current step."""

    epoch: int
    global_step: int
    generator: torch.Generator
    steps_per_epoch: int = 1
    total_steps: int = 1
    normalise: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
    augmenter: Optional[object] = None
    valid_u: Optional[torch.Tensor] = None

    @property
    def progress(self) -> float:
        """Fraction of the run done, in [0, 1]: for ramp-ups that should not depend on epoch length."""
        return min(1.0, self.global_step / max(1, self.total_steps))


class Method(nn.Module):
    """Base class. Subclasses set ``self.student`` and implement ``training_loss``."""

    #: The method's own config section (``method.<name>.*``); None for a method without options.
    Config: ClassVar[Optional[type]] = None
    #: Which of ``networks()`` is used for inference by default.
    default_weights: str = "student"
    #: Whether the method learns from unlabelled B-scans (the sampler draws none for it otherwise).
    uses_unlabelled: bool = True

    def __init__(self, student: nn.Module, cfg, supervised_loss: nn.Module):
        super().__init__()
        self.student = student
        self.cfg = cfg
        self.supervised_loss = supervised_loss

    def training_loss(
        self, x_l: torch.Tensor, y_l: torch.Tensor, x_u: Optional[torch.Tensor], ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss to minimise for one step, and scalar values to log (``loss_sup`` always among them)."""
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
