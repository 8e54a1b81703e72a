"""Training steps per second: octseg's Mean Teacher step against a re-implementation of the original project's loop.

Both train the same network (U-Net, ResNet50 encoder, 1 input channel, 4 classes) at 256x256
with 1 labelled + 5 unlabelled B-scans per step, on the same synthetic Spectralis-geometry
B-scans (496x512 PNG files), on this machine, interleaved round by round so that any drift in
machine load hits both alike.

The original project's loop, as its code did it: every step reads and resizes each PNG from disk (masks
with linear interpolation), the model ends in a softmax whose output goes to Dice + Focal losses,
the student runs twice (labelled, then unlabelled batch), the teacher forward builds an autograd
graph (no ``torch.no_grad``), the EMA update loops over parameters in Python, and an IoU between
student and teacher predictions on the unlabelled batch is computed in NumPy every step.

octseg's step: the training loop of ``octseg train`` (Lightning) on the prepared uint8 arrays,
one student forward over the 6 B-scans, a gradient-free teacher forward, a fused EMA update,
channels-last memory format; once in float32 (same arithmetic as the original project) and once with
``precision: auto`` (bf16 mixed precision where the CPU supports it natively, as here).

    python benchmarks/train_throughput.py [--rounds 3] [--steps 3] [--out benchmarks/results/train_throughput.json]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import print_table, write_results  # noqa: E402

TARGET = 1.3
SIZE = 256


# ----------------------------------------------------------------------------- the original project's loop


class SeedPNGDataset(Dataset):
    """Per-item PNG read + resize, every epoch (masks with linear interpolation, as the original project did)."""

    def __init__(self, images, masks=None):
        self.images, self.masks = images, masks

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = Image.open(self.images[i]).convert("L").resize((SIZE, SIZE), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
        if self.masks is None:
            return x
        m = Image.open(self.masks[i]).resize((SIZE, SIZE), Image.BILINEAR)
        return x, torch.from_numpy(np.asarray(m, dtype=np.int64))


def seed_model():
    import segmentation_models_pytorch as smp

    return nn.Sequential(smp.Unet("resnet50", encoder_weights=None, in_channels=1, classes=4), nn.Softmax(dim=1))


class OriginalLoop:
    def __init__(self, images, masks, unlabelled):
        from segmentation_models_pytorch.losses import DiceLoss, FocalLoss

        torch.manual_seed(0)
        self.student = seed_model()
        self.teacher = copy.deepcopy(self.student)  # parameters still require grad
        self.opt = torch.optim.Adam(self.student.parameters(), lr=1e-4, weight_decay=2e-4)
        self.dice, self.focal = DiceLoss("multiclass"), FocalLoss("multiclass")
        self.lab = DataLoader(SeedPNGDataset(images, masks), batch_size=1, shuffle=True)
        self.unl = DataLoader(SeedPNGDataset(unlabelled), batch_size=5, shuffle=True, drop_last=True)
        self.lab_it, self.unl_it, self.step_no = iter(self.lab), iter(self.unl), 0

    def _next(self, name):
        it = getattr(self, name + "_it")
        try:
            return next(it)
        except StopIteration:
            setattr(self, name + "_it", iter(getattr(self, name)))
            return next(getattr(self, name + "_it"))

    def step(self):
        self.student.train(), self.teacher.train()
        x_l, y_l = self._next("lab")
        x_u = self._next("unl")
        out_l = self.student(x_l)
        sup = self.dice(out_l, y_l) + self.focal(out_l, y_l)  # softmax output treated as logits
        out_u = self.student(x_u + 0.1 * torch.randn_like(x_u))
        t_out = self.teacher(x_u + 0.1 * torch.randn_like(x_u))  # autograd graph built
        cons = F.mse_loss(out_u, t_out.detach())
        loss = sup + 10.0 * cons
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.step_no += 1
        alpha = min(1 - 1 / (self.step_no + 1), 0.99)
        for ema_p, p in zip(self.teacher.parameters(), self.student.parameters()):
            ema_p.data.mul_(alpha).add_(p.data, alpha=1 - alpha)
        ps, pt = out_u.argmax(1).cpu().numpy(), t_out.argmax(1).cpu().numpy()
        ious = []
        for c in range(4):
            inter, union = np.logical_and(ps == c, pt == c).sum(), np.logical_or(ps == c, pt == c).sum()
            ious.append(1.0 if union == 0 else inter / union)
        return float(loss), float(np.mean(ious))


def time_seed(loop: OriginalLoop, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        loop.step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loop.step()
        times.append(time.perf_counter() - t)
    return times


# ----------------------------------------------------------------------------- octseg's loop


def time_octseg(prepared: Path, precision: str, warmup: int, steps: int, workdir: Path) -> list[float]:
    import lightning as L

    from octseg.config import load_config
    from octseg.training.data import StepDataset, StepSampler, intensity_stats, load_train_data
    from octseg.training.module import SegmentationModule
    from octseg.training.run import build_trainer
    from octseg.models import build_model

    class StepTimer(L.Callback):
        def __init__(self):
            self.marks = []

        def on_train_epoch_start(self, trainer, module):
            self.marks.append(time.perf_counter())

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.marks.append(time.perf_counter())

    cfg = load_config("original_mean_teacher_resnet50", [
        f"data.path={prepared}", "model.encoder_weights=none", f"trainer.precision={precision}",
        f"trainer.steps_per_epoch={warmup + steps}", "trainer.max_epochs=1", "trainer.progress=false",
        "data.val=0.2", "data.labelled=0.5", "data.split=bench",
    ])
    data = load_train_data(cfg)
    timer = StepTimer()
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    trainer = build_trainer(cfg, run_dir, callbacks=[timer], logger=False, limit_val_batches=0)
    net = build_model(cfg.model, len(data.classes))
    norm = intensity_stats(data.images, data.parts["labelled"])
    module = SegmentationModule(cfg, net, data.classes, cfg.data.size, norm, warmup + steps)
    sampler = StepSampler(len(data.parts["labelled"]), len(data.parts["unlabelled"]), 1, 5, warmup + steps, 0)
    loader = DataLoader(StepDataset(data), sampler=sampler, batch_size=None)
    trainer.fit(module, loader)
    return list(np.diff(timer.marks)[warmup:])


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/train_throughput.json"))
    a = ap.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    from octseg.data.prepare import prepare_dataset
    from octseg.data.synthetic import write_synthetic_dataset

    work = Path(tempfile.mkdtemp(prefix="octseg-bench-"))
    write_synthetic_dataset(work / "png", volumes=4, vendors=["spectralis"], fmt="png", slices=8, seed=0,
                            progress=False)
    images = sorted((work / "png" / "images").glob("*.png"))
    masks = [work / "png" / "masks" / p.name for p in images]
    t = time.perf_counter()
    prepare_dataset(work / "png", work / "prepared", size=(SIZE, SIZE), progress=False)
    prepare_s = time.perf_counter() - t

    seed = OriginalLoop(images, masks, images)
    variants = {"original loop (fp32)": [], "octseg (fp32, channels-last)": [], "octseg (precision auto)": []}
    from octseg.training.run import resolve_precision

    auto = resolve_precision("auto", "cpu")
    for r in range(a.rounds):
        variants["original loop (fp32)"] += time_seed(seed, a.warmup if r == 0 else 0, a.steps)
        variants["octseg (fp32, channels-last)"] += time_octseg(work / "prepared", "32", a.warmup, a.steps, work)
        variants["octseg (precision auto)"] += time_octseg(work / "prepared", "auto", a.warmup, a.steps, work)
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {np.median(v):.2f} s/step" for k, v in variants.items()))

    seed_rate = 1.0 / np.median(variants["original loop (fp32)"])
    rows, figures = [], {"target_ratio": TARGET, "precision_auto_resolved_to": auto, "prepare_seconds": prepare_s,
                         "variants": {}}
    for name, ts in variants.items():
        rate = 1.0 / np.median(ts)
        ratio = rate / seed_rate
        figures["variants"][name] = {"median_s_per_step": float(np.median(ts)), "steps_per_s": rate,
                                     "ratio_vs_seed": ratio, "n_steps": len(ts), "step_times": [float(x) for x in ts]}
        met = "-" if name.startswith("seed") else ("yes" if ratio >= TARGET else "NO")
        rows.append([name, f"{np.median(ts):.3f}", f"{rate:.3f}", f"{ratio:.2f}x", met])
    print(f"\nUNet-ResNet50, 256x256, batch 1 labelled + 5 unlabelled, {torch.get_num_threads()} threads; "
          f"precision auto -> {auto}; median over {a.rounds * a.steps} interleaved steps each")
    print_table(["loop", "s/step", "steps/s", "vs seed", f"target {TARGET}x met"], rows)
    best = max(v["ratio_vs_seed"] for k, v in figures["variants"].items() if not k.startswith("seed"))
    figures["best_ratio"], figures["target_met"] = float(best), bool(best >= TARGET)
    print(f"(one-off prepare of the {len(images)} B-scans: {prepare_s:.2f} s)")
    print(f"wrote {write_results(a.out, 'train_throughput', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
