"""Splits: deterministic, by volume without leakage, vendor-stratified, exact labelled counts."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from fakes import write_png_folder

from octseg.cli import main
from octseg.data.prepare import prepare_dataset
from octseg.data.prepared import PreparedDataset
from octseg.data.splits import load_split, make_split, split_indices
from octseg.errors import ConfigError, DataError

VENDORS = {"cirrus": 6, "spectralis": 3, "topcon": 3}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """12 labelled volumes of 4 B-scans (vendors 6/3/3; one B-scan per volume unlabelled)
    plus 2 wholly unlabelled volumes."""
    root = tmp_path_factory.mktemp("split_src")
    rows, names, labelled = ["volume,vendor,spacing_row,spacing_col,spacing_slice"], [], set()
    i = 0
    for vendor, n in VENDORS.items():
        for _ in range(n):
            vol = f"{vendor[:3].upper()}{i:02d}"
            rows.append(f"{vol},{vendor},0.002,0.01,0.05")
            names += [f"{vol}_{k}" for k in range(4)]
            labelled |= {f"{vol}_{k}" for k in range(3)}
            i += 1
    names += [f"UNL{j}_{k}" for j in range(2) for k in range(3)]
    write_png_folder(root, names, size=(4, 4), labelled=labelled)
    (root / "volumes.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path_factory.mktemp("split_prep") / "ds"
    with pytest.warns(UserWarning, match="no mask"):
        prepare_dataset(root, out, progress=False)
    return out


def _vols(ds, ids):
    return {ds.slices[i].volume for i in ds.indices(ids)}


def test_deterministic_bytes(prepared):
    a = make_split(prepared, labelled=0.5, val=0.2, test=0.2, seed=3, name="a").read_bytes()
    b = make_split(prepared, labelled=0.5, val=0.2, test=0.2, seed=3, name="a").read_bytes()
    c = make_split(prepared, labelled=0.5, val=0.2, test=0.2, seed=4, name="a").read_bytes()
    assert a == b and a != c


def test_no_volume_on_two_sides_and_parts_cover(prepared):
    ds = PreparedDataset(prepared)
    s = load_split(prepared, make_split(prepared, labelled=0.5, val=0.2, test=0.2, seed=1, name="p").stem)
    parts = s["parts"]
    train = _vols(ds, parts["labelled"]) | _vols(ds, parts["unlabelled"])
    val, test = _vols(ds, parts["val"]), _vols(ds, parts["test"])
    assert not (train & val) and not (train & test) and not (val & test)
    assert val and test and set(s["volumes"]["val"]) == val
    lab = ds.labelled
    for p in ("labelled", "val", "test"):
        assert lab[ds.indices(parts[p])].all()
    # every training B-scan is used exactly once; val/test lose only their unlabelled B-scans
    all_ids = [x for p in parts.values() for x in p]
    assert len(all_ids) == len(set(all_ids))
    dropped = set(x.id for x in ds.slices) - set(all_ids)
    assert all(not ds.slices[i].labelled for i in ds.indices(sorted(dropped)))
    assert {"UNL0", "UNL1"} <= _vols(ds, parts["unlabelled"])  # unlabelled volumes always train
    # 12 labelled volumes: 2 val + 2 test, 8 train of which half (4) give labels
    assert len(s["volumes"]["val"]) == len(s["volumes"]["test"]) == 2 and len(s["volumes"]["labelled"]) == 4
    idx = split_indices(ds, s)
    assert set(idx) == {"labelled", "unlabelled", "val", "test"}
    assert isinstance(idx["val"], np.ndarray) and len(idx["val"]) == len(parts["val"])


def test_vendor_stratification(prepared):
    ds = PreparedDataset(prepared)
    vendor = {s.volume: s.vendor for s in ds.slices}
    for seed in range(5):
        s = json.loads(make_split(prepared, labelled=1.0, val=0.34, test=0.0, seed=seed, name="v").read_text())
        counts = Counter(vendor[v] for v in s["volumes"]["val"])
        assert counts == {"cirrus": 2, "spectralis": 1, "topcon": 1}  # 4 of 12, in proportion


def test_labelled_count_exact(prepared):
    ds = PreparedDataset(prepared)
    for n in (1, 4, 7):
        s = json.loads(make_split(prepared, labelled_count=n, val=0.2, seed=2, name="n").read_text())
        assert len(s["parts"]["labelled"]) == n
        assert ds.labelled[ds.indices(s["parts"]["labelled"])].all()
    # 7 = 3 + 3 + 1: the last volume's first labelled B-scan only; its others are unlabelled
    vols = Counter(ds.slices[i].volume for i in ds.indices(s["parts"]["labelled"]))
    assert sorted(vols.values()) == [1, 3, 3]
    last = next(v for v, c in vols.items() if c == 1)
    ids = [x.id for x in ds.slices if x.volume == last]
    assert ids[0] in s["parts"]["labelled"] and set(ids[1:]) <= set(s["parts"]["unlabelled"])
    with pytest.raises(DataError, match="labelled_count=1000"):
        make_split(prepared, labelled_count=1000, val=0.2, seed=0)


def test_bad_arguments(prepared):
    with pytest.raises(ConfigError, match="val"):
        make_split(prepared, labelled=0.5, val=1.0)
    with pytest.raises(ConfigError, match="val \\+ test"):
        make_split(prepared, labelled=0.5, val=0.5, test=0.5)
    with pytest.raises(ConfigError, match="labelled"):
        make_split(prepared, labelled=1.5, val=0.1)
    with pytest.raises(DataError, match="too few labelled volumes"):
        make_split(prepared, labelled=0.5, val=0.6, test=0.39)


def test_by_slice_warns_and_leaks(prepared):
    with pytest.warns(UserWarning, match="leak"):
        p = make_split(prepared, labelled=1.0, val=0.3, seed=0, by="slice", name="s")
    s = json.loads(p.read_text())
    assert "leak" in s["warning"] and s["by"] == "slice"
    assert set(s["volumes"]["val"]) & set(s["volumes"]["labelled"])  # the leak, made visible


def test_load_split_missing(prepared):
    with pytest.raises(DataError, match="no such split"):
        load_split(prepared, "nope")


def test_cli_split(prepared, capsys):
    rc = main(["split", str(prepared), "--labelled", "0.5", "--val", "0.2", "--seed", "0", "--name", "cli"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "split written to" in out and (prepared / "splits" / "cli.json").is_file()
    rc = main(["split", str(prepared / "missing"), "--labelled", "0.5", "--val", "0.2", "--seed", "0"])
    assert rc == 2 and "missing" in capsys.readouterr().err


def test_real_duke_split(shared_data, tmp_path):
    ds = prepare_dataset(shared_data / "duke-dme-train", tmp_path / "duke", size=(64, 96), progress=False)
    s = json.loads(make_split(ds, labelled=0.5, val=0.2, seed=0).read_text())
    assert len(s["volumes"]["val"]) == 1 and len(s["volumes"]["labelled"]) == 2
    assert {k: len(v) for k, v in s["parts"].items()} == {"labelled": 22, "unlabelled": 22, "val": 11, "test": 0}


def test_split_names_encode_their_parameters(prepared):
    """Without --name a split is named after its fractions and seed, the same name a training run
    derives from the same values: another seed or fraction can never reuse it silently."""
    from octseg.config import load_config
    from octseg.training.data import _split_name

    a = make_split(prepared, labelled=0.5, val=0.2, seed=3)
    b = make_split(prepared, labelled=0.5, val=0.2, seed=4)
    c = make_split(prepared, labelled_count=7, val=0.2, test=0.1, seed=3)
    assert (a.stem, b.stem, c.stem) == ("volume-l0.5-v0.2-t0-s3", "volume-l0.5-v0.2-t0-s4", "volume-n7-v0.2-t0.1-s3")
    cfg = load_config(None, [f"data.path={prepared}", "data.labelled=0.5", "data.val=0.2", "seed=3"])
    assert _split_name(cfg) == a.stem
    assert _split_name(load_config(None, ["data.split=mine"])) == "mine"


def test_a_named_split_with_other_parameters_is_used_with_a_warning(prepared):
    from octseg.config import load_config
    from octseg.training.data import load_train_data

    make_split(prepared, labelled=0.5, val=0.2, seed=3, name="theirs")
    cfg = load_config(None, [f"data.path={prepared}", "data.split=theirs", "data.labelled=0.25", "data.val=0.2",
                             "seed=3"])
    with pytest.warns(UserWarning, match=r"data.split='theirs' exists and is used as written: labelled 0.5"):
        data = load_train_data(cfg)
    assert data.split["name"] == "theirs"
