"""Shared by the speed benchmarks (train_throughput.py on CPU, gpu.py on CUDA): the original project's
training loop, octseg's training step driven the way ``octseg train`` drives it, the FLOPs of a step
and the measured matmul peak of the machine the step ran on.

Why FLOPs and a measured peak: steps/s only compares two loops with each other; FLOP/s against what
this machine's matrix multiply reaches (measured in the same run, not a datasheet figure) says how
much of the hardware a step uses, and so how much faster it could still get.
"""

from __future__ import annotations

import copy
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

#: Network specs (octseg's ``model.*`` fields): the original project's two encoders, and a tiny one
#: for smoke tests (the test suite's ResNet10-T of depth 3).
MODELS = {
    "resnet50": {"encoder": "resnet50", "encoder_depth": 5, "decoder_channels": None},
    "vgg19_bn": {"encoder": "vgg19_bn", "encoder_depth": 5, "decoder_channels": None},
    "tiny": {"encoder": "tu-resnet10t", "encoder_depth": 3, "decoder_channels": [32, 16, 8]},
}


def model_overrides(spec: dict) -> list[str]:
    """``model.*`` overrides that make a recipe build ``spec``."""
    out = [f"model.encoder={spec['encoder']}", f"model.encoder_depth={spec['encoder_depth']}"]
    if spec.get("decoder_channels"):
        out.append("model.decoder_channels=[" + ",".join(map(str, spec["decoder_channels"])) + "]")
    return out


def sync(device) -> None:
    """Wait for queued GPU work, so that wall-clock marks time the work and not its launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- data


def make_training_data(work: Path, sizes, volumes: int = 4, slices: int = 8, scale: float = 1.0) -> dict:
    """Synthetic Spectralis B-scans as PNG files (what the original project read every step) and the
    same B-scans prepared at each size in ``sizes`` (what octseg trains on)."""
    from octseg.data.prepare import prepare_dataset
    from octseg.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(work / "png", volumes=volumes, vendors=["spectralis"], fmt="png", slices=slices,
                            scale=scale, seed=0, fluid_free_fraction=0.0, progress=False)
    images = sorted((work / "png" / "images").glob("*.png"))
    out = {"images": images, "masks": [work / "png" / "masks" / p.name for p in images], "prepared": {},
           "prepare_seconds": {}}
    for size in sizes:
        t = time.perf_counter()
        prepare_dataset(work / "png", work / f"prepared{size}", size=(size, size), progress=False)
        out["prepared"][size] = work / f"prepared{size}"
        out["prepare_seconds"][size] = time.perf_counter() - t
    return out


# ----------------------------------------------------------------------------- the original project's loop


class SeedPNGDataset(Dataset):
    """Per-item PNG read + resize, every epoch (masks with linear interpolation, as the original project did)."""

    def __init__(self, images, masks=None, size: int = 256):
        self.images, self.masks, self.size = images, masks, size

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = Image.open(self.images[i]).convert("L").resize((self.size, self.size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
        if self.masks is None:
            return x
        m = Image.open(self.masks[i]).resize((self.size, self.size), Image.BILINEAR)
        return x, torch.from_numpy(np.asarray(m, dtype=np.int64))


def seed_model(spec: dict | None = None):
    import segmentation_models_pytorch as smp

    spec = spec or MODELS["resnet50"]
    kw = {"decoder_channels": spec["decoder_channels"]} if spec.get("decoder_channels") else {}
    return nn.Sequential(smp.Unet(spec["encoder"], encoder_weights=None, encoder_depth=spec["encoder_depth"],
                                  in_channels=1, classes=4, **kw), nn.Softmax(dim=1))


class OriginalLoop:
    """The original project's Mean Teacher step, as its code did it: every step reads and resizes each
    PNG from disk (masks with linear interpolation), the model ends in a softmax whose output goes to
    Dice + Focal losses, the student runs twice (labelled, then unlabelled batch), the teacher forward
    builds an autograd graph (no ``torch.no_grad``), the EMA update loops over parameters in Python,
    and an IoU between student and teacher predictions on the unlabelled batch is computed in NumPy
    every step. float32, NCHW, on ``device``."""

    def __init__(self, images, masks, unlabelled, spec: dict | None = None, size: int = 256, device="cpu",
                 labelled_batch: int = 1, unlabelled_batch: int = 5):
        from segmentation_models_pytorch.losses import DiceLoss, FocalLoss

        torch.manual_seed(0)
        self.device = torch.device(device)
        self.student = seed_model(spec).to(self.device)
        self.teacher = copy.deepcopy(self.student)  # parameters still require grad
        self.opt = torch.optim.Adam(self.student.parameters(), lr=1e-4, weight_decay=2e-4)
        self.dice, self.focal = DiceLoss("multiclass"), FocalLoss("multiclass")
        self.lab = DataLoader(SeedPNGDataset(images, masks, size), batch_size=labelled_batch, shuffle=True)
        self.unl = DataLoader(SeedPNGDataset(unlabelled, None, size), batch_size=unlabelled_batch, shuffle=True,
                              drop_last=True)
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
        x_l, y_l = (t.to(self.device) for t in self._next("lab"))
        x_u = self._next("unl").to(self.device)
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

    def run(self, warmup: int, steps: int, count_flops: bool = False) -> dict:
        """Time ``steps`` steps after ``warmup`` untimed ones; the first warm-up step is counted
        (FLOPs) when asked, so counting never slows a timed step."""
        flops = None
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for i in range(warmup):
            if i == 0 and count_flops:
                flops = count_step_flops(self.step)
            else:
                self.step()
        times = []
        for _ in range(steps):
            sync(self.device)
            t = time.perf_counter()
            self.step()
            sync(self.device)
            times.append(time.perf_counter() - t)
        return {"step_times": times, "flops": flops, "precision": "32-true", "channels_last": False,
                "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None}


# ----------------------------------------------------------------------------- octseg's step


class OctsegStep:
    """octseg's training step as ``octseg train`` runs it — recipe, prepared data, split, sampler,
    :class:`~octseg.training.module.SegmentationModule` and the trainer of
    :func:`~octseg.training.run.build_trainer` — without validation, logging or checkpoint writes
    (a benchmark times steps). The module is built once, so rounds of :meth:`run` reuse the same
    networks, and a compiled network compiles once.

    ``compile``: a ``torch.compile`` backend (``"inductor"``) applied to every network of the method
    in place (``nn.Module.compile``, static shapes); octseg's recipes have no such option yet."""

    def __init__(self, prepared: Path, recipe: str, overrides, workdir: Path, compile: str | None = None):
        from octseg.config import load_config
        from octseg.models import build_model
        from octseg.training.data import intensity_stats, load_train_data
        from octseg.training.module import SegmentationModule

        self.cfg = load_config(recipe, [
            f"data.path={prepared}", "model.encoder_weights=none", "trainer.max_epochs=1", "trainer.progress=false",
            "trainer.devices=1", "data.labelled=0.5", "data.val=0.2", "data.test=0",
            "trainer.checkpoint_every_minutes=null", *overrides])
        self.workdir, self.compile = Path(workdir), compile
        self.data = load_train_data(self.cfg)
        d = self.data
        norm = intensity_stats(d.images, np.concatenate([d.parts["labelled"], d.parts.get("unlabelled", [])])
                               .astype(np.int64))
        torch.manual_seed(self.cfg.seed)
        net = build_model(self.cfg.model, len(d.classes))
        size = list(self.cfg.data.size) if self.cfg.data.size else list(d.size)
        self.module = SegmentationModule(self.cfg, net, d.classes, size, norm, 1)
        self.input_size = size
        if compile:
            for n in self.module.method.networks().values():
                n.compile(backend=compile, dynamic=False)

    def run(self, warmup: int, steps: int, count_flops: bool = False, profile: Path | None = None) -> dict:
        """Time ``steps`` steps after ``warmup``; ``profile``: a file that receives torch.profiler's tables of
        the timed steps (operators by device time and by host time) and the share of the wall time the
        device was busy, which tells a launch-bound step (host time per operator) from a compute-bound one."""
        import lightning as L
        from lightning.pytorch.callbacks import ModelCheckpoint

        from octseg.training.data import StepDataset, StepLoader, StepSampler
        from octseg.training.run import build_trainer

        class StepTimer(L.Callback):
            """Marks the end of every step (after the optimiser and the method's update, e.g. the
            EMA teacher); counts the FLOPs of the first step when asked."""

            def __init__(self):
                self.marks, self.flops, self._counter, self.device = [], None, None, None

            def on_train_epoch_start(self, trainer, module):
                self.device = module.device
                sync(self.device)
                self.marks.append(time.perf_counter())

            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if profile is not None and batch_idx == warmup:
                    self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU] + (
                        [torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else []))
                    self._prof.__enter__()
                if count_flops and batch_idx == 0:
                    from torch.utils.flop_counter import FlopCounterMode

                    self._counter = FlopCounterMode(display=False)
                    self._counter.__enter__()

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if self._counter is not None:
                    self._counter.__exit__(None, None, None)
                    self.flops, self._counter = int(self._counter.get_total_flops()), None
                sync(self.device)
                self.marks.append(time.perf_counter())
                if profile is not None and batch_idx == warmup + steps - 1:
                    self._prof.__exit__(None, None, None)
                    write_profile(self._prof, profile, self.marks[-1] - self.marks[warmup], steps)

        n = warmup + steps
        cfg, d = self.cfg, self.data
        self.module.steps_per_epoch = n
        n_unl = len(d.parts.get("unlabelled", ())) if self.module.method.uses_unlabelled else 0
        sampler = StepSampler(len(d.parts["labelled"]), n_unl, cfg.data.labelled_batch, cfg.data.unlabelled_batch,
                              n, cfg.seed)
        loader = StepLoader(StepDataset(d), sampler=sampler, batch_size=None, num_workers=0)
        timer = StepTimer()
        run_dir = Path(tempfile.mkdtemp(dir=self.workdir))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer = build_trainer(cfg, run_dir, callbacks=[timer], logger=False, limit_val_batches=0)
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
        cuda = torch.cuda.is_available() and trainer.strategy.root_device.type == "cuda"
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer.fit(self.module, loader)
        times = list(np.diff(timer.marks))
        if len(times) != n:
            raise RuntimeError(f"expected {n} step marks, got {len(times)}")
        return {"step_times": [float(x) for x in times[warmup:]], "flops": timer.flops,
                "precision": str(trainer.precision), "channels_last": bool(cfg.trainer.channels_last),
                "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None}


def write_profile(prof, path: Path, wall: float, steps: int) -> None:
    """torch.profiler's operator tables and the device's busy share of ``wall`` seconds, as text at ``path``."""
    ev = prof.key_averages()
    # kernels only: a record_function range (the optimiser's "Optimizer.step#Adam.step") also carries device
    # time, spanning the kernels it launched; counting it too gave "117 % busy" on the first GPU run
    dev_us = sum(e.self_device_time_total for e in ev if getattr(e, "self_device_time_total", 0)
                 and not getattr(e, "is_user_annotation", False) and "#" not in e.key
                 and not e.key.startswith("ProfilerStep"))
    launches = sum(e.count for e in ev if "cudaLaunchKernel" in e.key or "cuLaunchKernel" in e.key)
    head = (f"{steps} steps in {wall:.3f} s ({wall / steps * 1e3:.1f} ms/step); device busy "
            f"{dev_us / 1e6:.3f} s ({dev_us / 1e6 / wall:.0%} of the wall time); kernel launches per step "
            f"{launches / steps:.0f}\n")
    tables = [ev.table(sort_by=k, row_limit=30) for k in (
        ("self_device_time_total", "self_cpu_time_total") if dev_us else ("self_cpu_time_total",))]
    Path(path).write_text(head + "\n\n".join(tables))
    print(head, end="", flush=True)


# ----------------------------------------------------------------------------- FLOPs and the peak


def count_step_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (forward and backward matmuls/convolutions, as
    ``torch.utils.flop_counter`` counts them: 2 per multiply-add; element-wise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(device="cpu", dtype=torch.float32, n: int = 2048, repeats: int = 5, inner: int = 1) -> dict:
    """FLOP/s of an n x n x n ``torch.mm`` on ``device``: the best of ``repeats`` timings of ``inner``
    back-to-back products, after one warm-up. The practical ceiling a training step is compared with."""
    a = torch.randn(n, n, device=device).to(dtype)  # the values do not matter, only the shapes
    b = torch.randn(n, n, device=device).to(dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=c)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=c)
        sync(device)
        best = min(best, (time.perf_counter() - t) / inner)
    del a, b, c
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "device": str(device), "repeats": repeats,
            "inner": inner, "threads": torch.get_num_threads(), "best_seconds": best,
            "flops_per_s": 2.0 * n ** 3 / best}


def conv_peak(device="cpu", dtype=torch.float32, channels: int = 256, hw: int = 64, batch: int = 8,
              repeats: int = 5) -> dict:
    """FLOP/s of a 3x3, ``channels`` -> ``channels`` convolution (channels-last, no gradient) on a batch of
    ``hw`` x ``hw`` maps: the best of ``repeats`` after one warm-up. A second ceiling beside
    :func:`matmul_peak`: where the convolution library (oneDNN on CPUs) has better kernels than the
    BLAS behind ``torch.mm``, a training step can exceed the matmul figure, which is then no peak."""
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device=device, dtype=dtype)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(batch, channels, hw, hw, device=device).to(dtype).to(memory_format=torch.channels_last)
    best = float("inf")
    with torch.no_grad():
        conv(x)
        sync(device)
        for _ in range(repeats):
            t = time.perf_counter()
            conv(x)
            sync(device)
            best = min(best, time.perf_counter() - t)
    flops = 2.0 * batch * channels * channels * 9 * hw * hw
    del conv, x
    return {"channels": channels, "hw": hw, "batch": batch, "dtype": str(dtype).replace("torch.", ""),
            "device": str(device), "repeats": repeats, "threads": torch.get_num_threads(),
            "best_seconds": best, "flops_per_s": flops / best}


def summarise(result: dict, peak_flops: float | None, flops: int | None = None) -> dict:
    """Median step time, steps/s, achieved FLOP/s and its share of ``peak_flops``."""
    times = result["step_times"]
    med = float(np.median(times))
    flops = flops if flops is not None else result.get("flops")
    out = {"median_s_per_step": med, "steps_per_s": 1.0 / med, "n_steps": len(times),
           "step_times": [float(x) for x in times], "flops_per_step": flops,
           "precision": result.get("precision"), "channels_last": result.get("channels_last"),
           "peak_memory_bytes": result.get("peak_memory_bytes")}
    if flops:
        out["achieved_flops_per_s"] = flops / med
        out["pct_of_peak"] = 100.0 * flops / med / peak_flops if peak_flops else None
    else:
        out["achieved_flops_per_s"] = out["pct_of_peak"] = None
    return out


def fmt_flops(x, unit=1e9, nd=1) -> str:
    return "n/a" if x is None else f"{x / unit:.{nd}f}"


def fmt_pct(x) -> str:
    return "n/a" if x is None else f"{x:.1f} %"


def random_checkpoint(path: Path, spec: dict, input_size) -> Path:
    """A random-weight octseg checkpoint of network ``spec`` (the speed of a network does not depend
    on its weights), saved with octseg's own checkpoint code so that Predictor and export read it."""
    from octseg.checkpoint import checkpoint_meta, save_inference_checkpoint
    from octseg.constants import RETOUCH_CLASSES
    from octseg.models import ModelConfig, build_model

    model = {"arch": "Unet", "encoder_weights": "none", **spec}
    torch.manual_seed(0)
    net = build_model(ModelConfig(**model), len(RETOUCH_CLASSES))
    meta = checkpoint_meta(model, RETOUCH_CLASSES, list(input_size), {"mean": 0.2, "std": 0.15}, "supervised",
                           ["student"], "student")
    return save_inference_checkpoint(path, {"student": net}, meta)
