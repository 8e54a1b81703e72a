"""Reports of a training run folder and of a benchmark JSON file.

Both render JSON generically: a dict of numbers is a two-column table, a dict of such dicts one
table (rows = outer keys, columns = inner keys), deeper dicts a heading per key; long lists are
cut with a note. A run's report adds its recipe (config.yaml), learning curves and a gallery of its
worst and best validation B-scans (:mod:`octseg.report.gallery`; a one-line note instead when the
run's dataset is gone); a benchmark's the PNG figure of the same name when there is one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from octseg.errors import DataError
from octseg.report.html import esc, fmt_num, page, png_file_uri, table

REPORT_NAME = "report.html"
MAX_ROWS = 200
MAX_DEPTH = 6


@dataclass
class SimpleReport:
    path: Path
    seconds: float
    size_bytes: int


def _scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _cell(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if v is not None else ""
    if isinstance(v, float):
        return fmt_num(v, 4)
    if isinstance(v, list) and all(_scalar(x) for x in v) and len(v) <= 12:
        return ", ".join(_cell(x) for x in v)
    if isinstance(v, (list, dict)):
        return f"({len(v)} entries)"
    return str(v)


def render_tree(obj, depth: int = 0, heading: int = 3) -> str:
    """Nested JSON as HTML tables (every key and value escaped)."""
    h = f"h{min(6, heading)}"
    if _scalar(obj):
        return f"<p>{esc(_cell(obj))}</p>"
    if depth >= MAX_DEPTH:
        return f'<p class="muted">{esc(_cell(obj))}</p>'
    if isinstance(obj, list):
        if all(_scalar(x) for x in obj):
            shown = obj[:MAX_ROWS]
            more = f" … ({len(obj) - MAX_ROWS} more)" if len(obj) > MAX_ROWS else ""
            return f"<p>{esc(', '.join(_cell(x) for x in shown))}{esc(more)}</p>"
        if all(isinstance(x, dict) and all(_scalar(v) or isinstance(v, list) for v in x.values()) for x in obj):
            cols = list(dict.fromkeys(k for x in obj for k in x))
            rows = [[_cell(x.get(c)) for c in cols] for x in obj[:MAX_ROWS]]
            note = (f'<p class="muted">first {MAX_ROWS} of {len(obj)} rows</p>' if len(obj) > MAX_ROWS else "")
            return table(cols, rows) + note
        return "".join(f"<{h}>[{i}]</{h}>" + render_tree(x, depth + 1, heading + 1) for i, x in enumerate(obj[:20]))
    # a dict
    scalars = {k: v for k, v in obj.items() if _scalar(v) or (isinstance(v, list) and all(_scalar(x) for x in v)
                                                               and len(v) <= 12)}
    nested = {k: v for k, v in obj.items() if k not in scalars}
    out = []
    if scalars:
        out.append(table(["", "value"], [[k, _cell(v)] for k, v in scalars.items()]))
    flat = {k: v for k, v in nested.items() if isinstance(v, dict) and v and all(_scalar(x) for x in v.values())}
    if len(flat) >= 2:  # a dict of flat dicts: one table
        cols = list(dict.fromkeys(c for v in flat.values() for c in v))
        out.append(table(["", *cols], [[k, *[_cell(v.get(c)) for c in cols]] for k, v in flat.items()]))
        nested = {k: v for k, v in nested.items() if k not in flat}
    for k, v in nested.items():
        out.append(f"<{h}>{esc(k)}</{h}>" + render_tree(v, depth + 1, heading + 1))
    return "".join(out)


def _load_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read as JSON ({exc})") from None


def build_run_html(run_dir, gallery: bool = True) -> str:
    """The run folder's page; ``gallery=False`` leaves out the validation gallery (which rescores the
    best checkpoint on the run's validation B-scans)."""
    from octseg.report.gallery import GALLERY_CSS, run_gallery_section

    run_dir = Path(run_dir)
    parts = []
    metrics = _load_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else None
    if metrics is None:
        parts.append('<p class="note">no metrics.json: the run has not finished (or was stopped)</p>')
    else:
        top = {k: v for k, v in metrics.items() if k != "val"}
        parts.append("<h2>Run</h2>" + render_tree(top))
        curves = run_dir / "learning_curves.png"
        if curves.is_file():
            parts.append('<h2>Learning curves</h2><img class="figure" alt="learning curves" '
                         f'src="{png_file_uri(curves)}">')
        val = metrics.get("val")
        if isinstance(val, dict):
            parts.append("<h2>Validation</h2>")
            for net in sorted(val, key=lambda n: (n != "teacher", n)):
                parts.append(f"<h3>{esc(net)}</h3>" + render_tree(val[net], heading=4))
        elif val is not None:
            parts.append("<h2>Validation</h2>" + render_tree(val))
    if gallery:
        parts.append(run_gallery_section(run_dir))
    if (run_dir / "config.yaml").is_file():
        parts.append("<h2>Recipe (config.yaml)</h2><pre>" + esc((run_dir / "config.yaml").read_text()) + "</pre>")
    ck_dir = run_dir / "checkpoints"
    ckpts = sorted(p.name for p in ck_dir.glob("*.ckpt")) if ck_dir.is_dir() else []
    parts.append(f'<p class="muted">checkpoints: {esc(", ".join(ckpts) or "none")}</p>')
    return page(f"octseg training run: {run_dir.name}", "".join(parts), css=GALLERY_CSS if gallery else "",
                subtitle=esc(str(run_dir)))


def write_run_report(run_dir) -> SimpleReport:
    from octseg.io.outputs import atomic_write_text
    from octseg.report.claim import claim_for_report

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    with claim_for_report(run_dir, "train") as folder:
        path = atomic_write_text(folder.file(REPORT_NAME), build_run_html(run_dir))
    return SimpleReport(path, time.perf_counter() - t0, path.stat().st_size)


def build_benchmark_html(path) -> str:
    path = Path(path)
    doc = _load_json(path)
    if not isinstance(doc, dict):
        raise DataError(path, "is not a benchmark result (a JSON object)")
    name = str(doc.get("benchmark") or path.stem)
    parts = []
    fig = path.with_suffix(".png")
    if fig.is_file():
        parts.append(f'<img class="figure" alt="{esc(fig.name)}" src="{png_file_uri(fig)}">')
    figures = doc.get("figures", {k: v for k, v in doc.items() if k not in ("benchmark", "machine")})
    parts.append("<h2>Figures</h2>" + render_tree(figures))
    if isinstance(doc.get("machine"), dict):
        parts.append("<h2>Machine</h2>" + render_tree(doc["machine"]))
    return page(f"octseg benchmark: {name}", "".join(parts), subtitle=esc(str(path)))


def write_benchmark_report(path, out: Optional[Path] = None, overwrite: bool = False) -> SimpleReport:
    """``NAME.html`` beside the JSON (or ``out``); replaces only a page octseg wrote, unless ``overwrite``."""
    from octseg.io.outputs import atomic_write_text, check_output_file

    t0 = time.perf_counter()
    path = Path(path)
    out = Path(out) if out is not None else path.with_suffix(".html")
    check_output_file(out, overwrite, protect=[path])
    text = build_benchmark_html(path)
    written = atomic_write_text(out, text)
    return SimpleReport(written, time.perf_counter() - t0, written.stat().st_size)
