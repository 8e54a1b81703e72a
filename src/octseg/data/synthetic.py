"""Synthetic RETOUCH-like OCT volumes with exact fluid labels (0 bg, 1 IRF, 2 SRF, 3 PED).

Why: tests, the CPU demo and label-efficiency benchmarks need any amount of labelled data
without licensed scans. Anatomy, lesions and vessels are defined as smooth functions of
physical (x, y) position in mm, so neighbouring B-scans agree and a volume looks the same at
any ``scale``; each B-scan is then rendered with whole-array numpy operations.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from octseg.constants import RETOUCH_CLASSES, VENDORS
from octseg.data.types import Spacing
from octseg.errors import ConfigError, DataError

__all__ = [
    "GEOMETRY",
    "SyntheticVolume",
    "generate_volume",
    "generate_bscans",
    "write_synthetic_dataset",
    "render_preview",
    "vendor_folder",
]


@dataclass(frozen=True)
class VendorGeometry:
    rows: int
    cols: int
    slices: int
    spacing: Spacing  # mm: row = axial, col = lateral, slice = between B-scans


#: RETOUCH acquisition geometry per vendor (the values in the challenge's .mhd headers).
GEOMETRY: dict[str, VendorGeometry] = {
    "cirrus": VendorGeometry(1024, 512, 128, Spacing(0.001953125, 0.01171875, 0.0472441)),
    "spectralis": VendorGeometry(496, 512, 49, Spacing(0.003872, 0.01133, 0.1195)),
    "topcon": VendorGeometry(885, 512, 128, Spacing(0.0026, 0.01171875, 0.0472441)),
}


@dataclass(frozen=True)
class _Style:
    """How a vendor's device renders reflectivity (all intensities on a 0..1 display scale)."""

    background: float  # noise floor level (vitreous)
    speckle: float  # log-std of the multiplicative speckle on tissue
    grain_mm: tuple[float, float]  # speckle correlation length (axial, lateral)
    noise: float  # log-std of the additive noise floor's grain
    gain: float
    contrast: float  # <1 pulls layer intensities toward their mean (flatter look)
    gamma: float  # applied to the 8-bit render
    attenuation: float  # 1/mm, signal loss below the ILM


_STYLES = {
    # grainy, bright noise floor, high contrast
    "cirrus": _Style(0.11, 0.55, (0.004, 0.012), 0.6, 1.0, 1.05, 1.0, 1.2),
    # frame-averaged: smooth tissue, dark grainy background, crisp layers
    "spectralis": _Style(0.085, 0.3, (0.006, 0.018), 0.42, 1.0, 1.0, 1.0, 1.0),
    # blurrier speckle, lifted background, low contrast
    "topcon": _Style(0.15, 0.4, (0.008, 0.02), 0.5, 0.92, 0.8, 0.85, 1.4),
}

# Layers from the vitreous down; boundary k is the top of layer k + 1. 'edema' is the
# swollen tissue that holds the cysts (zero thickness without IRF).
_LAYERS = ("vitreous", "RNFL", "GCL", "IPL", "INL", "OPL", "edema", "ONL", "ELM", "myoid", "EZ", "OS",
           "IZ", "SRF", "RPE", "PED", "BM", "choroid")
_NB = len(_LAYERS) - 1
_B = {name: i - 1 for i, name in enumerate(_LAYERS)}  # boundary index = top of that layer
# Display reflectivity of each layer before speckle/attenuation (fluid gaps set per volume).
_LAYER_VALUE = {"vitreous": 0.0, "RNFL": 0.62, "GCL": 0.38, "IPL": 0.42, "INL": 0.25, "OPL": 0.34,
                "edema": 0.3, "ONL": 0.17, "ELM": 0.38, "myoid": 0.3, "EZ": 0.72, "OS": 0.48,
                "IZ": 0.62, "SRF": 0.03, "RPE": 0.85, "PED": 0.2, "BM": 0.5, "choroid": 0.0}
# Healthy parafoveal thickness (mm); RNFL is modelled separately.
_THICK = {"GCL": 0.045, "IPL": 0.035, "INL": 0.035, "OPL": 0.028, "ONL": 0.07, "ELM": 0.005,
          "myoid": 0.02, "EZ": 0.015, "OS": 0.02, "IZ": 0.014, "RPE": 0.028, "BM": 0.005}
# Thin bright bands keep a minimum thickness in pixels so they survive downscaling.
_MIN_PX = {"ELM": 0.8, "EZ": 1.0, "IZ": 0.8, "RPE": 1.5, "BM": 0.6}
# How much of each inner layer the foveal pit removes at its centre.
_PIT = {"GCL": 0.95, "IPL": 0.9, "INL": 0.85, "OPL": 0.6}

_OVERLAY = {1: (1.0, 0.25, 0.2), 2: (1.0, 0.85, 0.1), 3: (0.2, 0.65, 1.0)}


@dataclass
class SyntheticVolume:
    image: np.ndarray  # uint8 (S, H, W)
    labels: np.ndarray  # uint8 (S, H, W), 0..3
    spacing: Spacing
    vendor: str

    @property
    def has_fluid(self) -> bool:
        return bool(self.labels.any())


def _vendor_key(vendor: str) -> str:
    key = str(vendor).strip().lower()
    if key not in GEOMETRY:
        raise ConfigError(f"unknown OCT vendor {vendor!r}; valid vendors: {', '.join(VENDORS)}")
    return key


def vendor_folder(vendor: str) -> str:
    """RETOUCH training folder name of a vendor, e.g. ``RETOUCH-TrainingSet-Cirrus``."""
    return f"RETOUCH-TrainingSet-{_vendor_key(vendor).capitalize()}"


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


def _interp_matrix(n_out: int, pos: np.ndarray, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation matrix sampling a grid of n_in at float ``pos``."""
    pos = np.clip(pos, 0, n_in - 1)
    i0 = np.minimum(np.floor(pos).astype(int), n_in - 2) if n_in > 1 else np.zeros(n_out, int)
    f = (pos - i0) if n_in > 1 else np.zeros(n_out)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), i0] += (1 - f).astype(np.float32)
    if n_in > 1:
        m[np.arange(n_out), i0 + 1] += f.astype(np.float32)
    return m


class _Volume:
    """Random anatomy, lesions and vessels of one volume, and its per-B-scan renderer."""

    def __init__(self, key: str, rng: np.random.Generator, slices: Optional[int], scale: float,
                 with_fluid: bool):
        g = GEOMETRY[key]
        if not (scale > 0 and math.isfinite(scale)):
            raise ConfigError(f"scale must be a positive number, got {scale!r}")
        if slices is not None and int(slices) < 1:
            raise ConfigError(f"slices must be at least 1, got {slices!r}")
        self.key, self.rng, self.style = key, rng, _STYLES[key]
        self.H = max(16, int(round(g.rows * scale)))
        self.W = max(16, int(round(g.cols * scale)))
        self.S = int(slices) if slices is not None else g.slices
        # Same physical field of view at any scale; fewer slices = a block around the fovea.
        self.dz = g.spacing.row * g.rows / self.H
        self.dx = g.spacing.col * g.cols / self.W
        self.dy = g.spacing.slice
        self.spacing = Spacing(self.dz, self.dx, self.dy)
        self.x = ((np.arange(self.W) + 0.5 - self.W / 2) * self.dx)
        self.y = ((np.arange(self.S) - (self.S - 1) / 2) * self.dy)
        self.depth = self.H * self.dz
        self._draw_anatomy(with_fluid)
        self._layout()
        self._draw_vessels()
        self._draw_texture()

    # ----------------------------------------------------------------- random parameters
    def _wave(self, n: int, amp: float, wl: tuple[float, float]):
        r = self.rng
        ang = r.uniform(0, 2 * np.pi, n)
        k = 2 * np.pi / r.uniform(wl[0], wl[1], n)
        return np.stack([k * np.cos(ang), k * np.sin(ang), r.uniform(0, 2 * np.pi, n),
                         amp * r.uniform(0.3, 1.0, n) / max(n, 1) ** 0.5], axis=1)

    @staticmethod
    def _eval_wave(w: np.ndarray, X, Y):
        out = 0.0
        for kx, ky, ph, a in w:
            out = out + a * np.sin(kx * X + ky * Y + ph)
        return out

    def _draw_anatomy(self, with_fluid: bool) -> None:
        r, half_y = self.rng, self.y[-1] if self.S > 1 else 0.0
        self.fx = r.uniform(-0.4, 0.4)
        self.fy = float(np.clip(r.uniform(-0.3, 0.3), -0.5 * half_y, 0.5 * half_y))
        self.nasal = r.choice([-1.0, 1.0])
        self.pit_sigma = r.uniform(0.3, 0.5)
        self.tilt = r.uniform(-0.05, 0.05, 2)
        self.curv = np.array([r.uniform(-0.03, 0.006), r.uniform(-0.03, 0.006), r.uniform(-0.006, 0.006)])
        self.bm_wave = self._wave(3, 0.03, (2.0, 6.0))
        self.thick = {k: v * r.uniform(0.85, 1.15) for k, v in _THICK.items()}
        self.thick_wave = {k: self._wave(1, 0.08, (1.5, 5.0)) for k in list(_THICK) + ["RNFL"]}
        self.rnfl = (r.uniform(0.008, 0.016), r.uniform(0.025, 0.045))
        # layer reflectivity with per-volume jitter and the vendor's contrast
        st = self.style
        vals = np.array([_LAYER_VALUE[n] * (r.uniform(0.9, 1.1) if n not in ("SRF", "PED") else 1)
                         for n in _LAYERS], np.float64)
        tissue = np.array([n not in ("vitreous", "choroid", "SRF", "PED") for n in _LAYERS])
        m = vals[tissue].mean()
        vals[tissue] = m + st.contrast * (vals[tissue] - m)
        self.fluid_value = {1: r.uniform(0.04, 0.08), 2: r.uniform(0.03, 0.07), 3: r.uniform(0.12, 0.24)}
        vals[_LAYERS.index("SRF")] = self.fluid_value[2]
        vals[_LAYERS.index("PED")] = self.fluid_value[3]
        self.values = vals.astype(np.float32)
        self.choroid_level = r.uniform(0.38, 0.52) * (0.6 + 0.4 * st.contrast)
        self.choroid_decay = r.uniform(0.12, 0.2)
        self.atten = st.attenuation * r.uniform(0.8, 1.2)
        self.vignette = r.uniform(0.0, 0.35), r.choice([-1.0, 1.0])

        # lesions: which fluid types, then their shapes
        self.cysts = np.zeros((0, 7))  # cx, cy, ax, ay, az, rel depth (set later), value
        self.srf = np.zeros((0, 7))  # cx, cy, rx, ry, angle, height, power
        self.ped = np.zeros((0, 7))
        self.diffuse = np.zeros(4)  # cx, cy, sigma, amplitude
        self.foci = np.zeros((0, 4))
        if with_fluid:
            types = r.random(3) < np.array([0.8, 0.5, 0.45])
            if not types.any():
                types[0] = True
            ylim = (self.y[0], self.y[-1])
            if types[0]:
                self._draw_cysts(ylim)
            if types[1]:
                self.srf = self._draw_domes(r.integers(1, 3), 0.5, (0.35, 1.4), (0.04, 0.2), (0.5, 1.2), 0.3, ylim)
            if types[2]:
                self.ped = self._draw_domes(r.integers(1, 3), 0.8, (0.25, 1.0), (0.05, 0.28), (0.35, 0.9), 0.5, ylim)

    def _centre(self, spread: float, ylim) -> np.ndarray:
        c = np.array([self.fx, self.fy]) + self.rng.normal(0, spread, 2)
        c[1] = np.clip(c[1], ylim[0], ylim[1])
        return c

    def _draw_cysts(self, ylim) -> None:
        r = self.rng
        n = int(r.integers(15, 120))
        cc = self._centre(0.3, ylim)
        spread = r.uniform(0.3, 0.9)
        pos = cc + r.normal(0, spread, (n, 2))
        pos[0] = cc  # the largest cyst sits at the cluster centre, inside the scanned block
        dist = np.linalg.norm(pos - cc, axis=1) / spread
        rmin = max(0.012, 1.5 * self.dx)
        rmax = np.maximum(0.3 * np.exp(-0.5 * dist ** 2) * r.uniform(0.5, 1.0, n), 1.5 * rmin)
        ax = np.exp(r.uniform(np.log(rmin), np.log(rmax)))
        ax[0] = rmax[0]
        ay = np.maximum(ax * r.uniform(0.7, 1.4, n), 0.8 * min(self.dy, 0.12))
        az = np.clip(ax * r.uniform(0.45, 1.0, n), 1.5 * self.dz, 0.2)
        val = self.fluid_value[1] * r.uniform(0.8, 1.2, n)
        self.cysts = np.stack([pos[:, 0], pos[:, 1], ax, ay, az, np.zeros(n), val], axis=1)
        self.diffuse = np.array([cc[0], cc[1], r.uniform(0.5, 1.3), r.uniform(0.03, 0.22)])
        nf = int(r.integers(5, 30))
        fp = cc + r.normal(0, spread * 1.3, (nf, 2))
        self.foci = np.stack([fp[:, 0], fp[:, 1], r.uniform(0.05, 0.95, nf),
                              np.full(nf, max(0.008, 0.8 * self.dx))], axis=1)

    def _draw_domes(self, n, spread, rx, h, power, aspect, ylim) -> np.ndarray:
        """Dome-shaped lifts (SRF, PED): centre, radii, angle, height (<= aspect * radius), power."""
        r, out = self.rng, []
        for _ in range(int(n)):
            c = self._centre(spread, ylim)
            a = r.uniform(*rx)
            out.append([c[0], c[1], a, a * r.uniform(0.6, 1.3), r.uniform(0, np.pi),
                        max(min(r.uniform(*h), aspect * a), 3 * self.dz), r.uniform(*power)])
            spread *= 1.5
        return np.array(out, np.float64)

    # ----------------------------------------------------------------- surfaces
    @staticmethod
    def _dome(domes: np.ndarray, X, Y):
        out = np.zeros(np.broadcast_shapes(np.shape(X), np.shape(Y)))
        for cx, cy, rx, ry, ang, h, p in domes:
            u, v = X - cx, Y - cy
            ca, sa = math.cos(ang), math.sin(ang)
            q = ((ca * u + sa * v) / rx) ** 2 + ((-sa * u + ca * v) / ry) ** 2
            np.maximum(out, h * np.clip(1 - q, 0, None) ** p, out=out)
        return out

    def _swelling(self, X, Y):
        """Extra retinal thickness (edema) so every cyst fits (smooth bump >= the cyst's chord)."""
        out = np.zeros(np.broadcast_shapes(np.shape(X), np.shape(Y)))
        for cx, cy, ax, ay, az, _, _ in self.cysts:
            q = ((X - cx) / (3.5 * ax + 0.1)) ** 2 + ((Y - cy) / (3.5 * ay + 0.1)) ** 2
            np.maximum(out, (2.2 * az + 0.01) * np.clip(1 - q, 0, None) ** 2, out=out)
        cx, cy, s, a = self.diffuse
        if a > 0:
            out += a * np.exp(-((X - cx) ** 2 + (Y - cy) ** 2) / (2 * s * s))
        return out

    def surfaces(self, X, Y) -> np.ndarray:
        """Depth (mm from the image top) of the 16 layer boundaries at lateral X, slice Y."""
        X, Y = np.broadcast_arrays(np.asarray(X, np.float64), np.asarray(Y, np.float64))
        pit = np.exp(-((X - self.fx) ** 2 + (Y - self.fy) ** 2) / (2 * self.pit_sigma ** 2))

        def t(name):
            v = self.thick[name] * (1 + self._eval_wave(self.thick_wave[name], X, Y))
            v = v * (1 - _PIT.get(name, 0.0) * pit)
            if name == "ONL":
                v = v * (1 + 0.5 * pit)
            return np.maximum(v, _MIN_PX.get(name, 0.0) * self.dz)

        bm = (self.d0 + self.tilt[0] * X + self.tilt[1] * Y + self.curv[0] * X ** 2
              + self.curv[1] * Y ** 2 + self.curv[2] * X * Y + self._eval_wave(self.bm_wave, X, Y))
        sw = self._swelling(X, Y)
        b = np.empty((_NB,) + X.shape)
        b[_B["choroid"]] = bm + t("BM")
        b[_B["BM"]] = bm
        b[_B["PED"]] = bm - self._dome(self.ped, X, Y)
        b[_B["RPE"]] = b[_B["PED"]] - t("RPE")
        b[_B["SRF"]] = b[_B["RPE"]] - self._dome(self.srf, X, Y)
        b[_B["IZ"]] = b[_B["SRF"]] - t("IZ")
        b[_B["OS"]] = b[_B["IZ"]] - t("OS")
        b[_B["EZ"]] = b[_B["OS"]] - t("EZ")
        b[_B["myoid"]] = b[_B["EZ"]] - t("myoid")
        b[_B["ELM"]] = b[_B["myoid"]] - t("ELM")
        b[_B["ONL"]] = b[_B["ELM"]] - t("ONL")
        b[_B["edema"]] = b[_B["ONL"]] - 0.75 * sw
        b[_B["OPL"]] = b[_B["edema"]] - t("OPL")
        b[_B["INL"]] = b[_B["OPL"]] - t("INL") - 0.25 * sw
        b[_B["IPL"]] = b[_B["INL"]] - t("IPL")
        b[_B["GCL"]] = b[_B["IPL"]] - t("GCL")
        lo, hi = self.rnfl
        rnfl = lo + hi / (1 + np.exp(-self.nasal * (X - self.fx - 0.8) / 0.5))
        rnfl = (rnfl + 0.02 * np.clip(np.abs(Y - self.fy) / 3, 0, 1)) * (1 - pit)
        rnfl = rnfl * (1 + self._eval_wave(self.thick_wave["RNFL"], X, Y))
        b[_B["RNFL"]] = b[_B["GCL"]] - np.maximum(rnfl, 0.3 * self.dz)
        return b

    def _layout(self) -> None:
        """Place the retina in depth (vendor-like position, ILM never above the image)."""
        r = self.rng
        self.d0 = 0.0
        X, Y = self.x[None, :], self.y[:, None]
        b = self.surfaces(X, Y)
        at_fovea = self.surfaces(np.array(self.fx), np.array(self.fy))[_B["BM"]]
        shift = r.uniform(0.5, 0.66) * self.depth - float(at_fovea)
        bottom = 0.9 * self.depth - float(b[_B["BM"]].max())
        top = 0.06 * self.depth - float(b[_B["RNFL"]].min())
        shift = max(min(shift, bottom), top)
        self.d0 = shift
        self.bounds_mm = b + shift  # (16, S, W)
        self.bounds_px = (self.bounds_mm / self.dz).astype(np.float32)
        # cyst depth: anywhere within the (swollen) INL..ONL band at the cyst centre
        if len(self.cysts):
            c = self.surfaces(self.cysts[:, 0], self.cysts[:, 1])
            top_, bot = c[_B["INL"]], c[_B["ELM"]]
            az = self.cysts[:, 4]
            room = np.maximum(bot - top_ - 2 * az, 0)
            u = r.beta(2.0, 1.6, len(az))  # more big cysts in the outer (ONL) part
            centre = top_ + np.minimum(az, (bot - top_) / 2) + u * room
            self.cysts[:, 5] = centre - bot  # relative to the ELM, which follows curvature
        if len(self.foci):
            c = self.surfaces(self.foci[:, 0], self.foci[:, 1])
            self.foci[:, 2] = c[_B["IPL"]] + self.foci[:, 2] * (c[_B["ELM"]] - c[_B["IPL"]]) - c[_B["ELM"]]

    def _draw_vessels(self) -> None:
        """Superficial vessels as en-face curves radiating from the optic-disc side."""
        r = self.rng
        n = int(r.integers(6, 15))
        disc = np.array([self.nasal * 4.0, 0.0])
        t = np.linspace(-5, 5, 241)
        px, py = [], []
        for _ in range(n):
            p0 = np.array([r.uniform(-3.2, 3.2), r.uniform(-3.5, 3.5)])
            d = p0 - disc
            ang = math.atan2(d[1], d[0]) + r.normal(0, 0.35)
            cu = r.normal(0, 0.08)
            u, v = np.cos(ang), np.sin(ang)
            px.append(p0[0] + t * u - cu * t * t * v)
            py.append(p0[1] + t * v + cu * t * t * u)
        self.vx, self.vy = np.array(px), np.array(py)
        self.vw = np.maximum(np.exp(r.uniform(np.log(0.02), np.log(0.1), n)), 1.2 * self.dx)  # mm
        self.vs = r.uniform(0.35, 0.8, n)  # shadow strength
        self.vd = r.uniform(0.2, 0.8, n)  # depth as a fraction of RNFL+GCL

    def _draw_texture(self) -> None:
        """Coarse 3-D random field for choroidal vessels, smooth across neighbouring B-scans."""
        from scipy.ndimage import gaussian_filter

        top = float(self.bounds_px[_B["choroid"]].min())
        self.ch_row0 = int(np.clip(np.floor(top), 0, self.H))
        d_mm, x_mm = 0.025, 0.05
        nd = max(2, int(math.ceil((self.H - self.ch_row0) * self.dz / d_mm)) + 1)
        nx = max(2, int(math.ceil(self.W * self.dx / x_mm)) + 1)
        f = self.rng.standard_normal((self.S, nd, nx)).astype(np.float32)
        f = gaussian_filter(f, (0.06 / self.dy, 1.2, 1.2), mode="nearest")
        f /= max(float(f.std()), 1e-6)
        self.ch_field = f
        rows = np.arange(self.ch_row0, self.H)
        self.ch_ad = _interp_matrix(len(rows), (rows - self.ch_row0) * self.dz / d_mm, nd)
        self.ch_axt = _interp_matrix(self.W, np.arange(self.W) * self.dx / x_mm, nx).T.copy()

    # ----------------------------------------------------------------- rendering
    def render(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        H, W, st, rng = self.H, self.W, self.style, self.rng
        b = self.bounds_px[:, s, :]
        rows = np.arange(H, dtype=np.float32)
        vals = self.values
        R = np.zeros((H, W), np.float32)
        off = np.zeros(H, np.float32)
        cov_ch = None
        # antialiased layer stack: sum over boundaries of (step in value) x (pixel coverage)
        for k in range(_NB):
            delta = float(vals[k + 1] - vals[k])
            bk = b[k]
            lo = int(np.clip(np.floor(bk.min()), 0, H))
            hi = int(np.clip(np.ceil(bk.max()) + 1, 0, H))
            if lo < hi:
                cov = rows[lo:hi, None] + 1.0 - bk[None, :]
                np.clip(cov, 0.0, 1.0, out=cov)
                if k == _B["choroid"]:
                    cov_ch = (lo, hi, cov.copy())
                cov *= delta
                R[lo:hi] += cov
            off[hi:] += delta
        R += off[:, None]
        self._choroid(R, s, b[_B["choroid"]], cov_ch)

        labels = np.zeros((H, W), np.uint8)
        self._fill_between(R, labels, b[_B["PED"]], b[_B["BM"]], 3, vals[_LAYERS.index("PED")])
        self._fill_between(R, labels, b[_B["SRF"]], b[_B["RPE"]], 2, vals[_LAYERS.index("SRF")])
        self._cysts(R, labels, s, b)
        self._vessels(R, s, b)

        # attenuation below the ILM, depth roll-off and lateral vignetting
        er = np.exp(-self.atten * (rows + 0.5) * self.dz).astype(np.float32)
        ec = np.exp(self.atten * b[_B["RNFL"]] * self.dz).astype(np.float32)
        A = er[:, None] * ec[None, :]
        np.minimum(A, 1.0, out=A)
        v, side = self.vignette
        xn = self.x / (self.W * self.dx / 2)
        vig = (1 - v * np.clip(side * xn, 0, 1) ** 3).astype(np.float32)
        roll = np.exp(-0.15 * (rows + 0.5) * self.dz).astype(np.float32)
        A *= roll[:, None]
        A *= vig[None, :]
        R *= A

        # speckle (multiplicative, log-normal, spatially correlated) + additive noise
        n1 = rng.standard_normal((H, W), dtype=np.float32)
        n1 = _correlate(n1, _gauss_taps(st.grain_mm[0] / self.dz / 2), 0)
        n1 = _correlate(n1, _gauss_taps(st.grain_mm[1] / self.dx / 2), 1)
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
        return self.lut[img], labels

    @property
    def lut(self) -> np.ndarray:
        if not hasattr(self, "_lut"):
            g = self.style.gamma
            self._lut = np.round(255 * (np.arange(256) / 255.0) ** g).astype(np.uint8)
        return self._lut

    def _choroid(self, R, s, bch, cov_ch) -> None:
        r0 = self.ch_row0
        if r0 >= self.H:
            return
        tex = self.ch_ad @ (self.ch_field[s] @ self.ch_axt)  # (H - r0, W)
        rows = np.arange(r0, self.H, dtype=np.float32)
        d = (rows[:, None] + 0.5 - bch[None, :]) * np.float32(self.dz)
        np.maximum(d, 0, out=d)
        amp = 0.25 + 1.8 * d
        tex *= amp
        tex += 1.0
        np.clip(tex, 0.1, 2.2, out=tex)
        tex *= np.exp(d * np.float32(-1.0 / self.choroid_decay)) * np.float32(self.choroid_level)
        if cov_ch is not None:
            lo, hi, cov = cov_ch
            a, z = max(lo, r0), min(hi, self.H)
            if a < z:
                tex[a - r0:z - r0] *= cov[a - lo:z - lo]
            tex[: max(0, lo - r0)] = 0
        R[r0:] += tex

    @staticmethod
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

    def _cols(self, cx: float, half: float) -> tuple[int, int]:
        c0 = int(math.ceil((cx - half) / self.dx + self.W / 2 - 0.5))
        c1 = int(math.floor((cx + half) / self.dx + self.W / 2 - 0.5)) + 1
        return max(c0, 0), min(c1, self.W)

    def _ellipses(self, items, s, clip_top, clip_bot):
        """Cross-sections with B-scan s of ellipsoids (cx, cy, ax, ay, az, depth rel. to the ELM).

        Anchoring depth to the ELM makes a blob follow the retina's curvature; yields
        ((row slice, col slice), mask, item index) with the mask clipped to [clip_top, clip_bot).
        """
        ys = self.y[s]
        elm = self.bounds_mm[_B["ELM"], s]
        for i, (cx, cy, ax, ay, az, rel) in enumerate(items):
            e = 1 - ((ys - cy) / ay) ** 2
            if e <= 0:
                continue
            f = math.sqrt(e)
            axs, azs = ax * f, az * f
            c0, c1 = self._cols(cx, axs)
            if c1 <= c0:
                continue
            xx = self.x[c0:c1]
            h = azs * np.sqrt(np.clip(1 - ((xx - cx) / axs) ** 2, 0, 1))
            zc = elm[c0:c1] + rel
            top = np.maximum((zc - h) / self.dz, clip_top[c0:c1])
            bot = np.minimum((zc + h) / self.dz, clip_bot[c0:c1])
            lo = int(np.clip(np.floor(top.min()), 0, self.H))
            hi = int(np.clip(np.ceil(bot.max()) + 1, 0, self.H))
            if lo >= hi:
                continue
            rc = np.arange(lo, hi, dtype=np.float32)[:, None] + 0.5
            m = (rc >= top[None, :]) & (rc < bot[None, :])
            yield (slice(lo, hi), slice(c0, c1)), m, i

    def _cysts(self, R, labels, s, b) -> None:
        if len(self.cysts):
            items = self.cysts[:, :6]
            for (rs, cs), m, i in self._ellipses(items, s, b[_B["INL"]], b[_B["ELM"]]):
                labels[rs, cs][m] = 1
                R[rs, cs][m] = self.cysts[i, 6]
        if len(self.foci):  # hyper-reflective foci: tissue, never over fluid
            fo = self.foci
            items = np.stack([fo[:, 0], fo[:, 1], fo[:, 3], fo[:, 3],
                              np.maximum(fo[:, 3] * 0.6, 0.8 * self.dz), fo[:, 2]], axis=1)
            for (rs, cs), m, _ in self._ellipses(items, s, b[_B["IPL"]], b[_B["ELM"]]):
                m &= labels[rs, cs] == 0
                R[rs, cs][m] = 0.9

    def _vessels(self, R, s, b) -> None:
        ys = self.y[s]
        d = self.vy - ys
        cross = (d[:, :-1] * d[:, 1:] <= 0) & (d[:, :-1] != d[:, 1:])
        vi, si = np.nonzero(cross)
        if vi.size == 0:
            return
        d0, d1 = d[vi, si], d[vi, si + 1]
        tt = d0 / (d0 - d1)
        x0, x1 = self.vx[vi, si], self.vx[vi, si + 1]
        xc = x0 + tt * (x1 - x0)
        seg_dy = np.abs(self.vy[vi, si + 1] - self.vy[vi, si])
        seg_len = np.hypot(x1 - x0, seg_dy)
        half = 0.5 * self.vw[vi] / np.maximum(seg_dy / np.maximum(seg_len, 1e-9), 0.25)
        fac = np.ones(self.W, np.float32)
        cap = np.zeros(self.W, np.float32)
        vrow = np.zeros(self.W, np.float32)
        ilm, ipl = b[_B["RNFL"]], b[_B["IPL"]]
        for j in range(xc.size):
            c0, c1 = self._cols(xc[j], half[j] * 1.3)
            if c1 <= c0:
                continue
            prof = np.clip(1.3 - np.abs(self.x[c0:c1] - xc[j]) / half[j], 0, 1).astype(np.float32)
            fac[c0:c1] *= 1 - self.vs[vi[j]] * prof
            cap[c0:c1] = np.maximum(cap[c0:c1], prof)
            vrow[c0:c1] = ilm[c0:c1] + self.vd[vi[j]] * (ipl[c0:c1] - ilm[c0:c1])
        cols = np.nonzero(fac < 0.999)[0]
        if cols.size == 0:
            return
        c0, c1 = int(cols.min()), int(cols.max()) + 1
        lo = int(np.clip(np.floor(vrow[cols].min()) - 3, 0, self.H))
        rr = np.arange(lo, self.H, dtype=np.float32)[:, None]
        vr = vrow[None, c0:c1]
        sub = R[lo:, c0:c1]
        rad = max(1.0, 0.02 / self.dz)
        bright = 1 + 0.6 * cap[None, c0:c1] * np.clip(1 - np.abs(rr - vr) / rad, 0, 1)
        shade = np.where(rr > vr + rad * 0.5, fac[None, c0:c1], 1.0)
        sub *= bright * shade


def generate_volume(vendor: str, rng: np.random.Generator, slices: Optional[int] = None,
                    scale: float = 1.0, with_fluid: bool = True) -> SyntheticVolume:
    """One synthetic OCT volume of a vendor's style (RETOUCH geometry times ``scale``).

    ``slices`` overrides the B-scan count, keeping the vendor's slice spacing (so a few
    slices are a block around the fovea, where the fluid is).
    """
    key = _vendor_key(vendor)
    vol = _Volume(key, rng, slices, scale, with_fluid)
    image = np.empty((vol.S, vol.H, vol.W), np.uint8)
    labels = np.empty((vol.S, vol.H, vol.W), np.uint8)
    for s in range(vol.S):
        image[s], labels[s] = vol.render(s)
    return SyntheticVolume(image=image, labels=labels, spacing=vol.spacing, vendor=key)


def generate_bscans(n: int, size: tuple[int, int], seed: int, vendor: str = "spectralis"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` fluid-bearing B-scans resized to ``size`` (H, W), from a few small volumes.

    Why: tests and the demo need quick image/label pairs; generating near the target size and
    resizing (area-like for images, nearest for labels) keeps it fast.
    """
    from PIL import Image

    key = _vendor_key(vendor)
    h, w = int(size[0]), int(size[1])
    if n < 0 or h < 1 or w < 1 or int(seed) < 0:
        raise ConfigError(f"need n >= 0, a positive size and seed >= 0, got n={n}, size={size}, seed={seed}")
    g = GEOMETRY[key]
    scale = max(h / g.rows, w / g.cols)
    per = max(1, min(n, 16, g.slices))
    images = np.empty((n, h, w), np.uint8)
    labels = np.empty((n, h, w), np.uint8)
    done, v = 0, 0
    while done < n:
        vol = generate_volume(key, np.random.default_rng([int(seed), v]), slices=per, scale=scale)
        for s in range(min(per, n - done)):
            img, lab = vol.image[s], vol.labels[s]
            if img.shape != (h, w):
                img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
                lab = np.asarray(Image.fromarray(lab).resize((w, h), Image.NEAREST))
            images[done], labels[done] = img, lab
            done += 1
        v += 1
    return images, labels


# --------------------------------------------------------------------------- writing
def _write_mhd(folder, rel: str, array: np.ndarray, spacing: Spacing) -> None:
    """``rel`` (.mhd) and its .raw, both recorded as octseg's output before they are written."""
    import SimpleITK as sitk

    folder.file(str(Path(rel).with_suffix(".raw")))
    path = folder.file(rel)

    img = sitk.GetImageFromArray(array)  # (S, H, W) -> DimSize W H S
    img.SetSpacing((float(spacing.col), float(spacing.row), float(spacing.slice)))
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(False)
    writer.Execute(img)


def _fluid_slice(vol: SyntheticVolume) -> int:
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

    keys = [_vendor_key(v) for v in vendors]
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
    if preview is not None and out.resolve() not in Path(preview).resolve().parents:
        check_output_file(preview, overwrite)
    with OutputFolder(out, "synth", overwrite=overwrite) as folder:
        return _write_synthetic(folder, volumes, keys=keys, fmt=fmt, slices=slices, scale=scale, seed=seed,
                                fluid_free_fraction=fluid_free_fraction, preview=preview,
                                real_reference=real_reference, progress=progress)


def _write_synthetic(folder, volumes: int, *, keys, fmt, slices, scale, seed, fluid_free_fraction, preview,
                     real_reference, progress) -> dict:
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
            from PIL import Image

            for s in range(vol.image.shape[0]):
                Image.fromarray(vol.image[s]).save(folder.file(f"images/{name}_{s:03d}.png"))
                Image.fromarray(vol.labels[s]).save(folder.file(f"masks/{name}_{s:03d}.png"))
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
        with open(folder.file("volumes.csv"), "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["volume", "vendor", "spacing_row", "spacing_col", "spacing_slice", "has_fluid"])
            w.writerows(rows)
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
        inside = out.resolve() in Path(preview).resolve().parents
        target = folder.file(Path(preview).resolve().relative_to(out.resolve())) if inside else preview
        render_preview([(k, *samples[k]) for k in dict.fromkeys(keys)], target, real_reference)
        text += f"\npreview -> {preview}"
    return {"text": text, "out": str(out), "format": fmt, "volumes": len(rows), "bscans": n_bscans,
            "fluid_volumes": n_fluid, "fluid_free_volumes": len(rows) - n_fluid,
            "vendors": counts, "class_volumes": class_vols,
            "preview": None if preview is None else str(preview)}


def render_preview(samples, path, real_reference=None) -> Path:
    """Figure: each (vendor, image, labels) plain and with a fluid overlay, plus a real B-scan."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    path = Path(path)
    real = None
    if real_reference is not None:
        from PIL import Image

        try:
            real = np.asarray(Image.open(real_reference).convert("L"))
        except OSError as exc:
            raise DataError(real_reference, f"cannot read the real reference image ({exc})") from exc
    ncol = len(samples) + (real is not None)
    fig = Figure(figsize=(3.6 * ncol, 6.6), dpi=110)
    axes = fig.subplots(2, ncol, squeeze=False)
    for j, (vendor, img, lab) in enumerate(samples):
        axes[0, j].imshow(img, cmap="gray", vmin=0, vmax=255, aspect="auto", interpolation="nearest")
        axes[0, j].set_title(f"synthetic {vendor} {img.shape[0]}x{img.shape[1]}", fontsize=9)
        rgb = np.repeat(img[..., None] / 255.0, 3, axis=2)
        for c, col in _OVERLAY.items():
            m = lab == c
            rgb[m] = 0.45 * rgb[m] + 0.55 * np.array(col)
        axes[1, j].imshow(rgb, aspect="auto", interpolation="nearest")
        axes[1, j].set_title(f"{vendor} + labels", fontsize=9)
    if real is not None:
        axes[0, -1].imshow(real, cmap="gray", vmin=0, vmax=255, aspect="auto")
        axes[0, -1].set_title(f"real: {Path(real_reference).name}", fontsize=9)
        axes[1, -1].set_visible(False)
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    handles = [Patch(color=_OVERLAY[c], label=RETOUCH_CLASSES[c]) for c in (1, 2, 3)]
    fig.legend(handles=handles, loc="lower right", ncol=3, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    from octseg import __version__
    from octseg.io.outputs import atomic_write

    # the Software mark lets a later run recognise the file as octseg's and replace it
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", metadata={"Software": f"octseg {__version__}"}))
    return path
