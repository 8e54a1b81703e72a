"""Time and size of the HTML report of a full Cirrus-geometry prediction.

    python benchmarks/report_speed.py [--slices 128] [--out PATH] [--work DIR] [--no-browser]

Writes one synthetic Cirrus volume (128 B-scans of 1024x512, RETOUCH oct.mhd), predicts it with
a random-weight tiny U-Net (input 256x256; its masks are noisier than a trained model's, so the
mask PNGs are a worst case for size), then times the report two ways:

* ``predict --report``: the report written right after prediction from the B-scans in memory;
* ``octseg report PRED_DIR``: the report of a finished prediction, reading the source volume
  and the mask volume again.

Prints the time, the size of report.html and what it is made of; with Chromium + selenium
installed also the B-scan switch time in the page (headless). Targets: <= 5 s and <= 25 MB.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from benchmarks._common import print_table, write_results  # noqa: E402

TARGET_S, TARGET_MB = 5.0, 25.0
MODEL = {"arch": "Unet", "encoder": "tu-resnet10t", "encoder_weights": "none", "encoder_depth": 3,
         "decoder_channels": [32, 16, 8]}


def _checkpoint(path: Path) -> Path:
    import torch

    from octseg.checkpoint import checkpoint_meta, save_inference_checkpoint
    from octseg.constants import RETOUCH_CLASSES
    from octseg.models import ModelConfig, build_model

    torch.manual_seed(0)
    net = build_model(ModelConfig(**MODEL), len(RETOUCH_CLASSES))
    meta = checkpoint_meta(MODEL, RETOUCH_CLASSES, (256, 256), {"mean": 0.2, "std": 0.15}, "supervised",
                           ["student"], "student")
    return save_inference_checkpoint(path, {"student": net}, meta)


def _browser_switch_ms(report: Path):
    """(median, max) ms of a B-scan switch in headless Chromium, or None without a browser."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        return None
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        t0 = time.perf_counter()
        drv.get(report.resolve().as_uri())
        while not drv.execute_script("return !!(window.octsegViewers && window.octsegViewers.length && "
                                     "window.octsegViewers.every(v => v.ready()))"):
            if time.perf_counter() - t0 > 120:
                return None
            time.sleep(0.1)
        load_s = time.perf_counter() - t0
        drv.set_script_timeout(120)
        first, again, jumps = drv.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const v = window.octsegViewers[0], a = [], b = [];
            const tick = () => new Promise((r) => setTimeout(r, 0));  // user events come one by one
            const med = (t) => { t = t.slice().sort((x, y) => x - y); return [t[t.length >> 1], t[t.length - 1]]; };
            (async () => {
              for (let i = 0; i < v.n; i++) { a.push(v.set(i)); await tick(); }   // first visit
              for (let i = v.n - 1; i >= 0; i--) { b.push(v.set(i)); await tick(); }
              const c = [];  // jumps (en-face clicks) in a fixed scrambled order, mostly to uncached B-scans
              for (let j = 0; j < v.n; j++) { c.push(v.set((j * 53 + 17) % v.n)); await tick(); }
              done([med(a), med(b), med(c)]);
            })();""")
        return {"page_ready_s": round(load_s, 2), "first_visit_median_ms": round(first[0], 2),
                "first_visit_max_ms": round(first[1], 2), "revisit_median_ms": round(again[0], 2),
                "revisit_max_ms": round(again[1], 2), "jump_median_ms": round(jumps[0], 2),
                "jump_max_ms": round(jumps[1], 2)}
    finally:
        drv.quit()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=128)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "report_speed.json")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--no-browser", action="store_true")
    a = ap.parse_args()

    from octseg.data.synthetic import write_synthetic_dataset
    from octseg.inference.predictor import Predictor
    from octseg.inference.run import claim_output, predict_path
    from octseg.report.prediction import write_prediction_report

    work = a.work or Path(tempfile.mkdtemp(prefix="octseg-report-bench-"))
    data = work / "cirrus"
    if not (data / ".octseg").is_dir():
        write_synthetic_dataset(data, volumes=1, vendors=["cirrus"], slices=a.slices, seed=0,
                                fluid_free_fraction=0.0, progress=False)
    ckpt = _checkpoint(work / "tiny.ckpt")
    pred = work / "pred"
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    with claim_output(pred, data, overwrite=True) as folder:
        t = time.perf_counter()
        run = predict_path(predictor, data, pred, progress=False, folder=folder, keep_images=True)
        predict_s = time.perf_counter() - t
        t = time.perf_counter()
        write_prediction_report(pred, folder=folder, images=run.images,
                                      spacings={v: d["spacing"] for v, d in run.volumes.items()})
        in_memory_s = time.perf_counter() - t
    t = time.perf_counter()
    rep2 = write_prediction_report(pred)  # octseg report PRED_DIR
    from_disk_s = time.perf_counter() - t

    html = rep2.path.read_text()
    mb = rep2.size_bytes / 1e6
    parts = {
        "jpeg_bscans_mb": sum(len(m) for m in re.findall(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", html)) / 1e6,
        "png_masks_mb": sum(len(m) for m in re.findall(r"data:image/png;base64,[A-Za-z0-9+/=]+", html)) / 1e6,
    }
    parts["other_mb"] = mb - parts["jpeg_bscans_mb"] - parts["png_masks_mb"]
    browser = None if a.no_browser else _browser_switch_ms(rep2.path)
    figures = {
        "volume": f"synthetic Cirrus, {run.n_bscans} B-scans of 1024x512",
        "predict_s": round(predict_s, 2),
        "report_after_predict_s": round(in_memory_s, 2),
        "report_from_folder_s": round(from_disk_s, 2),
        "report_mb": round(mb, 2),
        **{k: round(v, 2) for k, v in parts.items()},
        "target_s": TARGET_S, "target_mb": TARGET_MB,
        "met": bool(max(in_memory_s, from_disk_s) <= TARGET_S and mb <= TARGET_MB),
        "browser_switch": browser,
    }
    print_table(["measure", "value", "target"], [
        ["report after prediction (predict --report)", f"{in_memory_s:.2f} s", f"<= {TARGET_S:.0f} s"],
        ["report of the folder (octseg report PRED_DIR)", f"{from_disk_s:.2f} s", f"<= {TARGET_S:.0f} s"],
        ["report.html size", f"{mb:.1f} MB", f"<= {TARGET_MB:.0f} MB"],
        ["  of which B-scans (JPEG q85)", f"{parts['jpeg_bscans_mb']:.1f} MB", ""],
        ["  of which masks (PNG)", f"{parts['png_masks_mb']:.1f} MB", ""],
        ["(prediction itself, tiny model)", f"{predict_s:.1f} s", ""],
        *([["B-scan switch in headless Chromium, stepping (median / max)",
            f"{browser['first_visit_median_ms']:.1f} / {browser['first_visit_max_ms']:.1f} ms", "<= 50 ms"],
           ["  stepping back (revisits)", f"{browser['revisit_median_ms']:.1f} / {browser['revisit_max_ms']:.1f} ms",
            "<= 50 ms"],
           ["  jumps in scrambled order", f"{browser['jump_median_ms']:.1f} / {browser['jump_max_ms']:.1f} ms",
            "<= 50 ms"]] if browser else [["B-scan switch in the browser", "not measured (no Chromium/selenium)",
                                           ""]]),
    ])
    print(f"met: {figures['met']}; written to {write_results(a.out, 'report_speed', figures)}")
    if a.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
