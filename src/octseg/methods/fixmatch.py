"""FixMatch for segmentation (Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with
Consistency and Confidence", NeurIPS 2020), in the form UniMatch (Yang et al., CVPR 2023) uses as
its baseline for semantic segmentation.

* Pseudo-labels: the student's own prediction on the weak view of each unlabelled B-scan (no
  gradient); a pixel counts only when its top class probability is at least ``threshold``
  (0.95) and the weak view did not pull it in from outside the scan. The threshold's meaning depends
  on the number of classes: with two (fluid vs background) every pixel's top probability is at least
  0.5, so 0.6, the best of 0.95 / 0.8 / 0.6 on the 4-class synthetic benchmark, admits nearly every
  pixel, and on Duke it collapsed 2 of 20 runs to no fluid (benchmarks/results/duke_*_threshold.json).
* The student is trained to predict those labels on a **strong** view of the same B-scan:
  strong intensity augmentation (brightness, contrast, gamma, blur, speckle-like multiplicative
  noise, cutout) and, with ``cutmix`` (on by default), a box pasted from another unlabelled
  B-scan of the batch (labels and confidences pasted with it).
* Loss = supervised + ``weight`` (1.0) × ``unsup_loss`` on the confident pixels: ``ce`` (cross-entropy
  averaged over all valid unlabelled pixels, so few confident pixels give a small loss, as in UniMatch on
  natural images), ``dice`` (soft Dice over the confident pixels, as UniMatch's medical code does) or
  ``dice_ce`` (both).
* ``distribution_alignment`` (off by default): ReMixMatch's distribution alignment of the weak views'
  probabilities before the threshold (:class:`~octseg.methods.pseudo_labels.DistributionAlignment`), so a
  class the network under-predicts is not also under-represented among the pseudo-labels; applied once
  ``alignment_start`` (0.2) of the run's steps are done.
* ``background_guard`` (pixels, 0 = off): a background pseudo-label needs its whole neighbourhood of that
  radius confidently background, so self-training cannot erode a fluid class the network is unsure of
  (:func:`~octseg.methods.pseudo_labels.weak_targets`).
* Labelled, weak and strong views go through the network as separate BatchNorm batches by
  default; ``joint_batch: true`` passes the labelled and the strong views as one batch, as the
  published code does (measured against separate batches in ``benchmarks/joint_batchnorm.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from octseg.constants import IGNORE_INDEX
from octseg.methods.base import Method, StepContext
from octseg.methods.pseudo_labels import (DistributionAlignment, check_unsup_loss, pseudo_label_loss, strong_view,
                                          weak_targets)


@dataclass
class FixMatchConfig:
    """``method.fixmatch.*``: confidence threshold, unlabelled loss weight and kind, CutMix on/off,
    whether the labelled and strong views share one BatchNorm batch, distribution alignment, and the
    background guard's radius."""

    threshold: float = 0.95
    weight: float = 1.0
    unsup_loss: str = "ce"
    cutmix: bool = True
    joint_batch: bool = False
    distribution_alignment: bool = False
    alignment_start: float = 0.2
    background_guard: int = 0


class FixMatch(Method):
    Config = FixMatchConfig
    default_weights = "student"

    def __init__(self, student, cfg, supervised_loss):
        super().__init__(student, cfg, supervised_loss)
        check_unsup_loss(cfg.unsup_loss, "fixmatch")
        self.alignment = DistributionAlignment() if cfg.distribution_alignment else None

    def training_loss(self, x_l, y_l, x_u, ctx: StepContext):
        if x_u is None or x_u.shape[0] == 0:
            sup = self.supervised_loss(self.student(ctx.normalise(x_l)), y_l)
            return sup, {"loss_sup": sup.detach()}
        align = None if self.alignment is None else (lambda probs, valid: self.alignment(
            probs, valid, y_l, apply=ctx.progress >= self.cfg.alignment_start))
        target, valid = weak_targets(self.student, x_u, ctx, self.cfg.threshold, align, self.cfg.background_guard)
        x_s, target, valid = strong_view(x_u, target, valid, ctx, self.cfg.cutmix)
        if self.cfg.joint_batch:
            logits_l, logits_s = self.student(ctx.normalise(torch.cat([x_l, x_s]))).split([len(x_l), len(x_s)])
        else:
            logits_l, logits_s = self.student(ctx.normalise(x_l)), self.student(ctx.normalise(x_s))
        sup = self.supervised_loss(logits_l, y_l)
        unsup = pseudo_label_loss(self.cfg.unsup_loss, logits_s, target, valid)
        used = (target != IGNORE_INDEX).sum() / valid.sum().clamp_min(1)
        return sup + self.cfg.weight * unsup, {"loss_sup": sup.detach(), "loss_unsup": unsup.detach(),
                                               "confident_fraction": used.detach()}
