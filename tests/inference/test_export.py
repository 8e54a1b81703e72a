"""ONNX export: a checked, self-describing model that agrees with PyTorch, usable by predict."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import make_tiny_checkpoint
from PIL import Image

from octseg import __version__
from octseg.checkpoint import load_network
from octseg.cli import main
from octseg.errors import CheckpointError
from octseg.inference.export import export_onnx, read_onnx_meta
from octseg.inference.predictor import Predictor
from octseg.transforms import to_model_input


pytestmark = pytest.mark.usefixtures("one_thread")


def _session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.fixture
def exported(tmp_path, tiny_checkpoint):
    out = tmp_path / "model.onnx"
    rc = main(["export", str(tiny_checkpoint), str(out)])
    assert rc == 0
    return out


def test_export_is_checked_and_self_describing(exported, tiny_checkpoint):
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["octseg"])
    assert meta["classes"] == ["background", "IRF", "SRF", "PED"]
    assert meta["input_size"] == [64, 64] and meta["weights"] == "teacher"
    assert meta["normalization"] == {"mean": pytest.approx(0.2), "std": pytest.approx(0.15)}
    assert meta["octseg_version"] == __version__
    assert read_onnx_meta(exported)["classes"] == meta["classes"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 64, 64]


def test_onnx_agrees_with_torch(exported, tiny_checkpoint):
    model, meta = load_network(tiny_checkpoint)
    x = np.random.default_rng(0).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    t = to_model_input(torch.from_numpy(x), meta["normalization"])
    with torch.inference_mode():
        ref = model(t).numpy()
    sess = _session(exported)
    for batch in (t[:1], t):  # the batch axis is dynamic
        got = sess.run(None, {"image": batch.numpy()})[0]
        assert got.shape == ref[: len(batch)].shape
        assert np.abs(got - ref[: len(batch)]).max() < 1e-3
        assert np.array_equal(got.argmax(1), ref[: len(batch)].argmax(1))


def test_onnx_predictor_matches_torch(tmp_path, exported, tiny_checkpoint):
    x = np.random.default_rng(1).integers(0, 256, (4, 50, 90), dtype=np.uint8)
    torch_p = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", tta=True)
    onnx_file = Predictor.from_checkpoint(exported, device="cpu", backend="onnx", tta=True)
    onnx_ckpt = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", backend="onnx", tta=True)
    assert onnx_file.classes == torch_p.classes and onnx_file.input_size == torch_p.input_size
    ref = torch_p.predict(x)
    assert np.array_equal(onnx_file.predict(x), ref)
    assert np.array_equal(onnx_ckpt.predict(x), ref)
    np.testing.assert_allclose(onnx_file.predict_proba(x), torch_p.predict_proba(x), atol=1e-4)
    with pytest.raises(CheckpointError, match="backend onnx"):
        Predictor.from_checkpoint(exported, device="cpu")


def test_cli_backend_onnx_same_masks(tmp_path, exported, tiny_checkpoint, capsys):
    src = tmp_path / "scans"
    src.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 56), dtype=np.uint8)).save(src / f"b{i}.png")
    assert main(["predict", str(tiny_checkpoint), str(src), str(tmp_path / "pt")]) == 0
    assert main(["predict", str(exported), str(src), str(tmp_path / "ox"), "--backend", "onnx"]) == 0
    assert "backend onnx" in capsys.readouterr().out
    for i in range(3):
        a = np.asarray(Image.open(tmp_path / "pt" / "masks" / f"b{i}.png"))
        b = np.asarray(Image.open(tmp_path / "ox" / "masks" / f"b{i}.png"))
        assert np.array_equal(a, b)
    assert (tmp_path / "pt" / "fluid.csv").read_text() == (tmp_path / "ox" / "fluid.csv").read_text()


def test_export_student_weights(tmp_path, tiny_checkpoint):
    t = export_onnx(tiny_checkpoint, tmp_path / "t.onnx")
    s = export_onnx(tiny_checkpoint, tmp_path / "s.onnx", weights="student")
    assert read_onnx_meta(s)["weights"] == "student"
    x = np.zeros((1, 1, 64, 64), np.float32) + 0.3
    assert not np.allclose(_session(t).run(None, {"image": x})[0], _session(s).run(None, {"image": x})[0])


def test_export_errors(tmp_path, tiny_checkpoint, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    assert main(["export", str(bad), str(tmp_path / "x.onnx")]) == 2
    assert str(bad) in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["export", str(tiny_checkpoint), str(blocker / "m.onnx")]) == 2
    assert str(blocker / "m.onnx") in capsys.readouterr().err
    # an ONNX file that octseg did not write has no metadata to run it with
    plain = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["image"], ["logits"])], "g",
        [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 1, 4, 4])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 1, 4, 4])]))
    onnx.save(plain, tmp_path / "plain.onnx")
    with pytest.raises(CheckpointError, match="not exported by octseg"):
        Predictor.from_onnx(tmp_path / "plain.onnx", device="cpu")


def test_export_binary_checkpoint(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "bin.ckpt", classes=("background", "fluid"), input_size=(32, 48),
                                method="supervised")
    out = export_onnx(ckpt, tmp_path / "bin.onnx")
    p = Predictor.from_checkpoint(out, device="cpu", backend="onnx")
    assert p.classes == ("background", "fluid") and p.input_size == (32, 48)
    assert p.predict(np.zeros((20, 30), np.uint8)).shape == (20, 30)
