"""octseg.io.tables: the optional volumes.csv, classes.txt and dataset.json beside the scans."""

from __future__ import annotations

import json

import pytest
from fakes import write_png_folder

from octseg.data.readers import scan_source
from octseg.records import Spacing
from octseg.errors import DataError
from octseg.io.tables import read_class_names, read_volumes_csv, write_volumes_csv


# --- volumes.csv ------------------------------------------------------------------------------------


def test_volumes_csv_gives_vendor_and_spacing(tmp_path):
    write_png_folder(tmp_path, ["V1_0", "V1_1"])
    (tmp_path / "volumes.csv").write_text(
        "volume,vendor,spacing_row,spacing_col,spacing_slice\nV1,Topcon,0.0026,0.0117,0.047\n")
    (v,) = scan_source(tmp_path).volumes
    assert v.vendor == "topcon" and v.spacing.row == pytest.approx(0.0026)
    assert list(v.load())[0].spacing.slice == pytest.approx(0.047)


def test_write_and_read_volumes_csv(tmp_path):
    rows = [["V1", "topcon", 0.0026, 0.0117, 0.047, 1], ["V2", "", 0.0039, 0.0113, "", 0]]
    out = write_volumes_csv(tmp_path / "volumes.csv", rows, extra_columns=["has_fluid"])
    assert out.read_text().splitlines()[0] == "volume,vendor,spacing_row,spacing_col,spacing_slice,has_fluid"
    got = read_volumes_csv(tmp_path)
    assert got["V1"] == {"vendor": "topcon", "spacing": Spacing(0.0026, 0.0117, 0.047)}
    assert got["V2"] == {"vendor": None, "spacing": Spacing(0.0039, 0.0113, None)}
    assert read_volumes_csv(tmp_path / "nothing here") == {}
    (tmp_path / "volumes.csv").write_text("volume,spacing_row,spacing_col\nV1,thin,0.1\n")
    with pytest.raises(DataError, match=r"volumes\.csv: bad spacing for volume 'V1'"):
        read_volumes_csv(tmp_path)


# --- class names: classes.txt, dataset.json ---------------------------------------------------------


def test_read_class_names(tmp_path):
    assert read_class_names(tmp_path) is None
    (tmp_path / "classes.txt").write_text("bg\n\nfluid\n")
    assert read_class_names(tmp_path) == ("bg", "fluid")
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
    assert read_class_names(tmp_path) == ("a", "b", "c")  # dataset.json first
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": ["a", "b"], "format": 1}))
    assert read_class_names(tmp_path) == ("bg", "fluid")  # a prepared dataset's dataset.json: not names
    (tmp_path / "classes.txt").write_text("only\n")
    with pytest.raises(DataError, match=r"classes\.txt: needs at least two class names"):
        read_class_names(tmp_path)
    (tmp_path / "dataset.json").write_text("{")
    with pytest.raises(DataError, match=r"dataset\.json: invalid JSON"):
        read_class_names(tmp_path)
