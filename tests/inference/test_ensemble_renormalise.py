"""Ensembles of members with different intensity normalisation (each CV fold computes its own),
and a CV folder's min_sizes scaled from its at_size to the size a B-scan is predicted at."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_checkpoint

from octseg.errors import CheckpointError
from octseg.inference.ensemble import Renormalised, load_models
from octseg.inference.postprocess import parse_min_sizes, scale_min_sizes
from octseg.inference.predictor import Predictor

pytestmark = pytest.mark.usefixtures("one_thread")

NORM_A = {"mean": 0.2, "std": 0.15}
NORM_B = {"mean": 0.45, "std": 0.3}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("renorm")
    return (make_tiny_checkpoint(d / "a.ckpt", seed=0, normalization=NORM_A),
            make_tiny_checkpoint(d / "b.ckpt", seed=1, method="supervised", normalization=NORM_B))


def _images(n=3, size=(64, 64), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *size), dtype=np.uint8)


def test_members_with_other_normalisation_average_their_own_probabilities(ckpts):
    a, b = ckpts
    pa, pb = (Predictor.from_checkpoint(c, device="cpu") for c in (a, b))
    ens = Predictor.from_checkpoint([a, b], device="cpu")
    assert ens.normalization == NORM_A  # the ensemble's input: the first member's normalisation
    assert [m["normalization"] for m in ens.members] == [NORM_A, NORM_B]
    for x in (_images(), _images(2, (40, 72), seed=1)):  # at the input size, and resized
        mean = (pa.predict_proba(x) + pb.predict_proba(x)) / 2
        np.testing.assert_allclose(ens.predict_proba(x), mean, atol=1e-5)
    # the wrapper matters: member b run on member a's normalisation predicts otherwise
    wrong = Predictor(pb.net, {**pb.meta, "normalization": NORM_A}, device="cpu").predict_proba(x)
    assert np.abs(wrong - pb.predict_proba(x)).max() > 1e-3


def test_only_members_that_need_it_are_wrapped(ckpts, tmp_path):
    a, b = ckpts
    a2 = make_tiny_checkpoint(tmp_path / "a2.ckpt", seed=2, normalization=dict(NORM_A))
    model, _, _ = load_models([a, a2, b])
    kinds = [type(m).__name__ for m in model.members]
    assert kinds[0] != "Renormalised" and kinds[1] != "Renormalised" and kinds[2] == "Renormalised"
    t = torch.randn(1, 1, 8, 8)
    r = Renormalised(torch.nn.Identity(), NORM_A, NORM_B)
    u = t * NORM_A["std"] + NORM_A["mean"]  # the image behind the ensemble's input
    torch.testing.assert_close(r(t), (u - NORM_B["mean"]) / NORM_B["std"], atol=1e-6, rtol=1e-6)


def test_export_of_a_renormalised_ensemble_matches_torch(ckpts, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from octseg.inference.export import export_onnx

    a, b = ckpts
    out = export_onnx([a, b], tmp_path / "ens.onnx")
    x = _images(2, seed=4)
    ref = Predictor.from_checkpoint([a, b], device="cpu")
    got = Predictor.from_onnx(out, device="cpu")
    assert got.normalization == NORM_A
    np.testing.assert_allclose(got.predict_proba(x), ref.predict_proba(x), atol=1e-4)


def test_scale_min_sizes():
    assert scale_min_sizes({1: 10, 2: 0, 3: 3}, (32, 32), (64, 64)) == {1: 40, 2: 0, 3: 12}
    assert scale_min_sizes({1: 10, 2: 1}, (64, 64), (16, 16)) == {1: 1, 2: 1}  # 0.625 rounds to 1; at least 1
    assert scale_min_sizes({1: 10}, (64, 64), (20, 16)) == {1: 1}  # 0.78 -> 1
    assert scale_min_sizes({1: 100}, (64, 64), (32, 48)) == {1: 38}  # 37.5 -> 38 (round half to even)
    assert scale_min_sizes({1: 10}, None, (64, 64)) == {1: 10}  # no at_size: output pixels
    assert scale_min_sizes({1: 10}, (48, 48), (2, 48, 48)) == {1: 10}


class _Bright(torch.nn.Module):
    """IRF wherever the image is brighter than the normalisation's mean, else background."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), x, torch.full_like(x, -9), torch.full_like(x, -9)], 1)


def _one_fold_cv(cv: Path, ckpt, min_sizes: dict, at_size) -> Path:
    """A CV folder of one fold (a copy of ``ckpt``) whose cv.json records ``min_sizes`` at ``at_size``."""
    (cv / "fold_0" / "checkpoints").mkdir(parents=True)
    (cv / "fold_0" / "checkpoints" / "best.ckpt").write_bytes(Path(ckpt).read_bytes())
    (cv / "cv.json").write_text(json.dumps({
        "format": 1, "classes": ["background", "IRF", "SRF", "PED"], "checkpoints": ["fold_0/checkpoints/best.ckpt"],
        "postprocessing": {"min_sizes": min_sizes, "at_size": at_size}}))
    return cv


def test_cv_min_sizes_scale_to_the_predicted_size(ckpts, tmp_path):
    a, _ = ckpts
    cv = _one_fold_cv(tmp_path / "cv", a, {"1": 10}, [32, 32])
    img = np.zeros((64, 64), np.uint8)
    img[5:10, 5:11] = 255  # a 30-pixel component: 7.5 pixels at 32x32, under the CV's 10
    img[30:40, 30:50] = 255  # 200 pixels: kept
    p = Predictor.from_checkpoint(cv, device="cpu")
    assert p.min_sizes == {1: 10} and p.min_sizes_at == (32, 32)
    p.net = _Bright()
    raw = (img == 255).astype(np.uint8)
    got = p.predict(img)
    want = raw.copy()
    want[5:10, 5:11] = 0
    assert np.array_equal(got, want)  # scaled to 40 px at 64x64: the 30-pixel component is gone
    # --min-size given by the user (octseg predict assigns it): pixels of the output, so 10 keeps it
    p.min_sizes = parse_min_sizes(["IRF=10"], p.classes)
    assert p.min_sizes_at is None and np.array_equal(p.predict(img), raw)
    doc = json.loads((cv / "cv.json").read_text())
    doc["postprocessing"]["at_size"] = [32]
    (cv / "cv.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"cv\.json: 'postprocessing\.at_size' must be \[H, W\]"):
        Predictor.from_checkpoint(cv, device="cpu")


def test_evaluate_scales_a_cv_folders_min_sizes_to_the_scored_size(ckpts, tmp_path):
    from octseg.data.synthetic import write_synthetic_dataset
    from octseg.evaluate import evaluate_model
    from octseg.inference.ensemble import load_models

    a, _ = ckpts
    data = tmp_path / "raw"
    write_synthetic_dataset(data, 1, vendors=("spectralis",), fmt="mhd", slices=2, scale=0.15, seed=0,
                            progress=False)
    _, meta, _ = load_models(a)
    scores = {}
    # _Bright finds one ~1330-pixel IRF component per B-scan at 64x64 (and specks): 500 px at 32x32 is
    # 2000 px at 64x64, which removes it; 500 output pixels would not
    for key, sizes, at in (("cv", {1: 500}, (32, 32)), ("scaled", {1: 500 * 4}, None), ("plain", {1: 500}, None)):
        rep = evaluate_model(_Bright(), meta, data, device="cpu", progress=False, at_model_size=True,
                             min_sizes=sizes, min_sizes_at=at)  # scored at 64x64: 4x the pixels of 32x32
        scores[key] = json.dumps(rep["pooled"], sort_keys=True)  # NaN-safe comparison
        if key == "cv":
            assert rep["header"]["min_sizes"] == {"IRF": 500} and rep["header"]["min_sizes_at"] == [32, 32]
    assert scores["cv"] == scores["scaled"] and scores["cv"] != scores["plain"]


def test_an_exported_cv_folder_carries_its_postprocessing_into_onnx(ckpts, tmp_path):
    """The min_sizes a CV chose (and their at_size) travel in the ONNX metadata and apply there as they
    do on the CV folder; --min-size still overrides; malformed metadata is refused naming the file."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from octseg.inference.export import META_KEY, export_onnx

    a, _ = ckpts
    cv = _one_fold_cv(tmp_path / "cv", a, {"1": 60, "2": 60}, [32, 32])
    out = export_onnx(cv, tmp_path / "cv.onnx")
    p = Predictor.from_checkpoint(out, device="cpu", backend="onnx")
    assert p.min_sizes == {1: 60, 2: 60} and p.min_sizes_at == (32, 32)
    x = _images(2, (48, 80), seed=5)
    torch_cv = Predictor.from_checkpoint(cv, device="cpu")
    assert torch_cv.min_sizes_for((48, 80)) == p.min_sizes_for((48, 80)) == {1: 225, 2: 225}
    np.testing.assert_array_equal(p.predict(x), torch_cv.predict(x))
    raw = Predictor.from_onnx(out, device="cpu", min_sizes={})
    assert raw.min_sizes == {} and np.array_equal(raw.predict(x), Predictor.from_checkpoint(a, device="cpu").predict(x))
    assert not np.array_equal(raw.predict(x), p.predict(x))  # the post-processing removed components
    # a plain checkpoint exports without post-processing
    assert "postprocessing" not in json.loads(
        {q.key: q.value for q in onnx.load(str(export_onnx(a, tmp_path / "a.onnx"))).metadata_props}[META_KEY])
    proto = onnx.load(str(out))
    entry = next(q for q in proto.metadata_props if q.key == META_KEY)
    meta = json.loads(entry.value)
    meta["postprocessing"]["min_sizes"]["1"] = -3
    entry.value = json.dumps(meta)
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(CheckpointError, match=r"bad\.onnx: 'postprocessing\.min_sizes' must map"):
        Predictor.from_onnx(tmp_path / "bad.onnx", device="cpu")
