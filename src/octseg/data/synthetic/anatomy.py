"""The random retina of one synthetic volume: layers, fluid lesions, vessels, choroid texture.

Why: anatomy, lesions and vessels are smooth functions of physical (x, y) position in mm, so
neighbouring B-scans agree and a volume looks the same at any ``scale``. This module only
draws the random parameters and the layer surfaces; :mod:`.render` turns them into pixels.
Every random number is drawn from the volume's own generator in a fixed order, so a seed
always gives the same volume.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from octseg.data.synthetic.vendors import GEOMETRY, STYLES
from octseg.records import Spacing
from octseg.errors import ConfigError

__all__ = ["LAYERS", "NB", "B", "Anatomy"]

# Layers from the vitreous down; boundary k is the top of layer k + 1. 'edema' is the
# swollen tissue that holds the cysts (zero thickness without IRF).
LAYERS = ("vitreous", "RNFL", "GCL", "IPL", "INL", "OPL", "edema", "ONL", "ELM", "myoid", "EZ", "OS",
          "IZ", "SRF", "RPE", "PED", "BM", "choroid")
NB = len(LAYERS) - 1
B = {name: i - 1 for i, name in enumerate(LAYERS)}  # boundary index = top of that layer
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


class Anatomy:
    """Random anatomy, lesions and vessels of one volume, in pixel geometry ``H`` x ``W`` x ``S``.

    Drawing happens in ``__init__`` (in a fixed order of generator calls); the renderer then
    reads the attributes set here (bounds, values, lesions, vessels, choroid texture) and keeps
    drawing speckle from the same ``rng``.
    """

    def __init__(self, key: str, rng: np.random.Generator, slices: Optional[int], scale: float,
                 with_fluid: bool):
        g = GEOMETRY[key]
        if not (scale > 0 and math.isfinite(scale)):
            raise ConfigError(f"scale must be a positive number, got {scale!r}")
        if slices is not None and int(slices) < 1:
            raise ConfigError(f"slices must be at least 1, got {slices!r}")
        self.key, self.rng, self.style = key, rng, STYLES[key]
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
                         for n in LAYERS], np.float64)
        tissue = np.array([n not in ("vitreous", "choroid", "SRF", "PED") for n in LAYERS])
        m = vals[tissue].mean()
        vals[tissue] = m + st.contrast * (vals[tissue] - m)
        self.fluid_value = {1: r.uniform(0.04, 0.08), 2: r.uniform(0.03, 0.07), 3: r.uniform(0.12, 0.24)}
        vals[LAYERS.index("SRF")] = self.fluid_value[2]
        vals[LAYERS.index("PED")] = self.fluid_value[3]
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
        b = np.empty((NB,) + X.shape)
        b[B["choroid"]] = bm + t("BM")
        b[B["BM"]] = bm
        b[B["PED"]] = bm - self._dome(self.ped, X, Y)
        b[B["RPE"]] = b[B["PED"]] - t("RPE")
        b[B["SRF"]] = b[B["RPE"]] - self._dome(self.srf, X, Y)
        b[B["IZ"]] = b[B["SRF"]] - t("IZ")
        b[B["OS"]] = b[B["IZ"]] - t("OS")
        b[B["EZ"]] = b[B["OS"]] - t("EZ")
        b[B["myoid"]] = b[B["EZ"]] - t("myoid")
        b[B["ELM"]] = b[B["myoid"]] - t("ELM")
        b[B["ONL"]] = b[B["ELM"]] - t("ONL")
        b[B["edema"]] = b[B["ONL"]] - 0.75 * sw
        b[B["OPL"]] = b[B["edema"]] - t("OPL")
        b[B["INL"]] = b[B["OPL"]] - t("INL") - 0.25 * sw
        b[B["IPL"]] = b[B["INL"]] - t("IPL")
        b[B["GCL"]] = b[B["IPL"]] - t("GCL")
        lo, hi = self.rnfl
        rnfl = lo + hi / (1 + np.exp(-self.nasal * (X - self.fx - 0.8) / 0.5))
        rnfl = (rnfl + 0.02 * np.clip(np.abs(Y - self.fy) / 3, 0, 1)) * (1 - pit)
        rnfl = rnfl * (1 + self._eval_wave(self.thick_wave["RNFL"], X, Y))
        b[B["RNFL"]] = b[B["GCL"]] - np.maximum(rnfl, 0.3 * self.dz)
        return b

    def _layout(self) -> None:
        """Place the retina in depth (vendor-like position, ILM never above the image)."""
        r = self.rng
        self.d0 = 0.0
        X, Y = self.x[None, :], self.y[:, None]
        b = self.surfaces(X, Y)
        at_fovea = self.surfaces(np.array(self.fx), np.array(self.fy))[B["BM"]]
        shift = r.uniform(0.5, 0.66) * self.depth - float(at_fovea)
        bottom = 0.9 * self.depth - float(b[B["BM"]].max())
        top = 0.06 * self.depth - float(b[B["RNFL"]].min())
        shift = max(min(shift, bottom), top)
        self.d0 = shift
        self.bounds_mm = b + shift  # (16, S, W)
        self.bounds_px = (self.bounds_mm / self.dz).astype(np.float32)
        # cyst depth: anywhere within the (swollen) INL..ONL band at the cyst centre
        if len(self.cysts):
            c = self.surfaces(self.cysts[:, 0], self.cysts[:, 1])
            top_, bot = c[B["INL"]], c[B["ELM"]]
            az = self.cysts[:, 4]
            room = np.maximum(bot - top_ - 2 * az, 0)
            u = r.beta(2.0, 1.6, len(az))  # more big cysts in the outer (ONL) part
            centre = top_ + np.minimum(az, (bot - top_) / 2) + u * room
            self.cysts[:, 5] = centre - bot  # relative to the ELM, which follows curvature
        if len(self.foci):
            c = self.surfaces(self.foci[:, 0], self.foci[:, 1])
            self.foci[:, 2] = c[B["IPL"]] + self.foci[:, 2] * (c[B["ELM"]] - c[B["IPL"]]) - c[B["ELM"]]

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

        top = float(self.bounds_px[B["choroid"]].min())
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
