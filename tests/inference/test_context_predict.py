"""Prediction, evaluation, ensembles and ONNX export with a 2.5D checkpoint (model.context_slices=1):
each B-scan is predicted with its neighbours from its volume, exactly as a hand-stacked input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL

import octseg.data.context as context
from octseg.errors import CheckpointError
from octseg.transforms import resize_scores

CLASSES = ("background", "IRF", "SRF", "PED")
NORM = {"mean": 0.3, "std": 0.2}
pytestmark = pytest.mark.usefixtures("one_thread")


def _checkpoint(path, k: int, seed: int = 0):
    from octseg.checkpoint import checkpoint_meta, save_inference_checkpoint
    from octseg.models import ModelConfig, build_model

    torch.manual_seed(seed)
    model = {**TINY_MODEL, "context_slices": k}
    net = build_model(ModelConfig(**model), len(CLASSES)).eval()
    with torch.no_grad():  # a visible bias: random tiny nets otherwise predict one class everywhere
        net.segmentation_head[0].bias.copy_(torch.tensor([0.0, 0.05, -0.05, 0.02]))
    meta = checkpoint_meta(model, CLASSES, (48, 48), NORM, "supervised", ["student"], "student")
    return save_inference_checkpoint(path, {"student": net}, meta), net


def _volume(n=4, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)


def _by_hand(net, stacks: np.ndarray) -> np.ndarray:
    """argmax of the network on a hand-stacked uint8 (N, 3, H, W) input."""
    x = (torch.from_numpy(stacks).float() / 255.0 - NORM["mean"]) / NORM["std"]
    with torch.no_grad():
        return net(x).argmax(1).to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def k1(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("k1") / "k1.ckpt", 1)


def test_predictor_uses_each_bscans_neighbours_from_its_volume(k1):
    from octseg.inference.predictor import Predictor

    path, net = k1
    vol = _volume()
    p = Predictor.from_checkpoint(path, device="cpu", batch=3)  # batches that cut through the volume
    assert p.context_slices == 1
    got = p.predict(vol)
    idx = [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]  # edges repeat the edge B-scan
    want = _by_hand(net, np.stack([vol[i] for i in idx]))
    assert np.array_equal(got, want)
    # the neighbours matter: the same B-scans, each alone (its own neighbour), predict otherwise
    alone = _by_hand(net, np.repeat(vol[:, None], 3, axis=1))
    assert not np.array_equal(got, alone)
    # slice_indices reorder the volume: the neighbours follow the slice order, not the array order
    perm = [2, 0, 3, 1]
    assert np.array_equal(p.predict(vol[perm], slice_indices=perm), want[perm])
    proba = p.predict_proba(vol)
    assert proba.shape == (4, 4, 48, 48) and np.array_equal(proba.argmax(1), want)


def test_a_single_bscan_is_its_own_neighbour_with_a_warning(k1, monkeypatch):
    from octseg.inference.predictor import Predictor

    monkeypatch.setattr(context, "_warned_lone", False)
    path, net = k1
    img = _volume(1)[0]
    with pytest.warns(UserWarning, match="no volume"):
        got = Predictor.from_checkpoint(path, device="cpu").predict(img)
    assert np.array_equal(got, _by_hand(net, np.stack([img, img, img])[None])[0])


def test_octseg_predict_on_an_image_folder_groups_bscans_by_volume(k1, tmp_path):
    from octseg.inference.predictor import Predictor
    from octseg.inference.run import predict_path
    from octseg.io.images import read_image, write_png

    path, net = k1
    src = tmp_path / "scans"
    src.mkdir()
    vols = {"P1": _volume(3, seed=2), "P2": _volume(2, seed=3)}
    for v, imgs in vols.items():
        for s, img in enumerate(imgs):
            write_png(src / f"{v}_{s:02d}.png", img)
    predict_path(Predictor.from_checkpoint(path, device="cpu", batch=2), src, tmp_path / "out", progress=False)
    for v, imgs in vols.items():
        n = len(imgs)
        idx = [[max(i - 1, 0), i, min(i + 1, n - 1)] for i in range(n)]
        want = _by_hand(net, np.stack([imgs[j] for j in idx]))
        got = np.stack([read_image(tmp_path / "out" / "masks" / f"{v}_{s:02d}.png") for s in range(n)])
        assert np.array_equal(got, want), v


def test_evaluate_stacks_neighbours_from_the_dataset(k1, tiny_prepared):
    from octseg.data.context import context_rows, stack_context
    from octseg.data.prepared import PreparedDataset
    from octseg.evaluate import evaluate

    path, net = k1
    res = evaluate(path, tiny_prepared, device="cpu", progress=False)
    assert res["header"]["context_slices"] == 1
    ds = PreparedDataset(tiny_prepared)
    rows = np.flatnonzero(ds.labelled)
    table = context_rows([s.volume for s in ds.slices], [s.slice_index for s in ds.slices], 1)

    def counts(stacks):
        x = torch.nn.functional.interpolate(torch.from_numpy(stacks).float(), size=(48, 48), mode="area")
        with torch.no_grad():
            probs = net((x / 255.0 - NORM["mean"]) / NORM["std"]).float().softmax(1)
        pred = resize_scores(probs, ds.size).argmax(1)  # as predictions are brought to the B-scans' size
        return np.bincount(pred.to(torch.int64).flatten().numpy(), minlength=4)

    got = np.array([res["pooled"]["pred_pixels"][c] for c in CLASSES])
    with_neighbours = np.abs(got - counts(stack_context(ds.images, table, rows))).sum()
    alone = np.abs(got - counts(np.repeat(np.asarray(ds.images[rows])[:, None], 3, axis=1))).sum()
    assert with_neighbours <= 4 < alone  # (a pixel may flip with the order of float sums)


def test_ensemble_members_must_agree_on_context_slices(k1, tmp_path):
    from octseg.inference.predictor import Predictor

    path, _ = k1
    flat, _ = _checkpoint(tmp_path / "k0.ckpt", 0)
    with pytest.raises(CheckpointError, match="context_slices"):
        Predictor.from_checkpoint([path, flat], device="cpu")
    other, _ = _checkpoint(tmp_path / "k1b.ckpt", 1, seed=5)
    ens = Predictor.from_checkpoint([path, other], device="cpu")
    assert ens.context_slices == 1 and ens.predict(_volume()).shape == (4, 48, 48)


def test_onnx_export_reads_2k_plus_1_channels_and_matches_torch(k1, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from octseg.inference.export import export_onnx, read_onnx_meta
    from octseg.inference.predictor import Predictor

    path, _ = k1
    onnx_path = export_onnx(path, tmp_path / "k1.onnx")
    meta = read_onnx_meta(onnx_path)
    assert meta["context_slices"] == 1
    import onnx

    dims = onnx.load(str(onnx_path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 3
    vol = _volume()
    o = Predictor.from_onnx(onnx_path, device="cpu")
    t = Predictor.from_checkpoint(path, device="cpu", channels_last=False)
    assert o.context_slices == 1
    np.testing.assert_allclose(o.predict_proba(vol), t.predict_proba(vol), atol=1e-4)
