"""Writing a synthetic dataset to disk: RETOUCH-layout MHD volumes or PNG folders + volumes.csv.

Why: ``octseg synth``, the demo, tests and benchmarks need the same files a real dataset
would give the readers. The output folder is claimed through
:class:`octseg.io.outputs.OutputFolder` and every file is recorded with ``folder.file(...)``
before it is written, so a rerun or ``--overwrite`` only ever replaces octseg's own files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from octseg.constants import RETOUCH_CLASSES, VENDORS
from octseg.data.synthetic.phantom import SyntheticVolume, generate_volume
from octseg.data.synthetic.preview import render_preview
from octseg.data.synthetic.vendors import vendor_folder, vendor_key
from octseg.records import Spacing
from octseg.errors import ConfigError, DataError
from octseg.io.images import write_png
from octseg.io.tables import write_volumes_csv
from octseg.io.volumes import write_volume

__all__ = ["write_synthetic_dataset"]


def _write_mhd(folder, rel: str, array: np.ndarray, spacing: Spacing) -> None:
    """``rel`` (.mhd) and its uncompressed .raw, as the RETOUCH download has them; both recorded
    as octseg's output before they are written."""
    folder.file(str(Path(rel).with_suffix(".raw")))
    write_volume(folder.file(rel), array, spacing, compress=False)


def _fluid_slice(vol: SyntheticVolume) -> int:
    """Index of the B-scan with the most fluid (the one the preview shows)."""
    area = (vol.labels > 0).sum(axis=(1, 2))
    return int(area.argmax())


def write_synthetic_dataset(out, volumes: int, *, vendors: Sequence[str] = VENDORS, fmt: str = "mhd",
                            slices: Optional[int] = None, scale: float = 1.0, seed: int,
                            fluid_free_fraction: float = 0.2, preview: Optional[Path] = None,
                            real_reference: Optional[Path] = None, progress: bool = True,
                            overwrite: bool = False) -> dict:
    """Write a synthetic dataset in the RETOUCH layout (``mhd``) or as PNG folders (``png``).

    Volume i uses vendor ``vendors[i % len(vendors)]`` and its own generator seeded by
    (seed, i), so a volume does not depend on how many are written. ``out`` must be new, empty
    or an earlier synth output (replaced whole with ``overwrite``): synthetic volumes never mix
    with a user's data or with another run's.
    """
    from octseg.io.outputs import OutputFolder, check_output_file

    keys = [vendor_key(v) for v in vendors]
    if not keys:
        raise ConfigError("no vendors given; valid vendors: " + ", ".join(VENDORS))
    if fmt not in ("mhd", "png"):
        raise ConfigError(f"unknown synthetic format {fmt!r}; use 'mhd' or 'png'")
    if int(volumes) < 1:
        raise ConfigError(f"volumes must be at least 1, got {volumes}")
    if not 0.0 <= float(fluid_free_fraction) <= 1.0:
        raise ConfigError(f"fluid-free fraction must be in [0, 1], got {fluid_free_fraction}")
    if int(seed) < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    if real_reference is not None and not Path(real_reference).is_file():
        raise DataError(real_reference, "real reference image not found")
    out = Path(out)
    # a preview inside OUT is one of the synth run's files; one elsewhere follows the single-file rule
    preview_rel = None
    if preview is not None:
        if out.resolve() in Path(preview).resolve().parents:
            preview_rel = Path(preview).resolve().relative_to(out.resolve())
        else:
            check_output_file(preview, overwrite)
    with OutputFolder(out, "synth", overwrite=overwrite) as folder:
        return _write_synthetic(folder, volumes, keys=keys, fmt=fmt, slices=slices, scale=scale, seed=seed,
                                fluid_free_fraction=fluid_free_fraction, preview=preview, preview_rel=preview_rel,
                                real_reference=real_reference, progress=progress)


def _write_synthetic(folder, volumes: int, *, keys, fmt, slices, scale, seed, fluid_free_fraction, preview,
                     preview_rel, real_reference, progress) -> dict:
    """Generate the volumes into the claimed ``folder``; the summary dict of write_synthetic_dataset."""
    from tqdm import tqdm

    out = folder.path
    # Fluid-free volumes: a golden-ratio sequence hits the fraction closely for any count,
    # and volume i's status does not depend on the count.
    phase = np.random.default_rng([int(seed), 2 ** 32 - 1]).random()
    rows, samples, counts = [], {}, {k: 0 for k in dict.fromkeys(keys)}
    class_vols = {c: 0 for c in RETOUCH_CLASSES[1:]}
    n_bscans = 0
    for i in tqdm(range(int(volumes)), disable=not progress, desc="synth", unit="vol"):
        key = keys[i % len(keys)]
        fluid = ((phase + (i + 1) * 0.6180339887498949) % 1.0) >= fluid_free_fraction
        vol = generate_volume(key, np.random.default_rng([int(seed), i]), slices=slices,
                              scale=scale, with_fluid=bool(fluid))
        name = f"TRAIN{i + 1:03d}"
        if fmt == "mhd":
            d = f"{vendor_folder(key)}/{name}"
            oct_arr = vol.image.astype(np.uint16) * 257 if key == "spectralis" else vol.image
            _write_mhd(folder, f"{d}/oct.mhd", oct_arr, vol.spacing)
            _write_mhd(folder, f"{d}/reference.mhd", vol.labels, vol.spacing)
        else:
            for s in range(vol.image.shape[0]):
                write_png(folder.file(f"images/{name}_{s:03d}.png"), vol.image[s], compress_level=6)
                write_png(folder.file(f"masks/{name}_{s:03d}.png"), vol.labels[s], compress_level=6)
        present = np.bincount(vol.labels.ravel(), minlength=4)[1:] > 0
        for c, p in zip(class_vols, present):
            class_vols[c] += int(p)
        rows.append([name, key, repr(vol.spacing.row), repr(vol.spacing.col), repr(vol.spacing.slice),
                     int(present.any())])
        counts[key] += 1
        n_bscans += vol.image.shape[0]
        if preview is not None and key not in samples and present.any():
            s = _fluid_slice(vol)
            samples[key] = (vol.image[s].copy(), vol.labels[s].copy())
    if fmt == "png":
        write_volumes_csv(folder.file("volumes.csv"), rows, extra_columns=["has_fluid"])
    n_fluid = sum(r[-1] for r in rows)
    text = (f"wrote {len(rows)} synthetic volumes ({n_bscans} B-scans; "
            + ", ".join(f"{k} {n}" for k, n in counts.items())
            + f") as {fmt} to {out}: {n_fluid} with fluid ("
            + ", ".join(f"{c} in {n}" for c, n in class_vols.items())
            + f"), {len(rows) - n_fluid} fluid-free")
    if preview is not None:
        for j, key in enumerate(dict.fromkeys(keys)):
            if key not in samples:  # no fluid volume of this vendor in the set: draw one
                vol = generate_volume(key, np.random.default_rng([int(seed), 2 ** 32 - 2, j]),
                                      slices=min(slices or 9, 9), scale=scale)
                s = _fluid_slice(vol)
                samples[key] = (vol.image[s], vol.labels[s])
        target = folder.file(preview_rel) if preview_rel is not None else preview
        render_preview([(k, *samples[k]) for k in dict.fromkeys(keys)], target, real_reference)
        text += f"\npreview -> {preview}"
    return {"text": text, "out": str(out), "format": fmt, "volumes": len(rows), "bscans": n_bscans,
            "fluid_volumes": n_fluid, "fluid_free_volumes": len(rows) - n_fluid,
            "vendors": counts, "class_volumes": class_vols,
            "preview": None if preview is None else str(preview)}
