"""``report.html`` for an ``octseg predict`` output: an index of volumes and a viewer per volume.

What the page is built from (see :mod:`octseg.inference.run` for what predict writes):

* ``fluid.csv``: the volumes, their B-scans (mask names, slice indices, sources) and the fluid
  figures shown in the index (the prediction's own numbers, not recomputed);
* ``confidence.csv`` (predictions since octseg 0.3): the model's confidence per B-scan, the mean
  maximum softmax probability at the model's input size; a volume whose mean is below
  :data:`LOW_CONFIDENCE` is flagged;
* ``masks/``: the label maps (PNG per image, ``.mhd``/``.nii.gz`` per volume, or a PNG folder per
  volume), from which the en-face maps and area curves are computed;
* the input B-scans: passed in memory by ``octseg predict --report``, else read again from the
  ``source`` column of fluid.csv; a source that is gone is named in the page and the masks are
  shown on black.

Images from one volume (by file name) that share a size are shown as one stack; a lone B-scan
gets its fluid height along the B-scan instead of an en-face map.
"""

from __future__ import annotations

import csv
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from octseg.errors import DataError
from octseg.overlay import enface_counts
from octseg.report.enface import area_per_bscan
from octseg.report.html import Raw, esc, fmt_num, jpeg_uri, js_json, page, png_uri, table, u16_b64

#: A volume whose mean per-B-scan confidence (mean max softmax probability) is below this is
#: flagged "low confidence": a well-trained model is > 0.95 on scans like its training data,
#: since most pixels are clear background; lower means large unsure regions (another device or
#: protocol, poor quality, an unsuited model) — check the masks before trusting the volumes.
LOW_CONFIDENCE = 0.90
#: JPEG quality of the embedded B-scans.
JPEG_QUALITY = 85
#: B-scans taller than this are shrunk along the A-scan (area filter) for the page: about the
#: height a screen shows them at, and half the bytes of a 1024-row Cirrus B-scan. Masks, the
#: en-face map and every number stay at the native size.
MAX_JPEG_ROWS = 512
REPORT_NAME = "report.html"
_VOLUME_SOURCE = re.compile(r"^(?P<path>.+)#(?P<k>\d+)$")


@dataclass
class Entry:
    """One viewer: a volume (or a stack of same-size images of one volume) or a lone B-scan."""

    title: str
    volume: str
    kind: str  # "volume" | "stack" | "image"
    names: list
    labels: np.ndarray  # (S, H, W) uint8
    images: list  # (H, W) uint8 or None per B-scan
    spacing: object = None  # octseg.records.Spacing or None
    confidence: list = field(default_factory=list)
    missing: list = field(default_factory=list)  # sources that are gone


@dataclass
class PredictionReport:
    path: Path
    seconds: float
    size_bytes: int
    n_entries: int
    n_bscans: int
    missing_sources: list


def is_prediction(folder: Path) -> bool:
    return (Path(folder) / "fluid.csv").is_file() and (Path(folder) / "masks").is_dir()


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read ({exc})") from None


def _float(s) -> Optional[float]:
    try:
        return float(s) if s not in (None, "") else None
    except ValueError:
        return None


def _read_mask_file(path: Path):
    """A mask file -> (array (S, H, W) or (H, W), spacing (col, row[, slice]) or None)."""
    if path.suffix.lower() == ".png":
        from octseg.io.images import read_image

        return read_image(path), None
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DataError(path, f"cannot read the mask ({str(exc).strip().splitlines()[-1]})") from None
    return sitk.GetArrayFromImage(img).astype(np.uint8), tuple(img.GetSpacing())


def _mask_path(masks: Path, name: str) -> Optional[Path]:
    for ext in (".png", ".mhd", ".nii.gz", ".nii"):
        p = masks / f"{name}{ext}"
        if p.is_file():
            return p
    return None


class _Spacing(NamedTuple):
    """Voxel spacing in mm, as octseg's readers give it: row (axial), col (lateral), slice (between B-scans)."""

    row: float
    col: float
    slice: Optional[float] = None


def _spacing(row, col, sl=None) -> _Spacing:
    return _Spacing(float(row), float(col), float(sl) if sl else None)


def _volume_entry(pred: Path, vol: str, rows: list[dict], classes, images: Optional[dict],
                  spacings: dict) -> Entry:
    masks = pred / "masks"
    names = [r["bscan"] for r in rows]
    src = _VOLUME_SOURCE.match(rows[0]["source"]).group("path") if rows else ""
    spacing = spacings.get(vol)
    f = _mask_path(masks, vol)
    if f is not None:
        labels, sp = _read_mask_file(f)
        if labels.ndim == 2:
            labels = labels[None]
        if spacing is None and sp is not None and len(sp) == 3:
            spacing = _spacing(sp[1], sp[0], sp[2])
    elif (masks / vol).is_dir():
        stack = []
        for n in names:
            p = _mask_path(masks / vol, n)
            if p is None:
                raise DataError(masks / vol / f"{n}.png", "mask of the prediction is missing")
            stack.append(_read_mask_file(p)[0])
        labels = np.stack(stack)
    else:
        raise DataError(masks / f"{vol}.mhd", "mask of the prediction is missing")
    missing, imgs = [], None
    if images is not None and vol in images:
        imgs = list(images[vol])
    elif src and Path(src).is_file():
        from octseg.inference.inputs import read_bscans

        try:
            vs = read_bscans(Path(src), "retouch", classes)
            stack = np.zeros((vs.n_slices, *vs.shape), np.uint8)
            for b in vs.load():
                stack[b.slice_index] = b.image
            imgs = list(stack)
            if spacing is None:
                spacing = vs.spacing
        except DataError as exc:
            missing.append(f"{src} ({exc.problem})")
    else:
        missing.append(f"{src or vol} (the source volume is gone)")
    if imgs is not None and (len(imgs) != len(labels) or imgs[0].shape != labels.shape[1:]):
        missing.append(f"{src} (its B-scans no longer match the masks)")
        imgs = None
    return Entry(title=vol, volume=vol, kind="volume", names=names, labels=labels,
                 images=imgs if imgs is not None else [None] * len(labels), spacing=spacing, missing=missing)


def _image_entries(pred: Path, vol: str, rows: list[dict], classes, images: Optional[dict],
                   spacings: dict) -> list[Entry]:
    masks = pred / "masks"
    order = sorted(range(len(rows)), key=lambda i: (int(rows[i]["slice_index"]) if rows[i]["slice_index"].isdigit()
                                                     else 10 ** 9, i))
    rows = [rows[i] for i in order]
    spacing = spacings.get(vol)
    if spacing is None and rows:
        from octseg.inference.inputs import spacing_table

        try:
            spacing = (spacing_table(Path(rows[0]["source"]).parent).get(vol) or {}).get("spacing")
        except DataError:
            spacing = None
    labels, imgs, missing = [], [], []  # missing: per B-scan, the reason its source is gone (or None)
    for r in rows:
        p = _mask_path(masks, r["bscan"])
        if p is None:
            raise DataError(masks / f"{r['bscan']}.png", "mask of the prediction is missing")
        lab, sp = _read_mask_file(p)
        lab = lab[0] if lab.ndim == 3 else lab
        if spacing is None and sp is not None and len(sp) == 2 and sp != (1.0, 1.0):
            spacing = _spacing(sp[1], sp[0])
        labels.append(lab)
        img, why = None, None
        if images is not None and r["bscan"] in images:
            img = np.asarray(images[r["bscan"]])[0]
        elif Path(r["source"]).is_file():
            from octseg.inference.inputs import read_bscans

            try:
                img = next(iter(read_bscans(Path(r["source"]), "folders", classes).load())).image
            except DataError as exc:
                why = f"{r['source']} ({exc.problem})"
        else:
            why = f"{r['source']} (the source image is gone)"
        if img is not None and img.shape != lab.shape:
            why, img = f"{r['source']} (no longer the size of its mask)", None
        imgs.append(img)
        missing.append(why)
    names = [r["bscan"] for r in rows]
    if len(rows) > 1 and len({lab.shape for lab in labels}) == 1:
        return [Entry(title=vol, volume=vol, kind="stack", names=names, labels=np.stack(labels), images=imgs,
                      spacing=spacing, missing=[m for m in missing if m])]
    return [Entry(title=n if n == vol else f"{vol} / {n}", volume=vol, kind="image", names=[n], labels=lab[None],
                  images=[img], spacing=spacing, missing=[m] if m else [])
            for n, lab, img, m in zip(names, labels, imgs, missing)]


def load_entries(pred: Path, images: Optional[dict] = None, spacings: Optional[dict] = None):
    """(classes, volume rows, entries) of a prediction folder."""
    pred = Path(pred)
    if not is_prediction(pred):
        raise DataError(pred, "is not an octseg predict output (no fluid.csv and masks/)")
    rows = _read_csv(pred / "fluid.csv")
    need = {"level", "volume", "bscan", "slice_index", "class", "pixels", "source"}
    if rows and not need <= set(rows[0]):
        raise DataError(pred / "fluid.csv", f"is not octseg predict's fluid table (columns {sorted(need)} needed)")
    fluid = [r["class"] for r in rows if r["level"] == "volume"]
    classes = ("background", *dict.fromkeys(fluid))
    conf = {}
    if (pred / "confidence.csv").is_file():
        for r in _read_csv(pred / "confidence.csv"):
            conf[(r.get("level"), r.get("volume"), r.get("bscan"))] = _float(r.get("confidence"))
    vol_rows: dict = {}
    bscans: dict = {}
    for r in rows:
        if r["level"] == "volume":
            vol_rows.setdefault(r["volume"], {})[r["class"]] = r
        elif r["level"] == "bscan" and r["class"] == classes[1]:
            bscans.setdefault(r["volume"], []).append(r)
    spacings = dict(spacings or {})
    entries: list[Entry] = []
    for vol in vol_rows:
        rs = bscans.get(vol, [])
        if rs and all(_VOLUME_SOURCE.match(r["source"]) for r in rs):
            new = [_volume_entry(pred, vol, rs, classes, images, spacings)]
        else:
            new = _image_entries(pred, vol, rs, classes, images, spacings)
        for e in new:
            e.confidence = [conf.get(("bscan", vol, n)) for n in e.names]
        entries += new
    return classes, vol_rows, conf, entries


# ------------------------------------------------------------------------------------------ the page


def _vol_cell(r: dict, bscan_rows_area: Optional[float]) -> str:
    mm3 = _float(r.get("volume_mm3"))
    if mm3 is not None:
        return f"{fmt_num(mm3)} mm³ ({fmt_num(mm3 * 1000)} nL)"
    if bscan_rows_area is not None:
        return f"{fmt_num(bscan_rows_area)} mm² (area)"
    return f"{int(r['pixels'])} vx"


def _index(classes, vol_rows: dict, conf: dict, entries: list[Entry], area_mm2: dict) -> str:
    first = {}
    for i, e in enumerate(entries):
        first.setdefault(e.volume, i)
    header = ["volume", "B-scans", *[f"{c}" for c in classes[1:]], "total fluid", "mean confidence", ""]
    rows = []
    for vol, byc in vol_rows.items():
        n = sum(len(e.names) for e in entries if e.volume == vol)
        cells = [_vol_cell(byc[c], area_mm2.get((vol, c))) if c in byc else "" for c in classes[1:]]
        tot = {"pixels": sum(int(byc[c]["pixels"]) for c in byc)}
        mm3s = [_float(byc[c].get("volume_mm3")) for c in byc]
        tot["volume_mm3"] = sum(mm3s) if mm3s and None not in mm3s else None
        areas = [area_mm2.get((vol, c)) for c in byc]
        total = _vol_cell(tot, sum(areas) if areas and None not in areas else None)
        mc = conf.get(("volume", vol, ""))
        if mc is None:
            cs = [c for e in entries if e.volume == vol for c in e.confidence if c is not None]
            mc = float(np.mean(cs)) if cs else None
        flag = Raw('<span class="low">⚠ low confidence</span>') if mc is not None and mc < LOW_CONFIDENCE else ""
        link = Raw(f'<a href="#viewer-{first[vol]}">{esc(vol)}</a>') if vol in first else vol
        rows.append([link, n, *cells, total, "n/a" if mc is None else f"{mc:.3f}", flag])
    return table(header, rows, "index")


def _legend(classes, palette) -> str:
    return "".join(f'<span class="sw" style="background: rgb({r},{g},{b})"></span>{esc(c)}'
                   for c, (r, g, b) in zip(classes[1:], palette[1:]))


def _svg_curves(series: np.ndarray, palette, unit: str, xlabel: str, marker: bool) -> str:
    """(N, C) values -> an inline SVG with one polyline per column (x over 0..1000, y over 0..150)."""
    n = len(series)
    top = float(series.max()) if series.size else 0.0
    parts = ['<svg class="plot" viewBox="-4 -6 1008 172" preserveAspectRatio="none">',
             '<rect x="-4" y="-6" width="1008" height="172" fill="#0e0f12"/>']
    xs = np.linspace(0, 1000, n) if n > 1 else np.array([500.0])
    for c in range(series.shape[1]):
        ys = 150 - (series[:, c] / top * 140 if top > 0 else np.zeros(n))
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
        r, g, b = palette[c + 1]
        parts.append(f'<polyline fill="none" stroke="rgb({r},{g},{b})" stroke-width="1.6" '
                     f'vector-effect="non-scaling-stroke" points="{pts}"/>')
    if marker:
        parts.append('<line class="marker" x1="0" x2="0" y1="-6" y2="166" stroke="#fff" stroke-width="1" '
                     'vector-effect="non-scaling-stroke"/>')
    parts.append("</svg>")
    return (f'<div class="muted">{esc(xlabel)}; max {esc(fmt_num(top))} {esc(unit)}</div>' + "".join(parts))


def _viewer(i: int, e: Entry, classes, palette) -> tuple[str, dict]:
    S, H, W = e.labels.shape
    k = len(classes)
    sp = e.spacing
    axial_um = sp.row * 1000.0 if sp is not None and sp.row else None
    slice_mm = sp.slice if sp is not None and getattr(sp, "slice", None) else None
    counts = enface_counts(e.labels, k)
    areas = area_per_bscan(e.labels, k).astype(np.float64)
    px_mm2 = sp.row * sp.col if sp is not None and sp.row and sp.col else None
    data = {
        "n": S, "h": H, "w": W, "names": list(e.names),
        "images": [jpeg_uri(_display(im), JPEG_QUALITY) if im is not None else None for im in e.images],
        "masks": [png_uri(lab) for lab in e.labels],
        "conf": [None if c is None else round(float(c), 4) for c in e.confidence],
        "slice_mm": slice_mm, "axial_um": axial_um,
        "enface": [u16_b64(counts[c]) for c in range(k - 1)] if S > 1 else [],
    }
    miss = "".join(f'<p class="note">source gone: {esc(m)} — the masks are shown on black</p>' for m in e.missing)
    kind = {"volume": "volume", "stack": "images of one volume", "image": "image"}[e.kind]
    size = f"{S} B-scan(s) of {H}×{W}"
    if sp is not None:
        size += f"; spacing {fmt_num(sp.row)} mm axial × {fmt_num(sp.col)} mm lateral"
        if slice_mm:
            size += f" × {fmt_num(slice_mm)} mm between B-scans"
    slider = (f'<input class="slider" type="range" min="0" max="{S - 1}" value="0" step="1" '
              f'aria-label="B-scan">' if S > 1 else "")
    if S > 1:
        opts = '<option value="all">all fluid</option>' + "".join(
            f'<option value="{c}">{esc(classes[c])}</option>' for c in range(1, k))
        thick_unit = "µm" if axial_um else "px"
        a_unit, a = ("mm²", areas * px_mm2) if px_mm2 else ("px", areas)
        side = (f'<h3>En-face fluid map</h3><div class="muted">fluid thickness ({thick_unit}) per A-scan: '
                f'B-scans top to bottom, A-scans left to right; click to jump to a B-scan</div>'
                f'<div class="controls"><select class="enface-class" aria-label="class">{opts}</select>'
                f'<span>0<span class="ramp"></span><span class="enface-max"></span></span></div>'
                f'<div class="enface-wrap" style="aspect-ratio: {_aspect(S, W, sp)}"><canvas class="enface">'
                f'</canvas><div class="marker"></div></div><div class="enface-info muted">&nbsp;</div>'
                f'<h3>Fluid area per B-scan</h3>'
                + _svg_curves(a, palette, a_unit, "B-scan index →, click to jump", marker=True))
    else:
        hu, h = ("µm", counts[:, 0, :].T * axial_um) if axial_um else ("px", counts[:, 0, :].T.astype(float))
        side = ('<h3>Fluid height along the B-scan</h3>'
                + _svg_curves(h, palette, hu, "A-scan (column) →", marker=False))
    html = (f'<section class="viewer" id="viewer-{i}" data-entry="{i}" tabindex="0">'
            f'<h2>{esc(e.title)} <span class="muted">({esc(kind)})</span></h2>'
            f'<div class="muted">{esc(size)}</div>{miss}<div class="row"><div class="main">'
            f'<div class="controls">{slider}</div>'
            f'<div class="controls"><span class="status"></span><span class="bname muted"></span></div>'
            f'<canvas class="bscan" width="{W}" height="{H}"></canvas>'
            f'<div class="controls"><label><input class="overlay" type="checkbox" checked> overlay</label>'
            f'<label>opacity <input class="opacity" type="range" min="0" max="1" step="0.05" value="0.45"></label>'
            f'<span class="legend">{_legend(classes, palette)}</span></div>'
            f'<div class="muted">{"← → (or the slider) step through the B-scans" if S > 1 else ""}</div>'
            f'</div><div class="side">{side}</div></div></section>')
    return html, data


def _display(image: np.ndarray) -> np.ndarray:
    """The B-scan as embedded: native, or shrunk to :data:`MAX_JPEG_ROWS` rows (the page stretches it
    back over the native-size mask)."""
    if image.shape[0] <= MAX_JPEG_ROWS:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((image.shape[1], MAX_JPEG_ROWS), Image.BOX))


def _aspect(S: int, W: int, sp) -> str:
    """CSS aspect-ratio of the en-face map: physical where the spacing is known, else 2.5:1 at most."""
    if sp is not None and getattr(sp, "slice", None) and sp.col:
        ratio = (W * sp.col) / (S * sp.slice)
    else:
        ratio = max(1.0, min(2.5, W / max(S, 1)))
    return f"{max(0.5, min(8.0, ratio)):.3f}"


def build_prediction_html(pred, images: Optional[dict] = None, spacings: Optional[dict] = None):
    """(HTML text, entries) of a prediction folder's report."""
    from octseg.overlay import class_colours
    from octseg.report.viewer import VIEWER_CSS, VIEWER_JS

    pred = Path(pred)
    classes, vol_rows, conf, entries = load_entries(pred, images, spacings)
    palette = class_colours(max(len(classes), 2)).tolist()
    area_mm2: dict = {}
    for r in _read_csv(pred / "fluid.csv") if entries else []:
        if r["level"] == "bscan":
            a = _float(r.get("area_mm2"))
            key = (r["volume"], r["class"])
            area_mm2[key] = None if a is None or (key in area_mm2 and area_mm2[key] is None) else \
                area_mm2.get(key, 0.0) + a
    viewers, data = [], []
    for i, e in enumerate(entries):
        h, d = _viewer(i, e, classes, palette)
        viewers.append(h)
        data.append(d)
    missing = [m for e in entries for m in e.missing]
    n_b = sum(len(e.names) for e in entries)
    notes = ""
    if missing:
        notes = (f'<p class="note">{len(missing)} source B-scan(s)/volume(s) could not be read, so their masks are '
                 f'shown without the scan: {esc(", ".join(missing[:5]))}{" …" if len(missing) > 5 else ""}</p>')
    body = (f"<h2>Volumes</h2>{_index(classes, vol_rows, conf, entries, area_mm2)}"
            f'<p class="muted">Fluid from fluid.csv: mm³ (1 mm³ = 1 µL = 1000 nL) where the voxel spacing is known, '
            f'mm² of B-scan area where only the pixel spacing is, else voxels (vx). Confidence: the mean over the '
            f'B-scans of the mean maximum softmax probability at the model\'s input size; '
            f'below {LOW_CONFIDENCE:.2f} is flagged as low.</p>{notes}'
            + "".join(viewers))
    script = f"const OCTSEG = {js_json({'palette': palette, 'classes': list(classes), 'entries': data})};\n" \
             + VIEWER_JS
    sub = f"{esc(pred.name)}: {n_b} B-scan(s) in {len(vol_rows)} volume(s); classes {esc(', '.join(classes[1:]))}"
    return page(f"octseg prediction report: {pred.name}", body, css=VIEWER_CSS, script=script,
                subtitle=sub), entries


def write_prediction_report(pred, folder=None, images: Optional[dict] = None,
                            spacings: Optional[dict] = None) -> PredictionReport:
    """Write ``PRED/report.html``. ``folder``: the OutputFolder of a running predict (``--report``);
    without it the finished prediction folder is claimed for the write (see :func:`claim_for_report`)."""
    from octseg.io.outputs import atomic_write_text

    pred = Path(pred)
    t0 = time.perf_counter()
    if folder is None:
        from octseg.report.claim import claim_for_report

        with claim_for_report(pred, "predict") as f:
            return write_prediction_report(pred, f, images, spacings)
    text, entries = build_prediction_html(pred, images, spacings)
    path = atomic_write_text(folder.file(REPORT_NAME), text)
    missing = [m for e in entries for m in e.missing]
    for m in missing:
        print(f"warning: report: source gone: {m}", file=sys.stderr)
    return PredictionReport(path=path, seconds=time.perf_counter() - t0, size_bytes=path.stat().st_size,
                            n_entries=len(entries), n_bscans=sum(len(e.names) for e in entries),
                            missing_sources=missing)
