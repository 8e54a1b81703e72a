"""Sharded prediction: `octseg predict --shard I/N` in separate processes + `octseg merge-csv` give
exactly the files of one process; shards from torchrun / SLURM environments; the folder rules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from octseg.cli import main
from octseg.data.synthetic import write_synthetic_dataset
from octseg.errors import ConfigError
from octseg.inference.inputs import Job
from octseg.inference.shards import Shard, parse_shard, resolve_shard, select_jobs, shard_bounds, shard_from_env
from octseg.io.outputs import RECORD_DIR

pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _outputs(root: Path) -> dict:
    """Every file a user reads (outside octseg's record and the shards' parts) -> its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not {RECORD_DIR, "parts"} & set(p.relative_to(root).parts)}


def test_parse_shard_and_environments():
    assert parse_shard("1/4") == Shard(1, 4) and parse_shard(" 0 / 1 ") == Shard(0, 1)
    for bad in ("4/4", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)
    assert shard_from_env({}) is None
    s = shard_from_env({"RANK": "3", "WORLD_SIZE": "8"})
    assert (s.index, s.count) == (3, 8) and "torchrun" in s.origin
    s = shard_from_env({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "6"})
    assert (s.index, s.count) == (4, 6) and "SLURM" in s.origin
    s = shard_from_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"})
    assert (s.index, s.count) == (1, 2)
    with pytest.raises(ConfigError, match="step 2"):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_STEP": "2"})
    with pytest.raises(ConfigError, match="expected 0 <= index < count"):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "2"})
    # without --shard: torchrun with several processes shards by itself; one process or SLURM alone does not
    assert resolve_shard(None, {"RANK": "1", "WORLD_SIZE": "2"}).count == 2
    assert resolve_shard(None, {"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}) is None
    assert resolve_shard("auto", {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"}).index == 1
    with pytest.raises(ConfigError, match="no launcher found"):
        resolve_shard("auto", {})


def test_shard_blocks_cover_everything_and_keep_equal_names_together():
    keys = ["a", "b", "a", "c", "d", "e", "f", "g", "g", "h"]  # 'a' at 0 and 2, 'g' at 7 and 8
    for n in range(1, 13):
        cuts = shard_bounds(keys, n)
        assert cuts[0] == 0 and cuts[-1] == len(keys) and cuts == sorted(cuts) and len(cuts) == n + 1
        assert not any(c in (1, 2, 8) for c in cuts[1:-1])  # never between the two a's or the two g's
    assert shard_bounds(keys, 2) == [0, 5, 10]
    jobs = [Job("image", Path(f"/x/{k}.png")) for k in "abcdefg"]
    parts = [select_jobs(jobs, Shard(i, 3)) for i in range(3)]
    assert sum(parts, []) == jobs and [len(p) for p in parts] == [2, 3, 2]
    assert select_jobs(jobs, None) == jobs
    # a RETOUCH volume is named after its folder
    vols = [Job("volume", Path(f"/r/{v}/oct.mhd")) for v in ("T1", "T2", "T1")]
    assert shard_bounds([v.path.parent.name for v in vols], 2) == [0, 3, 3]


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """8 PNG B-scans of two volumes, one file whose name repeats another's (-> `_2`), one unreadable file."""
    root = tmp_path / "png"
    write_synthetic_dataset(root, 2, vendors=["spectralis"], fmt="png", slices=4, scale=0.15, seed=0, progress=False)
    images = root / "images"
    first = sorted(images.glob("*.png"))[0]
    (images / f"{first.stem}.jpg").write_bytes(first.read_bytes())
    (images / "zz_bad.png").write_bytes(b"not an image")
    return root


def test_two_shard_processes_equal_one_process(tmp_path, tiny_checkpoint, capsys, image_folder):
    one, two = tmp_path / "one", tmp_path / "two"
    rc, out, _ = _cli(capsys, "predict", tiny_checkpoint, image_folder, one, "--batch", "3", "--device", "cpu")
    assert rc == 1 and "zz_bad.png" in out  # the unreadable file is listed, the others predicted
    # two processes at once: shard 0 as torchrun starts it (no option), shard 1 as a SLURM array task
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_PROCID"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "octseg.cli", "predict", str(tiny_checkpoint), str(image_folder), str(two),
           "--batch", "3", "--device", "cpu"]
    procs = [subprocess.Popen(cmd, env=dict(env, RANK="0", WORLD_SIZE="2", LOCAL_RANK="0"), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
             subprocess.Popen(cmd + ["--shard", "auto"], text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=dict(env, SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="2"))]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 1], logs  # the unreadable file is in the last block
    assert "shard 0/2 (torchrun" in logs[0] and "shard 1/2 (the SLURM array)" in logs[1]
    assert not (two / "fluid.csv").exists()  # nothing that looks complete before the merge
    rc, out, _ = _cli(capsys, "merge-csv", two)
    assert rc == 1 and "merged 2 shard(s): 9 B-scan(s)" in out and "zz_bad.png" in out
    a, b = _outputs(one), _outputs(two)
    assert sorted(a) == sorted(b) and "masks/TRAIN001_000_2.png" in a
    assert [k for k in a if a[k] != b[k]] == []
    assert sorted(p.name for p in (two / "parts").iterdir()) == [
        f"{k}.{i}-of-2.{e}" for k, e in (("confidence", "csv"), ("fluid", "csv"), ("state", "json")) for i in (0, 1)]


def test_sharded_volumes_equal_one_process_and_folder_rules(tmp_path, tiny_checkpoint, capsys):
    src = tmp_path / "vols"
    write_synthetic_dataset(src, 3, vendors=["cirrus"], fmt="mhd", slices=2, scale=0.1, seed=1, progress=False)
    one, two = tmp_path / "one", tmp_path / "two"
    assert _cli(capsys, "predict", tiny_checkpoint, src, one, "--device", "cpu")[0] == 0
    assert _cli(capsys, "predict", tiny_checkpoint, src, two, "--device", "cpu", "--shard", "1/2")[0] == 0
    rc, _, err = _cli(capsys, "merge-csv", two)
    assert rc == 2 and "shard(s) 0/2 of 2 have not finished" in err
    rc, _, err = _cli(capsys, "predict", tiny_checkpoint, src, two, "--device", "cpu")  # a plain run: refused
    assert rc == 2 and "earlier octseg run (part shard-1 of shards-2)" in err
    rc, _, err = _cli(capsys, "predict", tiny_checkpoint, src, two, "--device", "cpu", "--shard", "1/2")
    assert rc == 2 and "--overwrite" in err  # the same shard again only with --overwrite
    assert _cli(capsys, "predict", tiny_checkpoint, src, two, "--device", "cpu", "--shard", "1/2", "--overwrite")[0] == 0
    assert _cli(capsys, "predict", tiny_checkpoint, src, two, "--device", "cpu", "--shard", "0/2")[0] == 0
    assert _cli(capsys, "merge-csv", two)[0] == 0
    assert _outputs(one) == _outputs(two)
    # more shards than inputs: the extra shard has nothing to do and says so without failing
    rc, out, _ = _cli(capsys, "predict", tiny_checkpoint, src, tmp_path / "many", "--device", "cpu", "--shard", "1/5")
    assert rc == 0 and "predicted 0 B-scan(s)" in out
    rc, _, err = _cli(capsys, "predict", tiny_checkpoint, src, tmp_path / "r", "--shard", "0/2", "--report")
    assert rc == 2 and "merge-csv" in err


def test_clinic_files_named_alike_after_redaction_share_a_shard(tmp_path):
    pytest.importorskip("eyepy")
    from _clinic_files import synthetic_stack, write_heyex_vol

    stack = synthetic_stack(2, 24, 16, seed=5)
    a = write_heyex_vol(tmp_path / "MRN-111_OD.vol", stack, patient_id="MRN-111")
    b = write_heyex_vol(tmp_path / "MRN-222_OD.vol", stack, patient_id="MRN-222")
    jobs = [Job("clinic", a, 2), Job("clinic", b, 2)]  # both are "anon_OD" in one process
    assert select_jobs(jobs, Shard(0, 2)) + select_jobs(jobs, Shard(1, 2)) == jobs
    assert {len(select_jobs(jobs, Shard(i, 2))) for i in range(2)} == {0, 2}
    kept = [Job("clinic", a, 2, keep_identifiers=True), Job("clinic", b, 2, keep_identifiers=True)]
    assert [len(select_jobs(kept, Shard(i, 2))) for i in range(2)] == [1, 1]  # distinct names: split


def test_a_part_never_writes_a_file_a_sibling_part_wrote(tmp_path):
    from octseg.errors import DataError
    from octseg.io.outputs import OutputFolder

    out = tmp_path / "out"
    with OutputFolder(out, "predict", part=("shards-2", "shard-0")) as folder:
        (folder.file("masks/anon_OD.mhd")).write_text("x")
    with OutputFolder(out, "predict", part=("shards-2", "shard-1")) as folder:
        folder.file("masks/other.mhd")
        with pytest.raises(DataError, match="shard-0"):
            folder.file("masks/anon_OD.mhd")


def test_merge_accepts_shards_that_spelled_the_input_differently(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    src = tmp_path / "vols"
    write_synthetic_dataset(src, 2, vendors=["cirrus"], fmt="mhd", slices=2, scale=0.1, seed=2, progress=False)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert _cli(capsys, "predict", tiny_checkpoint, "vols", out, "--device", "cpu", "--shard", "0/2")[0] == 0
    assert _cli(capsys, "predict", tiny_checkpoint, src, out, "--device", "cpu", "--shard", "1/2")[0] == 0
    rc, text, err = _cli(capsys, "merge-csv", out)
    assert rc == 0, err
    assert "merged 2 shard(s)" in text
