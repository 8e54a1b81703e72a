"""Pieces shared by the pseudo-label methods (FixMatch, UniMatch, CPS, BCP): confident targets on weak views,
CutMix of views with their targets, the masked cross-entropy they all average the same way, and the choice of
loss on pseudo-labels (``unsup_loss``) that FixMatch and UniMatch offer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from octseg.constants import IGNORE_INDEX
from octseg.errors import ConfigError
from octseg.losses import soft_dice_loss


def strong_view(x: torch.Tensor, targets, valid: torch.Tensor, ctx, cutmix: bool):
    """A strong view of ``x`` (N, 1, H, W) and the targets/validity that go with it: the toolkit's
    strong intensity augmentation and, with ``cutmix``, a box pasted from another B-scan of the batch
    (its targets and validity pasted with it). ``targets``: one (N, H, W) tensor, or a tuple of them
    (e.g. two networks' pseudo-labels), returned in the same form."""
    many = isinstance(targets, (tuple, list))
    ts = list(targets) if many else [targets]
    aug = ctx.augmenter
    if aug is not None:
        x = aug.strong(x, ctx.generator)
        if cutmix and x.shape[0] > 1:
            box, perm = aug.cutmix_boxes(x.shape[0], x.shape[-2:], ctx.generator, x.device)
            x = torch.where(box[:, None], x[perm], x)
            ts = [torch.where(box, t[perm], t) for t in ts]
            valid = torch.where(box, valid[perm], valid)
    return x, (tuple(ts) if many else ts[0]), valid


def masked_ce(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the pixels with a target, divided by all valid pixels (UniMatch's
    convention: few confident pixels give a small loss, not a loudly averaged one)."""
    ce = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return ce / valid.sum().clamp_min(1)


#: ``unsup_loss`` values: cross-entropy as in FixMatch / UniMatch on natural images; soft Dice over the confident
#: pixels as UniMatch's medical (ACDC) code uses, which lets rare classes (fluid) count as much as background;
#: or their sum, the form of the supervised dice_ce loss.
PSEUDO_LABEL_LOSSES = ("ce", "dice", "dice_ce")


def check_unsup_loss(name: str, section: str) -> None:
    if name not in PSEUDO_LABEL_LOSSES:
        raise ConfigError(f"method.{section}.unsup_loss={name!r}: choose one of {', '.join(PSEUDO_LABEL_LOSSES)}")


def pseudo_label_loss(kind: str, logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The ``unsup_loss`` of ``logits`` against pseudo-labels ``targets`` (IGNORE_INDEX where not confident):
    ``ce`` = :func:`masked_ce`; ``dice`` = soft Dice over the confident pixels, classes with no confident pixel
    adding nothing (0 when none is confident); ``dice_ce`` = both."""
    if kind == "ce":
        return masked_ce(logits, targets, valid)
    dice = soft_dice_loss(logits, targets)
    return dice if kind == "dice" else dice + masked_ce(logits, targets, valid)


def weak_targets(net, x_u: torch.Tensor, ctx, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(pseudo-labels of ``net`` on the weak views, validity): IGNORE_INDEX where the top class
    probability is below ``threshold`` or the pixel is not valid; no gradient."""
    valid = valid_or_all(x_u, ctx)
    with torch.no_grad():
        conf, pseudo = net(ctx.normalise(x_u)).float().softmax(1).max(1)
    return torch.where((conf >= threshold) & valid, pseudo, torch.full_like(pseudo, IGNORE_INDEX)), valid


def valid_or_all(x_u: torch.Tensor, ctx) -> torch.Tensor:
    """The unlabelled views' validity mask (all valid when the engine gave none)."""
    return ctx.valid_u if ctx.valid_u is not None else torch.ones_like(x_u[:, 0], dtype=torch.bool)
