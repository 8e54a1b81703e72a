"""The one forward path shared by validation, evaluation and prediction.

Images enter as uint8 (N, H, W) at the model's input size; intensity normalisation is the
checkpoint's, so training and inference can never disagree about it.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn

from octseg.errors import ConfigError
from octseg.transforms import resize_images, resize_scores, to_model_input


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Logits for a normalised batch; ``tta`` averages with the horizontally flipped prediction.

    A network averages its two logits; a model whose outputs are log-probabilities
    (``outputs_log_probs``, e.g. an :class:`~octseg.inference.ensemble.Ensemble`) averages the two
    probabilities instead, so an ensemble's TTA is the mean probability over members x flips."""
    logits = model(x)
    if tta:
        flipped = model(x.flip(-1)).flip(-1)
        if getattr(model, "outputs_log_probs", False):
            logits = torch.logaddexp(logits, flipped) - math.log(2.0)
        else:
            logits = 0.5 * (logits + flipped)
    return logits


def model_input_stack(images: np.ndarray, k: int, volumes=None, slice_indices=None,
                      what: str = "input") -> np.ndarray:
    """uint8 B-scans as a model with ``k`` context slices reads them: (N, H, W) for 2-D input,
    (N, 2k+1, H, W) for 2.5D input (:mod:`octseg.data.context`).

    A (N, H, W) stack given to a 2.5D model is gathered here: ``volumes`` (one id per B-scan, or
    None: the stack is one volume) and ``slice_indices`` (None: the order given) say who neighbours
    whom. An already stacked (N, 2k+1, H, W) array is used as it is."""
    from octseg.data.context import context_rows, stack_context

    images = np.asarray(images)
    if images.ndim == 4:
        if images.shape[1] != 2 * k + 1:
            raise ConfigError(f"{what}: {images.shape[1]} channel(s) per B-scan, but the model reads "
                              f"{2 * k + 1} (context_slices {k})")
        return images if k > 0 else images[:, 0]
    if images.ndim != 3:
        raise ConfigError(f"{what}: expected B-scans (N, H, W), got shape {images.shape}")
    if k == 0:
        return images
    rows = context_rows(volumes, slice_indices, k, n=len(images))
    return stack_context(images, rows)


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
    A 2.5D model takes (N, 2k+1, H, W) stacks (see :func:`model_input_stack`).

    ``confidence``: an optional float (N,) array that receives each B-scan's mean maximum softmax
    probability at the model's input size (1 = certain everywhere, 1/K = no idea)."""
    out_size = tuple(out_size or images.shape[-2:])
    result = np.empty((len(images), *out_size), dtype=np.uint8)
    for sl in batched(len(images), batch):
        x = to_model_input(torch.from_numpy(np.ascontiguousarray(images[sl])).to(device), norm)
        x = resize_images(x, input_size)
        scores = predict_logits(model, x, tta)
        resize = tuple(scores.shape[-2:]) != out_size
        if confidence is not None or resize:
            scores = scores.float().softmax(1)  # (arg-max unchanged)
        if confidence is not None:
            confidence[sl] = scores.amax(1).mean(dim=(1, 2)).cpu().numpy()
        if resize:  # probabilities resized, then the arg-max (resize_scores)
            scores = resize_scores(scores, out_size)
        result[sl] = scores.argmax(1).to(torch.uint8).cpu().numpy()
    return result
