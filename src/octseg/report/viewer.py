"""The volume viewer's inline CSS and JavaScript (no libraries; drawn on canvases).

The page embeds a JSON object ``OCTSEG`` (see :mod:`octseg.report.prediction`): per viewer the
B-scans (JPEG data URIs), masks (gray PNG data URIs, values = class index), the en-face pixel
counts per class (base64 uint16), and spacing. The script colours masks with the palette it is
given (octseg.overlay's), draws the en-face map with a viridis ramp, and exposes
``window.octsegViewers`` (``set(i)``, ``index``) and ``window.octsegLastSwitchMs`` for tests.
``report.html#viewer-V@K`` opens viewer V at B-scan index K.
"""

VIEWER_CSS = """
.viewer { border: 1px solid #333; border-radius: 6px; padding: 10px 14px; margin: 18px 0; outline: none; }
.viewer:focus-within, .viewer:focus { border-color: #56b4e9; }
.viewer .row { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.viewer .main { flex: 3 1 560px; min-width: 320px; }
.viewer .side { flex: 2 1 360px; min-width: 280px; }
.viewer canvas.bscan { max-width: 100%; max-height: 72vh; width: auto; height: auto; background: #000;
                       display: block; }
.viewer .controls { display: flex; flex-wrap: wrap; gap: 14px; align-items: center; margin: 6px 0; }
.viewer input.slider { flex: 1 1 300px; }
.viewer .status { font-variant-numeric: tabular-nums; }
.legend span.sw { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 10px;
                  vertical-align: -1px; border-radius: 2px; }
.enface-wrap { position: relative; cursor: crosshair; }
.enface-wrap canvas { width: 100%; height: 100%; display: block; image-rendering: pixelated; background: #000; }
.enface-wrap .marker { position: absolute; left: 0; right: 0; height: 0; border-top: 2px solid #fff;
                       box-shadow: 0 0 2px #000; pointer-events: none; }
.ramp { display: inline-block; width: 120px; height: 10px; vertical-align: middle; margin: 0 6px;
        background: linear-gradient(90deg, #440154, #3b528b, #21918c, #5ec962, #fde725); }
svg.plot { width: 100%; height: 160px; background: #0e0f12; cursor: crosshair; display: block; }
svg.plot text { fill: #aaa; font-size: 11px; }
"""

VIEWER_JS = r"""
(function () {
  "use strict";
  const D = OCTSEG;
  const PAL = D.palette;
  const VIRIDIS = [[68,1,84],[59,82,139],[33,145,140],[94,201,98],[253,231,37]];
  function ramp(t) {
    t = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(t)), f = t - i, a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
  }
  function u16(b64) {
    const s = atob(b64), a = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i);
    return new Uint16Array(a.buffer);
  }
  function fmt(x, d) { return x == null ? "" : Number(x).toFixed(d); }
  window.octsegViewers = [];
  window.octsegLastSwitchMs = null;
  let active = null;

  function Viewer(root, E) {
    const self = this;
    const q = (s) => root.querySelector(s);
    const canvas = q("canvas.bscan"), ctx = canvas.getContext("2d");
    const slider = q("input.slider"), status = q(".status");
    const toggle = q("input.overlay"), opacity = q("input.opacity");
    const imgs = E.images.map((u) => { if (!u) return null; const im = new Image(); im.src = u; return im; });
    const masks = E.masks.map((u) => { const im = new Image(); im.src = u; return im; });
    const cache = new Map();  // index -> coloured overlay canvas (at most 48 kept)
    self.index = 0;
    self.n = E.n;
    self.entry = E;

    function colouredMask(i) {
      if (cache.has(i)) return cache.get(i);
      const m = masks[i];
      if (!m.complete || !m.naturalWidth) return null;
      const c = document.createElement("canvas");
      c.width = E.w; c.height = E.h;
      const cx = c.getContext("2d");
      cx.drawImage(m, 0, 0);
      const id = cx.getImageData(0, 0, E.w, E.h), p = id.data;
      for (let k = 0; k < p.length; k += 4) {
        const v = p[k];
        if (v === 0) { p[k + 3] = 0; continue; }
        const col = PAL[v] || [255, 255, 255];
        p[k] = col[0]; p[k + 1] = col[1]; p[k + 2] = col[2]; p[k + 3] = 255;
      }
      cx.putImageData(id, 0, 0);
      if (cache.size >= 48) cache.delete(cache.keys().next().value);
      cache.set(i, c);
      return c;
    }

    function draw() {
      const i = self.index, im = imgs[i];
      ctx.globalAlpha = 1;
      if (im && im.complete && im.naturalWidth) ctx.drawImage(im, 0, 0, E.w, E.h);
      else { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, E.w, E.h); }
      if (toggle.checked) {
        const ov = colouredMask(i);
        if (ov) { ctx.globalAlpha = Number(opacity.value); ctx.drawImage(ov, 0, 0); ctx.globalAlpha = 1; }
      }
    }

    function update() {
      const i = self.index;
      let s = "B-scan " + (i + 1) + " / " + E.n + " (index " + i + ")";
      if (E.slice_mm) s += " · " + fmt(i * E.slice_mm, 3) + " mm";
      if (E.conf[i] != null) s += " · confidence " + fmt(E.conf[i], 3);
      status.textContent = s;
      q(".bname").textContent = E.names[i];
      if (slider) slider.value = String(i);
      const mk = q(".enface-wrap .marker");
      if (mk) mk.style.top = (100 * (i + 0.5) / E.n) + "%";
      const pm = q("svg.plot line.marker");
      if (pm) { const x = E.n > 1 ? (1000 * i / (E.n - 1)) : 500; pm.setAttribute("x1", x); pm.setAttribute("x2", x); }
    }

    self.set = function (i) {
      const t0 = performance.now();
      self.index = Math.max(0, Math.min(E.n - 1, Math.round(i)));
      draw();
      update();
      window.octsegLastSwitchMs = performance.now() - t0;
      // prefetch the neighbours' overlays while the user looks at this one
      setTimeout(() => { colouredMask(self.index + 1 < E.n ? self.index + 1 : self.index);
                         if (self.index > 0) colouredMask(self.index - 1); }, 0);
      return window.octsegLastSwitchMs;
    };
    self.step = (d) => self.set(self.index + d);
    self.ready = () => masks.every((m) => m.complete) && imgs.every((im) => !im || im.complete);

    // events
    if (slider) slider.addEventListener("input", () => { active = self; self.set(Number(slider.value)); });
    toggle.addEventListener("change", draw);
    opacity.addEventListener("input", draw);
    root.addEventListener("pointerdown", () => { active = self; });
    root.addEventListener("focusin", () => { active = self; });
    const again = () => { if (self._pending) return; self._pending = true;
                          requestAnimationFrame(() => { self._pending = false; draw(); }); };
    imgs.forEach((im, i) => { if (im) im.addEventListener("load", () => { if (i === self.index) again(); }); });
    masks.forEach((m, i) => m.addEventListener("load", () => { if (i === self.index) again(); }));

    // en-face map
    const ef = q("canvas.enface");
    if (ef) {
      const maps = E.enface.map(u16), sel = q("select.enface-class"), info = q(".enface-info");
      const S = E.n, W = E.w, ex = ef.getContext("2d");
      ef.width = W; ef.height = S;
      let cur = null;
      function render() {
        const k = sel.value;
        cur = new Float64Array(S * W);
        for (let c = 0; c < maps.length; c++) {
          if (k !== "all" && Number(k) !== c + 1) continue;
          const m = maps[c];
          for (let j = 0; j < cur.length; j++) cur[j] += m[j];
        }
        let mx = 0;
        for (let j = 0; j < cur.length; j++) if (cur[j] > mx) mx = cur[j];
        const id = ex.createImageData(W, S), p = id.data;
        for (let j = 0; j < cur.length; j++) {
          const c = ramp(mx > 0 ? cur[j] / mx : 0);
          p[4 * j] = c[0]; p[4 * j + 1] = c[1]; p[4 * j + 2] = c[2]; p[4 * j + 3] = 255;
        }
        ex.putImageData(id, 0, 0);
        q(".enface-max").textContent = E.axial_um ? fmt(mx * E.axial_um, 0) + " µm" : mx + " px";
      }
      sel.addEventListener("change", render);
      render();
      const wrap = q(".enface-wrap");
      const at = (ev) => { const r = ef.getBoundingClientRect();
        return [Math.min(S - 1, Math.max(0, Math.floor((ev.clientY - r.top) / r.height * S))),
                Math.min(W - 1, Math.max(0, Math.floor((ev.clientX - r.left) / r.width * W)))]; };
      wrap.addEventListener("click", (ev) => { active = self; self.set(at(ev)[0]); });
      wrap.addEventListener("mousemove", (ev) => { const [s, x] = at(ev), v = cur[s * W + x];
        info.textContent = "B-scan " + s + ", A-scan " + x + ": " +
          (E.axial_um ? fmt(v * E.axial_um, 1) + " µm" : v + " px"); });
    }
    const plot = q("svg.plot");
    if (plot && E.n > 1) plot.addEventListener("click", (ev) => { const r = plot.getBoundingClientRect();
      active = self; self.set((ev.clientX - r.left) / r.width * (E.n - 1)); });
    self.set(0);
  }

  document.querySelectorAll(".viewer").forEach((root) => {
    const E = D.entries[Number(root.dataset.entry)];
    window.octsegViewers.push(new Viewer(root, E));
  });
  active = window.octsegViewers[0] || null;
  // a link to one B-scan: report.html#viewer-V@K opens viewer V at B-scan index K
  const m = /^#viewer-(\d+)@(\d+)$/.exec(location.hash);
  if (m && window.octsegViewers[Number(m[1])]) {
    active = window.octsegViewers[Number(m[1])];
    active.set(Number(m[2]));
    document.getElementById("viewer-" + m[1]).scrollIntoView();
  }
  document.addEventListener("keydown", (ev) => {
    if (!active || ev.target.matches("input[type=range], select, input[type=text]")) return;
    const d = { ArrowRight: 1, ArrowDown: 1, PageDown: 10, ArrowLeft: -1, ArrowUp: -1, PageUp: -10 }[ev.key];
    if (d === undefined) return;
    ev.preventDefault();
    active.step(d);
  });
})();
"""
