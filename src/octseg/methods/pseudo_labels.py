"""Pieces shared by the pseudo-label methods (FixMatch, UniMatch, CPS, BCP): confident targets on weak views,
CutMix of views with their targets, the masked cross-entropy they all average the same way, and the choice of
loss on pseudo-labels (``unsup_loss``) that FixMatch and UniMatch offer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from octseg.constants import BACKGROUND, IGNORE_INDEX
from octseg.errors import ConfigError
from octseg.losses import PSEUDO_LABEL_LOSSES, soft_dice_loss


def paste(t: torch.Tensor, box: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """CutMix: ``t`` (N, H, W) or (N, C, H, W) with each item's ``box`` (N, H, W) taken from item ``partner[i]``
    (``Augmenter.cutmix_boxes`` draws both)."""
    return torch.where(box if t.dim() == box.dim() else box[:, None], t[partner], t)


def strong_view(x: torch.Tensor, targets, valid: torch.Tensor, ctx, cutmix: bool, intensity: bool = True):
    """A strong view of ``x`` (N, 1, H, W) and the targets/validity that go with it: the toolkit's
    strong intensity augmentation (unless not ``intensity``) and, with ``cutmix``, a box pasted from another
    B-scan of the batch (its targets and validity pasted with it). ``targets``: one (N, H, W) tensor, or a
    tuple of them (e.g. two networks' pseudo-labels), returned in the same form."""
    many = isinstance(targets, (tuple, list))
    ts = list(targets) if many else [targets]
    aug = ctx.augmenter
    if aug is not None:
        if intensity:
            x = aug.strong(x, ctx.generator)
        if cutmix and x.shape[0] > 1:
            box, perm = aug.cutmix_boxes(x.shape[0], x.shape[-2:], ctx.generator, x.device)
            x = paste(x, box, perm)
            ts = [paste(t, box, perm) for t in ts]
            valid = paste(valid, box, perm)
    return x, (tuple(ts) if many else ts[0]), valid


def masked_ce(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy summed over the pixels with a target, divided by all valid pixels (UniMatch's
    convention: few confident pixels give a small loss, not a loudly averaged one); ``weight``: one per
    class, multiplying each pixel's term (the sum is not renormalised by it)."""
    ce = F.cross_entropy(logits.float(), targets, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum")
    return ce / valid.sum().clamp_min(1)


#: ``balanced_ce``: a class's weight is (largest class count / its count) ** BALANCE_POWER among the batch's
#: confident pseudo-labels, at most BALANCE_MAX_WEIGHT times the most frequent class's weight.
BALANCE_POWER = 0.5
BALANCE_MAX_WEIGHT = 10.0


def balanced_ce(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """:func:`masked_ce` with each class weighted by how rare it is among this batch's confident pseudo-labels
    (``BALANCE_POWER``, capped at ``BALANCE_MAX_WEIGHT``), the weights scaled so that the confident pixels' mean
    weight is 1: the loss keeps masked_ce's size, and only its share between classes changes.

    Why: with one labelled volume the confident pseudo-labels are >95 % background, so a plain cross-entropy
    spends its gradient on background and the rare classes (SRF, PED) it under-predicts stay under-predicted
    (measured in benchmarks/label_efficiency.py: FixMatch gains on IRF, none on SRF and PED). Soft Dice
    balances fully but reinforces the few wrong fluid pixels (``dice``: -0.05); this is the milder middle.
    Measured there it did not help either (-0.043 over 3 seeds; PED 0.12 -> 0.01 in the seed whose labelled
    volume shows little PED): ``ce`` stays the default."""
    k = logits.shape[1]
    conf = targets != IGNORE_INDEX
    if not conf.any():
        return masked_ce(logits, targets, valid)
    counts = torch.bincount(targets[conf].long(), minlength=k).float()
    w = torch.where(counts > 0, (counts.max() / counts.clamp_min(1)) ** BALANCE_POWER, torch.zeros_like(counts))
    w = w.clamp(max=BALANCE_MAX_WEIGHT)
    return masked_ce(logits, targets, valid, weight=w * counts.sum() / (w * counts).sum())


def check_unsup_loss(name: str, section: str) -> None:
    if name not in PSEUDO_LABEL_LOSSES:
        raise ConfigError(f"method.{section}.unsup_loss={name!r}: choose one of {', '.join(PSEUDO_LABEL_LOSSES)}")


def pseudo_label_loss(kind: str, logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The ``unsup_loss`` of ``logits`` against pseudo-labels ``targets`` (IGNORE_INDEX where not confident):
    ``ce`` = :func:`masked_ce`; ``dice`` = soft Dice over the confident pixels, classes with no confident pixel
    adding nothing (0 when none is confident); ``dice_ce`` = both; ``balanced_ce`` = :func:`balanced_ce`."""
    if kind == "ce":
        return masked_ce(logits, targets, valid)
    if kind == "balanced_ce":
        return balanced_ce(logits, targets, valid)
    dice = soft_dice_loss(logits, targets)
    return dice if kind == "dice" else dice + masked_ce(logits, targets, valid)


class DistributionAlignment(nn.Module):
    """Distribution alignment (Berthelot et al., "ReMixMatch", ICLR 2020), per pixel: the weak views' class
    probabilities are multiplied by (labelled class frequency / mean predicted class probability on
    unlabelled pixels), both running means, and renormalised before the threshold.

    Why: with one labelled volume a rare class (SRF, PED) is under-predicted, so it is rare among the
    pseudo-labels, so it is learnt less: a loop that erodes exactly the classes that are hard. Alignment
    lifts a class the network predicts less often than the labels show it. The running means are buffers,
    so they are saved with the training state and a resumed run goes on with them.

    Not from the first step: an untrained network predicts every class about equally, so the ratio would
    multiply background (97 % of the labelled pixels) by ~4 and make nearly every pixel a confident
    background pseudo-label (measured: validation Dice 0 for 60 steps, 0.24 vs 0.32 at the end); FixMatch
    applies it after ``alignment_start`` of the run."""

    def __init__(self, momentum: float = 0.9):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("labelled", torch.zeros(0))
        self.register_buffer("predicted", torch.zeros(0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("labelled", "predicted"):  # sized by the first step: take the saved sizes
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _running(self, name: str, value: torch.Tensor) -> torch.Tensor:
        old = getattr(self, name)
        new = value if old.numel() != value.numel() else self.momentum * old + (1 - self.momentum) * value
        setattr(self, name, new.detach())
        return new

    @torch.no_grad()
    def forward(self, probs: torch.Tensor, valid: torch.Tensor, y_l: torch.Tensor, apply: bool = True) -> torch.Tensor:
        """``probs`` (N, K, H, W) of the weak views -> aligned probabilities (``probs`` itself unless
        ``apply``); updates the running means with this step's labels ``y_l`` and the valid pixels of ``probs``."""
        k = probs.shape[1]
        lab = y_l[y_l != IGNORE_INDEX].long()
        if lab.numel():
            self._running("labelled", torch.bincount(lab.clamp(max=k - 1), minlength=k).to(probs) / lab.numel())
        w = valid[:, None].to(probs)
        self._running("predicted", (probs * w).sum((0, 2, 3)) / w.sum((0, 2, 3)).clamp_min(1))
        if not apply or self.labelled.numel() != k:
            return probs
        ratio = (self.labelled + 1e-6) / (self.predicted + 1e-6)
        aligned = probs * ratio[None, :, None, None]
        return aligned / aligned.sum(1, keepdim=True)


def guarded_background(sure_background: torch.Tensor, radius: int) -> torch.Tensor:
    """Where every pixel within ``radius`` (a square of side 2 radius + 1) is in ``sure_background``
    (N, H, W bool): a binary erosion. Pixels beyond the image do not count against a pixel."""
    x = sure_background[:, None].float()
    return (-F.max_pool2d(-x, 2 * radius + 1, stride=1, padding=radius))[:, 0] > 0.5


def weak_targets(net, x_u: torch.Tensor, ctx, threshold: float,
                 align=None, background_guard: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(pseudo-labels of ``net`` on the weak views, validity): IGNORE_INDEX where the top class
    probability is below ``threshold`` or the pixel is not valid; no gradient. ``align``: a function of
    the probabilities and validity applied before the threshold (e.g. :class:`DistributionAlignment`).

    ``background_guard`` (pixels, 0 = off): a background pseudo-label also needs every pixel within that
    radius to be confident background (or outside the scan). Why: a class the network under-predicts sits
    in pixels that are not confidently background, ringed by confident background; training the ring as
    background shrinks the class step by step until self-training has erased it (the labelled volume's rare
    PED fell from 0.12 Dice to 0.01 under CPS, BCP and class-balanced FixMatch). The guard leaves that ring
    unlabelled, so the unlabelled loss never pushes fluid it is unsure of towards background; fluid
    pseudo-labels and background far from any doubt are unchanged. Measured (benchmarks/label_efficiency.py,
    radius 3 at 96x96, 3 seeds): it did not stop the loss of PED and cost FixMatch 0.027 and UniMatch 0.016
    mean foreground Dice, so it is off by default."""
    valid = valid_or_all(x_u, ctx)
    with torch.no_grad():
        probs = net(ctx.normalise(x_u)).float().softmax(1)
        if align is not None:
            probs = align(probs, valid)
        return confident_targets(probs, valid, threshold, background_guard), valid


def confident_targets(probs: torch.Tensor, valid: torch.Tensor, threshold: float,
                      background_guard: int = 0) -> torch.Tensor:
    """Hard pseudo-labels of class probabilities ``probs`` (N, K, H, W): the top class where its probability is
    at least ``threshold`` and the pixel is ``valid``, IGNORE_INDEX elsewhere; ``background_guard`` as in
    :func:`weak_targets`."""
    conf, pseudo = probs.max(1)
    keep = (conf >= threshold) & valid
    if background_guard > 0:
        sure = (probs[:, BACKGROUND] >= threshold) | ~valid
        keep &= (pseudo != BACKGROUND) | guarded_background(sure, background_guard)
    return torch.where(keep, pseudo, torch.full_like(pseudo, IGNORE_INDEX))


def valid_or_all(x_u: torch.Tensor, ctx) -> torch.Tensor:
    """The unlabelled views' validity mask (all valid when the engine gave none)."""
    return ctx.valid_u if ctx.valid_u is not None else torch.ones_like(x_u[:, 0], dtype=torch.bool)
