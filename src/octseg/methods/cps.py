"""Cross pseudo supervision (Chen et al., "Semi-Supervised Semantic Segmentation with Cross Pseudo
Supervision", CVPR 2021).

* Two networks of the same architecture, **initialised independently** (the second is a copy of
  the student with every layer re-initialised from the run's seeded generator).
* Both learn the labels; on unlabelled B-scans each learns the other's hard prediction (argmax,
  no threshold, no gradient through the target) — on a strong view with a CutMix box when
  ``cutmix`` (as the paper's CutMix variant), so each is pushed to agree under perturbation.
* Loss = supervised(A) + supervised(B) + ``weight`` (1.5, the paper's λ) × (CE(A, ŷ_B) + CE(B, ŷ_A)).
* Both networks train (``trainable_parameters``); both are saved; the first is the default.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from octseg.methods.base import Method, StepContext
from octseg.methods.pseudo_labels import masked_ce, strong_view, weak_targets


@dataclass
class CPSConfig:
    """``method.cps.*``: weight of the cross terms (the paper's λ) and CutMix on/off."""

    weight: float = 1.5
    cutmix: bool = True


def _reinitialised(net: torch.nn.Module) -> torch.nn.Module:
    other = copy.deepcopy(net)
    for m in other.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return other


class CPS(Method):
    Config = CPSConfig
    default_weights = "student"

    def __init__(self, student, cfg, supervised_loss):
        super().__init__(student, cfg, supervised_loss)
        self.peer = _reinitialised(student)

    def trainable_parameters(self):
        return [*self.student.parameters(), *self.peer.parameters()]

    def networks(self):
        return {"student": self.student, "peer": self.peer}

    def training_loss(self, x_l, y_l, x_u, ctx: StepContext):
        xl = ctx.normalise(x_l)
        sup_a = self.supervised_loss(self.student(xl), y_l)
        sup_b = self.supervised_loss(self.peer(xl), y_l)
        sup = sup_a + sup_b
        if x_u is None or x_u.shape[0] == 0:
            return sup, {"loss_sup": sup_a.detach(), "loss_sup_peer": sup_b.detach()}
        target_a, valid = weak_targets(self.student, x_u, ctx, 0.0)  # hard labels, no threshold
        target_b, _ = weak_targets(self.peer, x_u, ctx, 0.0)
        # one strong view for both networks: both targets travel with the pasted box
        x_s, (t_a, t_b), v_s = strong_view(x_u, (target_a, target_b), valid, ctx, self.cfg.cutmix)
        xs = ctx.normalise(x_s)
        cross = masked_ce(self.student(xs), t_b, v_s) + masked_ce(self.peer(xs), t_a, v_s)
        return sup + self.cfg.weight * cross, {"loss_sup": sup_a.detach(), "loss_sup_peer": sup_b.detach(),
                                               "loss_cross": cross.detach()}

