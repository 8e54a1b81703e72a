"""evaluate: raw and prepared data, native vs model size, a perfect predictor, errors, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_tiny_checkpoint
from fakes import write_mhd, write_retouch_case
from torch import nn

from octseg.cli import main
from octseg.data.prepare import prepare_dataset
from octseg.data.splits import make_split
from octseg.data.synthetic import write_synthetic_dataset
from octseg.constants import RETOUCH_CLASSES
from octseg.errors import ConfigError, DataError
from octseg.evaluate import evaluate, evaluate_model, format_evaluation, write_json

FG = ("IRF", "SRF", "PED")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model gains nothing from threads, and spinning threads crawl on a busy CI box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """4 small synthetic volumes (cirrus, spectralis, topcon, cirrus), 3 B-scans each."""
    out = tmp_path_factory.mktemp("synth") / "raw"
    write_synthetic_dataset(out, 4, vendors=("cirrus", "spectralis", "topcon"), fmt="mhd", slices=3,
                            scale=0.15, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def raw_result(synth, ckpt):
    return evaluate(ckpt, synth, device="cpu", progress=False)


def test_raw_native_size_report(raw_result, tmp_path):
    r = raw_result
    h = r["header"]
    assert h["n_bscans"] == r["n_bscans"] == 12 and h["n_volumes"] == r["n_volumes"] == 4
    assert h["scored_at"] == "native" and h["data_kind"] == "raw" and h["layout"] == "retouch"
    assert set(h["sizes"]) == {"154x77", "74x77", "133x77"}  # cirrus, spectralis, topcon at scale 0.15
    assert h["weights"] == "teacher" and h["tta"] == "none" and h["hd95_unit"] == "mm"
    assert set(r["by_vendor"]) == {"cirrus", "spectralis", "topcon"}
    assert r["by_vendor"]["cirrus"]["n_volumes"] == 2
    assert r["per_volume"] is not None and len(r["per_volume_table"]) == 4
    assert [row["id"] for row in r["per_bscan_table"]][:3] == ["Cirrus_TRAIN001_000", "Cirrus_TRAIN001_001",
                                                               "Cirrus_TRAIN001_002"]
    ret = r["retouch"]
    assert ret["overall"]["auc_score_unit"] == "mm3"
    assert all(ret["overall"]["avd_mm3"][c] is not None for c in FG)
    assert set(ret["by_vendor"]) == {"cirrus", "spectralis", "topcon"}
    vol = ret["volumes"]["Cirrus_TRAIN001"]
    assert vol["vendor"] == "cirrus" and set(vol) >= {"dice", "avd_mm3", "gt_mm3", "pred_mm3"}

    path = write_json(r, tmp_path / "sub" / "report.json")
    doc = json.loads(path.read_text())
    assert set(doc) >= {"header", "classes", "pooled", "per_bscan", "per_volume", "hd95", "by_vendor",
                        "per_volume_table", "per_bscan_table", "retouch", "mean_foreground_dice"}
    assert set(doc["header"]) >= {"checkpoint", "data", "part", "weights", "tta", "scored_at", "octseg_version"}
    assert not list((tmp_path / "sub").glob("*.tmp"))

    text = format_evaluation(r)
    assert "== vendor spectralis" in text and "RETOUCH volume metrics: all (4 volumes)" in text
    assert "native size of each B-scan" in text


def test_at_model_size(synth, ckpt, raw_result):
    r = evaluate(ckpt, synth, at_model_size=True, tta="flip", device="cpu", progress=False)
    h = r["header"]
    assert h["scored_at"] == "model" and h["sizes"] == {"64x64": 12} and h["tta"] == "flip"
    assert r["n_bscans"] == 12 and r["hd95"]["unit"] == "mm"
    # the fluid volume in mm^3 barely changes: the spacing was rescaled with the masks
    for vid, v in r["retouch"]["volumes"].items():
        native = raw_result["retouch"]["volumes"][vid]["gt_mm3"]
        for c in FG:
            if native[c]:
                assert v["gt_mm3"][c] == pytest.approx(native[c], rel=0.3)
    assert "model input size 64x64" in format_evaluation(r)


def test_prepared_with_split(synth, ckpt, tmp_path):
    prep = tmp_path / "prep"
    prepare_dataset(synth, prep, size=(96, 64), progress=False)
    split = json.loads(make_split(prep, val=0.25, test=0.25, seed=0, name="default").read_text())
    r = evaluate(ckpt, prep, split="default", part="test", device="cpu", progress=False)
    h = r["header"]
    assert h["data_kind"] == "prepared" and h["scored_at"] == "prepared" and h["part"] == "test"
    assert r["n_bscans"] == len(split["parts"]["test"]) == 3 and r["n_volumes"] == 1
    assert {row["id"] for row in r["per_bscan_table"]} == set(split["parts"]["test"])
    assert h["sizes"] == {"96x64": 3} and r["hd95"]["unit"] == "mm"
    assert "stores no original-size masks" in format_evaluation(r)

    whole = evaluate(ckpt, prep, device="cpu", progress=False)
    assert whole["n_bscans"] == 12 and whole["header"]["part"] is None

    with pytest.raises(DataError, match="no such split"):
        evaluate(ckpt, prep, split="nope", device="cpu", progress=False)
    with pytest.raises(DataError, match="no part 'holdout'"):
        evaluate(ckpt, prep, split="default", part="holdout", device="cpu", progress=False)


def test_split_needs_prepared_data(synth, ckpt):
    with pytest.raises(ConfigError, match="prepared dataset"):
        evaluate(ckpt, synth, split="default", device="cpu", progress=False)


def test_class_mismatch_names_both_lists(synth, tmp_path):
    two = make_tiny_checkpoint(tmp_path / "two.ckpt", classes=("background", "fluid"))
    with pytest.raises(DataError) as err:
        evaluate(two, synth, device="cpu", progress=False)
    msg = str(err.value)
    assert "['background', 'IRF', 'SRF', 'PED']" in msg and "['background', 'fluid']" in msg


def test_class_names_may_differ_in_case(synth, tmp_path):
    ck = make_tiny_checkpoint(tmp_path / "lower.ckpt", classes=("Background", "irf", "srf", "ped"))
    r = evaluate(ck, synth, device="cpu", progress=False, at_model_size=True)
    assert r["classes"] == ["Background", "irf", "srf", "ped"]


def test_unlabelled_scans_are_skipped(tmp_path, ckpt):
    write_retouch_case(tmp_path / "raw", "Cirrus", "TRAIN001", slices=2, height=40, labelled=False)
    with pytest.raises(DataError, match="nothing to score"):
        evaluate(ckpt, tmp_path / "raw", device="cpu", progress=False)
    write_retouch_case(tmp_path / "raw", "Cirrus", "TRAIN002", slices=3, height=40)
    r = evaluate(ckpt, tmp_path / "raw", device="cpu", progress=False)
    assert r["n_bscans"] == 3 and r["header"]["unlabelled_volumes"] == 1
    prepare_dataset(tmp_path / "raw", tmp_path / "prep", progress=False)
    r = evaluate(ckpt, tmp_path / "prep", device="cpu", progress=False)
    assert r["n_bscans"] == 3 and r["header"]["unlabelled_skipped"] == 2
    assert "2 unlabelled B-scans skipped" in format_evaluation(r)


# ---------------------------------------------------------------------------- perfect model


class IntensityModel(nn.Module):
    """Predicts class k where the 8-bit intensity is 80*k: exact on images built that way."""

    def __init__(self, k: int = 4):
        super().__init__()
        self.register_buffer("levels", torch.arange(k, dtype=torch.float32) * 80)

    def forward(self, x):  # normalisation mean 0, std 1: x = intensity / 255
        u = x * 255.0
        return -(u - self.levels[None, :, None, None]) ** 2


def _blocky_labels(rng, shape) -> np.ndarray:
    """Labels constant on 2x2 blocks: area-shrinking by 2 and nearest-enlarging are then exact."""
    S, H, W = shape
    small = np.zeros((S, H // 2, W // 2), np.uint8)
    for s in range(S):
        for c in (1, 2, 3):
            r0, c0 = rng.integers(0, H // 2 - 10), rng.integers(0, W // 2 - 10)
            small[s, r0:r0 + rng.integers(3, 10), c0:c0 + rng.integers(3, 10)] = c
    return small.repeat(2, 1).repeat(2, 2)


def test_perfect_predictor_scores_one(tmp_path):
    rng = np.random.default_rng(1)
    spacing = (0.012, 0.004, 0.1)  # col, row, slice (mhd order)
    for vendor, case, fluid in (("Cirrus", "TRAIN001", True), ("Cirrus", "TRAIN002", True),
                                ("Spectralis", "TRAIN003", False)):
        lab = _blocky_labels(rng, (2, 128, 96)) if fluid else np.zeros((2, 128, 96), np.uint8)
        d = tmp_path / "raw" / f"RETOUCH-TrainingSet-{vendor}" / case
        write_mhd(d / "oct.mhd", lab * 80, spacing)
        write_mhd(d / "reference.mhd", lab, spacing)
    meta = {"classes": list(RETOUCH_CLASSES), "input_size": [64, 48], "normalization": {"mean": 0.0, "std": 1.0},
            "method": "oracle", "weights": "none"}
    results = {}
    for ams in (False, True):
        r = evaluate_model(IntensityModel(), meta, tmp_path / "raw", at_model_size=ams, batch=3, progress=False)
        results[ams] = r
        assert r["n_bscans"] == 6 and r["n_volumes"] == 3
        for c in RETOUCH_CLASSES:
            assert r["pooled"]["dice"][c] == 1.0 and r["per_bscan"]["dice"][c] == 1.0
        assert all(r["hd95"]["mean"][c] == 0.0 for c in FG)
        ret = r["retouch"]["overall"]
        assert all(ret["dice"][c] == 1.0 and ret["avd_mm3"][c] == 0.0 for c in FG)
        assert all(ret["auc"][c] == 1.0 for c in FG)  # 2 volumes with fluid, 1 without
        assert r["retouch"]["volumes"]["Spectralis_TRAIN003"]["dice"]["IRF"] is None  # absent: not scored
    # same fluid volume in mm^3 at both sizes: voxels / 4, rescaled spacing x 4
    for vid, v in results[False]["retouch"]["volumes"].items():
        for c in FG:
            assert results[True]["retouch"]["volumes"][vid]["gt_mm3"][c] == pytest.approx(v["gt_mm3"][c])


# ------------------------------------------------------------------------------------- CLI


def test_cli(synth, ckpt, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = main(["evaluate", str(ckpt), str(synth), "--json", str(out), "--at-model-size", "--device", "cpu",
               "--weights", "student"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "weights student" in text and "== all (12 B-scans, 4 volumes) ==" in text
    assert "RETOUCH volume metrics" in text and f"report written to {out}" in text
    doc = json.loads(out.read_text())
    assert doc["header"]["weights"] == "student" and doc["n_bscans"] == 12

    rc = main(["evaluate", str(ckpt), str(synth), "--split", "x"])
    assert rc == 2 and "prepared dataset" in capsys.readouterr().err


# ------------------------------------------------------------------------------- real data


def test_real_duke(shared_data, tmp_path):
    ck = make_tiny_checkpoint(tmp_path / "duke.ckpt", classes=("background", "fluid"))
    r = evaluate(ck, shared_data / "duke-dme-train", device="cpu", progress=False)
    h = r["header"]
    assert r["n_bscans"] == h["n_bscans"] == 55 and r["n_volumes"] == 5
    assert h["layout"] == "folders" and h["sizes"] == {"496x768": 55} and not h["spacing_known"]
    assert r["hd95"]["unit"] == "px"  # no spacing in the Duke PNGs
    assert len(r["per_volume_table"]) == 5 and "by_vendor" not in r
    assert r["retouch"]["overall"]["avd_mm3"]["fluid"] is None
    assert "RETOUCH volume metrics" not in format_evaluation(r)
