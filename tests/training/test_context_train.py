"""`octseg train` with 2.5D input (model.context_slices=1): two steps per method through Lightning,
the checkpoint records context_slices and its network reads 2k+1 channels."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_train_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method", ["mean_teacher", "fixmatch"])
def test_train_with_context_slices(method, tiny_prepared, tmp_path):
    from octseg.checkpoint import load_network
    from octseg.config import load_config
    from octseg.inference.predictor import Predictor
    from octseg.training.run import train

    cfg = load_config("demo_cpu", tiny_train_overrides(tiny_prepared, **{
        "model.context_slices": 1, "method.name": method, "trainer.max_epochs": 1, "trainer.steps_per_epoch": 2}))
    result = train(cfg, tmp_path / "run")
    net, meta = load_network(result.best)
    assert meta["context_slices"] == 1 and meta["model"]["context_slices"] == 1
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 3
    assert result.metrics["val"][meta["default_weights"]]["pooled"]["dice"]  # scored with neighbours
    p = Predictor.from_checkpoint(result.best, device="cpu")
    assert p.context_slices == 1
    assert p.predict(torch.zeros(3, 64, 64, dtype=torch.uint8).numpy()).shape == (3, 64, 64)
