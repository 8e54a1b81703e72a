"""Pieces shared by the pseudo-label methods (FixMatch, UniMatch, CPS, BCP): confident targets on weak views,
CutMix of views with their targets, and the masked cross-entropy they all average the same way."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from octseg.constants import IGNORE_INDEX


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
