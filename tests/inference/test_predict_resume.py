"""Never losing work in prediction: `octseg predict` over a folder, killed with SIGKILL at several
points (in the middle of writing a mask, in the middle of a manifest line, after k outputs), then
`--resume`, ends with exactly the files of an uninterrupted run; no kill leaves a half-written mask
under its final name, and a changed or missing output is predicted again."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from octseg.cli import main
from octseg.data.synthetic import write_synthetic_dataset
from octseg.io.outputs import RECORD_DIR, TMP_PREFIX

pytestmark = pytest.mark.usefixtures("one_thread")

# `octseg predict` whose PNG writes are slowed down and announced ("WROTE n"); at write $HANG_WRITE it
# writes half of the PNG and waits to be killed, at journal line $HANG_LINE half of the line.
DRIVER = textwrap.dedent('''
    import io, os, sys, time
    import torch
    torch.set_num_threads(1)
    import octseg.inference.resume as resume
    import octseg.inference.run as run
    from octseg.cli import main
    from octseg.io.outputs import atomic_write

    hang_write, hang_line = int(os.environ.get("HANG_WRITE", "-1")), int(os.environ.get("HANG_LINE", "-1"))
    count = {"w": 0, "l": 0}
    png, append = run.write_png, resume.append_text

    def slow_png(path, image, **kw):
        count["w"] += 1
        if count["w"] == hang_write:
            from PIL import Image
            buf = io.BytesIO()
            (image if hasattr(image, "save") else Image.fromarray(image)).save(buf, format="PNG")
            data = buf.getvalue()

            def write(fh):
                fh.write(data[: len(data) // 2])
                fh.flush()
                print("IN_WRITE", flush=True)
                time.sleep(600)
            return atomic_write(path, write)
        out = png(path, image, **kw)
        print(f"WROTE {count['w']}", flush=True)
        time.sleep(0.05)
        return out

    def slow_append(fh, text, path):
        count["l"] += 1
        if count["l"] == hang_line:
            fh.write(text[: len(text) // 2])
            fh.flush()
            print("IN_LINE", flush=True)
            time.sleep(600)
        return append(fh, text, path)

    run.write_png, resume.append_text = slow_png, slow_append
    sys.exit(main(sys.argv[1:]))
''')


def _outputs(root: Path) -> dict:
    """Every file a user reads (outside octseg's record) -> its bytes; run.json's times are in the record."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and RECORD_DIR not in p.relative_to(root).parts}


def _check_no_half_files(out: Path) -> int:
    """Every PNG under its final name decodes completely; a killed write left only a temporary file."""
    n = 0
    for p in out.rglob("*.png"):
        if p.name.startswith(TMP_PREFIX):
            continue
        with Image.open(p) as im:
            im.load()
        n += 1
    return n


@pytest.fixture
def scans(tmp_path) -> Path:
    root = tmp_path / "scans"
    write_synthetic_dataset(root, 2, vendors=["spectralis"], fmt="png", slices=4, scale=0.12, seed=0, progress=False)
    return root


def test_killed_prediction_resumes_byte_identical(tmp_path, tiny_checkpoint, scans, capsys):
    args = [str(tiny_checkpoint), str(scans)]
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(["predict", *args, str(ref), "--device", "cpu", "--batch", "3"]) == 0
    capsys.readouterr()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_PROCID"):
        env.pop(k, None)
    rng = random.Random(2)
    # 8 images -> 16 PNG writes and 8 journal lines in an uninterrupted run
    plan = [("in_write", 3), ("in_line", 2), ("after", rng.randint(2, 5))]
    kills = []
    for i, (kind, at) in enumerate(plan):
        e = dict(env, HANG_WRITE=str(at) if kind == "in_write" else "-1",
                 HANG_LINE=str(at) if kind == "in_line" else "-1")
        cmd = [sys.executable, str(driver), "predict", *args, str(out), "--device", "cpu", "--batch", "3"]
        proc = subprocess.Popen(cmd + (["--resume"] if i else []), env=e, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        t0, wrote = time.time(), 0
        for line in proc.stdout:
            wrote += line.startswith("WROTE ")
            if (kind == "after" and wrote >= at) or line.startswith(("IN_WRITE", "IN_LINE")):
                break
            assert time.time() - t0 < 120, "the prediction did not reach its kill point"
        if kind == "after":
            time.sleep(rng.uniform(0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        kills.append((kind, at))
        _check_no_half_files(out)
        assert not (out / "fluid.csv").exists()  # nothing that looks complete before every input is done
        if kind == "in_write":
            assert list(out.rglob(f"{TMP_PREFIX}*")), "the killed write left its temporary file"
    assert len(kills) == 3
    manifest = (out / RECORD_DIR / "manifest.jsonl").read_text().splitlines()
    done = [json.loads(ln) for ln in manifest[1:]]
    assert done, "no input was journalled as finished"

    # without --resume the killed run's folder is refused as before; both flags at once are refused
    rc = main(["predict", *args, str(out), "--device", "cpu"])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    rc = main(["predict", *args, str(out), "--device", "cpu", "--resume", "--overwrite"])
    assert rc == 2 and "give one of them" in capsys.readouterr().err
    rc = main(["predict", *args, str(out), "--device", "cpu", "--resume", "--tta", "flip"])
    err = capsys.readouterr().err
    assert rc == 2 and "manifest.jsonl" in err and "other settings (tta False -> True)" in err

    # a finished output changed and another removed since: both inputs are predicted again
    assert all(len(d["input"]) == 32 and str(scans) not in d["input"] for d in done)  # a hash of the path
    changed = out / next(iter(done[0]["outputs"]))
    changed.write_bytes(changed.read_bytes()[:-7])
    gone = out / list(done[-1]["outputs"])[-1]
    gone.unlink()
    assert main(["predict", *args, str(out), "--device", "cpu", "--batch", "3", "--resume"]) == 0
    text = capsys.readouterr().out
    assert f"resumed: {len(done) - len({done[0]['input'], done[-1]['input']})} finished input(s) skipped" in text, text
    assert "predicted again" in text
    a, b = _outputs(ref), _outputs(out)
    assert sorted(a) == sorted(b) and "fluid.csv" in a and "confidence.csv" in a
    assert [k for k in a if a[k] != b[k]] == []
    assert not list(out.rglob(f"{TMP_PREFIX}*"))  # the killed run's temporary files were removed

    # resuming a finished run predicts nothing and writes the same tables again
    assert main(["predict", *args, str(out), "--device", "cpu", "--resume"]) == 0
    assert "resumed: 8 finished input(s) skipped" in capsys.readouterr().out
    assert _outputs(out) == a


def test_resume_of_volumes_and_other_folders(tmp_path, tiny_checkpoint, capsys):
    src = tmp_path / "vols"
    write_synthetic_dataset(src, 2, vendors=["cirrus"], fmt="mhd", slices=2, scale=0.1, seed=1, progress=False)
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(["predict", str(tiny_checkpoint), str(src), str(ref), "--device", "cpu"]) == 0
    # --resume into a new folder is a plain run; then drop the second volume's line and its header file
    assert main(["predict", str(tiny_checkpoint), str(src), str(out), "--device", "cpu", "--resume"]) == 0
    m = out / RECORD_DIR / "manifest.jsonl"
    lines = m.read_text().splitlines()
    assert len(lines) == 3
    m.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40] + "\n")  # a line cut by a kill
    (out / "fluid.csv").unlink()
    capsys.readouterr()
    assert main(["predict", str(tiny_checkpoint), str(src), str(out), "--device", "cpu", "--resume"]) == 0
    assert "resumed: 1 finished input(s) skipped" in capsys.readouterr().out
    assert _outputs(ref) == _outputs(out)
    # a shard resumes from its own journal; the merged tables are one process's
    sh = tmp_path / "shards"
    for i in (0, 1):
        assert main(["predict", str(tiny_checkpoint), str(src), str(sh), "--device", "cpu", "--shard", f"{i}/2"]) == 0
    capsys.readouterr()
    assert main(["predict", str(tiny_checkpoint), str(src), str(sh), "--device", "cpu", "--shard", "1/2",
                 "--resume"]) == 0
    assert "resumed: 1 finished input(s) skipped" in capsys.readouterr().out
    assert (sh / RECORD_DIR / "parts" / "shards-2" / "shard-1" / "manifest.jsonl").is_file()
    assert main(["merge-csv", str(sh)]) == 0
    assert {k: v for k, v in _outputs(sh).items() if not k.startswith("parts/")} == _outputs(ref)
    # a folder written by another octseg command is not continued
    synth = tmp_path / "synth"
    write_synthetic_dataset(synth, 1, vendors=["cirrus"], fmt="mhd", slices=1, scale=0.1, seed=1, progress=False)
    rc = main(["predict", str(tiny_checkpoint), str(src), str(synth), "--device", "cpu", "--resume"])
    assert rc == 2 and "not of predict" in capsys.readouterr().err
