"""`octseg pretrain`: each objective writes a self-describing encoder file that training loads;
mismatched files, bad data and resume are handled."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, tiny_train_overrides

from octseg.checkpoint import safe_load
from octseg.config import load_config
from octseg.cli import main
from octseg.errors import ConfigError, DataError
from octseg.models import ModelConfig, build_model
from octseg.training.pretrain import PretrainConfig, checkpoint_path, patch_mask, pretrain
from octseg.training.run import train


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Unlabelled B-scans in Kermany's layout (class folders, ``<CLASS>-<patient>-<n>``), and a cache."""
    from PIL import Image

    from octseg.data.synthetic import generate_bscans

    root = tmp_path_factory.mktemp("pretrain")
    images, _ = generate_bscans(6, (40, 48), seed=1)
    for i, img in enumerate(images):
        cls = ("CNV", "DME")[i % 2]
        (root / "oct" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "oct" / cls / f"{cls}-{100 + i // 2}-{i}.png")
    return root / "oct", root / "cache"


def _cfg(tmp_path, scans, objective, **kw) -> PretrainConfig:
    folder, cache = scans
    base = dict(out=tmp_path / f"{objective}.pth", objective=objective, encoder=TINY_MODEL["encoder"],
                encoder_depth=3, decoder_channels=[16, 8, 4], size=(32, 32), steps=2, batch=2,
                cache_dir=cache, progress=False, synthetic_slices=2)
    if objective == "synthetic":
        base["synthetic_volumes"] = 2
    else:
        base["data"] = [folder]
    base.update(kw)
    return PretrainConfig(**base)


def _tiny(**kw) -> ModelConfig:
    return ModelConfig(**{**TINY_MODEL, **kw})


@pytest.mark.parametrize("objective,extra", [("synthetic", {}), ("mim", {}), ("denoise", {"synthetic_volumes": 2})])
def test_each_objective_writes_a_self_describing_encoder_file(tmp_path, scans, one_thread, objective, extra):
    res = pretrain(_cfg(tmp_path, scans, objective, **extra))
    doc = safe_load(res.out)
    meta, state = doc["octseg_encoder"], doc["state_dict"]
    assert meta["encoder"] == "tu-resnet10t" and meta["in_channels"] == 1 and meta["objective"] == objective
    assert meta["steps"] == 2 and meta["size"] == [32, 32] and meta["octseg_version"]
    assert 0 < meta["normalisation"]["mean"] < 1 and meta["normalisation"]["std"] > 0
    n_sources = (objective != "synthetic") + ("synthetic_volumes" in extra or objective == "synthetic")
    assert len(meta["data"]) == n_sources and all(d["n_bscans"] > 0 for d in meta["data"])
    assert set(state) == set(build_model(_tiny(), 4).encoder.state_dict())
    assert np.isfinite(meta["final_loss"])


def test_encoder_file_is_what_training_starts_from(tmp_path, scans, tiny_prepared, one_thread):
    enc = pretrain(_cfg(tmp_path, scans, "mim")).out
    saved = safe_load(enc)["state_dict"]
    key = "model.conv1.0.weight"
    torch.manual_seed(0)
    random_init = build_model(_tiny(), 4).encoder.state_dict()[key]
    loaded = build_model(_tiny(encoder_weights=str(enc)), 4).encoder.state_dict()[key]
    assert torch.equal(loaded, saved[key]) and not torch.allclose(loaded, random_init)
    # `octseg train ... model.encoder_weights=FILE`: a run of one step at a vanishing learning rate
    # ends where the encoder file started it
    run = tmp_path / "run"
    args = tiny_train_overrides(tiny_prepared, **{"model.encoder_weights": str(enc), "trainer.max_epochs": 1,
                                                  "trainer.steps_per_epoch": 1, "method.name": "supervised",
                                                  "optim.lr": 1e-12})
    train(load_config(None, args), out_dir=run)  # what `octseg train` runs
    trained = safe_load(run / "checkpoints" / "last.ckpt")["state_dict"]
    w = next(v for k, v in trained.items() if k.endswith("encoder." + key))
    assert torch.allclose(w, saved[key], atol=1e-6)


def test_mismatched_encoder_file_is_a_clear_error(tmp_path, scans, one_thread):
    enc = pretrain(_cfg(tmp_path, scans, "synthetic")).out
    with pytest.raises(ConfigError, match=rf"{enc.name}.*tu-resnet10t.*model.encoder='resnet18'"):
        build_model(ModelConfig(encoder="resnet18", encoder_weights=str(enc)), 4)
    with pytest.raises(ConfigError, match=rf"model.encoder_weights: .*{enc.name}.*model.encoder='resnet18'"):
        load_config(None, ["model.encoder=resnet18", f"model.encoder_weights={enc}"])  # before any data is read
    with pytest.raises(ConfigError, match=r"depth 3, but model.encoder_depth=5"):
        load_config(None, ["model.encoder=tu-resnet10t", f"model.encoder_weights={enc}"])
    assert load_config(None, ["model.encoder=tu-resnet10t", "model.encoder_depth=3", "model.decoder_channels=[8,8,8]",
                              f"model.encoder_weights={enc}"])
    # a plain state dict without octseg's metadata: the shapes give it away
    bare = tmp_path / "bare.pth"
    state = build_model(_tiny(), 4).encoder.state_dict()
    state["model.conv1.0.weight"] = torch.zeros(24, 3, 3, 2)
    torch.save(state, bare)
    with pytest.raises(ConfigError, match=r"bare.pth.*wrong shape.*conv1"):
        build_model(_tiny(encoder_weights=str(bare)), 4)
    doc = safe_load(enc)
    doc["octseg_encoder"]["in_channels"] = 3
    torch.save(doc, tmp_path / "rgb.pth")
    with pytest.raises(ConfigError, match=r"rgb.pth.*3 input channels; this model takes 1"):
        build_model(_tiny(encoder_weights=str(tmp_path / "rgb.pth")), 4)


def test_resume_continues_exactly_and_extends(tmp_path, scans, one_thread, monkeypatch):
    import octseg.training.pretrain as mod

    full = pretrain(_cfg(tmp_path / "a", scans, "denoise", steps=3, checkpoint_every=1))
    cfg = _cfg(tmp_path / "b", scans, "denoise", steps=3, checkpoint_every=1)
    factor = mod._lr_factor

    def killed_at_step_2(step, c):
        if step == 2:
            raise KeyboardInterrupt
        return factor(step, c)

    monkeypatch.setattr(mod, "_lr_factor", killed_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg)
    monkeypatch.setattr(mod, "_lr_factor", factor)
    assert safe_load(checkpoint_path(cfg.out))["octseg_pretrain"]["step"] == 2 and not cfg.out.exists()
    with pytest.raises(ConfigError, match="--resume"):
        pretrain(cfg)  # a second start without --resume or --overwrite
    with pytest.raises(ConfigError, match="lr"):
        pretrain(dataclasses.replace(cfg, lr=0.5), resume=True)
    resumed = pretrain(cfg, resume=True)
    assert resumed.meta["steps"] == 3
    a, b = safe_load(full.out)["state_dict"], safe_load(resumed.out)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same batches and noise as the uninterrupted run
    longer = pretrain(dataclasses.replace(cfg, steps=4), resume=True)  # more steps: continues from step 3
    assert longer.meta["steps"] == 4 and len(safe_load(checkpoint_path(cfg.out))["octseg_pretrain"]["history"]) == 4


def test_bad_inputs_are_clear_errors(tmp_path, scans, capsys):
    with pytest.raises(DataError, match="no/such/folder"):
        pretrain(_cfg(tmp_path, scans, "mim", data=[tmp_path / "no" / "such" / "folder"]))
    rc = main(["pretrain", "--out", str(tmp_path / "e.pth"), "--objective", "denoise", "--data",
               str(tmp_path / "missing"), "--steps", "2"])
    assert rc == 2 and "missing" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="synthetic-volumes"):
        pretrain(_cfg(tmp_path, scans, "synthetic", synthetic_volumes=0))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty"):
        pretrain(_cfg(tmp_path, scans, "mim", data=[empty]))


def test_patch_mask_covers_the_ratio():
    m = patch_mask(3, (32, 48), 8, 0.5, torch.Generator().manual_seed(0))
    assert m.shape == (3, 1, 32, 48) and m.dtype == torch.bool
    assert m.float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert not torch.equal(m[0], m[1])  # each image its own patches


@pytest.mark.parametrize("encoder", ["resnet18", "vgg11_bn"])
def test_smp_native_encoders_load_encoder_files(tmp_path, scans, one_thread, encoder, capsys):
    """smp's own ResNet/VGG encoders override ``load_state_dict`` (it returns None): the file still loads,
    and the report counts what loaded."""
    enc = pretrain(_cfg(tmp_path, scans, "mim", encoder=encoder, decoder_channels=[16, 8, 4])).out
    saved = safe_load(enc)["state_dict"]
    model = build_model(ModelConfig(encoder=encoder, encoder_depth=3, decoder_channels=[16, 8, 4],
                                    encoder_weights=str(enc)), 4)
    state = model.encoder.state_dict()
    assert saved and all(torch.equal(state[k], v) for k, v in saved.items())
    assert f"{len(saved)} tensors, 0 missing keys, 0 unexpected keys" in capsys.readouterr().out
