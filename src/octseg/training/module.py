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
from octseg.data.augment import Augmenter, augment_batch, fourier_style
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
        # The epoch means of the training losses, kept here (not by Lightning's logger) so that they
        # travel in mid-epoch checkpoints and are summed over DDP ranks: ReduceLROnPlateau watches one.
        self._epoch_sums: dict[str, torch.Tensor] = {}
        self._epoch_n = 0

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
        if self.cfg.augment.fourier_style_p > 0 and batch["x_u"].shape[0] > 0:
            x_l = self._fourier_style(x_l, self._to_float(batch["x_u"]))
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
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        for k, v in logs.items():
            self.log(f"train/{k}_step", v, on_step=True, on_epoch=False, batch_size=n)
        for k, v in {"loss": loss, **logs}.items():
            v = torch.as_tensor(v, device=self.device).detach().double() * n
            self._epoch_sums[k] = self._epoch_sums[k] + v if k in self._epoch_sums else v
        self._epoch_n += n
        return loss

    def _fourier_style(self, x_l: torch.Tensor, x_u: torch.Tensor) -> torch.Tensor:
        """Labelled views with the intensity profile of random unlabelled B-scans (``augment.fourier_style_p``),
        from their own generator: the labelled views' other augmentation stays paired across methods."""
        a, n, dev = self.cfg.augment, x_l.shape[0], x_l.device
        g = self._generator(4)
        src = torch.randint(x_u.shape[0], (n,), generator=g, device=dev)
        lam = torch.rand(n, generator=g, device=dev) * (torch.rand(n, generator=g, device=dev) < a.fourier_style_p)
        return fourier_style(x_l, x_u[src], a.fourier_beta, lam)

    def optimizer_step(self, *args, **kwargs):
        """The optimiser step, then the method's update (e.g. the EMA teacher) — before any callback
        runs, so a checkpoint written after this step holds the updated teacher."""
        super().optimizer_step(*args, **kwargs)
        # global_step now counts this step
        self.method.after_optimizer_step(self._context(self.global_step, self._generator(1)))

    def on_train_epoch_start(self):
        # (not called when a run resumes inside an epoch: the sums then come from the checkpoint)
        self._epoch_sums, self._epoch_n = {}, 0

    def on_train_epoch_end(self):
        """``train/<value>_epoch``: the batch-size weighted mean over the epoch (and over all ranks)."""
        if not self._epoch_sums:
            return
        keys = sorted(self._epoch_sums)
        sums = torch.stack([self._epoch_sums[k] for k in keys] + [torch.tensor(float(self._epoch_n),
                                                                                dtype=torch.float64,
                                                                                device=self.device)])
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        for k, total in zip(keys, sums[:-1]):
            # (equal on every rank already; sync_dist keeps it so and keeps Lightning from warning)
            self.log(f"train/{k}_epoch", (total / sums[-1]).float(), on_step=False, on_epoch=True,
                     prog_bar=k == "loss", sync_dist=self.trainer.world_size > 1)
        self._epoch_sums, self._epoch_n = {}, 0

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
        sync = self.trainer.world_size > 1  # the figures are equal on every rank (summed counts): keeps Lightning quiet
        for name, conf in self._val_conf.items():
            if self.trainer.world_size > 1:  # each rank validated its share of the B-scans: sum the counts
                conf = self.trainer.strategy.reduce(conf.double(), reduce_op="sum").round().long()
            dice = dice_from_confusion_torch(conf)
            for c in range(1, self.num_classes):
                if not torch.isnan(dice[c]):
                    self.log(f"val/{name}/dice_{self.classes[c]}", dice[c].float(), sync_dist=sync)
            fg = dice[1:][~torch.isnan(dice[1:])]
            mean_fg = fg.mean().float() if len(fg) else torch.tensor(0.0)
            self.log(f"val/{name}/mean_fg_dice", mean_fg, prog_bar=(name == default), sync_dist=sync)
            if name == default:
                self.log("val/mean_fg_dice", mean_fg, sync_dist=sync)

    # -- optimiser
    def configure_optimizers(self):
        return configure_optimization(self.method.trainable_parameters(), self.cfg.optim, self._total_steps())

    # -- checkpoint contents
    def checkpoint_meta(self) -> dict:
        nets = self.method.networks()
        return checkpoint_meta(dataclasses.asdict(self.cfg.model), self.classes, self.input_size, self.norm,
                               self.cfg.method.name, list(nets), self.method.default_weights, config_to_dict(self.cfg))

    def _world_size(self) -> int:
        trainer = getattr(self, "_trainer", None)
        return int(trainer.world_size) if trainer is not None else 1

    def on_save_checkpoint(self, checkpoint):
        """(Called on every rank; rank 0 writes the file.) The epoch's loss sums are stored summed over
        all ranks, so a resumed run counts every rank's share once (see :meth:`on_load_checkpoint`)."""
        checkpoint["octseg"] = self.checkpoint_meta()
        checkpoint.pop("hyper_parameters", None)
        keys = sorted(self._epoch_sums)
        sums = {k: self._epoch_sums[k].detach() for k in keys}
        n = self._epoch_n
        if self._world_size() > 1 and keys:  # every rank has the same keys (each took the same steps)
            total = torch.stack([sums[k] for k in keys] + [torch.tensor(float(n), dtype=torch.float64,
                                                                        device=self.device)])
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
            sums = {k: total[i] for i, k in enumerate(keys)}
            n = int(round(float(total[-1])))
        checkpoint["octseg_train_state"] = {
            "epoch_sums": {k: v.detach().cpu() for k, v in sums.items()}, "epoch_n": n,
            "rng": _rng_states(),
        }

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("octseg_train_state")
        if not state:  # a checkpoint from before mid-epoch checkpoints: written at an epoch's end
            return
        self._epoch_sums = {k: v.to(self.device) for k, v in state["epoch_sums"].items()}
        self._epoch_n = int(state["epoch_n"])
        if self.global_rank != 0:  # the totals over all ranks are rank 0's to carry: the epoch-end sum adds
            self._epoch_sums = {k: torch.zeros_like(v) for k, v in self._epoch_sums.items()}  # them once
            self._epoch_n = 0
        _set_rng_states(state["rng"])


def _rng_states() -> dict:
    """The global random generators (Python, NumPy, torch CPU and CUDA) as weights-only-loadable values.
    octseg's own randomness is a function of seed and step; these cover anything else that draws."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"python": [version, list(internal), gauss_next],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_states(s: dict) -> None:
    import random

    import numpy as np

    version, internal, gauss_next = s["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
