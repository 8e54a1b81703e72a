"""octseg.io.images: 2-D image files (decoding, limits, intensities) and mask encodings. Each bad
file is a DataError naming it: multi-frame images, NaN/inf pixels, decompression bombs, a mask
encoding that differs from the rest of its dataset (labels 0..K-1 vs values spread over 0..255).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _odd_inputs import all_bscans, png_header, quiet, save_frames
from fakes import save_image, write_png_folder
from PIL import Image

from octseg.constants import FLUID_CLASSES, RETOUCH_CLASSES
from octseg.data.prepare import prepare_dataset
from octseg.data.readers import scan_source
from octseg.errors import ConfigError, DataError
from octseg.io import images
from octseg.io.images import MaskEncoding, header_size, map_mask, read_image, survey_masks, to_uint8, write_png
from octseg.inference.predictor import to_uint8_stack


# --- reading images ---------------------------------------------------------------------------------


def test_rgb_and_16bit_images(tmp_path):
    g = np.arange(12 * 16).reshape(12, 16) % 256
    rgb = save_image(tmp_path / "rgb.png", g, "RGB")
    sixteen = save_image(tmp_path / "deep.png", g * 257, "I;16")
    Image.fromarray(np.stack([g] * 4, -1).astype(np.uint8), "RGBA").save(tmp_path / "rgba.png")
    a = read_image(rgb)
    assert a.dtype == np.uint8 and a.shape == (12, 16)
    expect = np.asarray(Image.open(rgb).convert("L"))
    np.testing.assert_array_equal(a, expect)
    b = read_image(sixteen)
    assert b.dtype == np.uint8 and abs(int(b.max()) - 255) <= 1 and np.corrcoef(b.ravel(), g.ravel())[0, 1] > 0.99
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), g.astype(np.uint8))


def test_truncated_png(tmp_path):
    write_png_folder(tmp_path, ["a_0", "a_1"], size=(64, 64))
    p = tmp_path / "images" / "a_1.png"
    p.write_bytes(p.read_bytes()[:200])
    src = scan_source(tmp_path)  # header is intact: found, size known
    with pytest.raises(DataError, match="a_1.png"):
        all_bscans(src)
    p.write_bytes(b"\x89PNG\r\n")  # not even a header
    with pytest.raises(DataError, match="a_1.png"):
        scan_source(tmp_path)


@pytest.mark.filterwarnings("ignore:.*no mask")
def test_undecodable_image_extension_is_error(tmp_path):
    write_png_folder(tmp_path, ["a_0"])
    (tmp_path / "images" / "a_1.png").write_text("not a png")
    with pytest.raises(DataError, match="a_1.png"):
        scan_source(tmp_path)


def test_single_frame_tiff_and_gif_still_read(tmp_path):
    a = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    Image.fromarray(a).save(tmp_path / "one.tif")
    Image.fromarray(a).save(tmp_path / "one.gif")
    np.testing.assert_array_equal(read_image(tmp_path / "one.tif"), a)
    assert read_image(tmp_path / "one.gif").shape == (12, 16)


@pytest.mark.parametrize("suffix", [".tif", ".gif", ".png"])
@pytest.mark.parametrize("which", ["images", "masks"])
def test_multi_frame_file_is_an_error_before_writing(tmp_path, suffix, which):
    write_png_folder(tmp_path, ["a_0", "a_1"])
    frames = [np.full((12, 16), v, np.uint8) for v in (0, 1, 2)]
    if which == "images":
        (tmp_path / "images" / "a_1.png").unlink()
        bad = save_frames(tmp_path / "images" / f"a_1{suffix}", frames)
    else:
        (tmp_path / "masks" / "a_1.png").unlink()
        bad = save_frames(tmp_path / "masks" / f"a_1{suffix}", frames)
    with pytest.raises(DataError, match=rf"a_1\{suffix}: has 3 frames.*separate B-scans.*\.mhd volume") as e:
        scan_source(tmp_path, classes=RETOUCH_CLASSES)  # the header pass, not only the pre-read
    assert e.value.path == str(bad)
    with pytest.raises(DataError, match="3 frames"):
        prepare_dataset(tmp_path, tmp_path / "out", classes=RETOUCH_CLASSES, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="3 frames"):
        read_image(bad)


# --- intensities: to_uint8, NaN / inf ---------------------------------------------------------------


def test_to_uint8_16bit_clips_outliers():
    a = np.full((1, 100, 100), 1000, np.uint16)
    a[0, :50] = 3000
    a[0, 0, 0] = 65535  # one specular outlier must not darken everything
    out = to_uint8(a)
    assert out.dtype == np.uint8 and out[0, 60, 0] > 60 and out[0, 10, 10] == 255


def test_float_tiff_with_nan_is_an_error_naming_file_and_count(tmp_path):
    write_png_folder(tmp_path, ["a_0", "a_1"], labelled=False)
    a = np.linspace(0, 1000, 12 * 16, dtype=np.float32).reshape(12, 16)
    a[2, 3], a[4, 5], a[6, 7] = np.nan, np.inf, -np.inf
    (tmp_path / "images" / "a_1.png").unlink()
    bad = tmp_path / "images" / "a_1.tif"
    Image.fromarray(a).save(bad)
    assert Image.open(bad).mode == "F"
    with pytest.raises(DataError, match=r"a_1\.tif: 3 NaN/inf pixel values \(1 NaN, 2 inf\)"):
        read_image(bad)
    src = quiet(scan_source, tmp_path)
    with pytest.raises(DataError, match=r"a_1\.tif: 3 NaN/inf"):
        all_bscans(src)
    with pytest.raises(DataError, match=r"a_1\.tif: 3 NaN/inf"):
        quiet(prepare_dataset, tmp_path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    a[2, 3] = a[4, 5] = a[6, 7] = 5.0  # finite float TIFF: scaled as before
    Image.fromarray(a).save(bad)
    img = read_image(bad)
    assert img.dtype == np.uint8 and img.max() == 255


def test_to_uint8_and_to_uint8_stack_refuse_nan_inf():
    a = np.arange(20, dtype=np.float64).reshape(4, 5) * 300
    ok = to_uint8(a)
    a[1, 1] = np.nan  # was 1800
    with pytest.raises(DataError, match=r"scan\.tif: 1 NaN/inf pixel values"):
        to_uint8(a, source="scan.tif")
    with pytest.raises(DataError, match=r"input array: 1 NaN/inf"):
        to_uint8(a)
    a[1, 1] = 1800.0
    np.testing.assert_array_equal(to_uint8(a), ok)  # the rest of its behaviour is unchanged
    x = np.full((2, 6, 7), 0.5, np.float32)
    x[0, 1, 2], x[1, 0, 0], x[1, 2, 3] = np.nan, np.inf, -np.inf
    with pytest.raises(DataError, match=r"input array: 3 NaN/inf values"):
        to_uint8_stack(x)
    with pytest.raises(DataError, match=r"input array: 1 NaN/inf values"):
        to_uint8_stack(x[0])
    out, single = to_uint8_stack(np.where(np.isfinite(x), x, 0.25)[0])
    assert single and out.dtype == np.uint8 and set(np.unique(out)) == {64, 128}


# --- decompression bombs ----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["images", "masks"])
def test_decompression_bomb_is_a_data_error_naming_file_and_size(tmp_path, which):
    write_png_folder(tmp_path, ["a_0", "a_1"])
    bomb = png_header(tmp_path / which / "a_1.png", 1, 2 ** 28)
    with pytest.raises(DataError, match=r"a_1\.png: image of 1 x 268435456 pixels is larger than the limit of "
                                        r"\d+ pixels \(a decompression-bomb guard\); set OCTSEG_MAX_IMAGE_PIXELS") as e:
        scan_source(tmp_path)
    assert e.value.path == str(bomb)
    with pytest.raises(DataError, match="decompression-bomb"):
        scan_source(tmp_path, classes=RETOUCH_CLASSES)  # the header pass
    with pytest.raises(DataError, match="decompression-bomb"):
        read_image(bomb)


def test_images_between_the_limit_and_twice_it_are_errors_too(tmp_path, monkeypatch):
    # PIL only warns up to 2x MAX_IMAGE_PIXELS; octseg refuses anything over the limit
    write_png_folder(tmp_path, ["a_0"], size=(12, 16))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)  # 16 x 12 = 192 pixels
    with pytest.raises(DataError, match=r"image of 16 x 12 pixels is larger than the limit of 150 pixels"):
        scan_source(tmp_path, classes=RETOUCH_CLASSES)
    with pytest.raises(DataError, match=r"16 x 12 pixels"):
        read_image(tmp_path / "images" / "a_0.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 192)
    assert scan_source(tmp_path).n_slices == 1


def _python(code: str, **env) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "OCTSEG_MAX_IMAGE_PIXELS"}
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120)


def test_octseg_max_image_pixels_environment_variable(tmp_path):
    write_png_folder(tmp_path, ["a_0"], size=(12, 16))
    bomb = png_header(tmp_path / "bomb" / "b.png", 1, 2 ** 28)
    code = ("import sys\nfrom PIL import Image\nfrom octseg.data.readers import scan_source\n"
            "from octseg.io.images import header_size\n"
            "from octseg.errors import OctsegError\nprint(Image.MAX_IMAGE_PIXELS)\n"
            "try:\n    scan_source({root!r}); print('ok')\n"
            "except OctsegError as e:\n    print('error', e)\n"
            "try:\n    print(header_size(__import__('pathlib').Path({bomb!r})))\n"
            "except OctsegError as e:\n    print('error', e)\n").format(root=str(tmp_path), bomb=str(bomb))
    r = _python(code, OCTSEG_MAX_IMAGE_PIXELS="100")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[0] == "100", r.stderr
    assert "image of 16 x 12 pixels is larger than the limit of 100 pixels" in lines[1]
    r = _python(code, OCTSEG_MAX_IMAGE_PIXELS=str(2 ** 28))
    assert r.stdout.splitlines()[1:] == ["ok", "(268435456, 1)"], r.stdout + r.stderr
    r = _python(code)  # unset: PIL's default limit
    assert r.stdout.splitlines()[0] == "89478485" and "1 x 268435456 pixels" in r.stdout, r.stdout + r.stderr
    r = _python(code, OCTSEG_MAX_IMAGE_PIXELS="lots")
    assert "OCTSEG_MAX_IMAGE_PIXELS='lots' is not a pixel count" in r.stdout, r.stdout + r.stderr


def test_bad_pixel_limit_is_a_config_error(tmp_path, monkeypatch):
    write_png_folder(tmp_path, ["a_0"], labelled=False)
    monkeypatch.setattr(images, "_PIXEL_LIMIT_PROBLEM", "OCTSEG_MAX_IMAGE_PIXELS='x' is not a pixel count")
    with pytest.raises(ConfigError, match="OCTSEG_MAX_IMAGE_PIXELS"):
        scan_source(tmp_path)


# --- mask encodings: one per dataset ----------------------------------------------------------------


def _mask(value_map: dict, size=(12, 16)) -> np.ndarray:
    m = np.zeros(size, np.uint8)
    for (r, c), v in value_map.items():
        m[r, c] = v
    return m


def _dataset(root: Path, masks: list[np.ndarray]) -> Path:
    write_png_folder(root, [f"a_{i}" for i in range(len(masks))], labelled=False)
    for i, m in enumerate(masks):
        save_image(root / "masks" / f"a_{i}.png", m)
    return root


def test_mixed_encodings_preread_names_the_odd_mask_and_one_of_the_others(tmp_path):
    # three masks with labels 0..3, one 0/255: 255 must not silently become PED
    idx = [_mask({(1, 1): 1, (2, 2): 3}), _mask({(1, 1): 2}), _mask({(3, 3): 1})]
    root = _dataset(tmp_path / "d1", [idx[0], _mask({(4, 4): 255}), idx[1], idx[2]])
    with pytest.raises(DataError, match=r"a_1\.png: mask values \[0, 255\] \(0/85/170/255 encoding.*"
                                        r"masks/a_0\.png uses 0\.\.3 labels.*one encoding"):
        scan_source(root)
    with pytest.raises(DataError, match="a_1.png"):
        prepare_dataset(root, tmp_path / "out1", progress=False)
    assert not (tmp_path / "out1").exists()
    # the other way round: spread masks with one 0..3 mask -> the 0..3 one is named
    root = _dataset(tmp_path / "d2", [_mask({(1, 1): 85}), _mask({(1, 1): 255}), _mask({(2, 2): 1}),
                                      _mask({(1, 1): 170})])
    with pytest.raises(DataError, match=r"a_2\.png: mask values \[0, 1\] \(0\.\.3 labels.*masks/a_0\.png "
                                        r"uses the 0/85/170/255 encoding"):
        scan_source(root)


@pytest.mark.parametrize("how", ["argument", "classes.txt", "dataset.json"])
def test_mixed_encodings_explicit_classes_found_at_load(tmp_path, how):
    # all-0 masks fit either encoding and decide nothing; the first other mask (a_1) decides
    _dataset(tmp_path, [_mask({}), _mask({(1, 1): 1, (2, 2): 3}), _mask({}), _mask({(1, 1): 255})])
    classes = None
    if how == "argument":
        classes = RETOUCH_CLASSES
    elif how == "classes.txt":
        (tmp_path / "classes.txt").write_text("\n".join(RETOUCH_CLASSES) + "\n")
    else:
        (tmp_path / "dataset.json").write_text(json.dumps({"classes": list(RETOUCH_CLASSES)}))
    src = scan_source(tmp_path, classes=classes)  # masks are not pre-read here
    assert src.classes == RETOUCH_CLASSES
    with pytest.raises(DataError, match=r"a_3\.png: mask values \[0, 255\].*masks/a_1\.png uses 0\.\.3 labels"):
        all_bscans(src)
    with pytest.raises(DataError, match="a_3.png"):
        prepare_dataset(tmp_path, tmp_path / "out", classes=classes, progress=False)
    assert not (tmp_path / "out").exists()


def test_mixed_encodings_shared_across_volumes(tmp_path):
    # one encoding per dataset, not per volume: V1 uses 0/255, V2 labels 0..1
    write_png_folder(tmp_path, ["V1_0", "V2_0"], labelled=False)
    save_image(tmp_path / "masks" / "V1_0.png", _mask({(1, 1): 255}))
    save_image(tmp_path / "masks" / "V2_0.png", _mask({(1, 1): 1}))
    with pytest.raises(DataError, match=r"V2_0\.png.*\(0\.\.1 labels\) while masks/V1_0\.png uses the 0/255"):
        all_bscans(scan_source(tmp_path, classes=FLUID_CLASSES))
    with pytest.raises(DataError, match=r"V2_0\.png.*one encoding"):  # pre-read: names the first odd one
        scan_source(tmp_path)


@pytest.mark.parametrize("explicit", [False, True])
def test_consistent_binary_0_255_masks_map_to_fluid(tmp_path, explicit):
    root = _dataset(tmp_path, [_mask({}), _mask({(1, 1): 255, (2, 2): 255}), _mask({(3, 3): 255})])
    src = quiet(scan_source, root, classes=FLUID_CLASSES if explicit else None)
    assert src.classes == FLUID_CLASSES
    masks = [b.mask for b in all_bscans(src)]
    assert [int(m.sum()) for m in masks] == [0, 2, 1] and all(m.max() <= 1 for m in masks)
    ds = quiet(prepare_dataset, root, tmp_path / "out", classes=FLUID_CLASSES if explicit else None,
                progress=False)
    assert ds.classes == FLUID_CLASSES and int(ds.masks[1].sum()) == 2


@pytest.mark.parametrize("explicit", [False, True])
def test_consistent_spread_masks_map_to_0_to_3(tmp_path, explicit):
    write_png_folder(tmp_path, ["a_0", "a_1", "a_2"], encoding="scaled")
    save_image(tmp_path / "masks" / "a_3.png", _mask({}))
    save_image(tmp_path / "images" / "a_3.png", _mask({}))
    src = scan_source(tmp_path, classes=RETOUCH_CLASSES if explicit else None)
    assert src.classes == RETOUCH_CLASSES
    got = {b.id: b.mask for b in all_bscans(src)}
    for name in ("a_0", "a_1", "a_2"):
        raw = np.asarray(Image.open(tmp_path / "masks" / f"{name}.png"))
        np.testing.assert_array_equal(got[name], raw // 85)
    assert {int(v) for m in got.values() for v in np.unique(m)} == {0, 1, 2, 3}
    # and consistent 0..3 labels are kept as they are
    write_png_folder(tmp_path / "idx", ["a_0", "a_1", "a_2"])
    for b in all_bscans(scan_source(tmp_path / "idx", classes=RETOUCH_CLASSES if explicit else None)):
        np.testing.assert_array_equal(b.mask, np.asarray(Image.open(tmp_path / "idx" / "masks" / f"{b.id}.png")))


def test_folders_scaled_mask_mapping(tmp_path):
    write_png_folder(tmp_path, ["a_0", "a_1", "a_2"], encoding="scaled")
    src = scan_source(tmp_path)
    assert src.classes == RETOUCH_CLASSES
    masks = [b.mask for b in all_bscans(src)]
    assert {int(v) for m in masks for v in np.unique(m)} == {0, 1, 2, 3}
    raw = np.asarray(Image.open(tmp_path / "masks" / "a_1.png"))
    np.testing.assert_array_equal(masks[1], raw // 85)


def test_mask_value_7(tmp_path):
    write_png_folder(tmp_path, ["a_0", "a_1"])
    m = np.zeros((12, 16), np.uint8)
    m[3, 3] = 7
    save_image(tmp_path / "masks" / "a_1.png", m)
    with pytest.raises(DataError, match=r"a_1.png.*\[0, 7\]"):
        scan_source(tmp_path)
    with pytest.raises(DataError, match=r"a_1.png.*\[0, 7\]"):  # explicit classes: found at load
        all_bscans(scan_source(tmp_path, classes=RETOUCH_CLASSES))


# --- writing ----------------------------------------------------------------------------------------


def test_write_png_round_trip_is_atomic(tmp_path, monkeypatch):
    labels = (np.arange(12 * 16).reshape(12, 16) % 4).astype(np.uint8)
    out = write_png(tmp_path / "m.png", labels)
    assert out == tmp_path / "m.png" and os.listdir(tmp_path) == ["m.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(out)), labels)
    rgb = Image.fromarray(np.zeros((4, 5, 3), np.uint8))
    write_png(tmp_path / "m.png", rgb, compress_level=9)  # replaces it
    assert Image.open(out).size == (5, 4) and Image.open(out).mode == "RGB"

    def full(fh, **kwargs):
        fh.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", lambda self, fh, **kw: full(fh))
    with pytest.raises(DataError, match=r"n\.png: cannot write: no space left on device"):
        write_png(tmp_path / "n.png", labels)
    assert sorted(os.listdir(tmp_path)) == ["m.png"]  # no half file, no temporary file


# --- direct: header size, mask mapping ----------------------------------------------------------------


def test_header_size_reads_no_pixels(tmp_path):
    p = write_png(tmp_path / "a.png", np.random.default_rng(0).integers(0, 256, (70, 90), dtype=np.uint8))
    assert header_size(p) == (70, 90)
    p.write_bytes(p.read_bytes()[:200])  # header intact, pixels cut
    assert header_size(p) == (70, 90)
    with pytest.raises(DataError, match=r"a\.png: cannot read image"):
        read_image(p)


def test_map_mask_and_survey_masks():
    spread = np.array([[0, 85], [170, 255]], np.uint8)
    np.testing.assert_array_equal(map_mask(spread, 4, "m.png"), [[0, 1], [2, 3]])
    np.testing.assert_array_equal(map_mask(np.array([[0, 255]]), 2, "m.png"), [[0, 1]])
    np.testing.assert_array_equal(map_mask(np.array([[0, 3]]), 4, "m.png", "index"), [[0, 3]])
    with pytest.raises(DataError, match=r"m\.png: mask values \[0, 3\] found; expected 0/85/170/255 encoding"):
        map_mask(np.array([[0, 3]]), 4, "m.png", "spread")
    enc = MaskEncoding(4)
    enc.map(np.zeros((2, 2), np.uint8), "zero.png")
    assert enc.kind is None  # all 0 decides nothing
    enc.map(spread, "first.png")
    assert (enc.kind, enc.first) == ("spread", "first.png")
    with pytest.raises(DataError, match=r"second\.png: .*while first\.png uses the 0/85/170/255"):
        enc.map(np.array([[0, 1]], np.uint8), "second.png")


def test_survey_masks_union_and_encoding(tmp_path):
    paths = [save_image(tmp_path / f"{i}.png", m) for i, m in
             enumerate([np.zeros((3, 3)), np.full((3, 3), 85), np.array([[0, 170, 255]])])]
    union, kind, first = survey_masks(paths, tmp_path)
    assert union == {0, 85, 170, 255} and kind == "spread" and first == paths[1]
    assert survey_masks(paths[:1]) == ({0}, None, None)
