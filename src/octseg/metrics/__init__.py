"""Segmentation metrics from hard label maps, reported honestly.

One file per concept, lower ones never importing higher ones:

* :mod:`~octseg.metrics.functional`: pure functions: confusion counts (NumPy, and torch on
  the device for training validation), Dice/IoU/precision/recall, HD95, ROC AUC.
* :mod:`~octseg.metrics.report`: per-B-scan measures aggregated pooled / per B-scan /
  per volume / by vendor into JSON-ready dicts (:func:`segmentation_report`) and text
  (:func:`format_table`).
* :mod:`~octseg.metrics.retouch`: RETOUCH volume metrics (3-D Dice, AVD, detection AUC).
* :mod:`~octseg.metrics.accumulator`: :class:`MetricAccumulator`, the streaming state.
* :mod:`~octseg.metrics.scoring`: :func:`score_networks`, predict-then-report for every
  network of a checkpoint.
* :mod:`~octseg.metrics.legacy`: the original project's measures, for comparison only.
"""

from octseg.metrics.accumulator import MetricAccumulator
from octseg.metrics.functional import (
    HD95_DEFINITION,
    confusion_matrix_torch,
    confusion_per_image,
    dice_from_confusion_torch,
    hd95,
    hd95_per_image,
    pool_by_group,
    roc_auc,
    scores_from_confusion,
)
from octseg.metrics.legacy import original_dice, original_iou
from octseg.metrics.report import BScanMeasures, build_report, format_table, measure_bscans, segmentation_report
from octseg.metrics.retouch import retouch_volume_metrics
from octseg.metrics.scoring import score_networks

__all__ = [
    "confusion_per_image",
    "scores_from_confusion",
    "pool_by_group",
    "hd95",
    "hd95_per_image",
    "roc_auc",
    "confusion_matrix_torch",
    "dice_from_confusion_torch",
    "MetricAccumulator",
    "BScanMeasures",
    "measure_bscans",
    "build_report",
    "segmentation_report",
    "retouch_volume_metrics",
    "format_table",
    "score_networks",
    "original_dice",
    "original_iou",
    "HD95_DEFINITION",
]
