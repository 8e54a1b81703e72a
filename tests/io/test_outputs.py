"""Output safety: octseg never writes over its inputs or a user's files, never mixes two runs in one
folder, writes atomically, and reports a full disk in plain words. One test per category of the
probe's findings (writing over inputs, mixed runs, concurrent runs, full disk, one-line errors)."""

from __future__ import annotations

import csv
import errno
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from octseg.cli import main
from octseg.data.synthetic import write_synthetic_dataset
from octseg.errors import DataError
from octseg.io.outputs import RECORD_DIR, OutputFolder, atomic_write, atomic_write_text, check_output_file


pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _snapshot(root: Path) -> dict:
    """Every file under root (outside octseg's record) -> its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and RECORD_DIR not in p.relative_to(root).parts}


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A user's labelled PNG dataset: images/ + masks/ (ground truth) + volumes.csv."""
    src = tmp_path / "made"
    write_synthetic_dataset(src, 2, vendors=["spectralis"], fmt="png", slices=2, scale=0.12, seed=0, progress=False)
    user = tmp_path / "study"
    user.mkdir()
    for sub in ("images", "masks"):
        (user / sub).mkdir()
        for p in (src / sub).iterdir():
            (user / sub / p.name).write_bytes(p.read_bytes())
    (user / "notes.txt").write_text("graded by A. Grader\n")
    return user


# ----------------------------------------------------------------------------- writing over inputs


def test_predict_never_writes_into_its_input(tmp_path, tiny_checkpoint, capsys, dataset):
    before = _snapshot(dataset)
    for out, extra in [(dataset, []), (dataset, ["--overwrite"]), (dataset / "images", ["--overwrite"])]:
        rc, _, err = _cli(capsys, "predict", tiny_checkpoint, dataset if out == dataset else out, out, *extra)
        assert rc == 2 and "never writes over its inputs" in err and err.count("\n") == 1, err
    # OUT containing the input folder, even with --overwrite
    outer = tmp_path / "outer"
    (outer / "scans").mkdir(parents=True)
    for p in (dataset / "images").iterdir():
        (outer / "scans" / p.name).write_bytes(p.read_bytes())
    rc, _, err = _cli(capsys, "predict", tiny_checkpoint, outer / "scans", outer, "--overwrite")
    assert rc == 2 and "contains the input" in err
    assert _snapshot(dataset) == before
    assert not (outer / "masks").exists()


def test_predict_refuses_a_folder_of_the_users_and_overwrite_keeps_their_files(tmp_path, tiny_checkpoint, capsys,
                                                                               dataset):
    out = tmp_path / "results"
    out.mkdir()
    (out / "masks").mkdir()
    theirs = Image.fromarray(np.full((8, 8), 7, np.uint8))
    theirs.save(out / "masks" / "TRAIN001_000.png")  # the name octseg's mask for that B-scan gets
    (out / "readme.md").write_text("mine")
    before = _snapshot(out)
    rc, _, err = _cli(capsys, "predict", tiny_checkpoint, dataset, out)
    assert rc == 2 and "did not write" in err and "--overwrite" in err
    assert _snapshot(out) == before and not (out / "fluid.csv").exists()
    rc, _, _ = _cli(capsys, "predict", tiny_checkpoint, dataset, out, "--overwrite")
    assert rc == 0
    after = _snapshot(out)
    assert after["readme.md"] == b"mine" and after["masks/TRAIN001_000.png"] != before["masks/TRAIN001_000.png"]
    assert (out / "fluid.csv").is_file()


def test_synth_never_writes_into_a_users_folder(tmp_path, capsys, dataset):
    before = _snapshot(dataset)
    rc, _, err = _cli(capsys, "synth", dataset, "--volumes", "1", "--slices", "1", "--scale", "0.1", "--seed", "0",
                      "--format", "png")
    assert rc == 2 and "did not write" in err
    assert _snapshot(dataset) == before and not (dataset / RECORD_DIR).exists()


def test_synth_overwrite_replaces_the_earlier_output_whole(tmp_path):
    out = tmp_path / "s"
    write_synthetic_dataset(out, 3, fmt="png", slices=2, scale=0.1, seed=0, progress=False)
    with pytest.raises(DataError, match="earlier octseg synth"):
        write_synthetic_dataset(out, 1, fmt="png", slices=2, scale=0.1, seed=0, progress=False)
    (out / "mine.txt").write_text("added by the user")
    with pytest.raises(DataError, match="did not write"):
        write_synthetic_dataset(out, 1, fmt="png", slices=2, scale=0.1, seed=0, progress=False)
    write_synthetic_dataset(out, 1, fmt="png", slices=2, scale=0.1, seed=0, progress=False, overwrite=True)
    # no image of the earlier 3-volume run survives beside the new one; the user's file does
    assert sorted(p.name for p in (out / "images").iterdir()) == ["TRAIN001_000.png", "TRAIN001_001.png"]
    assert (out / "mine.txt").read_text() == "added by the user"
    rows = list(csv.DictReader(open(out / "volumes.csv")))
    assert [r["volume"] for r in rows] == ["TRAIN001"]


def test_prepare_never_replaces_a_dataset_holding_user_files(tmp_path, dataset):
    from octseg.data.prepare import prepare_dataset

    out = tmp_path / "prep"
    prepare_dataset(dataset, out, size=(32, 32), progress=False)
    prepare_dataset(dataset, out, size=(32, 32), progress=False)  # re-preparing octseg's own folder is fine
    (out / "my_annotations.csv").write_text("x")
    with pytest.raises(DataError, match="my_annotations.csv"):
        prepare_dataset(dataset, out, size=(48, 48), progress=False)
    assert (out / "my_annotations.csv").read_text() == "x"
    assert np.load(out / "images.npy", mmap_mode="r").shape[1:] == (32, 32)


def test_train_refuses_a_users_folder_before_any_work(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my: own\n")
    rc, _, err = _cli(capsys, "train", "demo_cpu", f"data.path={tmp_path / 'nowhere'}", "--out", out)
    assert rc == 2 and "did not write" in err
    assert (out / "config.yaml").read_text() == "my: own\n" and sorted(os.listdir(out)) == ["config.yaml"]


def test_single_output_files_are_replaced_only_when_octseg_wrote_them(tmp_path, tiny_checkpoint, capsys):
    theirs = tmp_path / "report.json"
    theirs.write_text('{"mine": 1}')
    with pytest.raises(DataError, match="not written by octseg"):
        check_output_file(theirs)
    check_output_file(theirs, overwrite=True)
    ours = tmp_path / "ours.json"
    atomic_write_text(ours, json.dumps({"written_by": "octseg 0.1.0 evaluate"}))
    check_output_file(ours)
    with pytest.raises(DataError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(DataError, match="never writes over its inputs"):
        check_output_file(tiny_checkpoint, overwrite=True, protect=[tiny_checkpoint])
    # export: a user's file is refused, octseg's own export replaced
    user_file = tmp_path / "model.onnx"
    user_file.write_bytes(b"not ours")
    rc, _, err = _cli(capsys, "export", tiny_checkpoint, user_file)
    assert rc == 2 and "not written by octseg" in err and user_file.read_bytes() == b"not ours"
    assert _cli(capsys, "export", tiny_checkpoint, tmp_path / "m.onnx")[0] == 0
    assert _cli(capsys, "export", tiny_checkpoint, tmp_path / "m.onnx")[0] == 0
    assert _cli(capsys, "export", tiny_checkpoint, user_file, "--overwrite")[0] == 0


def test_evaluate_refuses_a_users_json_before_scoring(tmp_path, tiny_checkpoint, capsys, dataset):
    theirs = tmp_path / "grades.json"
    theirs.write_text('{"grader": "A"}')
    rc, out, err = _cli(capsys, "evaluate", tiny_checkpoint, dataset, "--json", theirs)
    assert rc == 2 and "not written by octseg" in err and out == ""
    assert theirs.read_text() == '{"grader": "A"}'
    mine = tmp_path / "eval.json"
    assert _cli(capsys, "evaluate", tiny_checkpoint, dataset, "--json", mine)[0] == 0
    assert _cli(capsys, "evaluate", tiny_checkpoint, dataset, "--json", mine)[0] == 0  # its own report: replaced
    assert json.loads(mine.read_text())["written_by"].startswith("octseg")


# ----------------------------------------------------------------------------- one run per folder


def _mask_names(out: Path) -> list[str]:
    return sorted(p.stem for p in (out / "masks").iterdir())


def test_two_predicts_never_mix_and_fluid_csv_matches_the_masks(tmp_path, tiny_checkpoint, capsys, dataset):
    out = tmp_path / "pred"
    assert _cli(capsys, "predict", tiny_checkpoint, dataset, out)[0] == 0
    first = _mask_names(out)
    assert len(first) == 4
    one = dataset / "images" / sorted(os.listdir(dataset / "images"))[0]
    before = _snapshot(out)
    rc, _, err = _cli(capsys, "predict", tiny_checkpoint, one, out)
    assert rc == 2 and "earlier octseg predict" in err and "--overwrite" in err
    assert _snapshot(out) == before
    assert _cli(capsys, "predict", tiny_checkpoint, one, out, "--overwrite")[0] == 0
    assert _mask_names(out) == [one.stem]
    assert sorted(os.listdir(out / "overlays")) == [f"{one.stem}.png"]
    rows = list(csv.DictReader(open(out / "fluid.csv")))
    assert {r["bscan"] for r in rows if r["level"] == "bscan"} == {one.stem}


def _hold(path, ready, release):
    with OutputFolder(path, "predict"):
        ready.set()
        release.wait(30)


def test_a_folder_being_written_is_locked(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(tmp_path / "out", ready, release))
    proc.start()
    try:
        assert ready.wait(30)
        with pytest.raises(DataError, match=f"another octseg process \\(pid {proc.pid}"):
            with OutputFolder(tmp_path / "out", "predict"):
                pass
    finally:
        release.set()
        proc.join(30)
    with OutputFolder(tmp_path / "out", "predict") as folder:  # free again once the writer is gone
        atomic_write_text(folder.file("a.txt"), "x")
    info = json.loads((tmp_path / "out" / RECORD_DIR / "run.json").read_text())
    assert info["status"] == "finished" and info["command"] == "predict"


def test_a_killed_run_leaves_the_folder_octsegs(tmp_path):
    """Files are recorded before they are written, temporary files are recognised: an interrupted
    run's folder is an earlier octseg output (replaceable with overwrite), not a user's folder."""
    out = tmp_path / "o"
    with pytest.raises(RuntimeError):
        with OutputFolder(out, "predict") as folder:
            folder.file("masks/a.png").write_bytes(b"half")
            (out / "masks" / ".octseg-tmp-b.png.123").write_bytes(b"partial")
            raise RuntimeError("killed")
    assert json.loads((out / RECORD_DIR / "run.json").read_text())["status"] == "failed"
    with pytest.raises(DataError, match="failed output of an earlier octseg predict"):
        with OutputFolder(out, "predict"):
            pass
    with OutputFolder(out, "predict", overwrite=True):
        pass
    assert not (out / "masks").exists()


# ----------------------------------------------------------------------------- full disk, atomic writes


class _FullDisk:
    """A file object on a disk with ``budget["room"]`` bytes left: writes past it fail with ENOSPC."""

    def __init__(self, fh, budget: dict):
        self.fh, self.budget = fh, budget

    def write(self, data):
        n = len(memoryview(data).cast("B"))
        if n > self.budget["room"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget["room"] -= n
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def _fill_disk(monkeypatch, room: int) -> None:
    import octseg.io.outputs as outputs

    real, budget = os.fdopen, {"room": room}
    monkeypatch.setattr(outputs.os, "fdopen", lambda fd, mode="r", *a, **k: _FullDisk(real(fd, mode, *a, **k), budget))


@pytest.fixture
def full_disk(monkeypatch):
    _fill_disk(monkeypatch, 100)


def test_full_disk_keeps_the_old_file_and_says_so(tmp_path, full_disk):
    from octseg.checkpoint import atomic_torch_save

    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous checkpoint")
    with pytest.raises(DataError) as err:
        atomic_torch_save({"w": torch.zeros(1000)}, target)
    assert str(err.value) == f"{target}: cannot write: no space left on device"
    assert target.read_bytes() == b"previous checkpoint"
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temporary file left behind
    with pytest.raises(DataError, match="no space left on device"):
        atomic_write(tmp_path / "new.csv", lambda fh: fh.write(b"x" * 1000))
    assert not (tmp_path / "new.csv").exists()


@pytest.mark.parametrize("room", [100, 3_000, 20_000])
def test_predict_on_a_full_disk_leaves_no_fluid_csv(tmp_path, tiny_checkpoint, capsys, dataset, monkeypatch, room):
    """Whenever the disk fills up (at the record, the first mask, later), the error names the file
    and says why, no fluid.csv claims the run finished, and no half-written mask looks complete."""
    _fill_disk(monkeypatch, room)
    out = tmp_path / "pred"
    rc, _, err = _cli(capsys, "predict", tiny_checkpoint, dataset / "images", out)
    last = err.strip().splitlines()[-1]  # (a progress bar may stand before it)
    assert rc == 2 and last.startswith("octseg predict: error: " + str(out)) and err.count("error") == 1, err
    assert last.endswith("cannot write: no space left on device")
    assert not (out / "fluid.csv").exists()
    for p in (out / "masks").glob("*.png") if (out / "masks").is_dir() else []:
        assert Image.open(p).size == Image.open(dataset / "images" / p.name).size  # decodes whole


# ----------------------------------------------------------------------------- one-line errors


def test_unexpected_errors_are_one_line_unless_debug(monkeypatch, capsys, tmp_path):
    import octseg.cli as cli

    def boom(a):
        raise TypeError("something odd\nsecond line")

    monkeypatch.setattr(cli, "cmd_export", boom)
    rc, _, err = _cli(capsys, "export", tmp_path / "a.ckpt", tmp_path / "a.onnx")
    assert rc == 1 and err.count("\n") == 1 and "TypeError: something odd" in err and "--debug" in err
    with pytest.raises(TypeError):
        main(["export", str(tmp_path / "a.ckpt"), str(tmp_path / "a.onnx"), "--debug"])
    with pytest.raises(TypeError):
        main(["--debug", "export", str(tmp_path / "a.ckpt"), str(tmp_path / "a.onnx")])
