"""Self-training from a frozen teacher: ST++ (Yang et al., "ST++: Make Self-training Work Better for
Semi-supervised Semantic Segmentation", CVPR 2022) and Noisy Student (Xie et al., CVPR 2020) in one step.

* Teacher: a model trained before this run (``teacher``: an octseg checkpoint, usually the supervised model
  of the same labelled B-scans), frozen: eval mode, no gradient, its own intensity normalisation, never
  saved with this run's checkpoints (the config names its file). Several checkpoints, or an ``octseg cv``
  folder, teach as one ensemble: their mean class probability (as ``octseg predict`` runs them, each member
  with its own normalisation), at no cost to the student's step beyond the extra forwards. Measured on
  synthetic data (README): two supervised teachers whose labels differed on 0.3 % of the pool's pixels made no
  better student than one; an ensemble pays only where its members err differently.
* Pseudo-labels: the teacher's prediction on the weak view of each unlabelled B-scan, averaged with its
  prediction on the horizontally flipped view (``flip``, on by default); a pixel counts when its top class
  probability is at least ``threshold`` (0 by default: every pixel, as ST++) and the weak view did not pull
  it in from outside the scan.
* The student (the run's own initialisation, e.g. a pretrained encoder: not the teacher's weights) learns
  them on the weak view with, by ``cutmix``, a box pasted from another unlabelled B-scan with its
  pseudo-labels; ``strong: true`` adds the strong intensity augmentation, as ST++ and Noisy Student do. Measured
  (benchmarks/label_efficiency.py, 8 seeds, from a pool-pretrained encoder): on strong views the student stayed
  below its teacher (-0.016 / -0.017 mean foreground Dice at 1 / 2 labelled volumes), on the weak view it
  passed it (+0.009 / +0.019): the strong intensity augmentation costs supervised training 0.13-0.24 on
  these data, so the weak view is the default.
* Loss = supervised + ``weight`` (1.0) x ``unsup_loss`` (cross-entropy over the valid unlabelled pixels).

Why next to FixMatch: FixMatch labels the unlabelled B-scans with the network it trains, so early in a
short run they are the guesses of an untrained decoder, and what it gets wrong it goes on learning
(confirmation bias). A converged teacher, chosen on validation, gives the same, better labels from the
first step; the price is a second training run (the teacher's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import torch
from torch import nn

from octseg.constants import IGNORE_INDEX
from octseg.errors import ConfigError
from octseg.methods.base import Method, StepContext
from octseg.methods.pseudo_labels import (check_unsup_loss, confident_targets, pseudo_label_loss, strong_view,
                                          valid_or_all)


@dataclass
class SelfTrainingConfig:
    """``method.self_training.*``: the teacher checkpoint(s) (several, or a CV folder: an ensemble), confidence
    threshold, flip averaging of the teacher, unlabelled loss weight and kind, CutMix on/off, and whether the
    student's view also gets the strong intensity augmentation (``strong``; off by default: the weak view, with
    CutMix if on)."""

    teacher: list[str] = field(default_factory=list)
    threshold: float = 0.0
    flip: bool = True
    weight: float = 1.0
    unsup_loss: str = "ce"
    cutmix: bool = True
    strong: bool = False


def _io_channels(net: nn.Module) -> tuple[int, int]:
    """(input channels, classes predicted) of a segmentation network: its first convolution's input and its
    last convolution's output channels."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    return (convs[0].in_channels, convs[-1].out_channels) if convs else (-1, -1)


TEACHER_KEY = "method.self_training.teacher"


def teacher_paths(value: Union[str, list]) -> list[str]:
    """The teacher setting as a list of paths (a config file or a test may give one string)."""
    return [value] if isinstance(value, str) and value.strip() else [str(v) for v in value or [] if str(v).strip()]


def teacher_problem(value: Union[str, list]) -> str | None:
    """Why ``value`` (one path or several) cannot be the teacher, or None (checked when the config is validated)."""
    paths = teacher_paths(value)
    if not paths:
        return (f"{TEACHER_KEY} is empty: give the checkpoint of a model trained on the labelled B-scans "
                f"(e.g. runs/<supervised run>/checkpoints/best.ckpt), several, or an octseg cv folder")
    for path in paths:
        if Path(path).is_dir() and not (Path(path) / "cv.json").is_file():
            return f"{TEACHER_KEY}={path!r}: a folder without cv.json; give a checkpoint file or an octseg cv folder"
        if not Path(path).exists():
            return f"{TEACHER_KEY}={path!r}: no such checkpoint file"
    return None


def load_teacher(value: Union[str, list], student: nn.Module) -> tuple[nn.Module, dict]:
    """The frozen teacher network of checkpoint(s) ``value`` (several, or a CV folder: one ensemble whose output
    is the log of the members' mean probability) and its input normalisation; a clear error when a file is
    missing or the teacher does not predict the student's classes from the student's input."""
    from octseg.inference.ensemble import load_models  # (the same loading as octseg predict: one rule for ensembles)

    problem = teacher_problem(value)
    if problem:
        raise ConfigError(problem)
    paths = teacher_paths(value)
    net, meta, _ = load_models(paths if len(paths) > 1 else paths[0])
    for what, t, s in zip(("input channels (2.5D context)", "classes"), _io_channels(net), _io_channels(student)):
        if t != s:
            raise ConfigError(f"{TEACHER_KEY}={', '.join(paths)}: the teacher has {t} {what}, the model being "
                              f"trained {s}")
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval(), dict(meta["normalization"])


def teacher_probabilities(net: nn.Module, norm: dict, x: torch.Tensor, flip: bool = True,
                          memory_format=torch.contiguous_format) -> torch.Tensor:
    """How a teacher labels B-scans ``x`` (N, C, H, W) in [0, 1]: the class probabilities of ``net`` on ``x``
    normalised with ``norm`` (its own ``mean``/``std``), averaged with its prediction on the flipped B-scans
    (``flip``). Shared by the method and the benchmarks' diagnostics, so both measure the same labels."""
    x = ((x - norm["mean"]) / norm["std"]).contiguous(memory_format=memory_format)
    probs = net(x).float().softmax(1)
    if flip:
        probs = 0.5 * (probs + net(x.flip(-1)).float().softmax(1).flip(-1))
    return probs


class SelfTraining(Method):
    Config = SelfTrainingConfig
    default_weights = "student"

    def __init__(self, student, cfg, supervised_loss):
        super().__init__(student, cfg, supervised_loss)
        check_unsup_loss(cfg.unsup_loss, "self_training")
        teacher, self.teacher_norm = load_teacher(cfg.teacher, student)
        # the student's memory layout (the engine makes it channels-last on request): the faster kernels for both
        w = next((m.weight for m in student.modules() if isinstance(m, nn.Conv2d) and min(m.weight.shape[1:]) > 1),
                 None)  # (a layout shows only where channels and kernel are both wider than 1)
        self.memory_format = (torch.channels_last if w is not None and not w.is_contiguous()
                              and w.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
        # kept outside the module tree: not trained, not saved with the run, not switched to train mode
        self.__dict__["teacher"] = teacher.to(memory_format=self.memory_format)

    @torch.no_grad()
    def teacher_targets(self, x_u: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(pseudo-labels, validity) of the weak views: IGNORE_INDEX below ``threshold`` or outside the scan."""
        valid = valid_or_all(x_u, ctx)
        teacher = self.teacher.to(x_u.device)  # (in eval mode since loading: outside the module tree)
        probs = teacher_probabilities(teacher, self.teacher_norm, x_u, self.cfg.flip, self.memory_format)
        return confident_targets(probs, valid, self.cfg.threshold), valid

    def training_loss(self, x_l, y_l, x_u, ctx: StepContext):
        logits_l = self.student(ctx.normalise(x_l))
        sup = self.supervised_loss(logits_l, y_l)
        if x_u is None or x_u.shape[0] == 0:
            return sup, {"loss_sup": sup.detach()}
        target, valid = self.teacher_targets(x_u, ctx)
        x_s, target, valid = strong_view(x_u, target, valid, ctx, self.cfg.cutmix, intensity=self.cfg.strong)
        unsup = pseudo_label_loss(self.cfg.unsup_loss, self.student(ctx.normalise(x_s)), target, valid)
        used = (target != IGNORE_INDEX).sum() / valid.sum().clamp_min(1)
        return sup + self.cfg.weight * unsup, {"loss_sup": sup.detach(), "loss_unsup": unsup.detach(),
                                               "confident_fraction": used.detach()}
