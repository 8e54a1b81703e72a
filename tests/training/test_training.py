"""Training: EMA and ramp-up schedules, losses on logits, short runs that learn, exact resume."""

from __future__ import annotations

import math
import re
import time
import warnings

import pytest
import torch
from conftest import TINY_MODEL, tiny_train_overrides

from octseg.config import load_config
from octseg.errors import ConfigError
from octseg.losses import LossConfig, SegmentationLoss, WeightedDiceLoss, sigmoid_rampup, softmax_mse
from octseg.methods import METHODS, MethodConfig, build_method
from octseg.methods.base import StepContext
from octseg.methods.mean_teacher import MeanTeacherConfig, ema_alpha, ema_update


# ----------------------------------------------------------------------------- schedules


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 5) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(2, 5) == pytest.approx(math.exp(-5.0 * 0.6**2))
    assert sigmoid_rampup(5, 5) == 1.0
    assert sigmoid_rampup(9, 5) == 1.0
    assert sigmoid_rampup(0, 0) == 1.0  # no ramp-up


def test_ema_alpha_schedule():
    # alpha = min(1 - 1/(step + 1), cap); cap 0.99 during ramp-up, 0.999 after.
    assert ema_alpha(1, False) == pytest.approx(0.5)
    assert ema_alpha(9, False) == pytest.approx(0.9)
    assert ema_alpha(99, False) == pytest.approx(0.99)
    assert ema_alpha(5000, False) == pytest.approx(0.99)
    assert ema_alpha(5000, True) == pytest.approx(0.999)
    assert ema_alpha(3, True) == pytest.approx(0.75)


def test_ema_update_by_hand():
    teacher, student = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[1.0, 2.0]]))
        student.weight.copy_(torch.tensor([[3.0, -2.0]]))
        teacher.bias.fill_(0.0)
        student.bias.fill_(1.0)
    ema_update(teacher, student, alpha=0.75)
    assert torch.allclose(teacher.weight, torch.tensor([[1.5, 1.0]]))
    assert torch.allclose(teacher.bias, torch.tensor([0.25]))


def test_mean_teacher_updates_teacher_after_each_step():
    torch.manual_seed(0)
    student = torch.nn.Conv2d(1, 3, 1)
    mt = build_method(MethodConfig(name="mean_teacher", mean_teacher=MeanTeacherConfig(consistency_rampup_epochs=5)), student,
                      SegmentationLoss(LossConfig(), 3))
    before = mt.teacher.weight.detach().clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    mt.after_optimizer_step(StepContext(epoch=0, global_step=1, generator=torch.Generator()))
    # step 1 -> alpha 0.5: halfway between the old teacher and the new student
    assert torch.allclose(mt.teacher.weight, 0.5 * before + 0.5 * student.weight)
    assert not any(p.requires_grad for p in mt.teacher.parameters())


def test_consistency_weight_ramps():
    mt = build_method(MethodConfig(name="mean_teacher",
                                   mean_teacher=MeanTeacherConfig(consistency_weight=10, consistency_rampup_epochs=5)),
                      torch.nn.Conv2d(1, 3, 1), SegmentationLoss(LossConfig(), 3))
    assert mt.consistency_weight(0) == pytest.approx(10 * math.exp(-5))
    assert mt.consistency_weight(5) == pytest.approx(10)


# ----------------------------------------------------------------------------- losses


def test_dice_loss_matches_smp_on_logits():
    from segmentation_models_pytorch.losses import DiceLoss

    torch.manual_seed(0)
    logits, target = torch.randn(3, 4, 16, 16) * 3, torch.randint(0, 4, (3, 16, 16))
    target[:, :2] = 0
    target[target == 3] = 2  # class 3 absent: contributes no loss, as in smp
    ours = WeightedDiceLoss(4)(logits, target)
    ref = DiceLoss("multiclass", from_logits=True)(logits, target)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)


def test_weighted_dice_by_hand():
    # Perfect logits for class 1, wrong for class 2: weights shift the loss toward class 2.
    target = torch.tensor([[[1, 1], [2, 2]]])
    logits = torch.full((1, 3, 2, 2), -20.0)
    logits[0, 1, 0, :] = 20.0  # class 1 right
    logits[0, 0, 1, :] = 20.0  # class 2 predicted as background
    plain = WeightedDiceLoss(3)(logits, target).item()
    heavy = WeightedDiceLoss(3, class_weights=[1, 1, 4])(logits, target).item()
    # per-class losses: bg 1 (not present -> 0), class1 ~0, class2 ~1 => plain = 1/3, weighted = 4/6
    assert plain == pytest.approx(1 / 3, abs=1e-3)
    assert heavy == pytest.approx(4 / 6, abs=1e-3)


def test_dice_ce_against_reference_and_ignore():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    loss = SegmentationLoss(LossConfig(name="dice_ce"), 3)(logits, target)
    ref = WeightedDiceLoss(3)(logits, target) + torch.nn.functional.cross_entropy(logits, target)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    ignored = target.clone()
    ignored[:, :4] = 255  # ignored pixels change nothing when their logits change
    a = SegmentationLoss(LossConfig(name="dice_ce"), 3)(logits, ignored)
    logits2 = logits.clone()
    logits2[:, :, :4] += 5 * torch.randn_like(logits2[:, :, :4])
    b = SegmentationLoss(LossConfig(name="dice_ce"), 3)(logits2, ignored)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_losses_expect_logits_not_probabilities():
    # Feeding softmax outputs (the original project's bug) gives a different, flatter loss than the logits.
    torch.manual_seed(2)
    logits, target = torch.randn(2, 4, 8, 8) * 4, torch.randint(0, 4, (2, 8, 8))
    loss = SegmentationLoss(LossConfig(), 4)
    assert loss(logits, target).item() != pytest.approx(loss(logits.softmax(1), target).item(), rel=1e-3)


def test_softmax_mse_zero_for_equal_and_detached_teacher():
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, requires_grad=True)
    assert softmax_mse(s, s.detach()).item() == 0.0
    softmax_mse(s, t).backward()
    assert s.grad is not None and t.grad is None


def test_unknown_class_weight_count_is_error():
    with pytest.raises(ConfigError, match="class_weights"):
        WeightedDiceLoss(4, class_weights=[1, 2])


# ----------------------------------------------------------------------------- config


def test_unknown_config_key_suggests_nearest(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'trainer.max_epochs'"):
        load_config(None, ["trainer.max_epoch=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 0.1\n  weight_decai: 0.1\n")
    with pytest.raises(ConfigError, match="optim.weight_decay"):
        load_config(bad)


def test_config_types_and_recipes():
    cfg = load_config("original_mean_teacher_vgg19bn", ["trainer.max_epochs=3", "data.size=[128,96]", "data.path=/x"])
    assert cfg.model.encoder == "vgg19_bn" and cfg.trainer.max_epochs == 3 and cfg.data.size == [128, 96]
    assert cfg.method.mean_teacher.ema_decay == 0.999 and cfg.method.mean_teacher.consistency_weight == 10
    with pytest.raises(ConfigError, match="integer"):
        load_config(None, ["trainer.max_epochs=three"])


def test_offline_imagenet_fails_fast_and_clearly(monkeypatch):
    from octseg import models
    from octseg.models import ModelConfig, build_model

    monkeypatch.setattr(models, "_imagenet_cached", lambda encoder: False)
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=5.0: (False, "cannot reach huggingface.co:443"))
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="encoder_weights=none"):
        build_model(ModelConfig(encoder="resnet18", encoder_weights="imagenet"), 4)
    assert time.monotonic() - t0 < 5


def test_offline_imagenet_real_probe_is_fast():
    """Without a monkeypatch: here (no internet) the real probe must fail within seconds."""
    from octseg.models import ModelConfig, _hub_reachable, build_model

    if _hub_reachable(timeout=3)[0]:
        pytest.skip("the weights hub is reachable from this machine")
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="cannot be downloaded"):
        build_model(ModelConfig(encoder="resnet18", encoder_weights="imagenet"), 4)
    assert time.monotonic() - t0 < 12


def test_local_encoder_weights_file(tmp_path, capsys):
    from octseg.models import ModelConfig, build_model

    cfg = ModelConfig(**TINY_MODEL)
    src = build_model(cfg, 4)
    path = tmp_path / "enc.pth"
    torch.save({"encoder." + k: v for k, v in src.encoder.state_dict().items()}, path)
    model = build_model(ModelConfig(**{**TINY_MODEL, "encoder_weights": str(path)}), 4)
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v)
    assert "0 missing keys" in capsys.readouterr().out


# ----------------------------------------------------------------------------- short runs


def _tiny_overrides(path, **extra):
    return tiny_train_overrides(path, **extra)


def _final_state(run_dir):
    from octseg.checkpoint import safe_load

    return safe_load(run_dir / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_short_run_loss_falls_and_writes_run_folder(tiny_prepared, tmp_path, method):
    import csv

    from octseg.training.run import train

    torch.set_num_threads(1)
    cfg = load_config(None, _tiny_overrides(tiny_prepared, **{"method.name": method, "trainer.max_epochs": 5,
                                                               "augment.enabled": False}))
    res = train(cfg, out_dir=tmp_path / method)
    run = res.run_dir
    for f in ("config.yaml", "split.json", "metrics.json", "learning_curves.png", "checkpoints/best.ckpt",
              "checkpoints/last.ckpt", "logs/metrics.csv"):
        assert (run / f).is_file(), f
    rows = [r for r in csv.DictReader((run / "logs" / "metrics.csv").open()) if r.get("train/loss_sup_epoch")]
    losses = [float(r["train/loss_sup_epoch"]) for r in rows]
    assert len(losses) == 5 and losses[-1] < losses[0] * 0.9, losses
    ck = _final_state(run)
    expected = set(ck["octseg"]["networks"])
    assert set(res.metrics["val"]) == expected and "student" in expected
    assert ck["octseg"]["method"] == method and ck["octseg"]["default_weights"] in expected


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"supervised"}))
def test_resume_equals_uninterrupted_run(tiny_prepared, tmp_path, method):
    from octseg.training.run import train

    torch.set_num_threads(1)
    base = _tiny_overrides(tiny_prepared, **{"method.name": method, "optim.scheduler": "plateau",
                                             "method.fixmatch.threshold": 0.3, "method.unimatch.threshold": 0.3})
    full = train(load_config(None, base + ["trainer.max_epochs=2"]), out_dir=tmp_path / "full")
    # "killed" after epoch 1, then resumed to epoch 2
    train(load_config(None, base + ["trainer.max_epochs=1"]), out_dir=tmp_path / "split")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train(load_config(None, base + ["trainer.max_epochs=2"]), out_dir=tmp_path / "split", resume=True)
    # the first part's log was kept as metrics.part1.csv: Lightning's "will be deleted" warning would only alarm
    assert not [w for w in caught if "will be deleted" in str(w.message)]
    assert (tmp_path / "split" / "logs" / "metrics.part1.csv").is_file()
    a, b = _final_state(full.run_dir), _final_state(resumed.run_dir)
    assert a["global_step"] == b["global_step"] == 8
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert a["optimizer_states"][0]["state"][0]["exp_avg"].equal(b["optimizer_states"][0]["state"][0]["exp_avg"])


def test_resume_refuses_changed_config_and_missing_run(tiny_prepared, tmp_path):
    from octseg.training.run import train

    with pytest.raises(ConfigError, match="nothing to resume"):
        train(load_config(None, _tiny_overrides(tiny_prepared)), out_dir=tmp_path / "none", resume=True)
    torch.set_num_threads(1)
    base = _tiny_overrides(tiny_prepared, **{"trainer.max_epochs": 1, "method.name": "supervised"})
    train(load_config(None, base), out_dir=tmp_path / "r")
    with pytest.raises(ConfigError, match="optim.lr"):
        train(load_config(None, base + ["optim.lr=0.5"]), out_dir=tmp_path / "r", resume=True)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(load_config(None, base), out_dir=tmp_path / "r")


def test_resume_refuses_a_changed_split_file(tiny_prepared, tmp_path):
    """A split file edited after the run started must not silently change what a resumed run trains on."""
    import json
    import shutil

    from octseg.training.run import train
    from octseg.errors import DataError

    data = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, data)
    torch.set_num_threads(1)
    base = _tiny_overrides(data, **{"trainer.max_epochs": 1, "method.name": "supervised"})
    train(load_config(None, base), out_dir=tmp_path / "r")
    saved = (tmp_path / "r" / "split.json").read_text()
    split_file = data / "splits" / f"{json.loads(saved)['name']}.json"  # the split this run trained on
    doc = json.loads(split_file.read_text())
    doc["parts"]["labelled"].append(doc["parts"]["unlabelled"].pop())
    split_file.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="differs from the one this run started with"):
        train(load_config(None, base + ["trainer.max_epochs=2"]), out_dir=tmp_path / "r", resume=True)
    assert (tmp_path / "r" / "split.json").read_text() == saved


def test_step_sampler_is_a_function_of_seed_and_epoch():
    from octseg.training.data import StepSampler

    s = StepSampler(10, 7, 2, 3, steps=6, seed=4)
    s.set_epoch(3)
    a = [(l.tolist(), u.tolist()) for l, u in s]
    s2 = StepSampler(10, 7, 2, 3, steps=6, seed=4)
    s2.set_epoch(3)
    assert a == [(l.tolist(), u.tolist()) for l, u in s2]
    s2.set_epoch(4)
    assert a != [(l.tolist(), u.tolist()) for l, u in s2]
    # every labelled B-scan once per pass
    assert sorted(sum((l for l, _ in a[:5]), [])) == list(range(10))
    # DDP ranks draw disjoint labelled B-scans
    r0 = StepSampler(10, 7, 1, 1, steps=5, seed=4, rank=0, world=2)
    r1 = StepSampler(10, 7, 1, 1, steps=5, seed=4, rank=1, world=2)
    got = [int(l[0]) for l, _ in r0] + [int(l[0]) for l, _ in r1]
    assert sorted(got) == list(range(10))


def test_augment_keeps_labels_valid_and_is_seeded():
    from octseg.data.augment import AugmentConfig, augment_batch

    x = torch.rand(4, 1, 32, 32)
    y = torch.randint(0, 4, (4, 32, 32))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    xa, ya = augment_batch(x, y, AugmentConfig(affine_p=1.0), g1)
    xb, yb = augment_batch(x, y, AugmentConfig(affine_p=1.0), g2)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert set(torch.unique(ya).tolist()) <= {0, 1, 2, 3, 255}
    assert xa.min() >= 0 and xa.max() <= 1
    # a pure flip moves image and mask together
    cfg = AugmentConfig(hflip=1.0, affine_p=0.0, gamma=0, contrast=0, brightness=0, noise_std=0)
    xf, yf = augment_batch(x, y, cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(xf, x.flip(-1), atol=1e-5) and torch.equal(yf, y.flip(-1))


def test_demo_pipeline_quick(tmp_path):
    import json

    from octseg.demo import run_demo

    torch.set_num_threads(1)
    results = run_demo(tmp_path / "demo", quick=True)
    assert set(results) == {"supervised", "mean_teacher"}
    assert set(results["mean_teacher"]) == {"teacher", "student"} and set(results["supervised"]) == {"student"}
    saved = json.loads((tmp_path / "demo" / "demo_results.json").read_text())
    assert set(saved["mean_teacher"]["teacher"]) == {"background", "IRF", "SRF", "PED", "mean_foreground"}
    assert (tmp_path / "demo" / "demo_predictions.png").stat().st_size > 10_000
    # a second run reuses the finished runs instead of training again
    t0 = time.monotonic()
    run_demo(tmp_path / "demo", quick=True)
    assert time.monotonic() - t0 < 30
    # ... but never for another seed: its data and runs would belong to seed 0
    from octseg.errors import DataError

    with pytest.raises(DataError, match="holds the demo made with"):
        run_demo(tmp_path / "demo", quick=True, seed=1)
    # ... nor for another training precision (its timings would be the other precision's)
    with pytest.raises(DataError, match="'precision': 'bf16-mixed'"):
        run_demo(tmp_path / "demo", quick=True, precision="bf16-mixed")
    assert json.loads((tmp_path / "demo" / "demo_details.json").read_text())["precision"] == "32"


def test_train_cli_reports_config_errors(tmp_path, capsys):
    from octseg.cli import main

    assert main(["train", "demo_cpu", "trainer.max_epoch=3", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'trainer.max_epochs'" in err
    assert main(["train", "no_such_recipe.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["train", "demo_cpu", f"data.path={tmp_path / 'missing'}", "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_cli_console_is_octseg_lines_only(tiny_prepared, tmp_path):
    """Lightning's start-up chatter (accelerator lines, a cloud-logging tip) stays off the console of
    ``octseg train``, in a fresh process where Lightning is imported after the CLI set its loggers; octseg's own
    line names the device and the precision instead."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "octseg", "train", "demo_cpu",
                           *tiny_train_overrides(tiny_prepared, **{"trainer.max_epochs": 1,
                                                                   "trainer.steps_per_epoch": 1}),
                           "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "GPU available" not in out and "Tip:" not in out and "Automatic Mixed Precision" not in out
    assert re.search(r"training mean_teacher .*; cpu, precision 32-true\n", out), out[-3000:]
    assert "best checkpoint:" in out


def test_deterministic_trainer_keeps_deterministic_algorithms_without_nan_filling(tmp_path):
    """Reproducible runs need deterministic algorithms, not PyTorch's NaN-filling of uninitialised tensors (half
    the kernel launches of a GPU step); both runs of the resume test above stay bit-identical without it."""
    from octseg.training.run import build_trainer

    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        build_trainer(load_config(None, ["trainer.accelerator=cpu"]), tmp_path)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is False
    finally:
        torch.use_deterministic_algorithms(False)
        torch.utils.deterministic.fill_uninitialized_memory = True


def test_a_best_checkpoint_picked_among_near_zero_validation_scores_is_flagged(tiny_prepared, tmp_path, monkeypatch):
    """When no epoch's validation found the fluid, best.ckpt was picked among near-zero scores: the run warns, names
    the run folder, and records it in metrics.json; above the bar nothing is said."""
    import json

    import octseg.training.run as run_mod

    assert run_mod.uninformative_selection(0.2, 5) is None
    assert "0.010" in run_mod.uninformative_selection(0.01, 5) and "last.ckpt" in run_mod.uninformative_selection(0, 5)
    assert run_mod.uninformative_selection(float("nan"), 5) is None
    torch.set_num_threads(1)
    cfg = load_config(None, _tiny_overrides(tiny_prepared, **{"method.name": "supervised", "trainer.max_epochs": 1}))
    monkeypatch.setattr(run_mod, "UNINFORMATIVE_VAL_DICE", 0.0)  # no score counts as near zero
    quiet = run_mod.train(cfg, out_dir=tmp_path / "quiet")
    assert "selection_warning" not in json.loads((quiet.run_dir / "metrics.json").read_text())
    monkeypatch.setattr(run_mod, "UNINFORMATIVE_VAL_DICE", 1.01)  # every score counts as near zero
    with pytest.warns(UserWarning, match=r"flagged.*best validation mean foreground Dice of the run is 0\.\d{3}"):
        res = run_mod.train(cfg, out_dir=tmp_path / "flagged")
    assert "best.ckpt was picked" in json.loads((res.run_dir / "metrics.json").read_text())["selection_warning"]
