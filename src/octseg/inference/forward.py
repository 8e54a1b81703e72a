"""The one forward path shared by validation, evaluation and prediction.

Images enter as uint8 (N, H, W) at the model's input size; intensity normalisation is the
checkpoint's, so training and inference can never disagree about it.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn

from octseg.transforms import resize_images, resize_labels, to_model_input


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
    confidence: Optional[np.ndarray] = None,
) -> np.ndarray:
    """uint8 (N, H, W) images -> uint8 (N, h, w) label maps (h, w = out_size or the input's size).

    ``confidence``: an optional float (N,) array that receives each B-scan's mean maximum softmax
    probability at the model's input size (1 = certain everywhere, 1/K = no idea)."""
    out_size = tuple(out_size or images.shape[1:])
    result = np.empty((len(images), *out_size), dtype=np.uint8)
    for sl in batched(len(images), batch):
        x = to_model_input(torch.from_numpy(np.ascontiguousarray(images[sl])).to(device), norm)
        x = resize_images(x, input_size)
        logits = predict_logits(model, x, tta)
        labels = logits.argmax(1)
        if confidence is not None:
            confidence[sl] = logits.float().softmax(1).amax(1).mean(dim=(1, 2)).cpu().numpy()
        result[sl] = resize_labels(labels, out_size).to(torch.uint8).cpu().numpy()
    return result
