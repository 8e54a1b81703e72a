"""Mean Teacher (Tarvainen & Valpola, 2017) as the original project describes it.

* Teacher = exponential moving average of the student, updated after every optimiser step
  with alpha = min(1 - 1/(step + 1), cap); cap = ``ema_decay_rampup`` (0.99) while the
  consistency weight ramps up and ``ema_decay`` (0.999) after. ``step`` counts optimiser
  steps from 1, so the first update uses alpha = 0.5.
* Consistency = MSE between the student's and the teacher's softmax maps on the unlabelled
  (and, by default, the labelled) B-scans, weighted by w * sigmoid_rampup(epoch, L).
* Student and teacher each get their own Gaussian input noise (sigma = ``noise_std``).
* The teacher runs without gradient.
* Student and teacher see the labelled and the unlabelled B-scans as two forward passes, so
  each BatchNorm batch is homogeneous (see ``training_loss``).
* ``cutmix`` (off by default): the student sees each unlabelled B-scan with a box pasted from another one,
  and its target is the teacher's prediction on the two unmixed B-scans, pasted with the same box (French et
  al., "Semi-supervised semantic segmentation needs strong, varied perturbations", BMVC 2020: Mean Teacher
  with input noise alone gives segmentation almost nothing to be consistent under; with CutMix it does).

BatchNorm choice: during training steps the teacher runs in train mode, normalising with
the statistics of its own (noisy) input batch, as in the original Mean Teacher code, so
teacher and student see their inputs the same way; its running statistics are its own,
accumulated by those forwards (they describe the teacher's activations, which the EMA of
the student's running statistics would only approximate). At evaluation both networks use
their running statistics (eval mode).
"""

from __future__ import annotations

import copy

import torch

from dataclasses import dataclass

from octseg.losses import sigmoid_rampup, softmax_mse
from octseg.methods.base import Method, StepContext
from octseg.methods.pseudo_labels import paste


@dataclass
class MeanTeacherConfig:
    """``method.mean_teacher.*``. The defaults are the original project's (for long runs); the CPU
    recipes use ema 0.99 and weight 1 (see the README). ``strong``: each branch additionally gets
    its own strong intensity augmentation (``ctx.augmenter.strong``), a stronger perturbation than
    the input noise alone; ``cutmix``: the student's unlabelled B-scans are CutMix pairs, its targets the
    teacher's predictions on the unmixed B-scans pasted the same way (French et al. 2020)."""

    ema_decay_rampup: float = 0.99
    ema_decay: float = 0.999
    consistency_weight: float = 10.0
    consistency_rampup_epochs: float = 5.0
    noise_std: float = 0.1
    consistency_on_labelled: bool = True
    strong: bool = False
    cutmix: bool = False


def ema_alpha(step: int, rampup_done: bool, cap_rampup: float = 0.99, cap: float = 0.999) -> float:
    """EMA decay for optimiser step ``step`` (1-based)."""
    return min(1.0 - 1.0 / (step + 1), cap if rampup_done else cap_rampup)


def frozen_copy(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``net`` that the optimiser never updates (an EMA teacher starts as the student)."""
    copy_ = copy.deepcopy(net)
    for p in copy_.parameters():
        p.requires_grad_(False)
    return copy_


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, alpha: float) -> None:
    """teacher <- alpha * teacher + (1 - alpha) * student, over parameters (buffers are the teacher's own)."""
    t = [p for p in teacher.parameters()]
    s = [p.detach() for p in student.parameters()]
    torch._foreach_lerp_(t, s, 1.0 - alpha)


class MeanTeacher(Method):
    Config = MeanTeacherConfig
    default_weights = "teacher"

    def __init__(self, student, cfg, supervised_loss):
        super().__init__(student, cfg, supervised_loss)
        self.teacher = frozen_copy(student)

    def consistency_weight(self, epoch: int) -> float:
        return self.cfg.consistency_weight * sigmoid_rampup(epoch, self.cfg.consistency_rampup_epochs)

    def _branch_input(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """One branch's view: its own strong augmentation (if asked), normalised, its own noise."""
        if self.cfg.strong and ctx.augmenter is not None:
            x = ctx.augmenter.strong(x, ctx.generator)
        x = ctx.normalise(x)
        if self.cfg.noise_std <= 0:
            return x
        return x + torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype) * self.cfg.noise_std

    def training_loss(self, x_l, y_l, x_u, ctx: StepContext):
        n_l = x_l.shape[0]
        x = x_l if x_u is None or x_u.shape[0] == 0 else torch.cat([x_l, x_u], 0)
        mix = None  # (box, partner) of the student's CutMix view of the unlabelled B-scans
        if self.cfg.cutmix and ctx.augmenter is not None and x.shape[0] - n_l > 1:
            mix = ctx.augmenter.cutmix_boxes(x.shape[0] - n_l, x.shape[-2:], ctx.generator, x.device)
        # Labelled and unlabelled B-scans go through the student as two BatchNorm batches: in one
        # joint batch the few labelled B-scans are normalised with statistics of the broad
        # unlabelled pool, and the student then validated far below the supervised baseline even
        # with the consistency weight at 0 (0.20 vs 0.62 mean foreground Dice, 5% labels).
        student_in = self._branch_input(x if mix is None else torch.cat([x_l, paste(x[n_l:], *mix)], 0), ctx)
        logits_l = self.student(student_in[:n_l])
        sup = self.supervised_loss(logits_l, y_l)
        student_logits = logits_l if x.shape[0] == n_l else torch.cat([logits_l, self.student(student_in[n_l:])], 0)
        teacher_in = self._branch_input(x, ctx)
        self.teacher.train(self.student.training)
        with torch.no_grad():  # the same two BatchNorm batches as the student
            teacher_logits = torch.cat([self.teacher(part) for part in teacher_in.split([n_l, x.shape[0] - n_l])
                                        if part.shape[0]], 0)
        if mix is not None:  # the target of a pasted box is the teacher's prediction on the B-scan it came from
            teacher_logits = torch.cat([teacher_logits[:n_l], paste(teacher_logits[n_l:], *mix)], 0)
        if self.cfg.consistency_on_labelled or x.shape[0] == n_l:
            cons = softmax_mse(student_logits, teacher_logits)
        else:
            cons = softmax_mse(student_logits[n_l:], teacher_logits[n_l:])
        w = self.consistency_weight(ctx.epoch)
        loss = sup + w * cons
        return loss, {"loss_sup": sup.detach(), "loss_cons": cons.detach(), "cons_weight": w}

    def after_optimizer_step(self, ctx: StepContext) -> None:
        rampup_done = ctx.epoch >= self.cfg.consistency_rampup_epochs
        alpha = ema_alpha(ctx.global_step, rampup_done, self.cfg.ema_decay_rampup, self.cfg.ema_decay)
        ema_update(self.teacher, self.student, alpha)

    def networks(self):
        return {"teacher": self.teacher, "student": self.student}
