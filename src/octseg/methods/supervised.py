"""Labelled data only: the baseline every semi-supervised result is compared with."""

from __future__ import annotations

from octseg.methods.base import Method


class Supervised(Method):
    default_weights = "student"
    uses_unlabelled = False  # the baseline never sees unlabelled B-scans

    def training_loss(self, x_l, y_l, x_u, ctx):
        loss = self.supervised_loss(self.student(ctx.normalise(x_l)), y_l)
        return loss, {"loss_sup": loss.detach()}
