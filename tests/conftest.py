"""Shared fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so tests can `import fakes`


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs 2 workers) every worker and the processes its tests start get
    one intra-op thread: two workers of two threads each on 2 cores would oversubscribe them, which costs
    OpenMP up to 100x (see ``one_thread``)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real OCT data beside the checkout (``../shared/data``); skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the checkout in CI)")
    return SHARED_DATA


TINY_MODEL = {"arch": "Unet", "encoder": "tu-resnet10t", "encoder_weights": "none", "encoder_depth": 3,
              "decoder_channels": [32, 16, 8]}


def make_tiny_checkpoint(path, classes=("background", "IRF", "SRF", "PED"), input_size=(64, 64),
                         method="mean_teacher", seed=0, normalization=None, context_slices=0) -> Path:
    """A small random-weight octseg checkpoint (teacher + student), without training; ``context_slices``:
    2.5D input of 2k+1 channels."""
    import torch

    from octseg.checkpoint import checkpoint_meta, save_inference_checkpoint
    from octseg.models import ModelConfig, build_model

    model = {**TINY_MODEL, "context_slices": context_slices} if context_slices else TINY_MODEL
    torch.manual_seed(seed)
    nets = {"teacher": build_model(ModelConfig(**model), len(classes))}
    if method == "mean_teacher":
        nets["student"] = build_model(ModelConfig(**model), len(classes))
    default = "teacher" if method == "mean_teacher" else "student"
    if method != "mean_teacher":
        nets = {"student": nets["teacher"]}
    norm = normalization or {"mean": 0.2, "std": 0.15}
    meta = checkpoint_meta(model, classes, input_size, norm, method, list(nets), default)
    return save_inference_checkpoint(path, nets, meta)


_TEACHERS: dict = {}


def tiny_teacher(context_slices: int = 0) -> Path:
    """A tiny 4-class supervised checkpoint for ``method.self_training.teacher`` (random weights; written once
    per test process to a temporary folder removed at exit)."""
    import atexit
    import shutil
    import tempfile

    if context_slices not in _TEACHERS:
        folder = Path(tempfile.mkdtemp(prefix="octseg-teacher-"))
        atexit.register(shutil.rmtree, folder, True)
        _TEACHERS[context_slices] = make_tiny_checkpoint(folder / "teacher.ckpt", method="supervised", seed=11,
                                                         context_slices=context_slices)
    return _TEACHERS[context_slices]


def method_test_config(name: str, context_slices: int = 0):
    """``MethodConfig`` of method ``name`` for unit tests: every pixel confident (threshold 0, so the unlabelled
    terms run at initialisation) and, for self-training, a tiny teacher."""
    from octseg.methods import MethodConfig

    cfg = MethodConfig(name=name)
    section = getattr(cfg, name, None)
    if hasattr(section, "threshold"):
        section.threshold = 0.0
    if hasattr(section, "teacher"):
        section.teacher = str(tiny_teacher(context_slices))
    return cfg


@pytest.fixture
def one_thread():
    """Tiny models: a second intra-op thread only adds synchronisation, which costs up to 100x when
    another process keeps the cores busy (as on a shared CI runner)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    return make_tiny_checkpoint(tmp_path / "tiny.ckpt")


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    """A prepared synthetic dataset (9 volumes of 4 B-scans at 64x64) for short training runs."""
    from octseg.data.prepare import prepare_dataset
    from octseg.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny_train")
    write_synthetic_dataset(root / "raw", volumes=9, fmt="png", slices=4, scale=0.2, seed=3, fluid_free_fraction=0.0,
                            progress=False)
    prepare_dataset(root / "raw", root / "prepared", size=(64, 64), progress=False)
    return root / "prepared"


def tiny_train_overrides(path, **extra) -> list[str]:
    """``key=value`` overrides for a seconds-long training run of the tiny model on ``path``."""
    o = {
        "data.path": str(path), "data.labelled": 0.5, "data.val": 0.2, "data.labelled_batch": 2,
        "data.unlabelled_batch": 2, "model.encoder": TINY_MODEL["encoder"], "model.encoder_depth": 3,
        "model.decoder_channels": "[32,16,8]", "optim.name": "adamw", "optim.lr": 3e-3, "optim.scheduler": "none",
        "trainer.steps_per_epoch": 4, "trainer.max_epochs": 2, "trainer.progress": False, "trainer.precision": "32",
        "method.mean_teacher.consistency_rampup_epochs": 1, "trainer.log_every_n_steps": 1,
        # the tiny teacher has random weights: its pseudo-labels are noise, kept small beside the labels
        "method.self_training.teacher": str(tiny_teacher()), "method.self_training.weight": 0.1,
    }
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]
