"""Supervised and consistency losses. Every supervised loss takes raw logits (N, K, H, W).

The original project fed softmax outputs to losses that apply their own softmax/sigmoid; here the
model returns logits and each loss normalises exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from octseg.constants import IGNORE_INDEX
from octseg.errors import ConfigError



@dataclass
class LossConfig:
    """``name``: dice_focal (the original project's, 1:1) or dice_ce. ``class_weights``: per-class Dice weights."""

    name: str = "dice_focal"
    dice_weight: float = 1.0
    other_weight: float = 1.0
    class_weights: Optional[list[float]] = None
    focal_gamma: float = 2.0


class WeightedDiceLoss(nn.Module):
    """Multiclass soft Dice on softmax(logits), pooled over the batch, with per-class weights.

    With equal weights this equals segmentation-models-pytorch's ``DiceLoss(mode="multiclass")``:
    classes absent from the target contribute no loss. Weights let a rare class such as IRF
    count more (the original project's own suggestion). Pixels labelled 255 are ignored.
    """

    def __init__(self, num_classes: int, class_weights: Optional[Sequence[float]] = None, eps: float = 1e-7):
        super().__init__()
        w = torch.ones(num_classes) if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if w.numel() != num_classes:
            raise ConfigError(f"loss.class_weights has {w.numel()} values, the dataset has {num_classes} classes")
        self.register_buffer("weights", w, persistent=False)
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_dice_loss(logits, target, self.weights, self.eps)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor] = None,
                   eps: float = 1e-7) -> torch.Tensor:
    """:class:`WeightedDiceLoss` as a function: soft Dice of softmax(logits) against ``target`` (N, H, W),
    pooled over the batch, pixels labelled 255 ignored, classes absent from the target adding nothing."""
    k = logits.shape[1]
    probs = logits.float().softmax(dim=1)
    valid = (target != IGNORE_INDEX).unsqueeze(1)
    onehot = F.one_hot(target.clamp(max=k - 1).long(), k).permute(0, 3, 1, 2).to(probs.dtype)
    probs, onehot = probs * valid, onehot * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    card = (probs + onehot).sum(dims)
    dice = 2.0 * inter / card.clamp_min(eps)
    present = (onehot.sum(dims) > 0).to(dice.dtype)
    w = torch.ones(k, dtype=dice.dtype, device=dice.device) if weights is None else weights.to(dice)
    # A weighted mean over all classes: equal weights give smp's plain mean.
    return ((1.0 - dice) * present * w).sum() / w.sum()


def _focal(num_classes: int, gamma: float) -> nn.Module:
    from segmentation_models_pytorch.losses import FocalLoss

    return FocalLoss(mode="multiclass", gamma=gamma, ignore_index=IGNORE_INDEX)


#: loss.name -> the term beside Dice, built from (num_classes, LossConfig).
LOSSES = {
    "dice_focal": lambda num_classes, cfg: _focal(num_classes, cfg.focal_gamma),
    "dice_ce": lambda num_classes, cfg: nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX),
}


#: Losses on pseudo-labels (``method.fixmatch.unsup_loss``, ``method.unimatch.unsup_loss``): cross-entropy as in
#: FixMatch / UniMatch on natural images; soft Dice over the confident pixels as UniMatch's medical (ACDC) code uses,
#: which lets rare classes (fluid) count as much as background; their sum, the form of the supervised dice_ce; or
#: cross-entropy with each class weighted by the inverse square root of its share of the batch's pseudo-labels.
PSEUDO_LABEL_LOSSES = ("ce", "dice", "dice_ce", "balanced_ce")


class SegmentationLoss(nn.Module):
    """dice_weight * Dice + other_weight * (Focal | cross-entropy), on logits."""

    def __init__(self, cfg: LossConfig, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.dice = WeightedDiceLoss(num_classes, cfg.class_weights)
        if cfg.name not in LOSSES:
            raise ConfigError(f"loss.name={cfg.name!r}: choose one of {', '.join(LOSSES)}")
        self.other = LOSSES[cfg.name](num_classes, cfg)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.long()
        return self.cfg.dice_weight * self.dice(logits, target) + self.cfg.other_weight * self.other(
            logits.float(), target
        )


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean Teacher consistency: mean squared difference of the two softmax maps (teacher detached)."""
    return F.mse_loss(student_logits.float().softmax(1), teacher_logits.detach().float().softmax(1))


def sigmoid_rampup(current: float, length: float) -> float:
    """exp(-5 (1 - t/L)^2) for t in [0, L], 1 after; 1 when L = 0 (Laine & Aila; Tarvainen & Valpola)."""
    if length <= 0:
        return 1.0
    t = min(max(float(current), 0.0), float(length)) / float(length)
    return float(torch.exp(torch.tensor(-5.0 * (1.0 - t) ** 2)).item())
