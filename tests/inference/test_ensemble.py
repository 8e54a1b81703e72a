"""Ensembles of checkpoints and CV folders: mean probabilities, TTA over members x flips, errors,
and predict/evaluate/export taking several checkpoints or a CV folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_checkpoint
from PIL import Image

from octseg.checkpoint import load_network
from octseg.cli import main
from octseg.errors import CheckpointError
from octseg.inference.ensemble import Ensemble, load_models
from octseg.inference.predictor import Predictor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny checkpoints of different methods (Mean Teacher: teacher weights; supervised)."""
    d = tmp_path_factory.mktemp("ens")
    return (make_tiny_checkpoint(d / "a.ckpt", seed=0),
            make_tiny_checkpoint(d / "b.ckpt", seed=1, method="supervised"))


def _cv_folder(root: Path, ckpts, min_sizes) -> Path:
    """A CV folder as `octseg cv` writes it: cv.json naming fold checkpoints relative to it."""
    rels = []
    for k, c in enumerate(ckpts):
        dst = root / f"fold_{k}" / "checkpoints" / "best.ckpt"
        dst.parent.mkdir(parents=True)
        dst.write_bytes(Path(c).read_bytes())
        rels.append(str(dst.relative_to(root)))
    doc = {"format": 1, "recipe": "tiny", "folds": len(rels), "seed": 0,
           "classes": ["background", "IRF", "SRF", "PED"], "fold_volumes": [[] for _ in rels],
           "postprocessing": {"min_sizes": min_sizes}, "checkpoints": rels}
    (root / "cv.json").write_text(json.dumps(doc))
    return root


def _images(n=3, size=(64, 64), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *size), dtype=np.uint8)


def test_probabilities_are_the_members_mean(ckpts):
    a, b = ckpts
    x = _images()  # at the model's input size, so a flip commutes with the resizes
    pa, pb = (Predictor.from_checkpoint(c, device="cpu") for c in (a, b))
    ens = Predictor.from_checkpoint([a, b], device="cpu")
    assert "ensemble of 2" in repr(ens) and len(ens.members) == 2
    assert [m["weights"] for m in ens.members] == ["teacher", "student"]  # each member's own default
    mean = (pa.predict_proba(x) + pb.predict_proba(x)) / 2
    assert np.abs(mean[:, 0] - pa.predict_proba(x)[:, 0]).max() > 1e-3  # the members do differ
    np.testing.assert_allclose(ens.predict_proba(x), mean, atol=1e-5)
    assert np.array_equal(ens.predict(x), mean.argmax(1))
    # flip TTA: the mean probability over members x {plain, flipped}
    flips = [p.predict_proba(x[..., ::-1].copy())[..., ::-1] for p in (pa, pb)]
    ens.tta = True
    np.testing.assert_allclose(ens.predict_proba(x), (2 * mean + flips[0] + flips[1]) / 4, atol=1e-5)


def test_one_member_ensemble_equals_the_model(ckpts, tmp_path):
    a, _ = ckpts
    net, meta = load_network(a)
    t = torch.randn(2, 1, 64, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(Ensemble([net])(t).softmax(1), net(t).softmax(1), atol=1e-5)
    cv = _cv_folder(tmp_path / "cv1", [a], {})
    x = _images(2, (40, 72))
    one = Predictor.from_checkpoint(cv, device="cpu")
    assert one.members is not None and len(one.members) == 1
    np.testing.assert_allclose(one.predict_proba(x), Predictor.from_checkpoint(a, device="cpu").predict_proba(x),
                               atol=1e-5)


def test_incompatible_members_and_bad_cv_folders_are_clear_errors(ckpts, tmp_path, capsys):
    a, _ = ckpts
    duke = make_tiny_checkpoint(tmp_path / "duke.ckpt", classes=("background", "fluid"))
    with pytest.raises(CheckpointError, match=r"a\.ckpt and .*duke\.ckpt .*classes differ"):
        load_models([a, duke])
    small = make_tiny_checkpoint(tmp_path / "small.ckpt", input_size=(32, 32))
    with pytest.raises(CheckpointError, match="input_size differ"):
        Predictor.from_checkpoint([a, small], device="cpu")
    cv = _cv_folder(tmp_path / "cv", [a], {})
    (cv / "fold_0" / "checkpoints" / "best.ckpt").unlink()
    Image.fromarray(_images(1)[0]).save(tmp_path / "x.png")
    rc = main(["predict", str(cv), str(tmp_path / "x.png"), str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "cv.json" in err and "fold_0/checkpoints/best.ckpt" in err
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match="not a CV folder"):
        Predictor.from_checkpoint(tmp_path / "plain", device="cpu")


def test_cli_predict_with_two_checkpoints_and_a_cv_folder(ckpts, tmp_path, capsys):
    a, b = ckpts
    scans = tmp_path / "scans"
    scans.mkdir()
    x = _images(2, (48, 80), seed=3)
    for k, img in enumerate(x):
        Image.fromarray(img).save(scans / f"s{k}.png")
    # several checkpoints before INPUT OUT, options anywhere
    assert main(["predict", str(a), str(b), str(scans), str(tmp_path / "two"), "--device", "cpu"]) == 0
    plain = Predictor.from_checkpoint([a, b], device="cpu").predict(x)
    got = np.stack([np.asarray(Image.open(tmp_path / "two" / "masks" / f"s{k}.png")) for k in range(2)])
    assert np.array_equal(got, plain)
    # a different member list is other settings for --resume
    rc = main(["predict", str(a), str(scans), str(tmp_path / "two"), "--resume"])
    assert rc == 2 and "checkpoint" in capsys.readouterr().err
    # a CV folder: its members, and its recorded min_sizes unless --min-size is given
    sizes = {"1": 60, "2": 60, "3": 60}
    cv = _cv_folder(tmp_path / "cv", [a, b], sizes)
    assert main(["predict", str(cv), str(scans), str(tmp_path / "cvout"), "--device", "cpu"]) == 0
    got = np.stack([np.asarray(Image.open(tmp_path / "cvout" / "masks" / f"s{k}.png")) for k in range(2)])
    cleaned = Predictor.from_checkpoint([a, b], device="cpu", min_sizes=sizes).predict(x)
    assert not np.array_equal(cleaned, plain)  # the min sizes do remove something here
    assert np.array_equal(got, cleaned)
    assert main(["predict", str(cv), str(scans), str(tmp_path / "cvraw"), "--min-size", "IRF=0"]) == 0
    got = np.stack([np.asarray(Image.open(tmp_path / "cvraw" / "masks" / f"s{k}.png")) for k in range(2)])
    assert np.array_equal(got, plain)
    settings = json.loads((tmp_path / "cvout" / ".octseg" / "manifest.jsonl").read_text().splitlines()[0])
    assert len(settings["settings"]["checkpoint"]) == 2 and settings["settings"]["min_sizes"] == sizes


def test_export_of_an_ensemble_matches_torch(ckpts, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    a, b = ckpts
    out = tmp_path / "ens.onnx"
    assert main(["export", str(a), str(b), str(out)]) == 0
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["octseg"])
    assert meta["output_kind"] == "log_probabilities" and len(meta["members"]) == 2
    x = _images(3, (50, 70), seed=5)
    ref = Predictor.from_checkpoint([a, b], device="cpu", tta=True)
    ort_p = Predictor.from_checkpoint(out, device="cpu", backend="onnx", tta=True)
    assert "ensemble of 2" in repr(ort_p)
    np.testing.assert_allclose(ort_p.predict_proba(x), ref.predict_proba(x), atol=1e-4)
    assert np.array_equal(ort_p.predict(x), ref.predict(x))


def test_evaluate_with_two_checkpoints(ckpts, tmp_path, capsys):
    from octseg.data.synthetic import write_synthetic_dataset
    from octseg.evaluate import evaluate, evaluate_model

    a, b = ckpts
    data = tmp_path / "raw"
    write_synthetic_dataset(data, 1, vendors=("spectralis",), fmt="mhd", slices=2, scale=0.15, seed=0,
                            progress=False)
    out = tmp_path / "ev.json"
    assert main(["evaluate", str(a), str(b), str(data), "--device", "cpu", "--json", str(out)]) == 0
    assert "ensemble of 2" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    h = doc["header"]
    assert h["checkpoint"] == [str(a.resolve()), str(b.resolve())] and len(h["members"]) == 2
    model, meta, _ = load_models([a, b])
    same = evaluate_model(model, meta, data, device="cpu", progress=False)
    assert doc["pooled"] == json.loads(json.dumps(same["pooled"]))
    alone = evaluate(a, data, device="cpu", progress=False)
    assert alone["header"]["checkpoint"] == str(a.resolve()) and alone["pooled"] != same["pooled"]
    assert alone["header"]["min_sizes"] == {}
    cv = evaluate(_cv_folder(tmp_path / "cv", [a, b], {"2": 40}), data, device="cpu", progress=False)
    assert cv["header"]["min_sizes"] == {"SRF": 40} and len(cv["header"]["cv_folders"]) == 1


def test_cli_takes_several_checkpoints_and_old_calls_unchanged():
    from octseg.cli import build_parser

    parse = build_parser().parse_args
    a = parse(["predict", "m.ckpt", "in", "out", "--tta", "flip"])
    assert a.checkpoint == [Path("m.ckpt")] and a.input == Path("in") and a.out == Path("out")
    a = parse(["predict", "m.ckpt", "in", "--tta", "flip", "out"])  # as before: an option between INPUT and OUT
    assert a.checkpoint == [Path("m.ckpt")] and a.input == Path("in") and a.out == Path("out") and a.tta == "flip"
    a = parse(["predict", "--tta", "flip", "a.ckpt", "b.ckpt", "cv/", "in", "out", "--min-size", "IRF=5"])
    assert a.checkpoint == [Path("a.ckpt"), Path("b.ckpt"), Path("cv")] and a.input == Path("in")
    a = parse(["evaluate", "a.ckpt", "b.ckpt", "data", "--split", "s"])
    assert a.checkpoint == [Path("a.ckpt"), Path("b.ckpt")] and a.data == Path("data") and a.split == "s"
    a = parse(["export", "cv", "m.onnx"])
    assert a.checkpoint == [Path("cv")] and a.out == Path("m.onnx")
    # options anywhere between the positionals, with several checkpoints too
    a = parse(["predict", "a.ckpt", "b.ckpt", "in", "--tta", "flip", "out", "--min-size", "IRF=5"])
    assert (a.checkpoint, a.input, a.out, a.tta, a.min_size) == ([Path("a.ckpt"), Path("b.ckpt")], Path("in"),
                                                                  Path("out"), "flip", ["IRF=5"])
    a = parse(["evaluate", "a.ckpt", "--weights", "student", "b.ckpt", "data", "--json", "e.json"])
    assert a.checkpoint == [Path("a.ckpt"), Path("b.ckpt")] and a.data == Path("data") and a.weights == "student"
    a = parse(["export", "a.ckpt", "--overwrite", "b.ckpt", "m.onnx"])
    assert a.checkpoint == [Path("a.ckpt"), Path("b.ckpt")] and a.out == Path("m.onnx") and a.overwrite
