"""Rendering: one B-scan of an :class:`~.anatomy.Anatomy` to uint8 pixels and fluid labels.

Why separate from the anatomy: the anatomy is random parameters and surfaces in mm, this is
the pixel work (antialiased layers, fluid, vessels, attenuation, speckle), done with
whole-array numpy operations so a full-size B-scan takes milliseconds on one core.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np

from octseg.data.synthetic.anatomy import B, LAYERS, NB, Anatomy

__all__ = ["render_bscan"]


def _gauss_taps(sigma: float) -> Optional[np.ndarray]:
    """Unit-energy Gaussian taps (blurred white noise keeps unit variance); None if tiny."""
    if sigma < 0.35:
        return None
    r = max(1, int(math.ceil(2.0 * sigma)))
    k = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (k / sigma) ** 2)
    return (w / np.sqrt((w ** 2).sum())).astype(np.float32)


def _correlate(a: np.ndarray, taps: Optional[np.ndarray], axis: int) -> np.ndarray:
    """Same-size correlation with edge padding, as shifted slice sums (fast on one core)."""
    if taps is None:
        return a
    r = len(taps) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (r, r)
    p = np.pad(a, pad, mode="edge")
    n = a.shape[axis]
    out = np.zeros_like(a)
    for i, w in enumerate(taps):
        sl = p[i:i + n] if axis == 0 else p[:, i:i + n]
        out += w * sl
    return out


def render_bscan(ph: Anatomy, s: int) -> tuple[np.ndarray, np.ndarray]:
    """B-scan ``s`` of the volume: uint8 image and uint8 labels (0 bg, 1 IRF, 2 SRF, 3 PED), (H, W).

    Speckle and noise are drawn from ``ph.rng``, so B-scans must be rendered in order.
    """
    H, W, st, rng = ph.H, ph.W, ph.style, ph.rng
    b = ph.bounds_px[:, s, :]
    rows = np.arange(H, dtype=np.float32)
    vals = ph.values
    R = np.zeros((H, W), np.float32)
    off = np.zeros(H, np.float32)
    cov_ch = None
    # antialiased layer stack: sum over boundaries of (step in value) x (pixel coverage)
    for k in range(NB):
        delta = float(vals[k + 1] - vals[k])
        bk = b[k]
        lo = int(np.clip(np.floor(bk.min()), 0, H))
        hi = int(np.clip(np.ceil(bk.max()) + 1, 0, H))
        if lo < hi:
            cov = rows[lo:hi, None] + 1.0 - bk[None, :]
            np.clip(cov, 0.0, 1.0, out=cov)
            if k == B["choroid"]:
                cov_ch = (lo, hi, cov.copy())
            cov *= delta
            R[lo:hi] += cov
        off[hi:] += delta
    R += off[:, None]
    _choroid(ph, R, s, b[B["choroid"]], cov_ch)

    labels = np.zeros((H, W), np.uint8)
    _fill_between(R, labels, b[B["PED"]], b[B["BM"]], 3, vals[LAYERS.index("PED")])
    _fill_between(R, labels, b[B["SRF"]], b[B["RPE"]], 2, vals[LAYERS.index("SRF")])
    _cysts(ph, R, labels, s, b)
    _vessels(ph, R, s, b)

    # attenuation below the ILM, depth roll-off and lateral vignetting
    er = np.exp(-ph.atten * (rows + 0.5) * ph.dz).astype(np.float32)
    ec = np.exp(ph.atten * b[B["RNFL"]] * ph.dz).astype(np.float32)
    A = er[:, None] * ec[None, :]
    np.minimum(A, 1.0, out=A)
    v, side = ph.vignette
    xn = ph.x / (ph.W * ph.dx / 2)
    vig = (1 - v * np.clip(side * xn, 0, 1) ** 3).astype(np.float32)
    roll = np.exp(-0.15 * (rows + 0.5) * ph.dz).astype(np.float32)
    A *= roll[:, None]
    A *= vig[None, :]
    R *= A

    # speckle (multiplicative, log-normal, spatially correlated) + additive noise
    n1 = rng.standard_normal((H, W), dtype=np.float32)
    n1 = _correlate(n1, _gauss_taps(st.grain_mm[0] / ph.dz / 2), 0)
    n1 = _correlate(n1, _gauss_taps(st.grain_mm[1] / ph.dx / 2), 1)
    sig = st.speckle
    n1 *= sig
    n1 -= 0.5 * sig * sig
    np.exp(n1, out=n1)
    R *= n1
    n2 = rng.standard_normal((H, W), dtype=np.float32)
    n2 *= st.noise
    n2 -= 0.5 * st.noise * st.noise
    np.exp(n2, out=n2)
    n2 *= (st.background * (1.2 - 0.7 * rows / H))[:, None]  # noise floor, lower with depth
    R += n2
    R *= 255.0 * st.gain
    np.clip(R, 0, 255, out=R)
    img = R.astype(np.uint8)
    return _gamma_lut(st.gamma)[img], labels


@functools.lru_cache(maxsize=None)
def _gamma_lut(g: float) -> np.ndarray:
    """uint8 lookup table applying a vendor's display gamma (shared, so read-only)."""
    lut = np.round(255 * (np.arange(256) / 255.0) ** g).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def _choroid(ph: Anatomy, R, s, bch, cov_ch) -> None:
    """Add the choroid's vessel texture below Bruch's membrane, fading with depth."""
    r0 = ph.ch_row0
    if r0 >= ph.H:
        return
    tex = ph.ch_ad @ (ph.ch_field[s] @ ph.ch_axt)  # (H - r0, W)
    rows = np.arange(r0, ph.H, dtype=np.float32)
    d = (rows[:, None] + 0.5 - bch[None, :]) * np.float32(ph.dz)
    np.maximum(d, 0, out=d)
    amp = 0.25 + 1.8 * d
    tex *= amp
    tex += 1.0
    np.clip(tex, 0.1, 2.2, out=tex)
    tex *= np.exp(d * np.float32(-1.0 / ph.choroid_decay)) * np.float32(ph.choroid_level)
    if cov_ch is not None:
        lo, hi, cov = cov_ch
        a, z = max(lo, r0), min(hi, ph.H)
        if a < z:
            tex[a - r0:z - r0] *= cov[a - lo:z - lo]
        tex[: max(0, lo - r0)] = 0
    R[r0:] += tex


def _fill_between(R, labels, top, bot, cls, value) -> None:
    """Label pixels whose centre lies in [top, bot) and draw the fluid there."""
    cols = np.nonzero(bot - top > 1e-3)[0]
    if cols.size == 0:
        return
    c0, c1 = int(cols.min()), int(cols.max()) + 1
    t, bo = top[c0:c1], bot[c0:c1]
    H = R.shape[0]
    lo = int(np.clip(np.floor(t.min()), 0, H))
    hi = int(np.clip(np.ceil(bo.max()) + 1, 0, H))
    if lo >= hi:
        return
    rc = np.arange(lo, hi, dtype=np.float32)[:, None] + 0.5
    m = (rc >= t[None, :]) & (rc < bo[None, :])
    labels[lo:hi, c0:c1][m] = cls
    R[lo:hi, c0:c1][m] = value


def _cols(ph: Anatomy, cx: float, half: float) -> tuple[int, int]:
    """Column range whose pixel centres lie within ``half`` mm of lateral position ``cx``."""
    c0 = int(math.ceil((cx - half) / ph.dx + ph.W / 2 - 0.5))
    c1 = int(math.floor((cx + half) / ph.dx + ph.W / 2 - 0.5)) + 1
    return max(c0, 0), min(c1, ph.W)


def _ellipses(ph: Anatomy, items, s, clip_top, clip_bot):
    """Cross-sections with B-scan s of ellipsoids (cx, cy, ax, ay, az, depth rel. to the ELM).

    Anchoring depth to the ELM makes a blob follow the retina's curvature; yields
    ((row slice, col slice), mask, item index) with the mask clipped to [clip_top, clip_bot).
    """
    ys = ph.y[s]
    elm = ph.bounds_mm[B["ELM"], s]
    for i, (cx, cy, ax, ay, az, rel) in enumerate(items):
        e = 1 - ((ys - cy) / ay) ** 2
        if e <= 0:
            continue
        f = math.sqrt(e)
        axs, azs = ax * f, az * f
        c0, c1 = _cols(ph, cx, axs)
        if c1 <= c0:
            continue
        xx = ph.x[c0:c1]
        h = azs * np.sqrt(np.clip(1 - ((xx - cx) / axs) ** 2, 0, 1))
        zc = elm[c0:c1] + rel
        top = np.maximum((zc - h) / ph.dz, clip_top[c0:c1])
        bot = np.minimum((zc + h) / ph.dz, clip_bot[c0:c1])
        lo = int(np.clip(np.floor(top.min()), 0, ph.H))
        hi = int(np.clip(np.ceil(bot.max()) + 1, 0, ph.H))
        if lo >= hi:
            continue
        rc = np.arange(lo, hi, dtype=np.float32)[:, None] + 0.5
        m = (rc >= top[None, :]) & (rc < bot[None, :])
        yield (slice(lo, hi), slice(c0, c1)), m, i


def _cysts(ph: Anatomy, R, labels, s, b) -> None:
    """Draw and label the intraretinal cysts (IRF), then the hyper-reflective foci."""
    if len(ph.cysts):
        items = ph.cysts[:, :6]
        for (rs, cs), m, i in _ellipses(ph, items, s, b[B["INL"]], b[B["ELM"]]):
            labels[rs, cs][m] = 1
            R[rs, cs][m] = ph.cysts[i, 6]
    if len(ph.foci):  # hyper-reflective foci: tissue, never over fluid
        fo = ph.foci
        items = np.stack([fo[:, 0], fo[:, 1], fo[:, 3], fo[:, 3],
                          np.maximum(fo[:, 3] * 0.6, 0.8 * ph.dz), fo[:, 2]], axis=1)
        for (rs, cs), m, _ in _ellipses(ph, items, s, b[B["IPL"]], b[B["ELM"]]):
            m &= labels[rs, cs] == 0
            R[rs, cs][m] = 0.9


def _vessels(ph: Anatomy, R, s, b) -> None:
    """Brighten superficial vessels where they cross B-scan ``s`` and shade the tissue below."""
    ys = ph.y[s]
    d = ph.vy - ys
    cross = (d[:, :-1] * d[:, 1:] <= 0) & (d[:, :-1] != d[:, 1:])
    vi, si = np.nonzero(cross)
    if vi.size == 0:
        return
    d0, d1 = d[vi, si], d[vi, si + 1]
    tt = d0 / (d0 - d1)
    x0, x1 = ph.vx[vi, si], ph.vx[vi, si + 1]
    xc = x0 + tt * (x1 - x0)
    seg_dy = np.abs(ph.vy[vi, si + 1] - ph.vy[vi, si])
    seg_len = np.hypot(x1 - x0, seg_dy)
    half = 0.5 * ph.vw[vi] / np.maximum(seg_dy / np.maximum(seg_len, 1e-9), 0.25)
    fac = np.ones(ph.W, np.float32)
    cap = np.zeros(ph.W, np.float32)
    vrow = np.zeros(ph.W, np.float32)
    ilm, ipl = b[B["RNFL"]], b[B["IPL"]]
    for j in range(xc.size):
        c0, c1 = _cols(ph, xc[j], half[j] * 1.3)
        if c1 <= c0:
            continue
        prof = np.clip(1.3 - np.abs(ph.x[c0:c1] - xc[j]) / half[j], 0, 1).astype(np.float32)
        fac[c0:c1] *= 1 - ph.vs[vi[j]] * prof
        cap[c0:c1] = np.maximum(cap[c0:c1], prof)
        vrow[c0:c1] = ilm[c0:c1] + ph.vd[vi[j]] * (ipl[c0:c1] - ilm[c0:c1])
    cols = np.nonzero(fac < 0.999)[0]
    if cols.size == 0:
        return
    c0, c1 = int(cols.min()), int(cols.max()) + 1
    lo = int(np.clip(np.floor(vrow[cols].min()) - 3, 0, ph.H))
    rr = np.arange(lo, ph.H, dtype=np.float32)[:, None]
    vr = vrow[None, c0:c1]
    sub = R[lo:, c0:c1]
    rad = max(1.0, 0.02 / ph.dz)
    bright = 1 + 0.6 * cap[None, c0:c1] * np.clip(1 - np.abs(rr - vr) / rad, 0, 1)
    shade = np.where(rr > vr + rad * 0.5, fac[None, c0:c1], 1.0)
    sub *= bright * shade
