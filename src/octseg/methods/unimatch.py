"""UniMatch (Yang et al., "Revisiting Weak-to-Strong Consistency in Semi-Supervised Semantic
Segmentation", CVPR 2023): FixMatch widened in two directions.

* Image level: **two** strong views of each unlabelled B-scan (each its own strong augmentation
  and CutMix box), both trained on the weak view's confident pseudo-labels.
* Feature level: a third stream perturbs the **encoder features** of the weak view (channel
  dropout, probability ``feature_dropout`` 0.5, one mask per B-scan and channel) and decodes them;
  it too learns the pseudo-labels.
* Loss = supervised + ``weight`` × (0.25 · strong₁ + 0.25 · strong₂ + 0.5 · feature), each the
  ``unsup_loss`` over confident pixels (``ce``, ``dice`` as the paper's medical code, or ``dice_ce``; see
  FixMatch); threshold 0.95 as in the paper.
* ``background_guard`` (pixels, 0 = off): as FixMatch's, background pseudo-labels only where the whole
  neighbourhood is confidently background.

Needs a segmentation-models-pytorch network (``encoder`` / ``decoder`` / ``segmentation_head``),
which every octseg model is.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from octseg.errors import ConfigError
from octseg.methods.base import Method, StepContext
from octseg.methods.pseudo_labels import check_unsup_loss, pseudo_label_loss, strong_view, weak_targets


@dataclass
class UniMatchConfig:
    """``method.unimatch.*``: threshold, unlabelled weight and kind, feature dropout, CutMix on/off, the
    background guard's radius."""

    threshold: float = 0.95
    weight: float = 1.0
    unsup_loss: str = "ce"
    feature_dropout: float = 0.5
    cutmix: bool = True
    background_guard: int = 0


def forward_with_feature_dropout(model, x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """``model(x)`` with channel dropout on every encoder feature map but the input itself."""
    features = model.encoder(x)
    dropped = [features[0]]
    for f in features[1:]:
        keep = (torch.rand(f.shape[0], f.shape[1], 1, 1, generator=g, device=f.device) >= p).to(f.dtype)
        dropped.append(f * keep / (1.0 - p))
    decoder = model.decoder
    list_api = len(inspect.signature(decoder.forward).parameters) == 1 and \
        next(iter(inspect.signature(decoder.forward).parameters.values())).kind != inspect.Parameter.VAR_POSITIONAL
    out = decoder(dropped) if list_api else decoder(*dropped)  # smp >= 0.5 takes a list, older ones *features
    return model.segmentation_head(out)


class UniMatch(Method):
    Config = UniMatchConfig
    default_weights = "student"

    def __init__(self, student, cfg, supervised_loss):
        super().__init__(student, cfg, supervised_loss)
        if not all(hasattr(student, a) for a in ("encoder", "decoder", "segmentation_head")):
            raise ConfigError("method.name=unimatch needs an encoder-decoder network from segmentation-models-pytorch")
        check_unsup_loss(cfg.unsup_loss, "unimatch")

    def training_loss(self, x_l, y_l, x_u, ctx: StepContext):
        sup = self.supervised_loss(self.student(ctx.normalise(x_l)), y_l)
        if x_u is None or x_u.shape[0] == 0:
            return sup, {"loss_sup": sup.detach()}
        target, valid = weak_targets(self.student, x_u, ctx, self.cfg.threshold,
                                     background_guard=self.cfg.background_guard)
        kind = self.cfg.unsup_loss
        perturbed = forward_with_feature_dropout(self.student, ctx.normalise(x_u), self.cfg.feature_dropout,
                                                 ctx.generator)
        fp = pseudo_label_loss(kind, perturbed, target, valid)
        strong = []
        for _ in range(2):
            x_s, t_s, v_s = strong_view(x_u, target, valid, ctx, self.cfg.cutmix)
            strong.append(pseudo_label_loss(kind, self.student(ctx.normalise(x_s)), t_s, v_s))
        unsup = 0.25 * strong[0] + 0.25 * strong[1] + 0.5 * fp
        return sup + self.cfg.weight * unsup, {"loss_sup": sup.detach(), "loss_unsup": unsup.detach(),
                                               "loss_fp": fp.detach()}
