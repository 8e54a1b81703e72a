"""Scoring networks: predict hard label maps with each network, then report on them.

Owns the one "run every network of a checkpoint over labelled images and score it" loop
that training (metrics.json), the demo and the benchmarks share, so they all predict and
count the same way. Inference is imported when called: importing :mod:`octseg.metrics`
does not load torch or the model code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Optional, Sequence, Union

import numpy as np

from octseg.metrics.report import segmentation_report

if TYPE_CHECKING:
    from torch import nn

__all__ = ["score_networks"]


def score_networks(networks: Mapping[str, nn.Module], meta: dict, images: np.ndarray, gt: np.ndarray, *,
                   volumes=None, vendors=None, class_names: Optional[Sequence[str]] = None, device="cpu",
                   batch: int = 16, tta: bool = False, tables: Union[bool, str] = False,
                   return_predictions: bool = False, slice_indices=None) -> Union[dict, tuple[dict, dict]]:
    """:func:`~octseg.metrics.report.segmentation_report` of each network's predictions.

    ``networks``/``meta``: as :func:`octseg.checkpoint.load_networks` returns them (name ->
    module; meta gives classes, normalization and input_size). ``images``: uint8 (N, H, W);
    ``gt``: (N, h, w) label maps, predictions are made at (h, w) (the model's class
    probabilities resized, then the arg-max, as ``octseg.inference.predict_labels`` does). ``volumes``/
    ``vendors``: one per B-scan or one for all; vendors that are all empty or None count
    as unknown (no ``by_vendor``). ``class_names`` overrides ``meta["classes"]`` (same count).
    ``device``/``batch``/``tta``: passed to ``predict_labels``.
    A 2.5D checkpoint (``context_slices`` k > 0) takes ``images`` already stacked (N, 2k+1, H, W)
    (e.g. :meth:`octseg.training.data.TrainData.stacked`, neighbours from the whole dataset), or
    (N, H, W), whose neighbours are then gathered among these B-scans by ``volumes`` (one id per
    B-scan; one id or None: one volume) in the order of ``slice_indices`` (None: as given).
    ``tables``: False (none), True (per-B-scan and per-volume tables) or "per_volume"
    (the per-volume table only, as training's metrics.json stores).

    Returns name -> report, in the order of ``networks``; with ``return_predictions``,
    ``(reports, predictions)`` where predictions maps name -> uint8 (N, h, w) label maps.
    """
    from octseg.checkpoint import context_slices
    from octseg.inference import predict_labels
    from octseg.inference.forward import model_input_stack

    if tables not in (True, False, "per_volume"):
        raise ValueError(f"tables must be True, False or 'per_volume', got {tables!r}")
    names = list(meta["classes"] if class_names is None else class_names)
    if len(names) != len(meta["classes"]):
        raise ValueError(f"{len(names)} class names for a {len(meta['classes'])}-class checkpoint")
    gt = np.asarray(gt)
    if vendors is not None and not isinstance(vendors, str) and not any(vendors):
        vendors = None
    k = context_slices(meta)
    if k > 0 or np.ndim(images) == 4:
        images = model_input_stack(images, k, None if isinstance(volumes, str) else volumes, slice_indices,
                                   "score_networks images")
    reports, predictions = {}, {}
    for name, net in networks.items():
        pred = predict_labels(net, images, meta["normalization"], meta["input_size"], batch=batch, device=device,
                              tta=tta, out_size=tuple(gt.shape[-2:]))
        rep = segmentation_report(gt, pred, len(names), class_names=names, volumes=volumes, vendors=vendors,
                                  tables=bool(tables))
        if tables == "per_volume":
            rep.pop("per_bscan_table", None)
        reports[name] = rep
        if return_predictions:
            predictions[name] = pred
    return (reports, predictions) if return_predictions else reports
