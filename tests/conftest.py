"""Shared fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so tests can `import fakes`

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
                         method="mean_teacher", seed=0) -> Path:
    """A small random-weight octseg checkpoint (teacher + student), without training."""
    import torch

    from octseg.checkpoint import checkpoint_meta, save_inference_checkpoint
    from octseg.models import ModelConfig, build_model

    torch.manual_seed(seed)
    nets = {"teacher": build_model(ModelConfig(**TINY_MODEL), len(classes))}
    if method == "mean_teacher":
        nets["student"] = build_model(ModelConfig(**TINY_MODEL), len(classes))
    default = "teacher" if method == "mean_teacher" else "student"
    if method != "mean_teacher":
        nets = {"student": nets["teacher"]}
    meta = checkpoint_meta(TINY_MODEL, classes, input_size, {"mean": 0.2, "std": 0.15}, method, list(nets), default)
    return save_inference_checkpoint(path, nets, meta)


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    return make_tiny_checkpoint(tmp_path / "tiny.ckpt")
