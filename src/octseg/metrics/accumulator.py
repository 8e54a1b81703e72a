"""MetricAccumulator: streams batches of label maps into per-B-scan measures.

Owns the *state* of an evaluation that does not fit in memory at once (torchmetrics'
"modular" half): ``update`` adds a batch's per-B-scan confusion counts and HD95 values,
``merge`` joins another accumulator (e.g. from another worker), ``measures`` hands the state
over. ``compute``/``retouch`` turn that state into the same dicts as the one-shot
:func:`~octseg.metrics.report.segmentation_report` and
:func:`~octseg.metrics.retouch.retouch_volume_metrics`, built by those modules; nothing here
formats a report.
"""

from __future__ import annotations

from typing import Optional, Sequence

from octseg.constants import IGNORE_INDEX
from octseg.metrics.report import HD95_MODES, BScanMeasures, build_report, class_names_for, measure_bscans
from octseg.metrics.retouch import retouch_from_measures

__all__ = ["MetricAccumulator"]


class MetricAccumulator:
    """Streams batches of hard label maps; ``compute()`` returns the report dict.

    Only per-B-scan confusion counts (K*K int64 each), HD95 values and the volume /
    vendor / spacing of each B-scan are kept, so evaluation never holds all predictions.
    ``hd95``: "auto" computes it in mm for B-scans whose spacing is known, "px" in pixels
    for all, "off" never. Spacing must be that of the label maps as passed (rescale it
    after resizing).
    """

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None,
                 ignore_index: Optional[int] = IGNORE_INDEX, hd95: str = "auto"):
        self.K = int(num_classes)
        self.names = class_names_for(self.K, class_names)
        if hd95 not in HD95_MODES:
            raise ValueError("hd95 must be 'auto', 'px' or 'off'")
        self.ignore_index = ignore_index
        self.hd95_mode = hd95
        self._parts: list[BScanMeasures] = []

    def update(self, gt, pred, volumes=None, vendors=None, spacings=None) -> None:
        """Add a batch: gt/pred (H,W) or (N,H,W); volumes/vendors/spacings are one
        value for the batch or one per B-scan (None = unknown)."""
        self._parts.append(measure_bscans(gt, pred, self.K, volumes, vendors, spacings,
                                          self.ignore_index, self.hd95_mode))

    def merge(self, other: "MetricAccumulator") -> "MetricAccumulator":
        """Append everything ``other`` has seen (after what this one has); returns self."""
        if (other.names, other.ignore_index, other.hd95_mode) != (self.names, self.ignore_index, self.hd95_mode):
            raise ValueError("can only merge accumulators with the same classes, ignore_index and hd95 mode")
        self._parts.extend(other._parts)
        return self

    def reset(self) -> None:
        """Forget every batch."""
        self._parts = []

    def measures(self) -> BScanMeasures:
        """The per-B-scan measures of every batch so far, in order."""
        if len(self._parts) > 1:
            self._parts = [BScanMeasures.concat(self._parts, self.K)]
        return BScanMeasures.concat(self._parts, self.K)

    def compute(self, tables: bool = True) -> dict:
        """The report dict (JSON-ready), as :func:`segmentation_report` gives. ``tables=False``
        leaves out the per-B-scan and per-volume tables, which are large for big sets."""
        return build_report(self.measures(), self.names, self.hd95_mode, tables)

    def retouch(self) -> dict:
        """RETOUCH-style volume metrics from what was streamed (see
        :func:`~octseg.metrics.retouch.retouch_volume_metrics`); needs volume ids."""
        return retouch_from_measures(self.measures(), self.names)
