"""Self-contained HTML reports (``octseg report``): one file that works offline from disk.

* a prediction folder (``octseg predict`` OUT): an index of volumes with fluid and confidence and
  a viewer per volume (B-scans with overlay, en-face fluid map, fluid area per B-scan) —
  :mod:`octseg.report.prediction`;
* a training run folder: the recipe, learning curves and validation tables — :mod:`octseg.report.other`;
* a benchmark JSON (``benchmarks/results/*.json``): its tables and figure — :mod:`octseg.report.other`.
"""

from __future__ import annotations

from pathlib import Path

from octseg.errors import DataError


def report_kind(path) -> str:
    """"prediction", "run" or "benchmark", or a DataError saying what ``path`` is not."""
    from octseg.report.prediction import is_prediction

    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "benchmark"
        raise DataError(path, "not a prediction folder, a training run folder or a benchmark JSON file")
    if is_prediction(path):
        return "prediction"
    if (path / "config.yaml").is_file() and ((path / "metrics.json").is_file() or (path / "checkpoints").is_dir()):
        return "run"
    raise DataError(path, "is not an octseg predict output (fluid.csv + masks/), a training run folder "
                          "(config.yaml + metrics.json or checkpoints/) or a benchmark JSON file")


def write_report(path, out=None, overwrite: bool = False):
    """Write the report of ``path`` (see the module docstring); returns an object with ``.path``."""
    kind = report_kind(path)
    if kind == "prediction":
        if out is not None:
            raise DataError(out, "a prediction's report is always PRED_DIR/report.html; drop --out")
        from octseg.report.prediction import write_prediction_report

        return write_prediction_report(path)
    from octseg.report.other import write_benchmark_report, write_run_report

    if kind == "run":
        if out is not None:
            raise DataError(out, "a run's report is always RUN_DIR/report.html; drop --out")
        return write_run_report(path)
    return write_benchmark_report(path, out=out, overwrite=overwrite)


__all__ = ["report_kind", "write_report"]
