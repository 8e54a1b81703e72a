"""Prediction: the Predictor API, post-processing, and `octseg predict` on users' inputs and bad inputs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import make_tiny_checkpoint
from PIL import Image

import octseg
from octseg.cli import main
from octseg.data.synthetic import write_synthetic_dataset
from octseg.errors import CheckpointError, ConfigError
from octseg.inference.postprocess import parse_min_sizes, remove_small_components
from octseg.inference.predictor import Predictor, to_uint8_stack
from octseg.io.images import to_uint8

K = 4  # tiny_checkpoint's classes: background, IRF, SRF, PED

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(tiny_checkpoint, device="cpu", batch=3)


def _rng_images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --- Predictor API --------------------------------------------------------------------------


def test_lazy_export_of_predictor():
    assert octseg.Predictor is Predictor


@pytest.mark.parametrize("shape", [(50, 70), (5, 50, 70), (2, 64, 64), (1, 130, 40)])
def test_predictor_shapes_and_argmax(predictor, shape):
    x = _rng_images(shape)
    labels = predictor.predict(x)
    proba = predictor.predict_proba(x)
    assert labels.dtype == np.uint8 and labels.shape == shape
    expected = (K, *shape) if len(shape) == 2 else (shape[0], K, *shape[1:])
    assert proba.dtype == np.float32 and proba.shape == expected
    axis = 0 if len(shape) == 2 else 1
    np.testing.assert_allclose(proba.sum(axis=axis), 1.0, atol=1e-5)
    assert np.array_equal(labels, proba.argmax(axis=axis))
    assert labels.max() < K


def test_stack_equals_single_bscans(predictor):
    x = _rng_images((4, 48, 56), seed=1)
    stacked = predictor.predict(x)  # batch 3: a full and a partial batch
    for i in range(4):
        assert np.array_equal(stacked[i], predictor.predict(x[i]))


def test_input_dtypes(predictor):
    u8 = _rng_images((2, 40, 60), seed=2)
    ref = predictor.predict(u8)
    # float in [0, 1]: scaled by 255
    assert np.array_equal(predictor.predict(u8.astype(np.float64) / 255.0), ref)
    # uint16 within 0..255 is 8-bit data in a wider container: kept as is
    assert np.array_equal(predictor.predict(u8.astype(np.uint16)), ref)
    # 16-bit OCT: scaled over the whole stack as the readers do
    u16 = (u8.astype(np.uint16) * 257)
    out16 = predictor.predict(u16)
    assert out16.shape == u8.shape and np.array_equal(out16, predictor.predict(to_uint8(u16)))
    # other floats: min-max per image
    f = u8.astype(np.float32) * 3.0 - 100.0
    assert np.array_equal(predictor.predict(f), ref)


def test_to_uint8_stack_rules():
    a, single = to_uint8_stack(np.array([[0.0, 0.5], [1.0, 0.25]]))
    assert single and a.dtype == np.uint8 and a.tolist() == [[[0, 128], [255, 64]]]
    b, single = to_uint8_stack(np.array([[[-1.0, 1.0]], [[10.0, 30.0]]]))
    assert not single and b.tolist() == [[[0, 255]], [[0, 255]]]
    with pytest.raises(octseg.errors.DataError):
        to_uint8_stack(np.zeros((2, 3, 4, 5)))
    with pytest.raises(octseg.errors.DataError, match="colour"):
        to_uint8_stack(np.zeros((20, 30, 3), np.uint8))


def test_tta_is_flip_average(tiny_checkpoint):
    from octseg.checkpoint import load_network
    from octseg.transforms import to_model_input

    x = _rng_images((2, 64, 64), seed=3)  # at the model's input size: no resizing involved
    plain = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    tta = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", tta=True)
    model, meta = load_network(tiny_checkpoint)
    with torch.inference_mode():
        t = to_model_input(torch.from_numpy(x), meta["normalization"])
        by_hand = (0.5 * (model(t) + model(t.flip(-1)).flip(-1))).softmax(1).numpy()
        no_tta = model(t).softmax(1).numpy()
    np.testing.assert_allclose(tta.predict_proba(x), by_hand, atol=1e-5)
    np.testing.assert_allclose(plain.predict_proba(x), no_tta, atol=1e-5)
    assert not np.allclose(by_hand, no_tta, atol=1e-4)  # random weights are not flip-symmetric


def test_predictor_refuses_bad_options(tiny_checkpoint):
    with pytest.raises(ConfigError):
        Predictor.from_checkpoint(tiny_checkpoint, device="cpu", backend="tensorrt")
    with pytest.raises(ConfigError, match="background"):
        Predictor.from_checkpoint(tiny_checkpoint, device="cpu", min_sizes={"background": 5})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            Predictor.from_checkpoint(tiny_checkpoint, device="cuda")


# --- post-processing ------------------------------------------------------------------------


def test_remove_small_components_only_small_ones():
    lab = np.zeros((30, 30), np.uint8)
    lab[2:4, 2:4] = 1  # 4 px IRF: removed
    lab[10:20, 10:20] = 1  # 100 px IRF: kept
    lab[25:27, 25:27] = 2  # 4 px SRF: class not configured, kept
    lab[5, 20] = lab[6, 21] = 3  # 2 px PED touching diagonally: one component of 2 < 3, removed
    out = remove_small_components(lab, {1: 10, 3: 3})
    assert out[2:4, 2:4].sum() == 0 and (out[10:20, 10:20] == 1).all()
    assert (out[25:27, 25:27] == 2).all() and out[5, 20] == 0 and out[6, 21] == 0
    assert lab[2:4, 2:4].sum() == 4  # input untouched
    stack = remove_small_components(np.stack([lab, lab]), {1: 10, 3: 3})
    assert np.array_equal(stack[0], out) and np.array_equal(stack[1], out)
    assert np.array_equal(remove_small_components(lab, {}), lab)


def test_parse_min_sizes():
    classes = ("background", "IRF", "SRF", "PED")
    assert parse_min_sizes(["IRF=50", "3=20", "srf=0"], classes) == {1: 50, 3: 20, 2: 0}
    for bad in (["IRF"], ["XYZ=3"], ["background=3"], ["IRF=-1"], ["IRF=a"], ["9=1"]):
        with pytest.raises(ConfigError):
            parse_min_sizes(bad, classes)


def test_predictor_applies_min_sizes(tiny_checkpoint):
    x = _rng_images((2, 64, 64), seed=4)
    raw = Predictor.from_checkpoint(tiny_checkpoint, device="cpu").predict(x)
    clean = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", min_sizes={"IRF": 30, 2: 30}).predict(x)
    assert np.array_equal(clean, remove_small_components(raw, {1: 30, 2: 30}))
    assert ((clean != raw) <= (clean == 0)).all()  # only ever set to background


# --- checkpoints the Predictor refuses --------------------------------------------------------


class _Custom:  # a pickled class instance: loading it would need to run code
    pass


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture
def png_dir(tmp_path) -> Path:
    write_synthetic_dataset(tmp_path / "png", 1, vendors=["spectralis"], fmt="png", slices=3, scale=0.15,
                            seed=0, progress=False)
    return tmp_path / "png"


def test_refuses_checkpoint_with_pickled_code(tmp_path, capsys, png_dir):
    bad = tmp_path / "pickled.ckpt"
    torch.save({"octseg": {"format_version": 1}, "state_dict": {}, "extra": _Custom()}, bad)
    with pytest.raises(CheckpointError, match="pickled code"):
        Predictor.from_checkpoint(bad, device="cpu")
    rc, _, err = _cli(capsys, "predict", bad, png_dir, tmp_path / "out")
    assert rc == 2 and str(bad) in err and "pickled code" in err


def test_refuses_truncated_checkpoint(tmp_path, tiny_checkpoint, capsys, png_dir):
    data = tiny_checkpoint.read_bytes()
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        Predictor.from_checkpoint(bad, device="cpu")
    rc, _, err = _cli(capsys, "predict", bad, png_dir, tmp_path / "out")
    assert rc == 2 and str(bad) in err


def test_refuses_other_checkpoint_format(tmp_path, tiny_checkpoint, capsys, png_dir):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["octseg"]["format_version"] = 99
    ckpt["octseg"]["octseg_version"] = "9.0.0"
    bad = tmp_path / "future.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match="format 99"):
        Predictor.from_checkpoint(bad, device="cpu")
    rc, _, err = _cli(capsys, "predict", bad, png_dir, tmp_path / "out")
    assert rc == 2 and str(bad) in err and "9.0.0" in err


# --- octseg predict ---------------------------------------------------------------------------


def test_cli_predict_png_folder(tmp_path, tiny_checkpoint, capsys, png_dir):
    out = tmp_path / "out"
    rc, stdout, _ = _cli(capsys, "predict", tiny_checkpoint, png_dir, out, "--batch", "2")
    assert rc == 0, stdout
    images = sorted((png_dir / "images").glob("*.png"))
    for img in images:
        mask = np.asarray(Image.open(out / "masks" / img.name))
        assert mask.dtype == np.uint8 and mask.shape == np.asarray(Image.open(img)).shape and mask.max() < K
        assert (out / "overlays" / img.name).is_file()
    rows = _read_csv(out / "fluid.csv")
    bscan = [r for r in rows if r["level"] == "bscan"]
    volume = [r for r in rows if r["level"] == "volume"]
    assert len(bscan) == 3 * len(images) and len(volume) == 3
    assert {r["class"] for r in rows} == {"IRF", "SRF", "PED"}
    # spacing comes from the dataset's volumes.csv
    with open(png_dir / "volumes.csv") as fh:
        sp = next(csv.DictReader(fh))
    row, col, sl = float(sp["spacing_row"]), float(sp["spacing_col"]), float(sp["spacing_slice"])
    for r in bscan:
        mask = np.asarray(Image.open(out / "masks" / f"{r['bscan']}.png"))
        px = int((mask == ["background", "IRF", "SRF", "PED"].index(r["class"])).sum())
        assert int(r["pixels"]) == px
        assert float(r["area_mm2"]) == pytest.approx(px * row * col, rel=1e-5)
    for r in volume:
        total = sum(int(b["pixels"]) for b in bscan if b["class"] == r["class"])
        assert int(r["pixels"]) == total
        assert float(r["volume_mm3"]) == pytest.approx(total * row * col * sl, rel=1e-5)
    assert "predicted 3 B-scan(s)" in stdout and "TRAIN001" in stdout


def test_cli_predict_single_image_without_spacing(tmp_path, tiny_checkpoint, capsys):
    img = tmp_path / "scan.png"
    Image.fromarray(_rng_images((40, 52))).save(img)
    rc, _, _ = _cli(capsys, "predict", tiny_checkpoint, img, tmp_path / "out")
    assert rc == 0
    assert np.asarray(Image.open(tmp_path / "out" / "masks" / "scan.png")).shape == (40, 52)
    rows = _read_csv(tmp_path / "out" / "fluid.csv")
    assert rows and all(r["area_mm2"] == "" and r["volume_mm3"] == "" for r in rows)


def _volume_with_geometry(path: Path, shape=(3, 40, 32)) -> sitk.Image:
    img = sitk.GetImageFromArray(_rng_images(shape, seed=5))
    img.SetSpacing((0.0117, 0.0039, 0.12))
    img.SetOrigin((1.5, -2.0, 3.25))
    img.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return img


@pytest.mark.parametrize("fmt", ["mhd", "nii"])
def test_cli_predict_volume_keeps_geometry(tmp_path, tiny_checkpoint, capsys, fmt):
    src = tmp_path / "case7" / "oct.mhd"
    ref = _volume_with_geometry(src)
    out = tmp_path / "out"
    argv = ["predict", tiny_checkpoint, src, out] + (["--format", "nii"] if fmt == "nii" else [])
    rc, stdout, _ = _cli(capsys, *argv)
    assert rc == 0, stdout
    mask_path = out / "masks" / ("case7.mhd" if fmt == "mhd" else "case7.nii.gz")
    mask = sitk.ReadImage(str(mask_path))
    assert mask.GetSize() == ref.GetSize()
    np.testing.assert_allclose(mask.GetSpacing(), ref.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(mask.GetOrigin(), ref.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(mask.GetDirection(), ref.GetDirection(), atol=1e-6)
    arr = sitk.GetArrayFromImage(mask)
    assert arr.max() < K and (out / "overlays" / "case7.png").is_file()
    rows = _read_csv(out / "fluid.csv")
    voxel = 0.0117 * 0.0039 * 0.12
    for r in (r for r in rows if r["level"] == "volume"):
        n = int((arr == ["background", "IRF", "SRF", "PED"].index(r["class"])).sum())
        assert int(r["pixels"]) == n
        assert float(r["volume_mm3"]) == pytest.approx(n * voxel, rel=1e-5)
    assert len([r for r in rows if r["level"] == "bscan"]) == 3 * 3
    # the mask predicted through the CLI equals the Predictor's on the same B-scans
    pred = Predictor.from_checkpoint(tiny_checkpoint, device="cpu").predict(sitk.GetArrayFromImage(ref))
    assert np.array_equal(arr, pred)


def test_cli_predict_retouch_folder_and_png_format(tmp_path, tiny_checkpoint, capsys):
    write_synthetic_dataset(tmp_path / "raw", 2, vendors=["cirrus", "spectralis"], slices=2, scale=0.1, seed=1,
                            progress=False)
    out = tmp_path / "out"
    rc, stdout, _ = _cli(capsys, "predict", tiny_checkpoint, tmp_path / "raw", out, "--format", "png",
                         "--min-size", "IRF=10", "--tta", "flip")
    assert rc == 0, stdout
    for vol in ("Cirrus_TRAIN001", "Spectralis_TRAIN002"):
        assert sorted(p.name for p in (out / "masks" / vol).iterdir()) == [f"{vol}_000.png", f"{vol}_001.png"]
        assert (out / "overlays" / f"{vol}.png").is_file()
    assert "flip TTA" in stdout and "Cirrus_TRAIN001" in stdout


def test_cli_folder_with_corrupt_files(tmp_path, tiny_checkpoint, capsys):
    src = tmp_path / "scans"
    src.mkdir()
    for i in range(3):
        Image.fromarray(_rng_images((30, 40), seed=i)).save(src / f"good_{i}.png")
    (src / "garbage.png").write_bytes(b"this is not a png")
    good = (src / "good_0.png").read_bytes()
    (src / "truncated.png").write_bytes(good[: len(good) // 2])
    (src / "scan.dcm").write_bytes(b"DICM")  # not a supported format: skipped with a note
    out = tmp_path / "out"
    rc, stdout, err = _cli(capsys, "predict", tiny_checkpoint, src, out)
    assert rc == 1
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["good_0.png", "good_1.png", "good_2.png"]
    assert "FAILED: 2 input(s)" in stdout and "garbage.png" in stdout and "truncated.png" in stdout
    assert "scan.dcm" in err
    assert {r["bscan"] for r in _read_csv(out / "fluid.csv") if r["level"] == "bscan"} == \
        {"good_0", "good_1", "good_2"}


def test_cli_volume_folder_with_a_broken_volume(tmp_path, tiny_checkpoint, capsys):
    write_synthetic_dataset(tmp_path / "raw", 2, vendors=["topcon"], slices=2, scale=0.1, seed=2, progress=False)
    raw = tmp_path / "raw" / "RETOUCH-TrainingSet-Topcon" / "TRAIN002" / "oct.raw"
    raw.write_bytes(raw.read_bytes()[:100])  # truncated data file
    out = tmp_path / "out"
    rc, stdout, _ = _cli(capsys, "predict", tiny_checkpoint, tmp_path / "raw", out)
    assert rc == 1
    assert (out / "masks" / "Topcon_TRAIN001.mhd").is_file() and not (out / "masks" / "Topcon_TRAIN002.mhd").exists()
    assert "FAILED: 1 input(s)" in stdout and "TRAIN002" in stdout and "too short" in stdout


def _write_raw_mhd(path: Path, dims: list[int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("ObjectType = Image\n" f"NDims = {len(dims)}\n" "BinaryData = True\n"
                    "BinaryDataByteOrderMSB = False\n" f"DimSize = {' '.join(map(str, dims))}\n"
                    "ElementType = MET_UCHAR\n" f"ElementDataFile = {path.stem}.raw\n")
    path.with_suffix(".raw").write_bytes(bytes(int(np.prod(dims))))
    return path


@pytest.mark.parametrize("kind", ["text", "2d", "4d", "folder"])
def test_cli_bad_inputs_name_the_file(tmp_path, tiny_checkpoint, capsys, kind):
    if kind == "text":
        bad = tmp_path / "report.txt"
        bad.write_text("hello")
    elif kind == "2d":
        bad = _write_raw_mhd(tmp_path / "flat" / "oct.mhd", [32, 20])
    elif kind == "4d":
        bad = _write_raw_mhd(tmp_path / "time" / "oct.mhd", [8, 6, 3, 2])
    else:
        bad = tmp_path / "empty"
        bad.mkdir()
    rc, _, err = _cli(capsys, "predict", tiny_checkpoint, bad, tmp_path / "out")
    assert rc == 2 and str(bad) in err, err
    if kind in ("2d", "4d"):
        assert "3-D" in err


def test_cli_unwritable_output(tmp_path, tiny_checkpoint, capsys):
    img = tmp_path / "scan.png"
    Image.fromarray(_rng_images((20, 20))).save(img)
    blocker = tmp_path / "file"
    blocker.write_text("a regular file")
    rc, _, err = _cli(capsys, "predict", tiny_checkpoint, img, blocker / "out")
    assert rc == 2 and str(blocker / "out") in err


def test_cli_predict_needs_no_training_code(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "m.ckpt")
    img = tmp_path / "scan.png"
    Image.fromarray(_rng_images((24, 24))).save(img)
    code = ("import sys; from octseg.cli import main; rc = main(sys.argv[1:]); "
            "bad = sorted(m for m in sys.modules if m.split('.')[:2] in "
            "(['octseg', 'engine'], ['octseg', 'methods'], ['octseg', 'losses'], ['octseg', 'config']));"
            "print('TRAINING-MODULES', bad); sys.exit(rc)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code, "predict", str(ckpt), str(img), str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert "TRAINING-MODULES []" in res.stdout
