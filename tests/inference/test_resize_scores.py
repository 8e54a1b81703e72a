"""Predictions come back to a B-scan's size as resized class probabilities, then the arg-max: a
perfect prediction at a smaller size loses less of the native Dice than resized labels."""

from __future__ import annotations

import json

import numpy as np
import torch

from octseg.transforms import resize_labels, resize_scores


def _disc(h=96, w=144) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    lab = np.zeros((1, h, w), np.int64)
    lab[0][(yy - 40) ** 2 / 400 + (xx - 70) ** 2 / 900 < 1] = 1
    lab[0][(yy - 70) ** 2 / 30 + (xx - 30) ** 2 / 60 < 1] = 2
    return lab


def _dice(a, b, c):
    return 2 * np.logical_and(a == c, b == c).sum() / ((a == c).sum() + (b == c).sum())


def test_probabilities_round_trip_better_than_labels():
    ref = _disc()
    y = torch.from_numpy(ref)
    onehot = torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float()
    small = resize_scores(onehot, (24, 36))                 # area: a calibrated prediction at 24x36
    assert torch.allclose(small.sum(1), torch.ones(1, 24, 36))
    soft = resize_scores(small, ref.shape[1:]).argmax(1).numpy()
    hard = resize_labels(resize_labels(y, (24, 36)), ref.shape[1:]).numpy()
    for c in (1, 2):
        assert _dice(ref, soft, c) > _dice(ref, hard, c)
    assert resize_scores(onehot, ref.shape[1:]) is onehot  # the same size: untouched


def test_round_trip_benchmark_on_duke_layout(tmp_path, capsys):
    from PIL import Image

    from benchmarks.resize_round_trip import main

    d = tmp_path / "duke-dme-train"
    for sub in ("images", "masks"):
        (d / sub).mkdir(parents=True)
    lab = _disc(62, 96)[0].astype(np.uint8).clip(0, 1)
    for name in ("S01_00", "S01_01", "S02_00"):
        Image.fromarray(lab).save(d / "masks" / f"{name}.png")
        Image.fromarray((lab * 200).astype(np.uint8)).save(d / "images" / f"{name}.png")
    out = tmp_path / "rt.json"
    assert main(["--shared", str(tmp_path), "--sizes", "31x48", "62x96", "--out", str(out)]) == 0
    figs = json.loads(out.read_text())["figures"]["sizes"]
    assert figs["62x96"]["nearest"]["pooled"] == 1.0 == figs["62x96"]["soft"]["pooled"]
    assert figs["31x48"]["soft"]["pooled"] > figs["31x48"]["nearest"]["pooled"]
    assert set(figs["31x48"]["soft"]["per_subject"]) == {"S01", "S02"}
    assert "worst subject" in capsys.readouterr().out


def test_round_trip_benchmark_refuses_bad_sizes(tmp_path, capsys):
    import pytest

    from benchmarks.resize_round_trip import main

    (tmp_path / "duke-dme-train").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["--shared", str(tmp_path), "--sizes", "256by384"])
    assert exc.value.code == 2 and "--sizes ['256by384']: give HxW" in capsys.readouterr().err
