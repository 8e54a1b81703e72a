"""Input safety: files that are not ordinary images are never misread, never block and never
end in a traceback. Each category is an error naming the file, or a skip with a warning naming it:

* mixed mask encodings (labels 0..K-1 vs values spread over 0..255) in one dataset;
* multi-frame images (multi-page TIFF, animated GIF, APNG);
* NaN/inf pixels (float TIFF, float .mhd volumes, arrays given to the Predictor);
* entries that are not regular files (FIFO, socket, device, broken symlink, symlink loops),
  decompression bombs, and symlinked folder loops.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fakes import save_image, write_mhd, write_png_folder, write_retouch_case
from PIL import Image

from octseg.cli import main
from octseg.data import readers
from octseg.data.prepare import prepare_dataset
from octseg.data.readers import read_image, scan_source, to_uint8
from octseg.constants import FLUID_CLASSES, RETOUCH_CLASSES
from octseg.errors import ConfigError, DataError
from octseg.predict import to_uint8_stack

TIMEOUT = 20.0


def _all(src):
    return [b for v in src.volumes for b in v.load()]


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _finishes(fn, *fifos, timeout: float = TIMEOUT):
    """Run ``fn`` in a thread and fail (instead of hanging) if it is still running after
    ``timeout`` s; a reader stuck on one of ``fifos`` is then released so the thread ends."""
    result: dict = {}

    def run():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result["value"] = fn()
        except BaseException as exc:  # re-raised in the test's thread
            result["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for f in fifos:  # a writer that opens and closes: the blocked reader gets EOF
            try:
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        t.join(5)
        pytest.fail(f"still running after {timeout} s: blocked on a FIFO or looping")
    if "error" in result:
        raise result["error"]
    return result["value"]


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` (8-bit gray); its pixel data is a few
    bytes (never decoded: the size is refused first). A real decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


def _save_frames(path: Path, frames: list[np.ndarray]) -> Path:
    """A multi-frame file: multi-page TIFF, animated GIF or APNG (by the suffix)."""
    ims = [Image.fromarray(f) for f in frames]
    kw = {"duration": 100, "loop": 0} if path.suffix != ".tif" else {}
    ims[0].save(path, save_all=True, append_images=ims[1:], **kw)
    return path


# --- 1. mask encodings: one per dataset ------------------------------------------------------


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
        _all(src)
    with pytest.raises(DataError, match="a_3.png"):
        prepare_dataset(tmp_path, tmp_path / "out", classes=classes, progress=False)
    assert not (tmp_path / "out").exists()


def test_mixed_encodings_shared_across_volumes(tmp_path):
    # one encoding per dataset, not per volume: V1 uses 0/255, V2 labels 0..1
    write_png_folder(tmp_path, ["V1_0", "V2_0"], labelled=False)
    save_image(tmp_path / "masks" / "V1_0.png", _mask({(1, 1): 255}))
    save_image(tmp_path / "masks" / "V2_0.png", _mask({(1, 1): 1}))
    with pytest.raises(DataError, match=r"V2_0\.png.*\(0\.\.1 labels\) while masks/V1_0\.png uses the 0/255"):
        _all(scan_source(tmp_path, classes=FLUID_CLASSES))
    with pytest.raises(DataError, match=r"V2_0\.png.*one encoding"):  # pre-read: names the first odd one
        scan_source(tmp_path)


@pytest.mark.parametrize("explicit", [False, True])
def test_consistent_binary_0_255_masks_map_to_fluid(tmp_path, explicit):
    root = _dataset(tmp_path, [_mask({}), _mask({(1, 1): 255, (2, 2): 255}), _mask({(3, 3): 255})])
    src = _quiet(scan_source, root, classes=FLUID_CLASSES if explicit else None)
    assert src.classes == FLUID_CLASSES
    masks = [b.mask for b in _all(src)]
    assert [int(m.sum()) for m in masks] == [0, 2, 1] and all(m.max() <= 1 for m in masks)
    ds = _quiet(prepare_dataset, root, tmp_path / "out", classes=FLUID_CLASSES if explicit else None,
                progress=False)
    assert ds.classes == FLUID_CLASSES and int(ds.masks[1].sum()) == 2


@pytest.mark.parametrize("explicit", [False, True])
def test_consistent_spread_masks_map_to_0_to_3(tmp_path, explicit):
    write_png_folder(tmp_path, ["a_0", "a_1", "a_2"], encoding="scaled")
    save_image(tmp_path / "masks" / "a_3.png", _mask({}))
    save_image(tmp_path / "images" / "a_3.png", _mask({}))
    src = scan_source(tmp_path, classes=RETOUCH_CLASSES if explicit else None)
    assert src.classes == RETOUCH_CLASSES
    got = {b.id: b.mask for b in _all(src)}
    for name in ("a_0", "a_1", "a_2"):
        raw = np.asarray(Image.open(tmp_path / "masks" / f"{name}.png"))
        np.testing.assert_array_equal(got[name], raw // 85)
    assert {int(v) for m in got.values() for v in np.unique(m)} == {0, 1, 2, 3}
    # and consistent 0..3 labels are kept as they are
    write_png_folder(tmp_path / "idx", ["a_0", "a_1", "a_2"])
    for b in _all(scan_source(tmp_path / "idx", classes=RETOUCH_CLASSES if explicit else None)):
        np.testing.assert_array_equal(b.mask, np.asarray(Image.open(tmp_path / "idx" / "masks" / f"{b.id}.png")))


# --- 2. multi-frame images ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".tif", ".gif", ".png"])
@pytest.mark.parametrize("which", ["images", "masks"])
def test_multi_frame_file_is_an_error_before_writing(tmp_path, suffix, which):
    write_png_folder(tmp_path, ["a_0", "a_1"])
    frames = [np.full((12, 16), v, np.uint8) for v in (0, 1, 2)]
    if which == "images":
        (tmp_path / "images" / "a_1.png").unlink()
        bad = _save_frames(tmp_path / "images" / f"a_1{suffix}", frames)
    else:
        (tmp_path / "masks" / "a_1.png").unlink()
        bad = _save_frames(tmp_path / "masks" / f"a_1{suffix}", frames)
    with pytest.raises(DataError, match=rf"a_1\{suffix}: has 3 frames.*separate B-scans.*\.mhd volume") as e:
        scan_source(tmp_path, classes=RETOUCH_CLASSES)  # the header pass, not only the pre-read
    assert e.value.path == str(bad)
    with pytest.raises(DataError, match="3 frames"):
        prepare_dataset(tmp_path, tmp_path / "out", classes=RETOUCH_CLASSES, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="3 frames"):
        read_image(bad)


def test_single_frame_tiff_and_gif_still_read(tmp_path):
    a = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    Image.fromarray(a).save(tmp_path / "one.tif")
    Image.fromarray(a).save(tmp_path / "one.gif")
    np.testing.assert_array_equal(read_image(tmp_path / "one.tif"), a)
    assert read_image(tmp_path / "one.gif").shape == (12, 16)


# --- 3. NaN / inf pixels ---------------------------------------------------------------------------


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
    src = _quiet(scan_source, tmp_path)
    with pytest.raises(DataError, match=r"a_1\.tif: 3 NaN/inf"):
        _all(src)
    with pytest.raises(DataError, match=r"a_1\.tif: 3 NaN/inf"):
        _quiet(prepare_dataset, tmp_path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    a[2, 3] = a[4, 5] = a[6, 7] = 5.0  # finite float TIFF: scaled as before
    Image.fromarray(a).save(bad)
    img = read_image(bad)
    assert img.dtype == np.uint8 and img.max() == 255


def test_float_mhd_volume_with_nan_inf_names_the_volume(tmp_path):
    v = np.random.default_rng(0).random((3, 10, 12)).astype(np.float32) * 500
    v[0, 1, 1], v[2, 3, 4] = np.nan, np.inf
    path = tmp_path / "case" / "oct.mhd"
    path.parent.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(v), str(path))
    src = scan_source(path)
    with pytest.raises(DataError, match=r"oct\.mhd: 2 NaN/inf pixel values \(1 NaN, 1 inf\)") as e:
        _all(src)
    assert e.value.path == str(path)
    write_mhd(tmp_path / "root" / "RETOUCH-TrainingSet-Cirrus" / "TRAIN001" / "oct.mhd", v, element_type="MET_FLOAT")
    with pytest.raises(DataError, match="TRAIN001/oct.mhd: 2 NaN/inf"):
        prepare_dataset(tmp_path / "root", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


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


# --- 4. entries that are not regular files ----------------------------------------------------------


def _odd_entries(folder: Path, monkeypatch) -> list[str]:
    """FIFO, socket, device, broken symlink and symlink loops (a->b->a, self) in ``folder``,
    named like images; returns the FIFOs (for _finishes)."""
    fifo = folder / "x.png"
    os.mkfifo(fifo)
    monkeypatch.chdir(folder)  # AF_UNIX paths are short
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("sock.png")
    sock.close()
    os.symlink(os.devnull, folder / "dev.png")
    os.symlink(folder / "nowhere.png", folder / "broken.png")
    os.symlink(folder / "loop_b.png", folder / "loop_a.png")
    os.symlink(folder / "loop_a.png", folder / "loop_b.png")
    os.symlink("self.png", folder / "self.png")
    os.symlink(".", folder / "here")  # a folder looping onto itself
    return [str(fifo)]


_ODD = ["x.png (FIFO)", "sock.png (socket)", "dev.png (character device)", "broken.png (broken symlink)",
        "loop_a.png (symlink loop)", "loop_b.png (symlink loop)", "self.png (symlink loop)"]


def test_non_regular_entries_among_images_and_masks_are_skipped_with_a_warning(tmp_path, monkeypatch):
    root = write_png_folder(tmp_path / "src", ["a_0", "a_1"])
    fifos = _odd_entries(root / "images", monkeypatch)
    fifos += _odd_entries(root / "masks", monkeypatch)
    src = _finishes(lambda: scan_source(root), *fifos)
    assert src.n_slices == 2 and all(v.labelled for v in src.volumes)
    for folder in ("images", "masks"):
        (msg,) = [w for w in src.warnings if w.startswith(str(root / folder) + ":")]
        assert "skipped 7 entries that are not regular files" in msg
        for odd in _ODD:
            assert odd in msg, (odd, msg)
    ds = _finishes(lambda: prepare_dataset(root, tmp_path / "out", progress=False), *fifos)
    assert len(ds) == 2
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert any("x.png (FIFO)" in w for w in meta["warnings"])


def test_one_fifo_warning_text(tmp_path):
    root = write_png_folder(tmp_path, ["a_0"], labelled=False)
    os.mkfifo(root / "images" / "x.png")
    src = _finishes(lambda: scan_source(root), root / "images" / "x.png")
    assert f"{root / 'images'}: skipped 1 entry that is not a regular file: x.png (FIFO)" in src.warnings


def test_unreadable_entry_is_skipped(tmp_path, monkeypatch):
    root = write_png_folder(tmp_path, ["a_0", "a_1"], labelled=False)
    locked = root / "images" / "locked.png"
    os.symlink(root / "images" / "a_0.png", locked)
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(readers.os, "stat", stat)
    src = _quiet(scan_source, root)
    assert src.n_slices == 2 and any("locked.png (unreadable: Permission denied)" in w for w in src.warnings)


@pytest.mark.parametrize("kind", ["fifo", "loop", "broken", "device"])
def test_sole_input_that_is_not_a_regular_file(tmp_path, kind):
    p = tmp_path / "scan.png"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "loop":
        os.symlink(p, p)
    elif kind == "broken":
        os.symlink(tmp_path / "gone.png", p)
    else:
        os.symlink(os.devnull, p)
    what = {"fifo": "FIFO", "loop": "symlink loop", "broken": "broken symlink", "device": "character device"}[kind]
    with pytest.raises(DataError, match=rf"scan\.png: not a regular file or folder \({what}\)"):
        _finishes(lambda: scan_source(p), p)
    with pytest.raises(DataError, match=rf"scan\.png: not a regular file \({what}\)"):
        _finishes(lambda: read_image(p), p)


def test_valid_symlinks_are_followed(tmp_path):
    real = write_png_folder(tmp_path / "real", ["a_0", "a_1"])
    root = tmp_path / "linked"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a_0.png", "a_1.png"):
        os.symlink(real / "images" / name, root / "images" / name)
        os.symlink(real / "masks" / name, root / "masks" / name)
    src = scan_source(root)
    assert src.n_slices == 2 and all(v.labelled for v in src.volumes) and not src.warnings


def test_companion_files_that_are_not_regular_files(tmp_path):
    # named metadata files are DataErrors (not silently ignored), and never opened
    root = write_png_folder(tmp_path / "a", ["a_0"])
    os.mkfifo(root / "volumes.csv")
    with pytest.raises(DataError, match=r"volumes\.csv: not a regular file \(FIFO\)"):
        _finishes(lambda: scan_source(root), root / "volumes.csv")
    root = write_png_folder(tmp_path / "b", ["a_0"])
    os.symlink("classes.txt", root / "classes.txt")
    with pytest.raises(DataError, match=r"classes\.txt: not a regular file \(symlink loop\)"):
        scan_source(root)
    root = write_png_folder(tmp_path / "c", ["a_0"], labelled=False)
    os.symlink(root / "gone", root / "masks")
    with pytest.raises(DataError, match=r"masks: is not a folder \(broken symlink\)"):
        scan_source(root)


def test_retouch_tree_with_fifo_loops_and_linked_case(tmp_path):
    root = tmp_path / "src"
    vendor = write_retouch_case(root, "Cirrus", "TRAIN001", slices=2, height=16).parent
    elsewhere = write_retouch_case(tmp_path / "other", "Cirrus", "TRAIN002", slices=2, height=16, seed=1)
    os.symlink(elsewhere, vendor / "TRAIN002")  # a valid symlinked case folder is read
    os.symlink(".", root / "again")  # loops: must neither hang nor duplicate volumes
    os.symlink("..", vendor / "TRAIN001" / "up")
    os.symlink(root, vendor / "root")
    (vendor / "TRAIN003").mkdir()
    os.mkfifo(vendor / "TRAIN003" / "oct.mhd")
    (vendor / "TRAIN004").mkdir()
    os.symlink("oct.mhd", vendor / "TRAIN004" / "oct.mhd")
    src = _finishes(lambda: scan_source(root), vendor / "TRAIN003" / "oct.mhd")
    assert [v.volume for v in src.volumes] == ["Cirrus_TRAIN001", "Cirrus_TRAIN002"]
    (msg,) = src.warnings
    assert "skipped 2 entries" in msg and "TRAIN003/oct.mhd (FIFO)" in msg and "TRAIN004/oct.mhd (symlink loop)" in msg
    ds = _finishes(lambda: prepare_dataset(root, tmp_path / "out", progress=False), vendor / "TRAIN003" / "oct.mhd")
    assert len(ds) == 4


def test_retouch_data_and_reference_files_that_are_not_regular_files(tmp_path):
    case = write_retouch_case(tmp_path / "a", "Cirrus", "TRAIN001", slices=1, height=8)
    (case / "oct.raw").unlink()
    os.mkfifo(case / "oct.raw")  # SimpleITK would block reading it
    with pytest.raises(DataError, match=r"oct\.mhd: its data file .*oct\.raw is not a regular file \(FIFO\)"):
        _finishes(lambda: scan_source(tmp_path / "a"), case / "oct.raw")
    case = write_retouch_case(tmp_path / "b", "Cirrus", "TRAIN001", slices=1, height=8)
    for f in ("reference.mhd", "reference.raw"):
        (case / f).unlink()
    os.mkfifo(case / "reference.mhd")
    with pytest.raises(DataError, match=r"reference\.mhd: not a regular file \(FIFO\)"):
        _finishes(lambda: scan_source(tmp_path / "b"), case / "reference.mhd")


# --- decompression bombs -----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["images", "masks"])
def test_decompression_bomb_is_a_data_error_naming_file_and_size(tmp_path, which):
    write_png_folder(tmp_path, ["a_0", "a_1"])
    bomb = _png_header(tmp_path / which / "a_1.png", 1, 2 ** 28)
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
    bomb = _png_header(tmp_path / "bomb" / "b.png", 1, 2 ** 28)
    code = ("import sys\nfrom PIL import Image\nfrom octseg.data.readers import scan_source, _header_size\n"
            "from octseg.errors import OctsegError\nprint(Image.MAX_IMAGE_PIXELS)\n"
            "try:\n    scan_source({root!r}); print('ok')\n"
            "except OctsegError as e:\n    print('error', e)\n"
            "try:\n    print(_header_size(__import__('pathlib').Path({bomb!r})))\n"
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
    monkeypatch.setattr(readers, "_PIXEL_LIMIT_PROBLEM", "OCTSEG_MAX_IMAGE_PIXELS='x' is not a pixel count")
    with pytest.raises(ConfigError, match="OCTSEG_MAX_IMAGE_PIXELS"):
        scan_source(tmp_path)


# --- octseg predict on a folder with bad entries -------------------------------------------------------


@pytest.fixture
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_cli_predict_skips_fifo_and_fails_bomb_among_good_images(tmp_path, tiny_checkpoint, capsys, _one_thread):
    src = tmp_path / "scans"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8)).save(src / f"good_{i}.png")
    fifo = src / "x.png"
    os.mkfifo(fifo)
    _png_header(src / "bomb.png", 1, 2 ** 28)
    os.symlink("loop.png", src / "loop.png")
    multi = _save_frames(src / "pages.tif", [np.zeros((30, 40), np.uint8)] * 2)
    out = tmp_path / "out"
    rc = _finishes(lambda: main(["predict", str(tiny_checkpoint), str(src), str(out)]), fifo, timeout=120)
    cap = capsys.readouterr()
    assert rc == 1, cap.out + cap.err
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["good_0.png", "good_1.png", "good_2.png"]
    assert "FAILED: 2 input(s)" in cap.out and "Traceback" not in cap.err
    assert f"{src / 'bomb.png'}: image of 1 x 268435456 pixels" in cap.out
    assert f"{multi}: has 2 frames" in cap.out
    assert "skipped 2 entries that are not regular files: loop.png (symlink loop), x.png (FIFO)" in cap.err


@pytest.mark.parametrize("kind", ["fifo", "loop"])
def test_cli_predict_sole_input_not_a_regular_file(tmp_path, tiny_checkpoint, capsys, kind):
    p = tmp_path / "scan.png"
    os.mkfifo(p) if kind == "fifo" else os.symlink(p, p)
    rc = _finishes(lambda: main(["predict", str(tiny_checkpoint), str(p), str(tmp_path / "out")]), p)
    err = capsys.readouterr().err
    assert rc == 2 and f"{p}: not a regular file or folder" in err and "Traceback" not in err
