"""octseg cv: folds by volume without leakage, the CV folder contract, resume, and
post-processing chosen on out-of-fold predictions."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import TINY_MODEL

from octseg.cli import main
from octseg.config import load_config
from octseg.data.prepared import PreparedDataset
from octseg.data.splits import assign_folds
from octseg.errors import ConfigError, DataError
from octseg.inference.postprocess import choose_min_sizes, remove_small_components


def _overrides(path) -> list[str]:
    o = {"data.path": str(path), "data.labelled": 0.5, "data.val": 0.2, "data.test": 0.15, "data.labelled_batch": 2,
         "data.unlabelled_batch": 2, "model.encoder": TINY_MODEL["encoder"], "model.encoder_depth": 3,
         "model.decoder_channels": "[16,8,4]", "optim.name": "adamw", "optim.lr": 3e-3, "optim.scheduler": "none",
         "trainer.steps_per_epoch": 2, "trainer.max_epochs": 1, "trainer.progress": False, "trainer.precision": "32",
         "trainer.accelerator": "cpu", "trainer.log_every_n_steps": 1, "method.name": "mean_teacher",
         "method.mean_teacher.consistency_rampup_epochs": 1}
    return [f"{k}={v}" for k, v in o.items()]


@pytest.fixture(scope="module")
def cv_prepared(tmp_path_factory):
    """7 synthetic volumes of 3 B-scans at 48x48 (one becomes the recipe's test volume)."""
    from octseg.data.prepare import prepare_dataset
    from octseg.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("cv_data")
    write_synthetic_dataset(root / "raw", volumes=7, fmt="png", slices=3, scale=0.2, seed=3, fluid_free_fraction=0.0,
                            progress=False)
    prepare_dataset(root / "raw", root / "prepared", size=(48, 48), progress=False)
    return root / "prepared"


@pytest.fixture(scope="module")
def cv_run(cv_prepared, tmp_path_factory):
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("cv_run") / "cv"
    try:
        rc = main(["cv", "demo_cpu", *_overrides(cv_prepared), "--folds", "3", "--out", str(out)])
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    return out


def _volumes_of(ds: PreparedDataset, ids) -> set[str]:
    return {ds.slices[i].volume for i in ds.indices(ids)}


def test_cv_folds_partition_without_leakage(cv_run, cv_prepared, capsys):
    ds = PreparedDataset(cv_prepared)
    cv = json.loads((cv_run / "cv.json").read_text())
    all_volumes = {s.volume for s in ds.slices}
    test = set(cv["test_volumes"])
    assert len(test) == 1  # data.test=0.15 of 7 volumes, as `octseg train` would hold it back
    folds = [set(f) for f in cv["fold_volumes"]]
    assert sorted(map(len, folds)) == [2, 2, 2]
    assert set().union(*folds) == all_volumes - test and sum(map(len, folds)) == len(all_volumes - test)
    for k, scored in enumerate(folds):
        split = json.loads((cv_run / f"fold_{k}" / "split.json").read_text())
        parts = split["parts"]
        assert _volumes_of(ds, parts["test"]) == scored
        seen = _volumes_of(ds, parts["labelled"] + parts["unlabelled"] + parts["val"])
        assert not seen & scored, f"fold {k} trained or validated on a volume it scores"
        assert not seen & test and not _volumes_of(ds, parts["test"]) & test
        assert _volumes_of(ds, parts["val"]) == folds[(k + 1) % 3]
        assert len(split["volumes"]["labelled"]) == 1  # data.labelled=0.5 of the 2 training volumes
        oof = np.load(cv_run / "oof" / f"fold_{k}.npz")
        assert set(oof["volumes"].tolist()) == scored and oof["pred"].shape == oof["gt"].shape == (6, 48, 48)


def test_cv_json_follows_the_contract(cv_run):
    cv = json.loads((cv_run / "cv.json").read_text())
    assert cv["format"] == 1 and cv["recipe"] == "demo_cpu" and cv["folds"] == 3 and cv["seed"] == 0
    assert cv["classes"] == ["background", "IRF", "SRF", "PED"]
    assert cv["checkpoints"] == [f"fold_{k}/checkpoints/best.ckpt" for k in range(3)]
    assert all((cv_run / c).is_file() for c in cv["checkpoints"])
    ms = cv["postprocessing"]["min_sizes"]
    assert cv["postprocessing"]["at_size"] == [48, 48]  # min_sizes count pixels at the prepared size
    assert cv["postprocessing"]["chosen_by"] == "volume_mean_dice"
    assert isinstance(ms, dict) and all(k.isdigit() and 0 < int(k) < 4 and isinstance(v, int) for k, v in ms.items())
    summary = json.loads((cv_run / "cv_summary.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [0, 1, 2]
    trials = summary["postprocessing"]["volume_mean_dice_by_min_size"]
    assert set(trials) == {"IRF", "SRF", "PED"} and all("none" in row for row in trials.values())
    dice = [f["raw"]["mean_foreground_dice"] for f in summary["folds"]]
    assert summary["raw"]["mean"]["mean_foreground_dice"] == pytest.approx(np.mean(dice))
    assert summary["raw"]["sd"]["mean_foreground_dice"] == pytest.approx(np.std(dice, ddof=1))
    md = (cv_run / "cv_summary.md").read_text()
    assert "mean ± sd" in md and "post-processed" in md and "| IRF | SRF | PED | mean fg |" in md
    assert "mean per-volume Dice" in md


def test_predict_with_a_cv_folder_whose_folds_normalise_differently(cv_run, tmp_path):
    from PIL import Image

    from octseg.checkpoint import load_network
    from octseg.inference.predictor import Predictor

    cv = json.loads((cv_run / "cv.json").read_text())
    norms = [load_network(cv_run / c)[1]["normalization"] for c in cv["checkpoints"]]
    assert norms[0] != norms[1]  # each fold's own mean/std: what a plain ensemble used to refuse
    scans = tmp_path / "scans"
    scans.mkdir()
    x = np.random.default_rng(0).integers(0, 256, (2, 48, 64), dtype=np.uint8)
    for k, img in enumerate(x):
        Image.fromarray(img).save(scans / f"s{k}.png")
    assert main(["predict", str(cv_run), str(scans), str(tmp_path / "out"), "--device", "cpu"]) == 0
    got = np.stack([np.asarray(Image.open(tmp_path / "out" / "masks" / f"s{k}.png")) for k in range(2)])
    p = Predictor.from_checkpoint(cv_run, device="cpu")
    assert p.min_sizes_at == (48, 48) and [m["normalization"] for m in p.members] == norms
    assert np.array_equal(got, p.predict(x))


def test_cv_resume_reruns_only_the_fold_without_metrics(cv_run, tmp_path, capsys, cv_prepared):
    out = tmp_path / "cv"
    shutil.copytree(cv_run, out)
    (out / "fold_1" / "metrics.json").unlink()
    before = {k: (out / "oof" / f"fold_{k}.json").stat().st_mtime_ns for k in range(3)}
    capsys.readouterr()
    assert main(["cv", "demo_cpu", *_overrides(cv_prepared), "--folds", "3", "--out", str(out)]) == 2  # no --resume
    assert "--resume" in capsys.readouterr().err
    assert main(["cv", "demo_cpu", *_overrides(cv_prepared), "--folds", "3", "--out", str(out), "--resume"]) == 0
    log = capsys.readouterr().out
    assert "fold 2/3 resumed" in log and "fold 1/3 finished earlier" in log and "fold 3/3 finished earlier" in log
    assert "mean ± sd" in log  # the summary table is printed
    after = {k: (out / "oof" / f"fold_{k}.json").stat().st_mtime_ns for k in range(3)}
    assert after[0] == before[0] and after[2] == before[2] and after[1] != before[1]
    assert (out / "fold_1" / "metrics.json").is_file()
    # other folds than the CV started with: refused
    assert main(["cv", "demo_cpu", *_overrides(cv_prepared), "--folds", "3", "--out", str(out), "--resume",
                 "--select", "last"]) == 2
    assert "different folds" in capsys.readouterr().err


def test_cv_plan_select_last_and_bad_fold_counts(cv_prepared):
    from octseg.cv import plan_cv

    cfg = load_config("demo_cpu", _overrides(cv_prepared))
    ds = PreparedDataset(cv_prepared)
    plan = plan_cv(cfg, 3, select="last")
    for fp in plan.fold_plans:
        split = ds.split(fp.split)
        trained = _volumes_of(ds, split["parts"]["labelled"] + split["parts"]["unlabelled"])
        assert set(fp.val) <= trained and not trained & set(fp.scored)  # the K-1 other folds all train
    assert plan.checkpoint(0) == "fold_0/checkpoints/last.ckpt"
    with pytest.raises(ConfigError, match="--select last"):
        plan_cv(cfg, 2)
    with pytest.raises(DataError, match="too few for 7 folds"):
        plan_cv(cfg, 7)
    a = assign_folds(ds, 3, seed=1, exclude=["TRAIN001"])
    assert a == assign_folds(ds, 3, seed=1, exclude=["TRAIN001"]) and sorted(map(len, a)) == [2, 2, 2]
    assert a != assign_folds(ds, 3, seed=2, exclude=["TRAIN001"]) or a != assign_folds(ds, 3, seed=3,
                                                                                        exclude=["TRAIN001"])


def _blob(shape=(40, 40)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[10:22, 10:22] = 1  # a 144-pixel lesion
    return m


def test_min_size_removes_false_positive_specks():
    gt = np.stack([_blob(), _blob()])
    pred = gt.copy()
    pred[0, 30:32, 30:32] = 1  # 4-pixel specks of false fluid
    pred[1, 2:4, 35:38] = 1  # 6 pixels
    pred[1, 36, 2] = 1
    pred[:, 15:17, 15:17] = 2  # a class predicted inside the lesion, with no removal helping it
    chosen, table = choose_min_sizes(gt, pred, 3, grid=(5, 10, 200))  # each B-scan its own case
    assert chosen == {1: 10}  # 5 leaves the 6-pixel speck; 200 would delete the lesion
    assert table[1]["10"] > table[1]["5"] > table[1]["none"] and table[1]["200"] == 0.0
    cleaned = remove_small_components(pred, chosen)
    assert (cleaned == np.where(pred == 2, 2, gt)).all()


def test_min_size_keeps_small_true_lesions_and_ties():
    gt = np.stack([_blob(), _blob()])
    gt[0, 30:32, 30:32] = 1  # small true lesions, predicted exactly
    pred = gt.copy()
    chosen, table = choose_min_sizes(gt, pred, 2, grid=(5, 10))
    assert chosen == {} and table[1]["none"] == 1.0 and table[1]["5"] < 1.0
    pred[0, 30:32, 30:32] = 0  # nothing below the sizes is predicted: removal changes nothing (a tie)
    assert choose_min_sizes(gt, pred, 2, grid=(5, 10))[0] == {}
    assert choose_min_sizes(np.zeros((1, 8, 8), np.uint8), np.zeros((1, 8, 8), np.uint8), 3)[1][1]["none"] is None


def test_min_size_is_chosen_on_the_mean_of_per_volume_dice_not_pooled():
    """Pooled Dice, dominated by the volume with a large lesion, would remove the only (small)
    lesion of volume B; its Dice falls from 1 to 0, so the mean over volumes rejects the size."""
    gt = np.zeros((3, 40, 40), np.uint8)
    gt[0] = _blob()  # volume A, B-scan 0: a 144-pixel lesion ...
    gt[1] = _blob()
    pred = gt.copy()
    pred[0, 30:32, 30:32] = 1  # ... with 4-pixel false specks in A
    pred[0, 2:4, 2:4] = 1
    pred[1, 30:32, 2:4] = 1
    pred[1, 2:4, 30:32] = 1
    gt[2, 20:23, 20:23] = 1  # volume B: one true 9-pixel lesion, predicted exactly
    pred[2] = gt[2]
    volumes = ["A", "A", "B"]
    # with sizes 10 and 200 only, Dice pooled over B-scans would remove components < 10 px ...
    pooled = lambda p: 2.0 * ((p == 1) & (gt == 1)).sum() / ((p == 1).sum() + (gt == 1).sum())  # noqa: E731
    assert pooled(remove_small_components(pred, {1: 10})) > pooled(pred)
    chosen, table = choose_min_sizes(gt, pred, 2, grid=(10, 200), volumes=volumes)
    assert chosen == {}  # ... but the mean over volumes falls (A perfect, B 0): no removal
    assert table[1]["10"] == pytest.approx(0.5) and table[1]["none"] > 0.5
    chosen, table = choose_min_sizes(gt, pred, 2, grid=(5, 10, 200), volumes=volumes)
    assert chosen == {1: 5}  # 5 removes only A's specks and keeps B's lesion
    assert table[1]["10"] < table[1]["none"] < table[1]["5"] == 1.0
    # a volume where neither truth nor prediction has the class is left out of the mean
    gt4 = np.concatenate([gt, np.zeros((1, 40, 40), np.uint8)])
    pred4 = np.concatenate([pred, np.zeros((1, 40, 40), np.uint8)])
    assert choose_min_sizes(gt4, pred4, 2, grid=(5, 10, 200), volumes=volumes + ["C"])[1] == table
    with pytest.raises(ConfigError, match="volume ids"):
        choose_min_sizes(gt, pred, 2, volumes=["A"])
