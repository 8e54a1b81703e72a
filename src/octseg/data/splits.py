"""Splits of a prepared dataset into labelled / unlabelled / val / test B-scans.

By volume (eye) by default: neighbouring B-scans of one eye are nearly identical, so a
per-B-scan split leaks and inflates validation scores. Deterministic for a seed (byte-identical
files), stratified by vendor, written to ``PREPARED/splits/NAME.json``.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from octseg import __version__
from octseg.data.prepared import PreparedDataset
from octseg.errors import ConfigError, DataError
from octseg.io.outputs import atomic_write_text

PARTS = ("labelled", "unlabelled", "val", "test")
SLICE_SPLIT_WARNING = (
    "split by B-scan: B-scans of one eye end up on both sides (training and val/test), "
    "so validation scores are optimistic (leak); use by='volume' for honest numbers"
)


def _open(prepared) -> PreparedDataset:
    return prepared if isinstance(prepared, PreparedDataset) else PreparedDataset(prepared)


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def _allocate(total: int, sizes: dict, room: dict) -> dict:
    """Spread ``total`` over groups in proportion to ``sizes`` (largest remainder), within ``room``."""
    n = sum(sizes.values())
    if total <= 0 or n == 0:
        return {g: 0 for g in sizes}
    exact = {g: total * sizes[g] / n for g in sizes}
    out = {g: min(int(math.floor(exact[g])), room[g]) for g in sizes}
    while sum(out.values()) < total:
        cands = [g for g in sizes if out[g] < room[g]]
        if not cands:
            break
        g = max(cands, key=lambda g: (exact[g] - out[g], sizes[g], -sorted(sizes, key=str).index(g)))
        out[g] += 1
    return out


def _interleave(groups: dict, rng) -> list:
    """One order over all groups' (already shuffled) items that keeps vendor proportions in
    every prefix: item i of a group of n gets key (i + 0.5) / n, ties broken at random."""
    keyed = []
    for g in sorted(groups, key=str):
        items = groups[g]
        for i, v in enumerate(items):
            keyed.append(((i + 0.5) / len(items), v))
    ties = rng.random(len(keyed))
    order = sorted(range(len(keyed)), key=lambda k: (keyed[k][0], ties[k]))
    return [keyed[k][1] for k in order]


def _check_args(labelled, labelled_count, val, test, by, name):
    if by not in ("volume", "slice"):
        raise ConfigError(f"by must be 'volume' or 'slice', not {by!r}")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"split name {name!r} must be letters, digits, '_', '-' or '.'")
    for k, v in (("val", val), ("test", test)):
        if not isinstance(v, numbers.Real) or not (0.0 <= v < 1.0):
            raise ConfigError(f"{k} fraction must be in [0, 1), not {v!r}")
    if val + test >= 1.0:
        raise ConfigError(f"val + test = {val + test:g} leaves nothing for training; it must be < 1")
    if labelled is not None and labelled_count is not None:
        raise ConfigError("give either labelled (a fraction) or labelled_count, not both")
    if labelled is not None and not (0.0 < labelled <= 1.0):
        raise ConfigError(f"labelled fraction must be in (0, 1], not {labelled!r}")
    if labelled_count is not None and (int(labelled_count) != labelled_count or labelled_count < 1):
        raise ConfigError(f"labelled_count must be a positive integer, not {labelled_count!r}")


def split_name_for(by: str, labelled: Optional[float], labelled_count: Optional[int], val: float, test: float,
                   seed: int) -> str:
    """The name a split gets from its parameters (``volume-l0.16-v0.04-t0-s0``), so that a split
    with other fractions or another seed never hides behind a reused name."""
    lab = f"n{labelled_count}" if labelled_count is not None else ("all" if labelled is None else f"l{labelled:g}")
    return f"{by}-{lab}-v{val:g}-t{test:g}-s{seed}"


def make_split(prepared, labelled: Optional[float] = None, labelled_count: Optional[int] = None,
               val: float = 0.1, test: float = 0.0, seed: int = 0, by: str = "volume",
               name: Optional[str] = None) -> Path:
    """Write ``splits/NAME.json`` and return its path (NAME: :func:`split_name_for` when not given).

    Volumes with labels are drawn (per vendor, in proportion) into val and test (at least one
    each when asked for); the rest train. Of the training volumes, ``labelled`` (fraction of
    volumes, at least one) or ``labelled_count`` (B-scans; the last volume drawn is cut) give
    the "labelled" part; every other training B-scan is "unlabelled". val/test hold only
    labelled B-scans. Neither labelled nor labelled_count means all training labels are used.
    """
    if name is None:
        name = split_name_for(by, labelled, labelled_count, val, test, seed)
    _check_args(labelled, labelled_count, val, test, by, name)
    ds = _open(prepared)
    if len(ds) == 0:
        raise DataError(ds.path, "dataset has no B-scans")
    rng = np.random.default_rng(seed)
    if by == "volume":
        parts, volumes = _split_by_volume(ds, labelled, labelled_count, val, test, rng)
        extra = {}
    else:
        parts, volumes = _split_by_slice(ds, labelled, labelled_count, val, test, rng)
        warnings.warn(SLICE_SPLIT_WARNING, UserWarning, stacklevel=2)
        extra = {"warning": SLICE_SPLIT_WARNING}
    doc = {
        "name": name,
        "seed": int(seed),
        "by": by,
        "fractions": {"labelled": labelled, "labelled_count": labelled_count, "val": val, "test": test},
        "parts": parts,
        "volumes": volumes,
        "counts": {k: len(v) for k, v in parts.items()},
        "octseg_version": __version__,
        **extra,
    }
    out_dir = ds.path / "splits"
    path = out_dir / f"{name}.json"
    return atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _split_by_volume(ds: PreparedDataset, labelled, labelled_count, val, test, rng):
    rows_of: dict[str, list[int]] = defaultdict(list)
    vendor_of: dict[str, Optional[str]] = {}
    for i, s in enumerate(ds.slices):
        rows_of[s.volume].append(i)
        vendor_of.setdefault(s.volume, s.vendor)
    lab = ds.labelled
    n_lab = {v: int(lab[r].sum()) for v, r in rows_of.items()}
    # Only volumes with labels can be scored, so only they go to val/test.
    cands = sorted(v for v in rows_of if n_lab[v] > 0)
    if not cands:
        raise DataError(ds.path, "no labelled B-scans: a split needs labels for training and validation")
    want = {"val": max(1, _round(val * len(cands))) if val > 0 else 0,
            "test": max(1, _round(test * len(cands))) if test > 0 else 0}
    if want["val"] + want["test"] > len(cands) - 1:
        raise DataError(ds.path, f"too few labelled volumes ({len(cands)}) for val={val:g}, test={test:g}: "
                                 f"need {want['val']} val + {want['test']} test + at least 1 training volume")

    groups: dict[Optional[str], list[str]] = defaultdict(list)
    for v in cands:
        groups[vendor_of[v] or ""].append(v)
    shuffled = {g: [vs[k] for k in rng.permutation(len(vs))] for g, vs in sorted(groups.items())}
    sizes = {g: len(vs) for g, vs in shuffled.items()}
    room = dict(sizes)
    held: dict[str, list[str]] = {"val": [], "test": []}
    pos = {g: 0 for g in shuffled}
    for part in ("val", "test"):
        alloc = _allocate(want[part], sizes, room)
        for g, k in alloc.items():
            held[part] += shuffled[g][pos[g]:pos[g] + k]
            pos[g] += k
            room[g] -= k
    train_lab = {g: vs[pos[g]:] for g, vs in shuffled.items() if vs[pos[g]:]}
    order = _interleave(train_lab, rng)  # labelled-volume draw order, vendor-balanced

    return _volume_parts(ds, held, order, labelled, labelled_count, n_lab, rows_of)


def _volume_parts(ds: PreparedDataset, held: dict, order: list, labelled, labelled_count, n_lab: dict, rows_of: dict,
                  excluded=frozenset()):
    """Parts and volumes of a by-volume split once val/test volumes are ``held``: the first of the
    training volumes in draw ``order`` are labelled, every other training B-scan unlabelled;
    ``excluded`` volumes are in no part (cross-validation's held-back test volumes)."""
    chosen: list[str] = []
    cut: dict[str, int] = {}
    if labelled_count is not None:
        total = sum(n_lab[v] for v in order)
        if labelled_count > total:
            raise DataError(ds.path, f"labelled_count={labelled_count} but the training volumes have only "
                                     f"{total} labelled B-scans")
        got = 0
        for v in order:
            chosen.append(v)
            got += n_lab[v]
            if got >= labelled_count:
                cut[v] = n_lab[v] - (got - labelled_count)
                break
    else:
        frac = 1.0 if labelled is None else labelled
        chosen = order[:min(len(order), max(1, _round(frac * len(order))))]

    held_set = set(held["val"]) | set(held["test"])
    chosen_set = set(chosen)
    parts = {p: [] for p in ("labelled", "unlabelled", "val", "test")}
    taken: dict[str, int] = defaultdict(int)
    for i, s in enumerate(ds.slices):  # dataset order: deterministic and readable
        v = s.volume
        if v in excluded:
            continue
        if v in held_set:
            if s.labelled:
                parts["val" if v in held["val"] else "test"].append(s.id)
        elif v in chosen_set and s.labelled and taken[v] < cut.get(v, n_lab[v]):
            parts["labelled"].append(s.id)
            taken[v] += 1
        else:
            parts["unlabelled"].append(s.id)
    train = sorted(v for v in rows_of if v not in held_set and v not in excluded)
    unl_vols = sorted({ds.slices[i].volume for i in ds.indices(parts["unlabelled"])})
    volumes = {"labelled": sorted(chosen), "unlabelled": unl_vols, "val": sorted(held["val"]),
               "test": sorted(held["test"]), "train": train}
    return parts, volumes


def _split_by_slice(ds: PreparedDataset, labelled, labelled_count, val, test, rng):
    """The original project's split: shuffle labelled B-scans, cut val/test/labelled off the front."""
    lab_rows = np.flatnonzero(ds.labelled)
    if len(lab_rows) < 2:
        raise DataError(ds.path, f"{len(lab_rows)} labelled B-scans: too few to split")
    perm = lab_rows[rng.permutation(len(lab_rows))]
    n_val = max(1, _round(val * len(perm))) if val > 0 else 0
    n_test = max(1, _round(test * len(perm))) if test > 0 else 0
    if n_val + n_test > len(perm) - 1:
        raise DataError(ds.path, f"too few labelled B-scans ({len(perm)}) for val={val:g}, test={test:g}")
    val_rows, test_rows, train_rows = perm[:n_val], perm[n_val:n_val + n_test], perm[n_val + n_test:]
    if labelled_count is not None:
        if labelled_count > len(train_rows):
            raise DataError(ds.path, f"labelled_count={labelled_count} but only {len(train_rows)} labelled "
                                     f"training B-scans")
        n = int(labelled_count)
    else:
        n = min(len(train_rows), max(1, _round((1.0 if labelled is None else labelled) * len(train_rows))))
    lab_set = set(train_rows[:n].tolist())
    held = set(val_rows.tolist()) | set(test_rows.tolist())
    ids = [s.id for s in ds.slices]
    parts = {
        "labelled": [ids[i] for i in sorted(lab_set)],
        "unlabelled": [ids[i] for i in range(len(ids)) if i not in lab_set and i not in held],
        "val": [ids[i] for i in sorted(val_rows.tolist())],
        "test": [ids[i] for i in sorted(test_rows.tolist())],
    }
    volumes = {p: sorted({ds.slices[i].volume for i in ds.indices(v)}) for p, v in parts.items()}
    return parts, volumes


def load_split(prepared, name: str = "default") -> dict:
    """The split ``name`` of a prepared dataset (error listing the available ones if absent)."""
    ds = _open(prepared)
    split = ds.split(name)
    if not isinstance(split, dict) or "parts" not in split:
        raise DataError(ds.path / "splits" / f"{name}.json", "not an octseg split (no 'parts')")
    return split


def split_indices(prepared_dataset, split_dict: dict) -> dict[str, np.ndarray]:
    """Row indices into the dataset's arrays for every part of a split."""
    ds = _open(prepared_dataset)
    return {part: ds.indices(ids) for part, ids in split_dict["parts"].items()}


# ----------------------------------------------------------------------------------- cross-validation folds


def _volume_tables(ds: PreparedDataset):
    """Rows, vendor and labelled-B-scan count of every volume."""
    rows_of: dict[str, list[int]] = defaultdict(list)
    vendor_of: dict[str, Optional[str]] = {}
    for i, s in enumerate(ds.slices):
        rows_of[s.volume].append(i)
        vendor_of.setdefault(s.volume, s.vendor)
    n_lab = {v: int(ds.labelled[r].sum()) for v, r in rows_of.items()}
    return rows_of, vendor_of, n_lab


def assign_folds(prepared, folds: int, seed: int, exclude=()) -> list[list[str]]:
    """K lists of volume ids that partition the labelled volumes (those not in ``exclude``).

    Volumes are drawn in a vendor-balanced random order (``seed``) and each goes to the fold with
    the fewest volumes, then the fewest labelled B-scans, so folds differ by at most one volume.
    Volumes without labels are in no fold: they cannot be scored (they train, unlabelled, in every fold).
    """
    ds = _open(prepared)
    if int(folds) != folds or folds < 2:
        raise ConfigError(f"folds must be an integer >= 2, not {folds!r}")
    rows_of, vendor_of, n_lab = _volume_tables(ds)
    cands = sorted(v for v in rows_of if n_lab[v] > 0 and v not in set(exclude))
    if len(cands) < folds:
        raise DataError(ds.path, f"{len(cands)} labelled volume(s) outside the test set: too few for {folds} folds "
                                 f"(each fold needs at least one volume to score)")
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = defaultdict(list)
    for v in cands:
        groups[vendor_of[v] or ""].append(v)
    order = _interleave({g: [vs[k] for k in rng.permutation(len(vs))] for g, vs in sorted(groups.items())}, rng)
    out: list[list[str]] = [[] for _ in range(folds)]
    size = [0] * folds
    for v in order:
        k = min(range(folds), key=lambda f: (len(out[f]), size[f], f))
        out[k].append(v)
        size[k] += n_lab[v]
    return [sorted(f) for f in out]


def make_fold_split(prepared, name: str, val_volumes, test_volumes, excluded=(), labelled: Optional[float] = None,
                    labelled_count: Optional[int] = None, seed: int = 0, fractions: Optional[dict] = None,
                    note: Optional[dict] = None, val_trains: bool = False) -> Path:
    """Write the named by-volume split of one cross-validation fold and return its path.

    ``val_volumes``/``test_volumes`` are given (not drawn); ``excluded`` volumes are in no part;
    every other volume trains, and of its labelled volumes ``labelled`` (fraction, at least one)
    or ``labelled_count`` (B-scans) are labelled, drawn as :func:`make_split` draws them; the rest
    are unlabelled. ``fractions`` is recorded as the split's parameters (the recipe's, so that
    training does not warn), ``note`` under ``"cv"``. ``val_trains``: the val volumes also train
    (a run that keeps its last weights and needs val only for its logs). An identical existing file
    is left as it is.
    """
    _check_args(labelled, labelled_count, 0.0, 0.0, "volume", name)
    ds = _open(prepared)
    rows_of, vendor_of, n_lab = _volume_tables(ds)
    held = {"val": sorted(val_volumes), "test": sorted(test_volumes)}
    known = set(rows_of)
    for v in [*held["val"], *held["test"], *excluded]:
        if v not in known:
            raise DataError(ds.path, f"volume {v!r} of fold split {name!r} is not in the dataset")
    if set(held["val"]) & set(held["test"]):
        raise ConfigError(f"fold split {name!r}: volumes both validate and test: {sorted(set(held['val']) & set(held['test']))}")
    skip = set(held["test"]) | set(excluded) | (set() if val_trains else set(held["val"]))
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = defaultdict(list)
    for v in sorted(known):
        if v not in skip and n_lab[v] > 0:
            groups[vendor_of[v] or ""].append(v)
    if not groups:
        raise DataError(ds.path, f"fold split {name!r} leaves no labelled volume to train on")
    order = _interleave({g: [vs[k] for k in rng.permutation(len(vs))] for g, vs in sorted(groups.items())}, rng)
    drawn = {"val": [], "test": held["test"]} if val_trains else held
    parts, volumes = _volume_parts(ds, drawn, order, labelled, labelled_count, n_lab, rows_of, frozenset(excluded))
    if val_trains:
        val_set = set(held["val"])
        parts["val"] = [s.id for s in ds.slices if s.volume in val_set and s.labelled]
        volumes["val"] = held["val"]
    volumes["excluded"] = sorted(excluded)
    doc = {
        "name": name,
        "seed": int(seed),
        "by": "volume",
        "fractions": fractions if fractions is not None else
        {"labelled": labelled, "labelled_count": labelled_count, "val": 0.0, "test": 0.0},
        "parts": parts,
        "volumes": volumes,
        "counts": {k: len(v) for k, v in parts.items()},
        "octseg_version": __version__,
        "cv": note or {},
    }
    path = ds.path / "splits" / f"{name}.json"
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and {k: v for k, v in old.items() if k != "octseg_version"} == \
            {k: v for k, v in doc.items() if k != "octseg_version"}:
        return path
    return atomic_write_text(path, text)
