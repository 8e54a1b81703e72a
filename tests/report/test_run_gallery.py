"""A training run's report: the gallery of its worst and best validation B-scans."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_train_overrides

from octseg.config import load_config
from octseg.report.gallery import (
    N_EACH,
    Gallery,
    GalleryItem,
    gallery_html,
    mean_foreground_dice,
    pick_worst_and_best,
)


@pytest.fixture
def gallery_prepared(tiny_prepared):
    return tiny_prepared


def _tiny_overrides(path, **extra):
    o = {"data.val": 0.34, "trainer.steps_per_epoch": 2, "trainer.max_epochs": 1, "method.name": "supervised",
         "augment.enabled": False}
    o.update(extra)
    return tiny_train_overrides(path, **o)


def _train_tiny_run(data_path, out):
    from octseg.training.run import train

    torch.set_num_threads(1)
    return train(load_config(None, _tiny_overrides(data_path)), out_dir=out).run_dir


def _figures(html: str) -> list[str]:
    return re.findall(r'<figure class="gallery-item".*?</figure>', html, flags=re.S)


# ----------------------------------------------------------------------------- pure helpers


def test_mean_foreground_dice_skips_undefined_classes():
    classes = ["background", "IRF", "SRF", "PED"]
    assert mean_foreground_dice({"background": 0.9, "IRF": 0.5, "SRF": None, "PED": 0.0}, classes) == 0.25
    assert mean_foreground_dice({"background": 0.9, "IRF": None, "SRF": None, "PED": None}, classes) is None


def test_pick_worst_and_best_orders_worst_to_best():
    scores = [0.5, None, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.6, 0.4, None, 0.95]
    picked = pick_worst_and_best(scores, 4)
    assert [scores[i] for i in picked] == [0.1, 0.2, 0.3, 0.4, 0.7, 0.8, 0.9, 0.95]
    assert pick_worst_and_best([None, 0.3, 0.1], 4) == [2, 1]  # few: all defined ones, each once
    assert pick_worst_and_best([None, None], 4) == []


def test_gallery_html_escapes_names_and_shrinks_wide_images():
    import base64
    import io

    from PIL import Image

    img = np.zeros((40, 1000), np.uint8)
    lab = np.zeros((40, 1000), np.uint8)
    lab[10:20, 100:300] = 1
    lab[0, 0] = 255  # unlabelled: not drawn, no error
    item = GalleryItem("<b>id</b>", "vol&<1>", 0.5, img, lab, lab)
    html = gallery_html(Gallery([item], ["background", "<i>IRF</i>"], 3, "teacher", note="a <note>"))
    assert "<b>" not in html and "&lt;b&gt;id&lt;/b&gt;" in html and "vol&amp;&lt;1&gt;" in html
    assert "a &lt;note&gt;" in html
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(uris) == 2
    for u in uris:
        assert Image.open(io.BytesIO(base64.b64decode(u))).width <= 512


# ----------------------------------------------------------------------------- a run's report


def test_run_report_has_gallery_sorted_worst_to_best(gallery_prepared, tmp_path):
    from octseg.cli import main

    run_dir = _train_tiny_run(gallery_prepared, tmp_path / "run")
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "Validation gallery" in html and "gallery unavailable" not in html
    figs = _figures(html)
    assert 1 <= len(figs) <= 2 * N_EACH
    n_val = int(re.search(r"(\d+) of (\d+) validation B-scans", html).group(2))
    assert n_val >= 2 * N_EACH and len(figs) == 2 * N_EACH  # synthetic volumes all have fluid: all ranked
    dices = []
    for fig in figs:
        assert len(re.findall(r'<img class="gallery-(?:ref|pred)" [^>]*src="data:image/png;base64,', fig)) == 2
        cap = re.search(r"<figcaption>(.*?)</figcaption>", fig).group(1)
        m = re.search(r"· volume (.+?) · Dice (\d\.\d{3})$", cap)
        assert m, cap
        dices.append(float(m.group(2)))
    assert dices == sorted(dices)
    assert html.count('class="gallery-ref"') == html.count('class="gallery-pred"') == len(figs)


def test_run_report_without_its_dataset_says_gallery_unavailable(gallery_prepared, tmp_path):
    from octseg.cli import main

    data = tmp_path / "prepared"
    shutil.copytree(gallery_prepared, data)
    run_dir = _train_tiny_run(data, tmp_path / "run")
    shutil.rmtree(data)
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "validation gallery unavailable" in html and "no longer exists" in html
    assert not _figures(html)
    assert "Recipe (config.yaml)" in html  # the rest of the page is still there
