"""octseg report / predict --report without a browser: the numbers, one offline file, escaping,
images and volumes, missing sources, the output folder's record, and errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from octseg.cli import main
from octseg.overlay import enface_counts, enface_thickness_um
from octseg.report.enface import area_per_bscan


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from conftest import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def volume_prediction(tmp_path_factory, tiny_ckpt):
    from octseg.data.synthetic import write_synthetic_dataset

    tmp = tmp_path_factory.mktemp("vol")
    write_synthetic_dataset(tmp / "syn", volumes=2, vendors=["cirrus", "spectralis"], slices=4, scale=0.2, seed=1,
                            fluid_free_fraction=0.0, progress=False)
    assert main(["predict", str(tiny_ckpt), str(tmp / "syn"), str(tmp / "pred"), "--report"]) == 0
    return tmp / "pred"


def _external_refs(text: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import|https?://""",
                      text, flags=re.I)


def test_enface_thickness_matches_the_mask_stack_exactly():
    from octseg.data.synthetic import generate_volume

    vol = generate_volume("cirrus", np.random.default_rng(3), slices=5, scale=0.2)
    labels = vol.labels
    assert labels.any()
    counts = enface_counts(labels, 4)
    S, H, W = labels.shape
    assert counts.shape == (3, S, W) and counts.dtype == np.uint16
    for c in range(1, 4):
        for s in range(S):
            for x in range(0, W, 7):
                assert counts[c - 1, s, x] == int((labels[s, :, x] == c).sum())
    um = enface_thickness_um(labels, 4, vol.spacing.row)
    np.testing.assert_allclose(um, counts * vol.spacing.row * 1000.0)
    assert um.sum() / (vol.spacing.row * 1000.0) == pytest.approx((labels > 0).sum())  # every fluid pixel once
    areas = area_per_bscan(labels, 4)
    assert (areas == counts.sum(axis=2).T).all()
    assert (enface_thickness_um(labels, 4, None) == counts).all()  # pixels where the spacing is unknown


def test_volume_report_is_one_offline_file_with_a_viewer_per_volume(volume_prediction):
    html = (volume_prediction / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert not _external_refs(html)
    assert html.count('class="viewer"') == 2
    assert "mm³" in html and "nL" in html and "Cirrus_TRAIN001" in html
    assert html.count("data:image/jpeg;base64,") == 8 and html.count("data:image/png;base64,") >= 8
    assert "low confidence" in html  # a random model is unsure
    # the report is the prediction's file: recorded, and replaced by `octseg report` without complaint
    assert "report.html" in (volume_prediction / ".octseg" / "files.txt").read_text().split()
    assert main(["report", str(volume_prediction)]) == 0
    assert not list(volume_prediction.glob(".octseg-tmp-*"))


def test_confidence_table(volume_prediction):
    import csv

    rows = list(csv.DictReader(open(volume_prediction / "confidence.csv")))
    bscans = [r for r in rows if r["level"] == "bscan"]
    vols = [r for r in rows if r["level"] == "volume"]
    assert len(bscans) == 8 and len(vols) == 2
    for r in rows:
        assert 0.25 <= float(r["confidence"]) <= 1.0  # max softmax of 4 classes
    for v in vols:
        mine = [float(r["confidence"]) for r in bscans if r["volume"] == v["volume"]]
        assert float(v["confidence"]) == pytest.approx(np.mean(mine), abs=1e-4)


def test_report_of_images_escapes_names_and_says_when_a_source_is_gone(tmp_path, tiny_ckpt):
    src = tmp_path / "scans"
    src.mkdir()
    rng = np.random.default_rng(0)
    evil = 'x<img src=x onerror=alert(1)>&"q'
    for name in (f"{evil}_00", f"{evil}_01", "lone"):
        Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8)).save(src / f"{name}.png")
    Image.fromarray(rng.integers(0, 255, (30, 50), dtype=np.uint8)).save(src / "other.png")
    pred = tmp_path / "pred"
    assert main(["predict", str(tiny_ckpt), str(src), str(pred)]) == 0
    outside = sorted(p.name for p in tmp_path.iterdir())
    assert main(["report", str(pred)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == outside  # nothing written outside PRED_DIR
    html = (pred / "report.html").read_text()
    assert evil not in html and "<img src=x" not in html
    assert "x&lt;img src=x onerror=alert(1)&gt;&amp;&quot;q" in html
    assert not _external_refs(html)
    assert "Fluid height along the B-scan" in html  # lone images
    assert "En-face fluid map" in html  # the two same-size images of one volume form a stack
    assert "source gone" not in html

    (src / "lone.png").unlink()
    assert main(["report", str(pred)]) == 0
    html = (pred / "report.html").read_text()
    assert "source gone" in html and "lone.png" in html
    assert html.count("data:image/jpeg") == 3  # the other three B-scans still have their scans

    (pred / "confidence.csv").unlink()  # a prediction from before confidence.csv
    assert main(["report", str(pred)]) == 0
    assert "n/a" in (pred / "report.html").read_text()


def test_report_needs_a_prediction_run_or_benchmark(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("octseg report: error:") and "\n" not in err and "is not an octseg predict output" in err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert not (tmp_path / "report.html").exists()


def test_report_refuses_a_prediction_folder_holding_user_files(volume_prediction, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(volume_prediction, copy)
    (copy / "mine.txt").write_text("user data")
    assert main(["report", str(copy)]) == 2
    assert "did not write" in capsys.readouterr().err


def test_report_of_a_training_run_folder(tmp_path):
    import json

    from octseg.io.outputs import OutputFolder

    run = tmp_path / "run"
    with OutputFolder(run, "train", whole=True):
        (run / "config.yaml").write_text("method:\n  name: mean_teacher\nseed: 0\n")
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "best.ckpt").write_bytes(b"")
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(run / "learning_curves.png")
        per_class = lambda d: {"IRF": {"dice": d, "iou": d / 2}, "SRF": {"dice": d + 0.1, "iou": d / 3}}  # noqa: E731
        (run / "metrics.json").write_text(json.dumps({"train_seconds": 12.5, "epochs": 2, "val": {
            "student": per_class(0.4), "teacher": per_class(0.5)}}))
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert "mean_teacher" in html and "data:image/png;base64," in html and "best.ckpt" in html
    assert html.index(">teacher<") < html.index(">student<")  # the shipped network first
    assert "<th>dice</th>" in html and "0.5" in html and not _external_refs(html)


def test_report_of_a_benchmark_json(tmp_path, capsys):
    import json

    res = tmp_path / "results"
    res.mkdir()
    doc = {"benchmark": "demo", "machine": {"cpu_count": 2, "cpu_model": "Test CPU"},
           "figures": {"speed": {"torch": {"per_s": 13.2, "s": 9.7}, "onnx": {"per_s": 16.9, "s": 7.6}},
                       "<b>key</b>": "x<y", "met": True, "rows": [{"a": 1, "b": 2.5}, {"a": 3, "b": None}]}}
    (res / "demo.json").write_text(json.dumps(doc))
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(res / "demo.png")
    assert main(["report", str(res / "demo.json")]) == 0
    html = (res / "demo.html").read_text()
    assert "<th>per_s</th>" in html and "16.9" in html and "Test CPU" in html and "data:image/png" in html
    assert "<b>key</b>" not in html and "&lt;b&gt;key&lt;/b&gt;" in html and "x&lt;y" in html
    assert main(["report", str(res / "demo.json")]) == 0  # its own page is replaced
    (res / "mine.html").write_text("<html>my notes</html>")
    capsys.readouterr()
    assert main(["report", str(res / "demo.json"), "--out", str(res / "mine.html")]) == 2
    assert "not written by octseg" in capsys.readouterr().err
    assert (res / "mine.html").read_text() == "<html>my notes</html>"


@pytest.mark.parametrize("fmt", ["png", "nii"])
def test_report_reads_every_mask_format_of_a_volume(tmp_path, tiny_ckpt, fmt):
    from octseg.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "syn", volumes=1, vendors=["topcon"], slices=3, scale=0.15, seed=2,
                            fluid_free_fraction=0.0, progress=False)
    pred = tmp_path / "pred"
    assert main(["predict", str(tiny_ckpt), str(tmp_path / "syn"), str(pred), "--format", fmt]) == 0
    assert main(["report", str(pred)]) == 0
    html = (pred / "report.html").read_text()
    assert html.count('class="viewer"') == 1 and html.count("data:image/jpeg") == 3
    assert "source gone" not in html and "µm" in html  # axial spacing known: thickness in µm
