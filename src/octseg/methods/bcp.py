"""Bidirectional copy-paste (Bai et al., "Bidirectional Copy-Paste for Semi-Supervised Medical
Image Segmentation", CVPR 2023), on a Mean Teacher.

* A box ``M`` (``box_fraction`` 2/3 of each side, centred as in the paper, at a random offset) is
  cut from a labelled B-scan and pasted into an unlabelled one, and the same box from the
  unlabelled B-scan into the labelled one: ``x_in = M·x_l + (1−M)·x_u``,
  ``x_out = M·x_u + (1−M)·x_l``. Labelled and unlabelled B-scans thus share one input, so the
  network cannot learn their statistics apart (BCP's argument against the empirical mismatch).
* Targets are the labels where the pixel came from the labelled B-scan and the **teacher's**
  prediction (EMA of the student, no gradient) where it came from the unlabelled one; the
  unlabelled part of the loss is weighted ``unlabelled_weight`` (0.5, the paper's α).
* The supervised loss on the plain labelled views is kept (a pre-training stage is not needed for
  a short run); the teacher follows the student with alpha = min(1 − 1/(step+1), ``ema_decay``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from octseg.constants import IGNORE_INDEX
from octseg.methods.base import Method, StepContext
from octseg.methods.mean_teacher import ema_update, frozen_copy
from octseg.methods.pseudo_labels import masked_ce, valid_or_all


@dataclass
class BCPConfig:
    """``method.bcp.*``: box size, weight of the unlabelled part, EMA decay, loss weight."""

    box_fraction: float = 2 / 3
    unlabelled_weight: float = 0.5
    ema_decay: float = 0.99
    weight: float = 1.0


class BCP(Method):
    Config = BCPConfig
    default_weights = "teacher"

    def __init__(self, student, cfg, supervised_loss):
        super().__init__(student, cfg, supervised_loss)
        self.teacher = frozen_copy(student)

    def networks(self):
        return {"teacher": self.teacher, "student": self.student}

    def _box(self, n: int, hw, g: torch.Generator, device) -> torch.Tensor:
        H, W = int(hw[0]), int(hw[1])
        bh, bw = max(1, round(H * self.cfg.box_fraction)), max(1, round(W * self.cfg.box_fraction))
        y0 = (torch.rand(n, generator=g, device=device) * (H - bh + 1)).long().view(n, 1, 1)
        x0 = (torch.rand(n, generator=g, device=device) * (W - bw + 1)).long().view(n, 1, 1)
        ys, xs = torch.arange(H, device=device).view(1, H, 1), torch.arange(W, device=device).view(1, 1, W)
        return (ys >= y0) & (ys < y0 + bh) & (xs >= x0) & (xs < x0 + bw)

    def training_loss(self, x_l, y_l, x_u, ctx: StepContext):
        sup = self.supervised_loss(self.student(ctx.normalise(x_l)), y_l)
        if x_u is None or x_u.shape[0] == 0:
            return sup, {"loss_sup": sup.detach()}
        n = x_u.shape[0]
        idx = torch.arange(n, device=x_u.device) % x_l.shape[0]  # labelled B-scans reused round-robin
        xl, yl, valid = x_l[idx], y_l[idx], valid_or_all(x_u, ctx)
        self.teacher.train(self.student.training)
        with torch.no_grad():
            pseudo = self.teacher(ctx.normalise(x_u)).float().argmax(1)
        pseudo = torch.where(valid, pseudo, torch.full_like(pseudo, IGNORE_INDEX))
        m = self._box(n, x_u.shape[-2:], ctx.generator, x_u.device)
        x_in = torch.where(m[:, None], xl, x_u)  # labelled box in the unlabelled B-scan
        x_out = torch.where(m[:, None], x_u, xl)  # unlabelled box in the labelled B-scan
        logits = self.student(ctx.normalise(torch.cat([x_in, x_out], 0)))
        lab_t = torch.cat([torch.where(m, yl, IGNORE_INDEX), torch.where(m, IGNORE_INDEX, yl)])
        unl_t = torch.cat([torch.where(m, IGNORE_INDEX, pseudo), torch.where(m, pseudo, IGNORE_INDEX)])
        pixels = torch.ones_like(lab_t, dtype=torch.bool)
        mixed = masked_ce(logits, lab_t, pixels) + self.cfg.unlabelled_weight * masked_ce(logits, unl_t, pixels)
        return sup + self.cfg.weight * mixed, {"loss_sup": sup.detach(), "loss_mixed": mixed.detach()}

    def after_optimizer_step(self, ctx: StepContext) -> None:
        ema_update(self.teacher, self.student, min(1.0 - 1.0 / (ctx.global_step + 1), self.cfg.ema_decay))
