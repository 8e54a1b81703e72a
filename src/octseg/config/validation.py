"""Checking every value of a recipe when it is read (see the comment block below)."""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from octseg.config.schema import Config
from octseg.data.context import MAX_CONTEXT_SLICES
from octseg.errors import ConfigError
from octseg.losses import LOSSES, PSEUDO_LABEL_LOSSES
from octseg.optim import OPTIMIZERS, SCHEDULERS


# ----------------------------------------------------------------------------- validation
#
# Every value is checked when the recipe is read, so a bad value is one line naming its key
# before any data is touched, never a NaN loss, a traceback deep in Lightning or smp, or a run
# that never ends. Single values are checked from the table ``_RULES``; rules that relate
# several values (or need segmentation-models-pytorch) are the ``_check_*`` functions below.


@dataclass(frozen=True)
class Rule:
    """A check on one value and the words that say what it allows (used in the error)."""

    ok: Callable[[Any], bool]
    allowed: str


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    """A finite real number: NaN and infinity are never a meaningful setting."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int, hi: Optional[int] = None) -> Rule:
    text = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    return Rule(lambda v: _is_int(v) and v >= lo and (hi is None or v <= hi), text)


def number(lo: Optional[float] = None, hi: Optional[float] = None, lo_open=False, hi_open=False) -> Rule:
    """A finite number in an interval; ``*_open`` excludes that end."""
    def ok(v):
        return (_is_num(v) and (lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi)))

    if hi is None:
        text = f"a finite number {'>' if lo_open else '>='} {lo:g}" if lo is not None else "a finite number"
    else:
        text = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return Rule(ok, text)


def one_of(*options: str) -> Rule:
    return Rule(lambda v: isinstance(v, str) and v in options, "one of " + ", ".join(options))


def optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.ok(v), f"null or {rule.allowed}")


def text(empty: bool = False) -> Rule:
    return Rule(lambda v: isinstance(v, str) and (empty or v.strip() != ""),
                "a string" if empty else "a non-empty string")


FLAG = Rule(lambda v: isinstance(v, bool), "true or false")
PROBABILITY = number(0, 1)
NON_NEGATIVE = number(0)

#: Lightning's precision strings (``transformer-engine`` aside), plus octseg's ``auto``.
PRECISIONS = ("auto", "32", "32-true", "16", "16-mixed", "16-true", "bf16", "bf16-mixed", "bf16-true", "64",
              "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # as data/splits.py requires


def _devices_ok(v) -> bool:
    """Lightning's forms: auto, a count >= 1, -1 (all), device indices as a list or "0,1"."""
    if isinstance(v, str):
        s = v.strip()
        if s == "auto" or s == "-1":
            return True
        if "," in s:
            v = [p.strip() for p in s.split(",") if p.strip()]
            if not v or not all(p.isdigit() for p in v):
                return False
            v = [int(p) for p in v]
        elif s.isdigit():
            return int(s) >= 1
        else:
            return False
    if _is_int(v):
        return v >= 1 or v == -1
    return (isinstance(v, list) and len(v) > 0 and all(_is_int(i) and i >= 0 for i in v)
            and len(set(v)) == len(v))


_RULES: list[tuple[str, Rule]] = [
    ("name", text()),
    ("seed", integer(0, 2**32 - 1)),  # numpy and Lightning seed with unsigned 32-bit integers
    # data: what is read, how it is split, how much per step
    ("data.path", text(empty=True)),  # may stay empty in a recipe; train() asks for it
    ("data.size", Rule(lambda v: v is None or (isinstance(v, list) and len(v) == 2
                                               and all(_is_int(s) and s >= 32 for s in v)),
                       "null or [H, W], two integers >= 32 (the encoder downsamples by 32)")),
    ("data.split", Rule(lambda v: isinstance(v, str) and (v == "" or SPLIT_NAME.fullmatch(v) is not None),
                        "a split name of letters, digits, '_', '-' or '.' (or empty: named after the fractions)")),
    ("data.labelled", optional(number(0, 1, lo_open=True))),
    ("data.labelled_count", optional(integer(1))),
    ("data.val", number(0, 1, hi_open=True)),
    ("data.test", number(0, 1, hi_open=True)),
    ("data.split_by", one_of("volume", "slice")),
    ("data.labelled_batch", integer(1)),
    ("data.unlabelled_batch", integer(0)),
    ("data.extra_unlabelled", Rule(lambda v: isinstance(v, list) and all(isinstance(p, str) and p.strip() for p in v),
                                  "a list of dataset paths")),
    ("data.in_memory", FLAG),
    ("data.layout", one_of("auto", "retouch", "folders")),
    ("data.volume_regex", optional(text())),  # compiled in _check_data
    ("data.fluid_band_margin", optional(integer(0))),
    # model: arch, encoder, encoder_weights, decoder_channels need smp: _check_model
    ("model.encoder_depth", integer(1, 5)),
    ("model.context_slices", integer(0, MAX_CONTEXT_SLICES)),  # 2.5D input: neighbours on each side
    # loss
    ("loss.name", one_of(*LOSSES)),
    ("loss.dice_weight", NON_NEGATIVE),
    ("loss.other_weight", NON_NEGATIVE),
    ("loss.class_weights", Rule(lambda v: v is None or (isinstance(v, list) and len(v) > 0
                                                        and all(_is_num(w) and w >= 0 for w in v) and sum(v) > 0),
                                "null or a list of finite weights >= 0, one per class, not all 0")),
    ("loss.focal_gamma", NON_NEGATIVE),
    # method (name: the registry, in _check_method); the rest are Mean Teacher's
    ("method.mean_teacher.ema_decay_rampup", PROBABILITY),  # EMA alphas: teacher = a * teacher + (1 - a) * student
    ("method.mean_teacher.ema_decay", PROBABILITY),
    ("method.mean_teacher.consistency_weight", NON_NEGATIVE),
    ("method.mean_teacher.consistency_rampup_epochs", NON_NEGATIVE),
    ("method.mean_teacher.noise_std", NON_NEGATIVE),
    ("method.mean_teacher.consistency_on_labelled", FLAG),
    ("method.mean_teacher.strong", FLAG),
    ("method.mean_teacher.cutmix", FLAG),
    ("method.fixmatch.threshold", PROBABILITY),
    ("method.fixmatch.weight", NON_NEGATIVE),
    ("method.fixmatch.cutmix", FLAG),
    ("method.fixmatch.joint_batch", FLAG),
    ("method.fixmatch.unsup_loss", one_of(*PSEUDO_LABEL_LOSSES)),
    ("method.fixmatch.distribution_alignment", FLAG),
    ("method.fixmatch.alignment_start", PROBABILITY),  # a fraction of the run's steps
    ("method.fixmatch.background_guard", integer(0)),  # pixels
    ("method.unimatch.threshold", PROBABILITY),
    ("method.unimatch.weight", NON_NEGATIVE),
    ("method.unimatch.feature_dropout", number(0, 1, hi_open=True)),  # 1 would divide by zero
    ("method.unimatch.cutmix", FLAG),
    ("method.unimatch.unsup_loss", one_of(*PSEUDO_LABEL_LOSSES)),
    ("method.unimatch.background_guard", integer(0)),  # pixels
    ("method.cps.weight", NON_NEGATIVE),
    ("method.cps.cutmix", FLAG),
    ("method.bcp.box_fraction", number(0, 1, lo_open=True)),
    ("method.bcp.unlabelled_weight", NON_NEGATIVE),
    ("method.bcp.ema_decay", PROBABILITY),
    ("method.bcp.weight", NON_NEGATIVE),
    ("method.self_training.teacher",  # checkpoint file(s) or a CV folder when method.name=self_training
     Rule(lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(p, str) for p in v)),
          "a checkpoint path or a list of them")),
    ("method.self_training.threshold", PROBABILITY),
    ("method.self_training.flip", FLAG),
    ("method.self_training.weight", NON_NEGATIVE),
    ("method.self_training.unsup_loss", one_of(*PSEUDO_LABEL_LOSSES)),
    ("method.self_training.cutmix", FLAG),
    ("method.self_training.strong", FLAG),
    # optim: the names and schedulers SegmentationModule.configure_optimizers builds
    ("optim.name", one_of(*OPTIMIZERS)),
    ("optim.lr", number(0, lo_open=True)),
    ("optim.weight_decay", NON_NEGATIVE),
    ("optim.momentum", number(0, 1, hi_open=True)),
    ("optim.scheduler", one_of(*SCHEDULERS)),
    ("optim.plateau_factor", number(0, 1, lo_open=True, hi_open=True)),  # 1 never lowers the rate, >1 raises it
    ("optim.plateau_patience", integer(0)),
    ("optim.poly_power", number(0, lo_open=True)),
    ("optim.warmup_steps", integer(0)),
    # augment: probabilities and ranges of augment_batch (images are in [0, 1])
    ("augment.strong", FLAG),
    ("augment.strong_brightness", PROBABILITY),
    ("augment.strong_contrast", PROBABILITY),
    ("augment.strong_gamma", number(0, 2)),
    ("augment.speckle_std", number(0, 2)),
    ("augment.blur_p", PROBABILITY),
    ("augment.cutout_p", PROBABILITY),
    ("augment.cutmix_p", PROBABILITY),
    ("augment.fourier_style_p", PROBABILITY),
    ("augment.fourier_beta", number(0, 0.5, lo_open=True)),
    ("augment.enabled", FLAG),
    ("augment.hflip", PROBABILITY),
    ("augment.rotate_deg", number(0, 180)),
    ("augment.scale", number(0, 1, hi_open=True)),  # zoom 1 +- scale: 1 or more would divide by zero
    ("augment.translate", PROBABILITY),  # fraction of the image size
    ("augment.affine_p", PROBABILITY),
    ("augment.gamma", NON_NEGATIVE),  # gamma = exp(+-gamma)
    ("augment.contrast", PROBABILITY),  # contrast factor 1 +- contrast: more than 1 would invert images
    ("augment.brightness", PROBABILITY),
    ("augment.noise_std", NON_NEGATIVE),
    # trainer: what Lightning accepts, and a run that ends (cross-checks in _check_trainer)
    ("trainer.max_epochs", Rule(lambda v: _is_int(v) and (v >= 1 or v == -1),
                                "an integer >= 1 (or -1: no epoch limit, with trainer.max_steps >= 1)")),
    ("trainer.max_steps", Rule(lambda v: _is_int(v) and (v >= 1 or v == -1), "an integer >= 1, or -1 (no step limit)")),
    ("trainer.steps_per_epoch", optional(integer(1))),
    ("trainer.max_minutes", optional(number(0, lo_open=True))),
    ("trainer.precision", one_of(*PRECISIONS)),
    ("trainer.accelerator", one_of(*ACCELERATORS)),
    ("trainer.devices", Rule(_devices_ok, "auto, a device count >= 1, -1 (all devices), or device indices "
                                          "such as [0, 1] or \"0,1\"")),
    ("trainer.strategy", text()),
    ("trainer.num_nodes", integer(1)),
    ("trainer.val_every_n_epochs", integer(1)),
    ("trainer.log_every_n_steps", integer(1)),
    ("trainer.deterministic", FLAG),
    ("trainer.progress", FLAG),
    ("trainer.channels_last", FLAG),
    ("trainer.val_batch", integer(1)),
    ("trainer.checkpoint_every_steps", optional(integer(1))),
    ("trainer.checkpoint_every_minutes", optional(number(0, lo_open=True))),
]


def _get(cfg, key: str):
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _bad(key: str, value, allowed: str) -> str:
    return f"{key}={value!r}: must be {allowed}"


def _check_data(cfg: Config, bad: set) -> list[str]:
    """Values that only make sense together, and the file-name regex the readers compile."""
    d, errors = cfg.data, []
    if not bad & {"data.labelled", "data.labelled_count"} and d.labelled is None and d.labelled_count is None:
        errors.append("data.labelled=None and data.labelled_count=None: set data.labelled (a fraction of the training "
                      "volumes in (0, 1]; 1 uses every label) or data.labelled_count (a number of B-scans >= 1)")
    if not bad & {"data.val", "data.test"} and d.val + d.test >= 1:
        errors.append(f"data.val={d.val!r} + data.test={d.test!r}: must be < 1, or nothing is left to train on")
    if d.volume_regex is not None and "data.volume_regex" not in bad:
        try:
            groups = set(re.compile(d.volume_regex).groupindex)
        except re.error as exc:
            errors.append(_bad("data.volume_regex", d.volume_regex, f"a valid regular expression ({exc})"))
        else:
            if not {"volume", "slice"} <= groups:
                errors.append(_bad("data.volume_regex", d.volume_regex,
                                   "a regular expression with named groups (?P<volume>...) and (?P<slice>...)"))
    return errors


def _check_trainer(cfg: Config, bad: set) -> list[str]:
    """A run must end, and Lightning's CPU accelerator takes only a number of processes."""
    t, errors = cfg.trainer, []
    if not bad & {"trainer.max_epochs", "trainer.max_steps"} and t.max_epochs == -1 and t.max_steps == -1:
        errors.append("trainer.max_epochs=-1 with trainer.max_steps=-1: the run would never end; set "
                      "trainer.max_epochs >= 1 or trainer.max_steps >= 1")
    if not bad & {"trainer.accelerator", "trainer.devices"} and t.accelerator == "cpu":
        if not (t.devices == "auto" or (_is_int(t.devices) and t.devices >= 1)
                or (isinstance(t.devices, str) and t.devices.strip().isdigit() and int(t.devices) >= 1)):
            errors.append(_bad("trainer.devices", t.devices, "auto or a number of processes >= 1 with "
                                                               "trainer.accelerator=cpu"))
    return errors


def _check_loss(cfg: Config, bad: set) -> list[str]:
    """A loss with both weights 0 is constant: the run would train nothing."""
    lo = cfg.loss
    if not bad & {"loss.dice_weight", "loss.other_weight"} and lo.dice_weight + lo.other_weight <= 0:
        return [f"loss.dice_weight={lo.dice_weight!r} and loss.other_weight={lo.other_weight!r}: "
                f"at least one must be > 0"]
    return []


def _check_method(cfg: Config, bad: set) -> list[str]:
    from octseg.methods import METHODS

    if not isinstance(cfg.method.name, str) or cfg.method.name not in METHODS:
        return [_bad("method.name", cfg.method.name, "one of " + ", ".join(sorted(METHODS)))]
    if cfg.method.name == "self_training" and "method.self_training.teacher" not in bad:
        from octseg.methods.self_training import teacher_problem

        problem = teacher_problem(cfg.method.self_training.teacher)
        return [problem] if problem else []
    return []


#: Architectures whose decoder takes one channel count per encoder stage (smp's ``decoder_channels``).
_LIST_DECODERS = ("unet", "unetplusplus", "manet")
#: Architectures smp builds only on encoder depths 3 to 5.
_DEPTH_FROM_3 = ("fpn", "pan", "deeplabv3plus", "segformer", "upernet")


def _check_model(cfg: Config, bad: set) -> list[str]:
    """Names smp knows, and the shapes its decoders accept (otherwise a ValueError from deep inside smp)."""
    from octseg.models import _arch_names, _smp

    m, errors = cfg.model, []
    smp = _smp()
    archs = {a.lower(): a for a in _arch_names(smp)}
    arch = m.arch.lower() if isinstance(m.arch, str) else None
    if arch not in archs:
        errors.append(_bad("model.arch", m.arch, "a segmentation-models-pytorch architecture: "
                                                 + ", ".join(archs.values())))
    if not isinstance(m.encoder, str) or not _encoder_known(smp, m.encoder):
        near = difflib.get_close_matches(str(m.encoder), list(_encoders(smp)), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        errors.append(_bad("model.encoder", m.encoder, "a segmentation-models-pytorch encoder such as resnet18, "
                                                       f"resnet50, vgg19_bn, or tu-<timm model>{hint}"))
    weights = m.encoder_weights.strip() if isinstance(m.encoder_weights, str) else None
    if weights is None or (weights.lower() not in ("none", "null", "", "imagenet")
                           and not Path(weights).expanduser().is_file()):
        errors.append(_bad("model.encoder_weights", m.encoder_weights,
                           "none, imagenet or the path of an existing weights file (.pth or .safetensors)"))
    elif weights.lower() not in ("none", "null", "", "imagenet") and isinstance(m.encoder, str) \
            and not {"model.encoder_depth", "model.context_slices"} & bad:
        from octseg.models import encoder_file_problem

        problem = encoder_file_problem(Path(weights).expanduser(), m)  # an octseg pretrain file for another encoder
        if problem:
            errors.append(f"model.encoder_weights: {problem}")
    dc = m.decoder_channels
    if dc is not None:
        if not (isinstance(dc, list) and dc and all(_is_int(c) and c >= 1 for c in dc)):
            errors.append(_bad("model.decoder_channels", dc, "null or a list of channel counts >= 1"))
        elif arch in archs and arch not in _LIST_DECODERS:
            errors.append(_bad("model.decoder_channels", dc, f"null for model.arch={m.arch} (only Unet, "
                                                             f"UnetPlusPlus and MAnet take a list)"))
        elif arch in _LIST_DECODERS and "model.encoder_depth" not in bad and len(dc) != m.encoder_depth:
            errors.append(_bad("model.decoder_channels", dc, f"one channel count per encoder stage: "
                                                             f"{m.encoder_depth} (model.encoder_depth)"))
    elif arch in _LIST_DECODERS and "model.encoder_depth" not in bad and m.encoder_depth != 5:
        errors.append(f"model.encoder_depth={m.encoder_depth}: {m.arch} needs model.decoder_channels with "
                      f"{m.encoder_depth} values (its default has 5)")
    if arch in _DEPTH_FROM_3 and "model.encoder_depth" not in bad and m.encoder_depth < 3:
        errors.append(_bad("model.encoder_depth", m.encoder_depth, f"3, 4 or 5 for model.arch={m.arch}"))
    return errors


def _encoders(smp) -> dict:
    try:
        return smp.encoders.encoders
    except AttributeError:  # pragma: no cover - smp without the registry
        return {}


def _encoder_known(smp, name: str) -> bool:
    """smp's own encoders, or ``tu-<name>`` for any timm model."""
    if name.startswith("tu-"):
        try:
            import timm

            return timm.is_model(name[3:])
        except ImportError:  # pragma: no cover
            return False
    known = _encoders(smp)
    return not known or name in known


_CROSS_CHECKS = (_check_data, _check_trainer, _check_loss, _check_method, _check_model)


def validate_config(cfg: Config) -> Config:
    """Check every value of ``cfg``; raise one ConfigError (one line) listing each bad key, value and
    what is allowed. Returns ``cfg`` so it can wrap a constructor."""
    errors, bad = [], set()
    for key, rule in _RULES:
        value = _get(cfg, key)
        if not rule.ok(value):
            errors.append(_bad(key, value, rule.allowed))
            bad.add(key)
    for check in _CROSS_CHECKS:
        errors += check(cfg, bad)
    if errors:
        raise ConfigError("; ".join(errors))
    return cfg
