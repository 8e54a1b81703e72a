"""octseg.io.files: what a path is before anything opens it. Entries that are not regular files
(FIFO, socket, device, broken symlink, symlink loops) are never opened, never block and never end
in a traceback: skipped with a warning naming them among many, a DataError naming the one asked for.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from _odd_inputs import ODD, finishes, odd_entries, png_header, quiet, save_frames
from fakes import write_png_folder
from PIL import Image

from octseg.cli import main
from octseg.data.prepare import prepare_dataset
from octseg.data.readers import scan_source
from octseg.errors import DataError
from octseg.io import files
from octseg.io.files import entry_kind, not_folder, open_regular, regular_files, skipped_note
from octseg.io.images import read_image


# --- entry_kind, regular_files, open_regular, skipped_note ------------------------------------------


def test_entry_kind_names_every_kind_without_opening(tmp_path, monkeypatch):
    fifos = odd_entries(tmp_path, monkeypatch)
    (tmp_path / "a.png").write_bytes(b"x")
    os.symlink(tmp_path / "a.png", tmp_path / "link.png")
    kinds = {name: finishes(lambda n=name: entry_kind(tmp_path / n), *fifos)
             for name in ("a.png", "link.png", "here", "gone.png", "x.png", "sock.png", "dev.png", "broken.png",
                          "loop_a.png", "self.png")}
    assert kinds == {"a.png": "file", "link.png": "file", "here": "folder", "gone.png": "missing",
                     "x.png": "FIFO", "sock.png": "socket", "dev.png": "character device",
                     "broken.png": "broken symlink", "loop_a.png": "symlink loop", "self.png": "symlink loop"}
    assert entry_kind(tmp_path / "a.png" / "below") == "missing"
    assert entry_kind("bad\0name").startswith("unreadable: ")
    assert [not_folder(k) for k in ("missing", "file", "FIFO")] == [
        "does not exist", "is a file, not a folder", "is not a folder (FIFO)"]


def test_regular_files_sorted_with_the_odd_entries_named(tmp_path, monkeypatch):
    fifos = odd_entries(tmp_path, monkeypatch)
    for name in ("b.png", "a.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    os.symlink(tmp_path / "b.png", tmp_path / "c.png")
    got, odd = finishes(lambda: regular_files(tmp_path), *fifos)
    assert [p.name for p in got] == [".hidden.png", "a.txt", "b.png", "c.png"]
    assert got[0] == tmp_path / ".hidden.png"
    assert sorted(odd) == sorted(ODD)
    got, odd = regular_files(tmp_path, hidden=False)
    assert [p.name for p in got] == ["a.txt", "b.png", "c.png"] and len(odd) == len(ODD)
    with pytest.raises(OSError):
        regular_files(tmp_path / "gone")


def test_open_regular_refuses_what_is_not_a_regular_file_without_blocking(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"data")
    with open_regular(tmp_path / "a.bin") as fh:
        assert fh.read() == b"data"
    os.mkfifo(tmp_path / "x.fifo")
    with pytest.raises(DataError, match=r"x\.fifo: not a regular file \(FIFO\)"):
        finishes(lambda: open_regular(tmp_path / "x.fifo"), tmp_path / "x.fifo")
    with pytest.raises(DataError, match=r"gone\.bin: no such file"):
        open_regular(tmp_path / "gone.bin")
    with pytest.raises(DataError, match=r"not a regular file \(folder\)"):
        open_regular(tmp_path)


def test_find_named_depth_hidden_folders_and_loops(tmp_path):
    for rel in ("x.mhd", "a/x.mhd", "a/b/x.mhd", "a/b/c/x.mhd", ".hid/x.mhd", "a/y.mhd"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    os.symlink(tmp_path, tmp_path / "a" / "up")  # a loop back to the root: each real folder once
    os.mkfifo(tmp_path / "a" / "b" / "c" / "x.fifo")
    os.symlink("x.mhd", tmp_path / "a" / "b" / "c" / "x.mhd.loop")
    skipped: list[str] = []
    found = finishes(lambda: files.find_named(tmp_path, "x.mhd", 3, skipped))
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/b/x.mhd", "a/x.mhd", "x.mhd"]
    assert skipped == []
    os.unlink(tmp_path / "a" / "b" / "c" / "x.mhd")
    os.mkfifo(tmp_path / "a" / "b" / "c" / "x.mhd")
    found = finishes(lambda: files.find_named(str(tmp_path), "x.mhd", 4, skipped))
    assert len(found) == 3 and skipped == [f"{tmp_path / 'a/b/c/x.mhd'} (FIFO)"]


def test_skipped_note_counts_and_shortens():
    assert skipped_note("/d", ["x (FIFO)"]) == "/d: skipped 1 entry that is not a regular file: x (FIFO)"
    many = [f"e{i} (socket)" for i in range(12)]
    note = skipped_note("/d", many)
    assert note.startswith("/d: skipped 12 entries that are not regular files: e0 (socket), ")
    assert "e9 (socket) ..." in note and "e10" not in note


# --- entries that are not regular files, through the readers ----------------------------------------


def test_non_regular_entries_among_images_and_masks_are_skipped_with_a_warning(tmp_path, monkeypatch):
    root = write_png_folder(tmp_path / "src", ["a_0", "a_1"])
    fifos = odd_entries(root / "images", monkeypatch)
    fifos += odd_entries(root / "masks", monkeypatch)
    src = finishes(lambda: scan_source(root), *fifos)
    assert src.n_slices == 2 and all(v.labelled for v in src.volumes)
    for folder in ("images", "masks"):
        (msg,) = [w for w in src.warnings if w.startswith(str(root / folder) + ":")]
        assert "skipped 7 entries that are not regular files" in msg
        for odd in ODD:
            assert odd in msg, (odd, msg)
    ds = finishes(lambda: prepare_dataset(root, tmp_path / "out", progress=False), *fifos)
    assert len(ds) == 2
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert any("x.png (FIFO)" in w for w in meta["warnings"])


def test_one_fifo_warning_text(tmp_path):
    root = write_png_folder(tmp_path, ["a_0"], labelled=False)
    os.mkfifo(root / "images" / "x.png")
    src = finishes(lambda: scan_source(root), root / "images" / "x.png")
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

    monkeypatch.setattr(files.os, "stat", stat)
    src = quiet(scan_source, root)
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
        finishes(lambda: scan_source(p), p)
    with pytest.raises(DataError, match=rf"scan\.png: not a regular file \({what}\)"):
        finishes(lambda: read_image(p), p)


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
        finishes(lambda: scan_source(root), root / "volumes.csv")
    root = write_png_folder(tmp_path / "b", ["a_0"])
    os.symlink("classes.txt", root / "classes.txt")
    with pytest.raises(DataError, match=r"classes\.txt: not a regular file \(symlink loop\)"):
        scan_source(root)
    root = write_png_folder(tmp_path / "c", ["a_0"], labelled=False)
    os.symlink(root / "gone", root / "masks")
    with pytest.raises(DataError, match=r"masks: is not a folder \(broken symlink\)"):
        scan_source(root)


# --- octseg predict on a folder with bad entries ----------------------------------------------------


def test_cli_predict_skips_fifo_and_fails_bomb_among_good_images(tmp_path, tiny_checkpoint, capsys, one_thread):
    src = tmp_path / "scans"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8)).save(src / f"good_{i}.png")
    fifo = src / "x.png"
    os.mkfifo(fifo)
    png_header(src / "bomb.png", 1, 2 ** 28)
    os.symlink("loop.png", src / "loop.png")
    multi = save_frames(src / "pages.tif", [np.zeros((30, 40), np.uint8)] * 2)
    out = tmp_path / "out"
    rc = finishes(lambda: main(["predict", str(tiny_checkpoint), str(src), str(out)]), fifo, timeout=120)
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
    rc = finishes(lambda: main(["predict", str(tiny_checkpoint), str(p), str(tmp_path / "out")]), p)
    err = capsys.readouterr().err
    assert rc == 2 and f"{p}: not a regular file or folder" in err and "Traceback" not in err
