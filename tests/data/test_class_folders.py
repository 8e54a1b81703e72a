"""Class-folder pools (Kermany OCT2017 layout): unlabelled, one volume per patient across the
diagnosis folders, usable as data.extra_unlabelled."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from octseg.data.readers import scan_source


def _pool(root, names, size=(40, 48)):
    """``root/<CLASS>/<name>.jpeg`` for names ``CLASS-patient-n``."""
    rng = np.random.default_rng(0)
    for name in names:
        cls = name.split("-")[0]
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(root / cls / f"{name}.jpeg", quality=90)
    return root


def test_class_folders_are_unlabelled_volumes_per_patient(tmp_path):
    # patient 7 appears in two diagnosis folders with the same image number: one volume, no clash
    root = _pool(tmp_path / "pool", ["CNV-7-1", "DME-7-1", "DME-7-2", "NORMAL-12-1", "DRUSEN-3-5"])
    with pytest.warns(UserWarning, match=r"read 5 unlabelled B-scans from the class folders CNV, DME, DRUSEN, NORMAL"):
        ds = scan_source(root)
    vols = {v.volume: v for v in ds.volumes}
    assert set(vols) == {"7", "12", "3"} and vols["7"].n_slices == 3 and not any(v.labelled for v in ds.volumes)
    scans = list(vols["7"].load())
    assert [b.slice_index for b in scans] == [0, 1, 2]
    assert sorted(b.id for b in scans) == ["CNV-7-1", "DME-7-1", "DME-7-2"]


def test_a_plain_image_folder_is_not_read_as_class_folders(tmp_path):
    root = _pool(tmp_path / "pool", ["CNV-7-1", "CNV-7-2"])
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(root / "S01_00.png")  # an image at the top level
    ds = scan_source(root)
    assert [v.volume for v in ds.volumes] == ["S01"]


def test_class_folder_pool_as_extra_unlabelled_data(tiny_prepared, tmp_path, monkeypatch):
    from conftest import tiny_train_overrides

    monkeypatch.setenv("OCTSEG_CACHE", str(tmp_path / "cache"))  # the pool is prepared into the cache
    from octseg.config import load_config
    from octseg.training.data import load_train_data

    pool = _pool(tmp_path / "kermany", ["CNV-7-1", "DME-7-1", "NORMAL-12-1"], size=(50, 70))
    cfg = load_config(None, tiny_train_overrides(tiny_prepared, **{"data.extra_unlabelled": f"[{pool}]"}))
    plain = load_train_data(load_config(None, tiny_train_overrides(tiny_prepared)))
    with pytest.warns(UserWarning, match="class folders"):
        data = load_train_data(cfg)
    assert len(data.parts["unlabelled"]) == len(plain.parts["unlabelled"]) + 3
    assert data.images.shape[1:] == plain.images.shape[1:]  # the pool is resized to the training size
    assert {data.volumes[r] for r in data.parts["unlabelled"][-3:]} == {"extra:7", "extra:12"}


def test_the_real_kermany_pool(shared_data):
    ds = scan_source(shared_data / "kermany-oct2017-test")
    assert ds.n_slices == 1000 and len(ds.volumes) == 633  # 633 patients
    assert not any(v.labelled for v in ds.volumes)
