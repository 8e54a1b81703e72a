"""2.5D input: a B-scan and its ``k`` neighbours on each side, as the network's 2k+1 channels.

Why: small IRF cysts continue across neighbouring B-scans of a volume, so the B-scans beside the one
being segmented tell the network whether a dark spot is a cyst or speckle.

The rules, shared by training, evaluation and prediction (so they can never disagree):

* the neighbours of a B-scan are the B-scans of the **same volume**, ordered by slice index (ties by
  their order in the data); channel ``j`` (0..2k) holds the B-scan ``j - k`` places away, so the
  centre channel ``k`` is the B-scan itself and the label is its label;
* at a volume's edges the edge B-scan is **repeated** (the first B-scan of a volume has itself in
  the channels before it), as replicate padding does along the slice axis;
* a lone B-scan (a volume of one: an image without a volume id) has only itself: every channel is
  that B-scan, and a warning says so once per process;
* ``k = 0`` is the plain 2-D input (one channel), unchanged.

Neighbours are found by position within the volume's sorted slice indices, not by index arithmetic:
a volume with gaps in its slice indices still gets its nearest B-scans.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence, Union

import numpy as np

from octseg.errors import ConfigError

#: Largest ``model.context_slices`` accepted (2k+1 = 17 channels); more is surely a typo.
MAX_CONTEXT_SLICES = 8

LONE_WARNING = ("2.5D input (model.context_slices > 0): some B-scans have no volume (a lone image, or a volume of "
                "one B-scan); their neighbour channels repeat the B-scan itself")

_warned_lone = False


def check_context_slices(k, where: str = "model.context_slices") -> int:
    """``k`` as an int in [0, MAX_CONTEXT_SLICES], or a ConfigError naming ``where``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= int(k) <= MAX_CONTEXT_SLICES:
        raise ConfigError(f"{where}={k!r}: must be an integer in [0, {MAX_CONTEXT_SLICES}] (the number of "
                          f"neighbouring B-scans on each side; 0 = 2-D input)")
    return int(k)


def in_channels(k: int) -> int:
    """The network's input channels for ``k`` context slices."""
    return 2 * int(k) + 1


def warn_lone_once() -> None:
    """The console hears about lone B-scans once per process, not once per B-scan or batch."""
    global _warned_lone
    if not _warned_lone:
        _warned_lone = True
        warnings.warn(LONE_WARNING, UserWarning, stacklevel=3)


def context_rows(volumes: Union[Sequence, str, None], slice_indices: Optional[Sequence[int]], k: int,
                 n: Optional[int] = None, warn: bool = True) -> np.ndarray:
    """int64 (N, 2k+1): for each B-scan, the rows of itself and its neighbours (see the module doc).

    ``volumes``: one volume id per B-scan; a single id (str) or None means all N B-scans are one
    volume (``n`` then gives N when ``slice_indices`` is None). ``slice_indices``: one per B-scan;
    None = the order given. With ``warn``, a volume of one B-scan (when k > 0) warns once."""
    k = check_context_slices(k)
    if volumes is None or isinstance(volumes, str):
        size = n if n is not None else (len(slice_indices) if slice_indices is not None else None)
        if size is None:
            raise ValueError("context_rows: give n when volumes and slice_indices are both None")
        vols = np.zeros(size, dtype=np.int64)
    else:
        _, vols = np.unique(np.asarray([str(v) for v in volumes], dtype=object), return_inverse=True)
        vols = vols.astype(np.int64)
    N = len(vols)
    order_key = np.arange(N) if slice_indices is None else np.asarray(slice_indices, dtype=np.int64)
    if len(order_key) != N:
        raise ValueError(f"context_rows: {len(order_key)} slice indices for {N} B-scans")
    rows = np.repeat(np.arange(N, dtype=np.int64)[:, None], 2 * k + 1, axis=1)
    if k == 0 or N == 0:
        return rows
    # sort by (volume, slice index, position): each volume becomes one contiguous, ordered run
    order = np.lexsort((np.arange(N), order_key, vols))
    sorted_vols = vols[order]
    starts = np.flatnonzero(np.r_[True, sorted_vols[1:] != sorted_vols[:-1]])
    ends = np.r_[starts[1:], N]
    lone = False
    for s, e in zip(starts, ends):
        members = order[s:e]
        lone |= len(members) == 1
        pos = np.arange(len(members))
        for j in range(-k, k + 1):
            rows[members, j + k] = members[np.clip(pos + j, 0, len(members) - 1)]
    if lone and warn:
        warn_lone_once()
    return rows


def stack_context(images, rows: np.ndarray, take: Optional[np.ndarray] = None) -> np.ndarray:
    """uint8 (n, 2k+1, H, W): the B-scans ``images[rows[take]]`` (all rows when ``take`` is None).
    ``images`` may be a memory-mapped (N, H, W) array: only the rows needed are read."""
    r = rows if take is None else rows[np.asarray(take)]
    if r.size == 0:
        return np.zeros((len(r), rows.shape[1], *images.shape[1:]), dtype=np.asarray(images[:0]).dtype)
    flat = r.reshape(-1)
    uniq, inv = np.unique(flat, return_inverse=True)
    block = np.asarray(images[uniq])  # one sorted fancy read per batch
    return block[inv.reshape(r.shape)]
