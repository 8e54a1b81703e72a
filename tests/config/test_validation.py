"""Values are checked when they are read: a bad config value or a damaged checkpoint is one
ConfigError / CheckpointError line naming the key or field, never a NaN run, a traceback or an
endless run. No training here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_checkpoint

from octseg import cli
from octseg.checkpoint import load_network, load_networks
from octseg.config import RECIPES, Config, load_config, validate_config
from octseg.config.validation import _RULES, _get
from octseg.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[2]


def _config_error(overrides, recipe=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(recipe, overrides)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- config: one bad value each

BAD_VALUES = [
    # data
    ("data.labelled_batch", 0), ("data.labelled_batch", -2), ("data.unlabelled_batch", -1),
    ("data.labelled", 0), ("data.labelled", 1.5), ("data.labelled", -0.1), ("data.labelled", "nan"),
    ("data.labelled_count", 0), ("data.labelled_count", -5),
    ("data.val", 1.0), ("data.val", -0.1), ("data.val", "nan"), ("data.test", 1), ("data.test", -0.2),
    ("data.split_by", "patient"), ("data.layout", "nifti"), ("data.size", "[16,64]"), ("data.size", "[64]"),
    ("data.size", "[64,64,64]"), ("data.split", "../elsewhere"), ("data.volume_regex", "'('"),
    ("data.volume_regex", "'(?P<volume>.*)'"),
    # trainer
    ("trainer.max_epochs", 0), ("trainer.max_epochs", -2), ("trainer.max_steps", 0), ("trainer.max_steps", -3),
    ("trainer.steps_per_epoch", 0), ("trainer.max_minutes", 0), ("trainer.max_minutes", -1),
    ("trainer.max_minutes", "nan"), ("trainer.val_every_n_epochs", 0), ("trainer.log_every_n_steps", 0),
    ("trainer.val_batch", 0), ("trainer.num_nodes", 0), ("trainer.precision", 17), ("trainer.precision", "fp8"),
    ("trainer.precision", "transformer-engine"), ("trainer.accelerator", "tpux"), ("trainer.devices", 0),
    ("trainer.devices", -2), ("trainer.devices", "[]"), ("trainer.devices", "[0,0]"), ("trainer.devices", "[-1]"),
    ("trainer.devices", "gpu0"), ("trainer.devices", "'0,x'"), ("trainer.strategy", "''"),
    # optim
    ("optim.lr", 0), ("optim.lr", -1), ("optim.lr", "nan"), ("optim.lr", "inf"), ("optim.weight_decay", -1e-4),
    ("optim.weight_decay", "nan"), ("optim.momentum", 1.0), ("optim.momentum", -0.5), ("optim.name", "lion"),
    ("optim.name", "Adam"), ("optim.scheduler", "step"), ("optim.plateau_factor", 0), ("optim.plateau_factor", 1),
    ("optim.plateau_factor", 2.0), ("optim.plateau_patience", -1), ("optim.poly_power", 0),
    ("optim.poly_power", "-inf"), ("optim.warmup_steps", -10),
    # loss
    ("loss.name", "dice"), ("loss.dice_weight", -1), ("loss.other_weight", "nan"), ("loss.focal_gamma", -2),
    ("loss.class_weights", "[1,-1,1,1]"), ("loss.class_weights", "[0,0,0,0]"), ("loss.class_weights", "[1,nan,1,1]"),
    ("loss.class_weights", "[]"),
    # method
    ("method.name", "fixmatchx"), ("method.name", "MeanTeacher"), ("method.mean_teacher.ema_decay", 1.5),
    ("method.mean_teacher.ema_decay", -0.1), ("method.mean_teacher.ema_decay_rampup", "nan"), ("method.mean_teacher.consistency_weight", -1),
    ("method.mean_teacher.consistency_weight", "inf"), ("method.mean_teacher.consistency_rampup_epochs", -1), ("method.mean_teacher.noise_std", -0.1),
    # model
    ("model.arch", "Unet3D"), ("model.arch", "''"), ("model.encoder", "resnet5"), ("model.encoder", "tu-nosuchnet"),
    ("model.encoder_weights", "imagenet21k"), ("model.encoder_weights", "/no/such/weights.pth"),
    ("model.encoder_depth", 0), ("model.encoder_depth", 6), ("model.decoder_channels", "[0,16,8,8,8]"),
    # augment
    ("augment.hflip", 1.5), ("augment.hflip", -0.1), ("augment.affine_p", 2), ("augment.rotate_deg", -5),
    ("augment.rotate_deg", 400), ("augment.scale", 1.0), ("augment.scale", -0.1), ("augment.translate", 1.5),
    ("augment.gamma", -0.3), ("augment.gamma", "nan"), ("augment.contrast", 1.5), ("augment.brightness", -0.1),
    ("augment.noise_std", -0.02), ("augment.noise_std", "inf"),
    # top level
    ("seed", -1), ("seed", 2**32), ("name", "''"),
]


def test_default_config_is_valid():
    """The control for every case below: only the override makes them fail."""
    cfg = load_config(None, [])
    assert validate_config(cfg) is cfg


@pytest.mark.parametrize("key,value", BAD_VALUES, ids=[f"{k}={v}" for k, v in BAD_VALUES])
def test_bad_value_names_its_key(key, value):
    msg = _config_error([f"{key}={value}"])
    assert f"{key}=" in msg
    assert "must be" in msg


@pytest.mark.parametrize("overrides,keys", [
    (["trainer.max_epochs=-1"], ["trainer.max_epochs", "trainer.max_steps", "never end"]),  # max_steps is -1
    (["trainer.max_epochs=-1", "trainer.max_steps=-1"], ["never end"]),
    (["data.val=0.5", "data.test=0.5"], ["data.val", "data.test"]),
    (["data.val=0.7", "data.test=0.4"], ["data.val", "data.test"]),
    (["data.labelled=null", "data.labelled_count=null"], ["data.labelled", "data.labelled_count"]),
    (["loss.dice_weight=0", "loss.other_weight=0"], ["loss.dice_weight", "loss.other_weight"]),
    (["trainer.accelerator=cpu", "trainer.devices=[0,1]"], ["trainer.devices", "cpu"]),
    (["trainer.accelerator=cpu", "trainer.devices=-1"], ["trainer.devices", "cpu"]),
    (["model.encoder_depth=3"], ["model.encoder_depth", "decoder_channels"]),  # Unet's default decoder has 5
    (["model.encoder_depth=3", "model.decoder_channels=[32,16]"], ["model.decoder_channels", "3"]),
    (["model.arch=FPN", "model.decoder_channels=[32,16,8,8,8]"], ["model.decoder_channels", "FPN"]),
    (["model.arch=DeepLabV3Plus", "model.decoder_channels=[32,16,8,8,8]"], ["model.decoder_channels"]),
    (["model.arch=PAN", "model.encoder_depth=2"], ["model.encoder_depth", "3, 4 or 5"]),
])
def test_values_that_only_fail_together(overrides, keys):
    msg = _config_error(overrides)
    for key in keys:
        assert key in msg


def test_several_bad_values_in_one_line():
    msg = _config_error(["data.labelled_batch=0", "optim.lr=nan", "trainer.precision=17", "trainer.devices=0"])
    for key in ("data.labelled_batch=0", "optim.lr=nan", "trainer.precision='17'", "trainer.devices=0"):
        assert key in msg
    assert msg.startswith("data.labelled_batch=0: must be an integer >= 1")


def test_messages_say_what_is_allowed():
    assert "one of auto, cpu, gpu, cuda, mps, tpu" in _config_error(["trainer.accelerator=tpux"])
    assert "fixmatchx" in _config_error(["method.name=fixmatchx"]) and "fixmatch, mean_teacher, self_training, supervised" in \
        _config_error(["method.name=fixmatchx"])
    assert "adam, adamw, sgd" in _config_error(["optim.name=lion"])
    assert "resnet50" in _config_error(["model.encoder=resnet5"])  # the nearest names
    assert "Unet" in _config_error(["model.arch=Unet3D"])
    assert "missing )" in _config_error(["data.volume_regex='('"])


@pytest.mark.parametrize("overrides", [
    ["trainer.max_epochs=-1", "trainer.max_steps=100"],
    ["trainer.max_steps=50"],
    ["trainer.devices=2"], ["trainer.devices=-1"], ["trainer.devices=[0,1]"], ["trainer.devices='0,1'"],
    ["trainer.devices='1'"], ["trainer.accelerator=cpu", "trainer.devices=2"],
    ["trainer.precision=bf16-mixed"], ["trainer.precision=16"], ["trainer.precision=64-true"],
    ["trainer.precision=auto"], ["trainer.max_minutes=0.5"], ["trainer.strategy=ddp"],
    ["data.labelled=null", "data.labelled_count=5"], ["data.labelled=1.0"], ["data.val=0", "data.test=0"],
    ["data.size=[32,48]"], ["data.size=null"], ["data.split="], ["data.split=fold-1.v2"],
    ["data.volume_regex='(?P<volume>[a-z]+)_(?P<slice>[0-9]+)'"], ["data.unlabelled_batch=0"],
    ["model.encoder=tu-resnet10t", "model.encoder_depth=3", "model.decoder_channels=[32,16,8]"],
    ["model.arch=unetplusplus"], ["model.arch=FPN", "model.encoder_depth=3"], ["model.encoder_weights=none"],
    ["model.encoder_weights=imagenet"], ["model.encoder=vgg19_bn"],
    ["optim.momentum=0"], ["optim.weight_decay=0"], ["optim.plateau_patience=0"], ["optim.scheduler=poly"],
    ["loss.class_weights=[1,2,2,0]"], ["loss.dice_weight=0"], ["method.name=supervised"],
    ["method.mean_teacher.ema_decay=1"], ["method.mean_teacher.consistency_weight=0"],
    ["method.name=fixmatch", "method.fixmatch.threshold=0.8"], ["augment.hflip=1"], ["augment.enabled=false"],
])
def test_valid_values_pass(overrides):
    load_config(None, overrides)


def test_encoder_weights_file_must_exist(tmp_path):
    weights = tmp_path / "enc.pth"
    msg = _config_error([f"model.encoder_weights={weights}"])
    assert "model.encoder_weights" in msg
    torch.save({}, weights)
    assert load_config(None, [f"model.encoder_weights={weights}"]).model.encoder_weights == str(weights)


@pytest.mark.parametrize("section,field,value", [
    ("data", "labelled_batch", True), ("data", "val", float("nan")), ("optim", "lr", float("inf")),
    ("trainer", "max_epochs", 2.5), ("trainer", "deterministic", "yes"), ("loss", "name", None),
    ("method", "name", ["mean_teacher"]), ("model", "arch", None), ("augment", "hflip", "0.5"),
])
def test_validate_config_on_its_own(section, field, value):
    """Configs built in code (not read from YAML, so never coerced) are checked the same way."""
    cfg = Config()
    cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{field: value})})
    with pytest.raises(ConfigError, match=rf"{section}\.{field}="):
        validate_config(cfg)


def test_every_field_is_checked():
    """A new config field without a rule fails here (model names and method.name need their registries)."""
    covered = {key for key, _ in _RULES} | {"model.arch", "model.encoder", "model.encoder_weights",
                                           "model.decoder_channels", "method.name"}
    fields: set = set()

    def walk(obj, prefix):  # leaves of the config tree (method sections are nested one level more)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                fields.add(prefix + f.name)

    walk(Config(), "")
    assert len(fields) > 60
    assert fields - covered == set()
    for key, _ in _RULES:  # and no rule names a field that does not exist
        _get(Config(), key)


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_shipped_recipes_validate(recipe):
    cfg = load_config(RECIPES / recipe)
    assert validate_config(cfg) is cfg


def test_shipped_recipes_found():
    assert len(list(RECIPES.glob("*.yaml"))) >= 4


def test_cli_train_bad_value_exits_2_with_one_line(tmp_path, capsys):
    rc = cli.main(["train", str(REPO / "configs" / "demo_cpu.yaml"), f"data.path={tmp_path / 'data'}",
                   "data.labelled_batch=0", "--out", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "data.labelled_batch=0" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written for a config that cannot run


# ----------------------------------------------------------------------------- checkpoints


def _drop_state(c):
    del c["state_dict"]


def _drop_student(c):
    c["state_dict"] = {k: v for k, v in c["state_dict"].items() if not k.startswith("method.student.")}


def _nan_weight(c):
    key = next(k for k, v in c["state_dict"].items() if v.is_floating_point())
    c["state_dict"][key] = torch.full_like(c["state_dict"][key], float("nan"))


def _meta(field, value):
    def edit(c):
        c["octseg"][field] = value
    return edit


def _norm(**kw):
    def edit(c):
        c["octseg"]["normalization"].update(kw)
    return edit


def _model(**kw):
    def edit(c):
        c["octseg"]["model"].update(kw)
        for k, v in kw.items():
            if v is _DEL:
                del c["octseg"]["model"][k]
    return edit


_DEL = object()

CKPT_EDITS = [
    ("std-0", _norm(std=0.0), "normalization"),
    ("std-negative", _norm(std=-0.1), "normalization"),
    ("std-inf", _norm(std=float("inf")), "normalization"),
    ("mean-nan", _norm(mean=float("nan")), "normalization"),
    ("mean-string", _norm(mean="0.2"), "normalization"),
    ("normalization-missing", lambda c: c["octseg"].pop("normalization"), "normalization"),
    ("input-size-0", _meta("input_size", [0, 64]), "input_size"),
    ("input-size-huge", _meta("input_size", [64, 100000]), "input_size"),
    ("input-size-one", _meta("input_size", [64]), "input_size"),
    ("input-size-float", _meta("input_size", [64.5, 64]), "input_size"),
    ("classes-one", _meta("classes", ["bg"]), "classes"),
    ("classes-string", _meta("classes", "background,IRF"), "classes"),
    ("classes-numbers", _meta("classes", [0, 1, 2, 3]), "classes"),
    ("default-not-a-network", _meta("default_weights", "ghost"), "default_weights"),
    ("networks-empty", _meta("networks", []), "networks"),
    ("model-not-a-dict", _meta("model", "Unet"), "model"),
    ("model-no-encoder", _model(encoder=_DEL), "model"),
    ("model-arch-number", _model(arch=3), "model"),
    ("model-unknown-key", _model(dropout=0.5), "model"),
    ("model-depth-0", _model(encoder_depth=0), "model"),
    ("state-dict-missing", _drop_state, "state_dict"),
    ("state-dict-not-a-dict", lambda c: c.__setitem__("state_dict", [1, 2]), "state_dict"),
    ("student-weights-missing", _drop_student, "student"),
    ("nan-weights", _nan_weight, "NaN"),
]


@pytest.fixture(scope="module")
def clean_checkpoint(tmp_path_factory) -> dict:
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")
    return torch.load(path, weights_only=True)


def _save_edited(clean: dict, edit, path: Path) -> Path:
    ckpt = {"state_dict": dict(clean["state_dict"]),
            "octseg": {k: (dict(v) if isinstance(v, dict) else v) for k, v in clean["octseg"].items()}}
    if edit is not None:
        edit(ckpt)
    torch.save(ckpt, path)
    return path


def test_unedited_checkpoint_loads(clean_checkpoint, tmp_path):
    """The control: saved the same way without an edit, the checkpoint loads."""
    path = _save_edited(clean_checkpoint, None, tmp_path / "same.ckpt")
    net, meta = load_network(path)
    assert meta["weights"] == "teacher" and meta["normalization"]["std"] > 0
    nets, _ = load_networks(path)
    assert set(nets) == {"teacher", "student"}


@pytest.mark.parametrize("name,edit,field", CKPT_EDITS, ids=[c[0] for c in CKPT_EDITS])
def test_damaged_checkpoint_names_the_field(clean_checkpoint, tmp_path, name, edit, field):
    path = _save_edited(clean_checkpoint, edit, tmp_path / f"{name}.ckpt")
    for load in (load_network, load_networks):
        with pytest.raises(CheckpointError) as info:
            load(path)
        msg = str(info.value)
        assert msg.startswith(f"{path}: ") and field in msg and "\n" not in msg, msg


def test_damaged_checkpoint_cli_predict_exits_2(clean_checkpoint, tmp_path, capsys):
    from fakes import save_image

    image = save_image(tmp_path / "scan.png", np.random.default_rng(0).integers(0, 256, (48, 64)))
    path = _save_edited(clean_checkpoint, _norm(std=0.0), tmp_path / "std0.ckpt")
    out = tmp_path / "out"
    rc = cli.main(["predict", str(path), str(image), str(out), "--device", "cpu"])
    _, err = capsys.readouterr()
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "normalization" in lines[0] and "Traceback" not in err
    # the same command with the unedited checkpoint succeeds, so it is the edit that fails
    good = _save_edited(clean_checkpoint, None, tmp_path / "good.ckpt")
    assert cli.main(["predict", str(good), str(image), str(tmp_path / "out-good"), "--device", "cpu"]) == 0



@pytest.mark.parametrize("old,new", [("data.labeled", "labelled"), ("data.labeled_batch", "labelled_batch"),
                                     ("data.unlabeled_batch", "unlabelled_batch")])
def test_old_labeled_spelling_still_works_with_a_warning(old, new, tmp_path):
    value = 0.5 if new == "labelled" else 3
    with pytest.warns(UserWarning, match=f"is now 'data.{new}'"):
        cfg = load_config(None, [f"{old}={value}"])
    assert getattr(cfg.data, new) == value
    recipe = tmp_path / "old.yaml"
    recipe.write_text(f"data:\n  {old.split('.')[1]}: {value}\n")
    with pytest.warns(UserWarning, match=f"is now 'data.{new}'"):
        assert getattr(load_config(recipe).data, new) == value


def test_old_flat_mean_teacher_keys_move_to_their_section(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("method:\n  name: mean_teacher\n  ema_decay: 0.9\n  consistency_weight: 2.0\n")
    with pytest.warns(UserWarning, match="'method.ema_decay' is now 'method.mean_teacher.ema_decay'"):
        cfg = load_config(recipe, ["method.noise_std=0.2"])
    assert (cfg.method.mean_teacher.ema_decay, cfg.method.mean_teacher.consistency_weight,
            cfg.method.mean_teacher.noise_std) == (0.9, 2.0, 0.2)
