"""Disk and permission faults: a full disk (ENOSPC) or a read-only folder (EROFS/EACCES) while
octseg writes checkpoints, a prepared dataset or predictions is one line naming the file, and what
was there before stays as it was, byte for byte.

The faults are injected at octseg's one low-level writer, ``octseg.io.outputs._put``, from its k-th
call on (a full disk stays full): chmod cannot make a folder read-only for root, and a real full
disk cannot be made in a test."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from conftest import tiny_train_overrides
from PIL import Image

import octseg.io.outputs as outputs
from octseg.cli import main
from octseg.data.synthetic import write_synthetic_dataset
from octseg.io.outputs import RECORD_DIR, TMP_PREFIX

MESSAGES = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only", errno.EACCES: "read-only"}


class Faults:
    """Make ``_put`` raise ``OSError(err)`` at its ``at``-th call among the files ``match`` accepts, and
    at every such call after it; ``snapshot()`` runs once, just before the first fault."""

    def __init__(self, monkeypatch, err: int, at: int, match=lambda name: True, snapshot=None):
        self.err, self.at, self.match, self.snapshot = err, at, match, snapshot
        self.calls = self.faults = 0
        real = outputs._put

        def put(fh, write):
            name = fh.name if isinstance(fh.name, str) else os.readlink(f"/proc/self/fd/{fh.name}")
            if self.match(os.path.basename(name)):
                self.calls += 1
                if self.calls >= self.at:
                    if not self.faults and self.snapshot is not None:
                        self.snapshot()
                    self.faults += 1
                    raise OSError(self.err, os.strerror(self.err))
            return real(fh, write)

        monkeypatch.setattr(outputs, "_put", put)


def _files(root: Path, skip=()) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not set(skip) & set(p.relative_to(root).parts)}


def _one_line_error(capsys, path) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("octseg ")]  # not Lightning's INFO lines
    assert len(lines) == 1 and ": error: " in lines[0] and str(path) in lines[0], err
    return lines[0]


def test_checkpoint_write_on_a_full_disk_keeps_best_and_last(tiny_prepared, tmp_path, capsys, monkeypatch, one_thread):
    run, recipe = tmp_path / "run", tmp_path / "tiny.yaml"
    recipe.write_text("name: tiny\n")
    ckpts = run / "checkpoints"
    before: dict = {}
    # 2 epochs of 4 steps, last.ckpt after every step: the 6th checkpoint write is in epoch 2,
    # when best.ckpt and last.ckpt both exist
    f = Faults(monkeypatch, errno.ENOSPC, 6, match=lambda n: ".ckpt" in n,
               snapshot=lambda: before.update({k: v for k, v in _files(ckpts).items() if TMP_PREFIX not in k}))
    overrides = tiny_train_overrides(tiny_prepared, **{"trainer.checkpoint_every_steps": 1})
    rc = main(["train", str(recipe), *overrides, "--out", str(run)])
    err = _one_line_error(capsys, ckpts)
    assert rc == 2 and f.faults >= 1 and "cannot write: no space left on device" in err
    assert {"best.ckpt", "last.ckpt"} <= set(before)
    assert _files(ckpts) == before  # the previous checkpoints, byte for byte; no temporary file left
    from octseg.checkpoint import safe_load

    assert safe_load(ckpts / "last.ckpt")["global_step"] >= 4
    assert json.loads((run / RECORD_DIR / "run.json").read_text())["status"] == "failed"


@pytest.fixture
def raw(tmp_path) -> Path:
    root = tmp_path / "raw"
    write_synthetic_dataset(root, 2, vendors=["cirrus"], fmt="png", slices=2, scale=0.1, seed=4, progress=False)
    return root


@pytest.mark.parametrize("err, at", [(errno.ENOSPC, 1), (errno.EROFS, 2), (errno.EACCES, 1)])
def test_prepare_faults_keep_the_prepared_dataset(raw, tmp_path, capsys, monkeypatch, err, at):
    prep = tmp_path / "prep"
    assert main(["prepare", str(raw), str(prep), "--size", "32", "32"]) == 0
    capsys.readouterr()
    before = _files(prep)
    Faults(monkeypatch, err, at)  # 1: slices.csv, 2: dataset.json
    rc = main(["prepare", str(raw), str(prep), "--size", "48", "48"])
    text = _one_line_error(capsys, prep)
    assert rc == 2 and MESSAGES[err] in text
    assert _files(prep) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep", "raw"]  # the temporary folder is gone


def test_prepare_publish_fault_and_too_little_space(raw, tmp_path, capsys, monkeypatch):
    import shutil

    import octseg.data.prepare as prepare

    prep = tmp_path / "prep"
    assert main(["prepare", str(raw), str(prep), "--size", "32", "32"]) == 0
    capsys.readouterr()
    before = _files(prep)
    real_replace = os.replace

    def replace(src, dst):  # the swap of the finished folder fails: a read-only parent
        if ".tmp-" in str(src) or ".old-" in str(dst):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
        return real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        rc = main(["prepare", str(raw), str(prep), "--size", "48", "48"])
    assert rc == 2 and "read-only" in _one_line_error(capsys, prep)
    assert _files(prep) == before
    # too little free space for the arrays: refused before anything is written (a memmap would die of SIGBUS)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(prepare.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    rc = main(["prepare", str(raw), str(prep), "--size", "48", "48"])
    assert rc == 2 and "free" in _one_line_error(capsys, tmp_path)
    assert _files(prep) == before and sorted(p.name for p in tmp_path.iterdir()) == ["prep", "raw"]


def _complete(out: Path) -> None:
    """Every PNG under its final name decodes; every journalled output still has its checksum."""
    from octseg.inference.resume import sha256_file

    for p in out.rglob("*.png"):
        if not p.name.startswith(TMP_PREFIX):
            with Image.open(p) as im:
                im.load()
    m = out / RECORD_DIR / "manifest.jsonl"
    lines = m.read_text().splitlines() if m.is_file() else []
    for ln in lines[1:]:
        for rel, digest in json.loads(ln)["outputs"].items():
            assert sha256_file(out / rel) == digest, rel


def test_predict_faults_keep_earlier_outputs_and_resume(tmp_path, tiny_checkpoint, capsys, monkeypatch, one_thread):
    src = tmp_path / "scans"
    write_synthetic_dataset(src, 2, vendors=["spectralis"], fmt="png", slices=3, scale=0.1, seed=5, progress=False)
    args = ["predict", str(tiny_checkpoint), str(src)]
    ref = tmp_path / "ref"
    with monkeypatch.context() as m:
        count = Faults(m, errno.ENOSPC, 10 ** 9)  # counts the writes of a whole run
        assert main([*args, str(ref), "--device", "cpu"]) == 0
    n = count.calls  # ..., last journal line, confidence.csv (n-2), fluid.csv (n-1), run.json (n)
    capsys.readouterr()
    expected = _files(ref, skip=[RECORD_DIR])
    # a fault at the first write (run.json), a files.txt line, half way, the last journal line and
    # each table; each run is then resumed to the end
    cases = [(errno.ENOSPC, 1), (errno.EROFS, 2), (errno.ENOSPC, n // 2), (errno.EACCES, n - 3),
             (errno.ENOSPC, n - 2), (errno.ENOSPC, n - 1)]
    for i, (err, at) in enumerate(cases):
        out = tmp_path / f"out{i}"
        with monkeypatch.context() as m:
            f = Faults(m, err, at)
            rc = main([*args, str(out), "--device", "cpu"])
        text = _one_line_error(capsys, out)
        assert rc == 2 and f.faults and MESSAGES[err] in text, (at, text)
        _complete(out)
        assert not (out / "fluid.csv").exists()
        if at == n // 2:  # a fault in a resumed run leaves what the earlier run finished as it was
            earlier = _files(out, skip=[RECORD_DIR])
            with monkeypatch.context() as m:
                Faults(m, errno.ENOSPC, 3)
                assert main([*args, str(out), "--device", "cpu", "--resume"]) == 2
            assert "no space left on device" in _one_line_error(capsys, out)
            now = _files(out, skip=[RECORD_DIR])
            assert earlier and {k: now.get(k) for k in earlier} == earlier
            _complete(out)
        assert main([*args, str(out), "--device", "cpu", "--resume"]) == 0, capsys.readouterr().err
        capsys.readouterr()
        assert _files(out, skip=[RECORD_DIR]) == expected, at


@pytest.mark.skipif(os.geteuid() == 0, reason="chmod does not stop root; the injected EROFS/EACCES above cover it")
def test_read_only_output_folder_by_chmod(tmp_path, tiny_checkpoint, capsys, one_thread):
    src = tmp_path / "scans"
    write_synthetic_dataset(src, 1, vendors=["spectralis"], fmt="png", slices=2, scale=0.1, seed=5, progress=False)
    out = tmp_path / "out"
    assert main(["predict", str(tiny_checkpoint), str(src), str(out), "--device", "cpu"]) == 0
    before = _files(out, skip=[RECORD_DIR])
    (out / "fluid.csv").unlink()
    os.chmod(out, 0o555)
    try:
        rc = main(["predict", str(tiny_checkpoint), str(src), str(out), "--device", "cpu", "--resume"])
    finally:
        os.chmod(out, 0o755)
    assert rc == 2 and "read-only" in _one_line_error(capsys, out)
    assert {k: v for k, v in _files(out, skip=[RECORD_DIR]).items()} == {k: v for k, v in before.items()
                                                                          if k != "fluid.csv"}
