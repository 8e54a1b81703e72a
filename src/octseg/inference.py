"""The one forward path shared by validation, evaluation and prediction.

Images enter as uint8 (N, H, W) at the model's input size; intensity normalisation is the
checkpoint's, so training and inference can never disagree about it.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn


def to_model_input(images_u8: torch.Tensor, norm: dict) -> torch.Tensor:
    """uint8 (N, H, W) -> normalised float (N, 1, H, W)."""
    x = images_u8.to(torch.float32).div_(255.0).unsqueeze(1)
    return (x - norm["mean"]) / norm["std"]


def resize_images(x: torch.Tensor, size) -> torch.Tensor:
    """float (N, C, H, W) -> size, with area filtering when shrinking and bilinear when enlarging."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = size[0] <= x.shape[-2] and size[1] <= x.shape[-1]
    if shrink:
        return torch.nn.functional.interpolate(x, size=size, mode="area")
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)


def resize_labels(y: torch.Tensor, size) -> torch.Tensor:
    """Integer label maps (N, H, W) -> size with nearest neighbour: labels never blend."""
    size = tuple(int(s) for s in size)
    if tuple(y.shape[-2:]) == size:
        return y
    return torch.nn.functional.interpolate(y[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(y.dtype)


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Logits for a normalised batch; ``tta`` averages with the horizontally flipped prediction."""
    logits = model(x)
    if tta:
        logits = 0.5 * (logits + model(x.flip(-1)).flip(-1))
    return logits


def batched(n: int, batch: int) -> Iterator[slice]:
    for i in range(0, n, batch):
        yield slice(i, min(n, i + batch))


@torch.inference_mode()
def predict_labels(
    model: nn.Module,
    images: np.ndarray,
    norm: dict,
    input_size,
    batch: int = 8,
    device="cpu",
    tta: bool = False,
    out_size: Optional[tuple[int, int]] = None,
) -> np.ndarray:
    """uint8 (N, H, W) images -> uint8 (N, h, w) label maps (h, w = out_size or the input's size)."""
    out_size = tuple(out_size or images.shape[1:])
    result = np.empty((len(images), *out_size), dtype=np.uint8)
    for sl in batched(len(images), batch):
        x = to_model_input(torch.from_numpy(np.ascontiguousarray(images[sl])).to(device), norm)
        x = resize_images(x, input_size)
        labels = predict_logits(model, x, tta).argmax(1)
        result[sl] = resize_labels(labels, out_size).to(torch.uint8).cpu().numpy()
    return result
