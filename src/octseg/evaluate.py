"""`octseg evaluate`: score a checkpoint on labelled data with honest per-class metrics.

Raw data is scored at each B-scan's native size by default (predictions are resized back
with nearest neighbour), so HD95 and fluid volumes are in the scanner's own millimetres;
the reference masks are never resampled unless ``at_model_size`` asks for it. Data is
streamed in small chunks into a MetricAccumulator, so RAM use does not grow with the set.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from octseg import __version__
from octseg.constants import UNLABELLED
from octseg.records import Spacing
from octseg.errors import ConfigError, DataError

__all__ = ["evaluate", "evaluate_model", "format_evaluation", "write_json"]


@dataclass
class _Item:
    id: str
    volume: str
    vendor: Optional[str]
    spacing: Optional[Spacing]  # of ``image``/``mask`` as they are here
    image: np.ndarray  # uint8 (H, W); (2k+1, H, W) with its neighbours for a 2.5D model
    mask: Optional[np.ndarray]  # None = unlabelled


def _tta_flag(tta) -> bool:
    if tta in (True, "flip"):
        return True
    if tta in (False, None, "none"):
        return False
    raise ConfigError(f"tta must be 'none' or 'flip', not {tta!r}")


def _rescale(sp: Optional[Spacing], src_hw, dst_hw) -> Optional[Spacing]:
    """Spacing of an image resampled from src_hw to dst_hw (same field of view)."""
    if sp is None or tuple(src_hw) == tuple(dst_hw):
        return sp
    return Spacing(sp.row * src_hw[0] / dst_hw[0], sp.col * src_hw[1] / dst_hw[1], sp.slice)


def check_classes(model_classes, data_classes, checkpoint, data) -> None:
    """Strict: same number and names (case-insensitive), so class i means the same fluid."""
    m, d = [str(c) for c in model_classes], [str(c) for c in data_classes]
    if [c.lower() for c in m] != [c.lower() for c in d]:
        raise DataError(data, f"classes {d} of the data do not match classes {m} of checkpoint {checkpoint}; "
                              f"evaluate with a checkpoint trained on this label set (for an image/mask folder, "
                              f"a classes.txt in the data folder sets the data's class names)")


# ------------------------------------------------------------------------------- sources


def _with_context(bscans: list, k: int, where) -> list:
    """A volume's B-scans with each image replaced by its (2k+1, H, W) stack of neighbours (2.5D)."""
    from octseg.data.context import context_rows, stack_context

    if len({b.image.shape for b in bscans}) > 1:
        raise DataError(where, f"volume {bscans[0].volume!r} has B-scans of different sizes; a 2.5D model "
                               f"(context_slices {k}) needs one size per volume")
    stacks = stack_context(np.stack([b.image for b in bscans]),
                           context_rows(None, [b.slice_index for b in bscans], k, n=len(bscans)))
    return [(b, stack) for b, stack in zip(bscans, stacks)]


def _raw_source(data, reader_kwargs, k: int = 0):
    """(classes, item generator, B-scans to read, spacing known?, header info); labelled volumes only.
    ``k``: a 2.5D model's context slices (a volume is then read whole, for the neighbours)."""
    from octseg.data.readers import scan_source

    src = scan_source(data, **reader_kwargs)
    vols = [v for v in src.volumes if v.labelled]
    info = {"data_kind": "raw", "layout": src.layout, "unlabelled_volumes": len(src.volumes) - len(vols)}

    def items() -> Iterator[_Item]:
        for v in vols:
            if k > 0:
                for b, stack in _with_context(list(v.load()), k, v.paths[0] if v.paths else data):
                    yield _Item(b.id, b.volume, b.vendor, b.spacing, stack, b.mask)
                continue
            for b in v.load():
                yield _Item(b.id, b.volume, b.vendor, b.spacing, b.image, b.mask)

    spacing_known = any(v.spacing is not None for v in vols)
    return src.classes, items, sum(v.n_slices for v in vols), spacing_known, info


def _prepared_source(ds, split, part, k: int = 0):
    """As :func:`_raw_source` for a prepared dataset; a 2.5D model's neighbours come from the whole
    dataset (unlabelled B-scans and other parts included), as in training."""
    from octseg.data.context import context_rows, stack_context
    from octseg.data.splits import load_split, split_indices

    if split is not None:
        idx = split_indices(ds, load_split(ds, split))
        if part not in idx:
            raise DataError(ds.path / "splits" / f"{split}.json",
                            f"split {split!r} has no part {part!r}; parts: {sorted(idx)}")
        rows = np.sort(idx[part])
    else:
        rows = np.arange(len(ds))
    n_rows = len(rows)
    rows = [int(r) for r in rows if ds.slices[r].labelled]
    H, W = ds.size
    info = {"data_kind": "prepared", "layout": ds.meta.get("layout"), "prepared_size": [H, W],
            "rows_in_part": n_rows, "unlabelled_rows": n_rows - len(rows)}

    table = context_rows([s.volume for s in ds.slices], [s.slice_index for s in ds.slices], k) if k > 0 else None

    def items() -> Iterator[_Item]:
        for start in range(0, len(rows), 64):  # contiguous-ish reads from the memmaps
            chunk = rows[start:start + 64]
            imgs = np.asarray(ds.images[chunk]) if table is None else stack_context(ds.images, table, chunk)
            masks = np.asarray(ds.masks[chunk])
            for r, img, m in zip(chunk, imgs, masks):
                s = ds.slices[r]
                sp = _rescale(s.spacing, (s.orig_height, s.orig_width), (H, W))
                yield _Item(s.id, s.volume, s.vendor, sp, img, None if (m == UNLABELLED).all() else m)

    spacing_known = any(ds.slices[r].spacing is not None for r in rows)
    return ds.classes, items, len(rows), spacing_known, info


# ------------------------------------------------------------------------------- scoring


def _chunks(items: Iterator[_Item], batch: int, on_skip) -> Iterator[list[_Item]]:
    """Labelled items in runs of one volume and one size, at most ``batch`` long."""
    buf: list[_Item] = []
    for it in items:
        if it.mask is None:
            on_skip()
            continue
        if buf and (it.volume != buf[0].volume or it.image.shape != buf[0].image.shape or len(buf) >= batch):
            yield buf
            buf = []
        buf.append(it)
    if buf:
        yield buf


def evaluate_model(model, meta: dict, data, split: Optional[str] = None, part: str = "test", tta=False,
                   at_model_size: bool = False, batch: int = 8, device="cpu", progress: bool = True,
                   checkpoint=None, min_sizes=None, min_sizes_at=None, **reader_kwargs) -> dict:
    """Score an already loaded model (``meta`` as from :func:`octseg.checkpoint.load_network`,
    or an ensemble's from :func:`octseg.inference.ensemble.load_models`).

    Separate from :func:`evaluate` so that training code and tests can score a network
    without a checkpoint file. ``min_sizes`` (``{class: pixels}``, or ``["IRF=50", ...]``):
    small components are removed from the predictions before scoring, as ``octseg predict`` would;
    in pixels of the scored B-scans, or at ``min_sizes_at`` (H, W; a CV folder's ``at_size``), then
    scaled to each B-scan's size (:func:`octseg.inference.postprocess.scale_min_sizes`).
    """
    from tqdm.auto import tqdm

    from octseg.checkpoint import context_slices
    from octseg.transforms import resize_mask_u8 as resize_mask
    from octseg.data.prepared import PreparedDataset, is_prepared
    from octseg.inference import predict_labels
    from octseg.inference.postprocess import (check_min_sizes, parse_min_sizes, remove_small_components,
                                              scale_min_sizes)
    from octseg.metrics import MetricAccumulator

    data = Path(data)
    tta = _tta_flag(tta)
    batch = max(1, int(batch))
    input_size = tuple(int(s) for s in meta["input_size"])
    k = context_slices(meta)
    prepared = data.is_dir() and is_prepared(data)
    if prepared:
        ds = PreparedDataset(data)
        classes, items, total, spacing_known, info = _prepared_source(ds, split, part, k)
    else:
        if split is not None:
            raise ConfigError(f"--split needs a prepared dataset, but {data} is raw data; run "
                              f"`octseg prepare` and `octseg split` first, or leave out --split to score all of it")
        classes, items, total, spacing_known, info = _raw_source(data, reader_kwargs, k)
    members = meta.get("members")
    named = f"ensemble {', '.join(m['checkpoint'] for m in members)}" if members else checkpoint or "(model)"
    check_classes(meta["classes"], classes, named, data)

    names = tuple(meta["classes"])
    if isinstance(min_sizes, (list, tuple)):
        min_sizes = parse_min_sizes(min_sizes, names)
    else:
        min_sizes = check_min_sizes(min_sizes, names)
    acc = MetricAccumulator(len(names), names, hd95="auto" if spacing_known else "px")
    ids: list[str] = []
    sizes: Counter = Counter()
    skipped = int(info.pop("unlabelled_rows", 0))  # flagged unlabelled in slices.csv: never read

    def skip():
        nonlocal skipped
        skipped += 1
        bar.update(1)

    with tqdm(total=total, desc=f"evaluate {data.name}", unit="B-scan", disable=not progress) as bar:
        for chunk in _chunks(items(), batch, skip):
            images = np.stack([it.image for it in chunk])
            hw = images.shape[-2:]
            if at_model_size:
                out = input_size
                gt = np.stack([resize_mask(it.mask, out) for it in chunk])
            else:
                out = hw
                gt = np.stack([it.mask for it in chunk])
            pred = predict_labels(model, images, meta["normalization"], input_size, batch=batch,
                                  device=device, tta=tta, out_size=out)
            if min_sizes:
                pred = remove_small_components(pred, scale_min_sizes(min_sizes, min_sizes_at, out))
            acc.update(gt, pred, volumes=[it.volume for it in chunk], vendors=[it.vendor for it in chunk],
                       spacings=[_rescale(it.spacing, hw, out) for it in chunk])
            ids += [it.id for it in chunk]
            sizes[f"{out[0]}x{out[1]}"] += len(chunk)
            bar.update(len(chunk))

    if not ids:
        where = f"part {part!r} of split {split!r}" if split is not None else str(data)
        raise DataError(data, f"nothing to score: no labelled B-scans in {where}"
                              + (f" ({skipped} unlabelled skipped)" if skipped else ""))
    report = acc.compute()
    for row in report.get("per_bscan_table") or []:
        row["id"] = ids[row["index"]]
    retouch = acc.retouch() if report.get("n_volumes") else None

    if at_model_size:
        scored_at = "model"
    else:
        scored_at = "prepared" if prepared else "native"
    if members:  # an ensemble: every member's checkpoint
        checkpoint_field = [m["checkpoint"] for m in members]
    else:
        checkpoint_field = None if checkpoint is None else str(Path(checkpoint).resolve())
    header = {
        "checkpoint": checkpoint_field,
        **({"members": members, "cv_folders": meta.get("cv_folders") or []} if members else {}),
        "method": meta.get("method"),
        "weights": meta.get("weights"),
        "classes": list(names),
        "model_input_size": list(input_size),
        "data": str(data.resolve()),
        **info,
        "split": split,
        "part": part if split is not None else None,
        "tta": "flip" if tta else "none",
        "context_slices": k,
        "min_sizes": {names[c]: int(n) for c, n in sorted(min_sizes.items())},
        "min_sizes_at": None if min_sizes_at is None or not min_sizes else [int(v) for v in min_sizes_at],
        "scored_at": scored_at,
        "sizes": dict(sizes),
        "n_bscans": len(ids),
        "n_volumes": int(report.get("n_volumes") or 0),
        "unlabelled_skipped": skipped,
        "spacing_known": bool(spacing_known),
        "hd95_unit": (report.get("hd95") or {}).get("unit"),
        "device": str(device),
        "octseg_version": __version__,
    }
    return {"header": header, **report, "retouch": retouch}


def evaluate(checkpoint, data, split: Optional[str] = None, part: str = "test", tta=False,
             weights: Optional[str] = None, at_model_size: bool = False, batch: int = 8, device="auto",
             progress: bool = True, min_sizes=None, **reader_kwargs) -> dict:
    """Load ``checkpoint`` and score it on ``data`` (prepared dataset or raw folder/file).

    ``checkpoint`` may be a list of checkpoints and/or CV folders: their ensemble is scored
    (:mod:`octseg.inference.ensemble`), with a CV folder's ``min_sizes`` (scaled from its ``at_size``
    to the scored B-scans' size) unless ``min_sizes`` is given.

    Returns a JSON-ready dict: ``header`` (what was scored, how), the keys of
    :meth:`octseg.metrics.MetricAccumulator.compute` (pooled, per_bscan, per_volume, hd95,
    by_vendor, per_volume_table, per_bscan_table with B-scan ids) and ``retouch``
    (3-D Dice, AVD mm^3 and detection AUC per volume and vendor; null without volume ids).
    """
    from octseg.inference.ensemble import load_models, resolve_sources
    from octseg.inference.predictor import resolve_device

    device = resolve_device(device)
    sources = resolve_sources(checkpoint)
    model, meta, _ = load_models(sources.checkpoints, weights, device, sources=sources)
    min_sizes_at = None  # a given min_sizes counts pixels of the scored B-scans
    if min_sizes is None or (isinstance(min_sizes, (list, tuple)) and not min_sizes):
        min_sizes, min_sizes_at = sources.min_sizes(), sources.min_sizes_at()
    reader_kwargs = {k: v for k, v in reader_kwargs.items() if v is not None}
    return evaluate_model(model, meta, data, split=split, part=part, tta=tta, at_model_size=at_model_size,
                          batch=batch, device=device, progress=progress, checkpoint=sources.checkpoints[0],
                          min_sizes=min_sizes, min_sizes_at=min_sizes_at, **reader_kwargs)


# -------------------------------------------------------------------------------- output


def _f(x, width: int, digits: int = 3) -> str:
    return ("-" if x is None else f"{x:.{digits}f}").rjust(width)


def _size_line(h: dict) -> str:
    H, W = h["model_input_size"]
    sizes = ", ".join(f"{s} ({n})" for s, n in sorted(h["sizes"].items()))
    if h["scored_at"] == "model":
        return (f"model input size {H}x{W} (reference masks resized with nearest neighbour; "
                f"spacing rescaled to match)")
    if h["scored_at"] == "prepared":
        return (f"prepared size {sizes} (a prepared dataset stores no original-size masks; evaluate the "
                f"raw data for native-size figures); predicted at {H}x{W}")
    return f"native size of each B-scan: {sizes}; predicted at {H}x{W}, labels resized back (nearest)"


def format_header(result: dict) -> str:
    h = result["header"]
    part = (f"split {h['split']!r}, part {h['part']!r}" if h["split"] is not None else "all labelled B-scans")
    skipped = f"; {h['unlabelled_skipped']} unlabelled B-scans skipped" if h["unlabelled_skipped"] else ""
    if h.get("unlabelled_volumes"):
        skipped += f"; {h['unlabelled_volumes']} unlabelled volumes skipped"
    data = f"{h['data']} ({h['data_kind']}" + (f", {h['layout']} layout)" if h.get("layout") else ")")
    hd = {"mm": "mm (spacing from the data)", "px": "pixels (no spacing known)"}.get(h["hd95_unit"], "-")
    ckpt = h["checkpoint"]
    if isinstance(ckpt, list):
        ckpt = f"ensemble of {len(ckpt)}: " + ", ".join(ckpt)
    post = h.get("min_sizes")
    lines = [
        f"checkpoint : {ckpt}",
        f"model      : method {h['method']}, weights {h['weights']}, tta {h['tta']}, classes {h['classes']}"
        + (f", min sizes {post}" if post else "")
        + (f" (px at {'x'.join(map(str, h['min_sizes_at']))}, scaled to each B-scan)" if post and h.get("min_sizes_at")
           else ""),
        f"data       : {data}",
        f"scored     : {part}: {h['n_bscans']} B-scans in {h['n_volumes']} volumes{skipped}",
        f"size       : {_size_line(h)}",
        f"HD95 unit  : {hd}",
    ]
    return "\n".join(lines)


def format_retouch(ret: dict) -> str:
    """Text table of RETOUCH volume metrics: one block per group (all, then vendors)."""
    names = ret["classes"]
    groups = [("all", ret["overall"])] + [(f"vendor {v}", s) for v, s in (ret.get("by_vendor") or {}).items()]
    lines = []
    for title, s in groups:
        unit = s["auc_score_unit"]
        lines += [f"== RETOUCH volume metrics: {title} ({s['n_volumes']} volumes) ==",
                  f"{'class':<12}| {'Dice':>6}{'n':>5} | {'AVD mm^3':>10}{'n':>5} | {'AUC':>6}{'pos':>5}{'neg':>5}"
                  f"  (AUC score: predicted volume in {unit})"]
        lines.append("-" * 60)
        for c in names:
            lines.append(f"{c:<12}| {_f(s['dice'][c], 6)}{s['dice_counted'][c]:>5} | "
                         f"{_f(s['avd_mm3'][c], 10, 4)}{s['avd_counted'][c]:>5} | "
                         f"{_f(s['auc'][c], 6)}{s['auc_positives'][c]:>5}{s['auc_negatives'][c]:>5}")
        lines.append(f"mean foreground Dice (3-D, per volume): {_f(s['mean_foreground_dice'], 0)}")
        lines.append("")
    return "\n".join(lines).rstrip()


def format_evaluation(result: dict) -> str:
    """Header, the per-class table (one block per vendor) and, where spacing and volumes are
    known, the RETOUCH volume table."""
    from octseg.metrics import format_table

    parts = [format_header(result), "", format_table(result)]
    if result.get("retouch") is not None and result["header"]["spacing_known"]:
        parts += ["", format_retouch(result["retouch"])]
    return "\n".join(parts)


def write_json(result: dict, path, overwrite: bool = False, protect=()) -> Path:
    """Write the report atomically; an existing file is replaced only if octseg wrote it (or ``overwrite``)."""
    from octseg.io.outputs import atomic_write_text, check_output_file

    path = check_output_file(path, overwrite, protect)
    doc = {"written_by": f"octseg {__version__} evaluate", **result}
    return atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
