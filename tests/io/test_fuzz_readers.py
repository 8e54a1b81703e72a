"""Fuzzing the readers with hypothesis (a sample; benchmarks/fuzz.py runs >= 2,000 cases): random
and mutated PNG, JPEG, MetaImage, NIfTI, YAML recipe, checkpoint and split files end as an
OctsegError naming the file or are read, never another exception, never a hang (each case under a
time limit), and a prediction of a bad input leaves no partial output. Then the bugs the fuzzer
found, one regression test each."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
from _fuzz_cases import FORMATS, Runner, Seeds, case_strategy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from octseg.errors import CheckpointError, ConfigError, DataError

CASES = {"png": 30, "jpeg": 20, "mhd": 30, "nifti": 20, "yaml": 30, "checkpoint": 20, "split": 25}


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fuzz")
    yield Runner(root / "cases", Seeds(root / "seeds"), time_limit=10.0, predict_every=4)
    torch.set_num_threads(n)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzzed_files_end_as_a_named_error_or_are_read(runner, fmt):
    seeds = runner.seeds

    @settings(max_examples=CASES[fmt], database=None, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data):
        kind, files = data.draw(case_strategy(fmt, seeds))
        outcome = runner.run(fmt, kind, files)
        assert outcome in ("ok", "error"), runner.bugs[-1]

    one()
    assert sum(runner.counts[fmt].values()) >= CASES[fmt]


def test_fuzz_summary_counts(runner):
    s = runner.summary()
    assert s["tracebacks"] == s["hangs"] == s["partial_outputs"] == 0
    assert s["cases"] == sum(s["per_format"].values())


# ----------------------------------------------------------------------------------------- found by the fuzzer


def test_compressed_mhd_shorter_than_its_header_is_refused(tmp_path):
    """ITK filled a .zraw that inflates to less than DimSize announces with nothing, silently."""
    import SimpleITK as sitk

    from octseg.inference.inputs import read_bscans

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 12, 16), np.int16)), str(tmp_path / "oct.mhd"), True)
    h = tmp_path / "oct.mhd"
    h.write_text(h.read_text().replace("DimSize = 16 12 3", "DimSize = 2000 2000 100"))
    with pytest.raises(DataError, match=r"oct\.mhd: its compressed data file oct\.zraw holds 1152 bytes, the "
                                        r"header needs 800000000"):
        read_bscans(h, "retouch", ("background", "fluid"))
    z = tmp_path / "oct.zraw"
    z.write_bytes(z.read_bytes()[:10] + b"garbage")
    with pytest.raises(DataError, match=r"oct\.zraw: corrupt compressed data"):
        read_bscans(h, "retouch", ("background", "fluid"))


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_nifti_shorter_than_its_header_is_refused(tmp_path, name):
    """ITK read a NIfTI whose dimensions were enlarged as 400 million voxels of nothing, silently."""
    import SimpleITK as sitk

    from octseg.io.volumes import Volume, volume_header

    p = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 12, 16), np.uint8)), str(p))
    raw = bytearray(gzip.decompress(p.read_bytes()) if name.endswith(".gz") else p.read_bytes())
    raw[40:56] = struct.pack("<8h", 3, 2000, 2000, 100, 1, 1, 1, 1)
    p.write_bytes(gzip.compress(bytes(raw)) if name.endswith(".gz") else bytes(raw))
    for read in (volume_header, Volume):
        with pytest.raises(DataError, match=rf"{name}: holds \d+ bytes of voxels, its header announces 400000000"):
            read(p)


def test_recipe_that_is_not_utf8_or_has_odd_keys(tmp_path):
    from octseg.config import load_config

    p = tmp_path / "r.yaml"
    p.write_bytes(b"name: x\ntrainer:\n  max_epochs: 3\xa8\n")  # UnicodeDecodeError before
    with pytest.raises(ConfigError, match=r"r\.yaml: not a UTF-8 text file \(byte 0xa8 at offset 32\)"):
        load_config(p)
    for text, match in (("1: 2\n", r"r\.yaml: unknown config key '1'"),  # TypeError in difflib before
                        ("data:\n  true: 3\n", r"r\.yaml: unknown config key 'data\.True'"),
                        ("name: x\n  bad: [\n", r"r\.yaml: invalid YAML at line 2, column \d+: [^\n]+$"),
                        ("optim:\n  lr: -1\n", r"r\.yaml: optim\.lr=-1")):  # validation errors name the file too
        p.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_config(p)


def test_damaged_split_files_are_named(tmp_path, runner):
    from octseg.data.splits import load_split

    prep = runner.seeds.prepared
    split = prep / "splits" / "bad.json"
    for data, match in ((b'{"parts": {"val": [', "invalid JSON"), (b'{"parts": \xff}', "not a UTF-8 JSON file"),
                        (b'{"parts": {"val": [["a"]]}}', "part 'val' must be a list of slice ids"),
                        (b'{"parts": {"val": ["nope"]}}', "slice id 'nope' is not in"),
                        (b'{"parts": [1]}', "not an octseg split"), (b'{"parts": {}, "fractions": 3}', "'fractions'")):
        split.write_bytes(data)
        with pytest.raises(DataError, match=match) as e:
            load_split(prep, "bad")
        assert str(e.value).startswith(str(split))
    split.unlink()


def test_checkpoint_whose_weights_do_not_fit_is_one_line(tmp_path, runner):
    import torch

    from octseg.checkpoint import load_network

    obj = dict(runner.seeds.checkpoint_obj)
    obj["octseg"] = dict(obj["octseg"], model=dict(obj["octseg"]["model"], decoder_channels=[16, 8, 4]))
    p = tmp_path / "m.ckpt"
    torch.save(obj, p)
    with pytest.raises(CheckpointError, match=r"m\.ckpt: weights do not fit the recorded architecture") as e:
        load_network(p)
    assert "\n" not in str(e.value)
    json.dumps(str(e.value))
