"""The LightningModule: one method (from ``octseg.methods``), its optimiser and its validation.

Batches arrive as uint8 at the prepared size; resizing, augmentation and normalisation run on the
device on whole batches. The module knows no method by name: the method says which networks it
has, which it ships (``default_weights``) and which parameters it trains.
"""

from __future__ import annotations

import dataclasses

import lightning as L
import torch

from octseg.checkpoint import checkpoint_meta
from octseg.config import Config, config_to_dict
from octseg.constants import IGNORE_INDEX
from octseg.data.augment import Augmenter, augment_batch
from octseg.losses import SegmentationLoss
from octseg.methods import StepContext, build_method
from octseg.metrics.functional import confusion_matrix_torch, dice_from_confusion_torch
from octseg.optim import configure_optimization
from octseg.transforms import normalise, resize_images, resize_labels, to_unit


class SegmentationModule(L.LightningModule):
    """One semi-supervised method, its optimiser and its validation, for Lightning."""

    def __init__(self, cfg: Config, network: torch.nn.Module, classes, input_size, norm: dict, steps_per_epoch: int):
        super().__init__()
        self.cfg, self.classes, self.input_size, self.norm = cfg, list(classes), list(input_size), dict(norm)
        self.steps_per_epoch = steps_per_epoch
        self.num_classes = len(classes)
        if cfg.trainer.channels_last:
            network = network.to(memory_format=torch.channels_last)
        self.method = build_method(cfg.method, network, SegmentationLoss(cfg.loss, self.num_classes))
        self.augmenter = Augmenter(cfg.augment)
        self._val_conf: dict[str, torch.Tensor] = {}

    # -- batch preparation on the device
    def _generator(self, salt: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed((self.cfg.seed * 1_000_003 + self.global_step * 7919 + salt * 104_729 + self.global_rank) % 2**63)
        return g

    def _to_float(self, u8: torch.Tensor) -> torch.Tensor:
        return resize_images(to_unit(u8), self.input_size)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = normalise(x, self.norm)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.trainer.channels_last else x

    def _total_steps(self) -> int:
        t = self.trainer
        return t.max_steps if t.max_steps > 0 else t.max_epochs * self.steps_per_epoch

    def _context(self, global_step: int, generator: torch.Generator, valid_u=None) -> StepContext:
        return StepContext(epoch=self.current_epoch, global_step=global_step, generator=generator,
                           steps_per_epoch=self.steps_per_epoch, total_steps=self._total_steps(),
                           normalise=self._normalise, augmenter=self.augmenter, valid_u=valid_u)

    def training_step(self, batch, batch_idx):
        """Weak views for the method: the labelled ones from their own generator, so every method
        of a paired comparison sees the same labelled augmentation; the unlabelled ones with a
        validity mask (pixels the affine pulled in from outside the B-scan are not valid)."""
        x_l = self._to_float(batch["x_l"])
        y_l = resize_labels(batch["y_l"].long(), self.input_size)
        g_l = self._generator(0)
        x_l, y_l = augment_batch(x_l, y_l, self.cfg.augment, g_l)
        if self.cfg.augment.strong:
            x_l = self.augmenter.strong(x_l, g_l)
        x_u, valid_u = None, None
        if batch["x_u"].shape[0] > 0 and self.method.uses_unlabelled:
            x_u = self._to_float(batch["x_u"])
            none = torch.zeros(x_u.shape[0], *x_u.shape[-2:], dtype=torch.long, device=x_u.device)
            x_u, m = augment_batch(x_u, none, self.cfg.augment, self._generator(2))
            valid_u = m != IGNORE_INDEX
        ctx = self._context(self.global_step + 1, self._generator(3), valid_u)
        loss, logs = self.method.training_loss(x_l, y_l, x_u, ctx)
        n = x_l.shape[0] + (0 if x_u is None else x_u.shape[0])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        for k, v in logs.items():
            self.log(f"train/{k}", v, on_step=True, on_epoch=True, batch_size=n)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # Lightning has stepped the optimiser; global_step now counts that step.
        self.method.after_optimizer_step(self._context(self.global_step, self._generator(1)))

    # -- validation: hard label maps, pooled confusion per network
    def on_validation_epoch_start(self):
        self._val_conf = {n: torch.zeros(self.num_classes, self.num_classes, dtype=torch.long, device=self.device)
                          for n in self.method.networks()}

    def validation_step(self, batch, batch_idx):
        x = self._normalise(self._to_float(batch["x"]))
        y = resize_labels(batch["y"].long(), self.input_size)
        for name, net in self.method.networks().items():
            self._val_conf[name] += confusion_matrix_torch(y, net(x).argmax(1), self.num_classes, IGNORE_INDEX)

    def on_validation_epoch_end(self):
        default = self.method.default_weights
        for name, conf in self._val_conf.items():
            conf = self.trainer.strategy.reduce(conf.float(), reduce_op="sum") if self.trainer.world_size > 1 else conf
            dice = dice_from_confusion_torch(conf)
            for c in range(1, self.num_classes):
                if not torch.isnan(dice[c]):
                    self.log(f"val/{name}/dice_{self.classes[c]}", dice[c].float())
            fg = dice[1:][~torch.isnan(dice[1:])]
            mean_fg = fg.mean().float() if len(fg) else torch.tensor(0.0)
            self.log(f"val/{name}/mean_fg_dice", mean_fg, prog_bar=(name == default))
            if name == default:
                self.log("val/mean_fg_dice", mean_fg)

    # -- optimiser
    def configure_optimizers(self):
        return configure_optimization(self.method.trainable_parameters(), self.cfg.optim, self._total_steps())

    # -- checkpoint contents
    def checkpoint_meta(self) -> dict:
        nets = self.method.networks()
        return checkpoint_meta(dataclasses.asdict(self.cfg.model), self.classes, self.input_size, self.norm,
                               self.cfg.method.name, list(nets), self.method.default_weights, config_to_dict(self.cfg))

    def on_save_checkpoint(self, checkpoint):
        checkpoint["octseg"] = self.checkpoint_meta()
        checkpoint.pop("hyper_parameters", None)
