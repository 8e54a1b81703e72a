"""Reading recipes: YAML files (or the recipes shipped in ``octseg/configs``) plus ``key=value``
overrides, coerced to the declared field types. An unknown key anywhere is an error that suggests
the nearest valid key, so a typo never silently trains with a default."""

from __future__ import annotations

import dataclasses
import difflib
import typing
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from octseg.config.schema import Config
from octseg.config.validation import validate_config
from octseg.errors import ConfigError


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key, valid, where: str) -> ConfigError:
    key = str(key)  # YAML keys may be numbers, booleans or null
    near = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    hint = f"; did you mean {where + near[0]!r}?" if near else f"; valid keys: {sorted(valid)}"
    return ConfigError(f"unknown config key {where + key!r}{hint}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: cannot use {value!r} ({'; '.join(errors)})")
    if origin is list or tp is list:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, key) for v in value]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    return value


#: Keys of octseg < 0.2, still accepted with a warning naming the new key: "labeled" is spelt
#: "labelled", and Mean Teacher's options moved into their own section ``method.mean_teacher``.
RENAMED_KEYS = {
    **{f"data.{old}": f"data.{old.replace('labeled', 'labelled')}"
       for old in ("labeled", "labeled_count", "labeled_batch", "unlabeled_batch", "extra_unlabeled")},
    **{f"method.{key}": f"method.mean_teacher.{key}"
       for key in ("ema_decay_rampup", "ema_decay", "consistency_weight", "consistency_rampup_epochs", "noise_std",
                   "consistency_on_labelled")},
}


def _current_key(old: str) -> str:
    """The dotted key ``old`` as it is spelt now (with a warning when it was renamed)."""
    new = RENAMED_KEYS.get(old)
    if new is None:
        return old
    warnings.warn(f"config key {old!r} is now {new!r}; the old key still works for now", UserWarning, stacklevel=4)
    return new


def _renamed(data: dict, where: str) -> dict:
    """A section's mapping with renamed keys moved to their new place (possibly a sub-section)."""
    out: dict = {}
    for k, v in data.items():
        parts = _current_key(where + k)[len(where):].split(".") if isinstance(k, str) else [k]
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else node
        if isinstance(v, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(v)  # a section also reached through moved keys
        else:
            node[parts[-1]] = v
    return out


def _build(cls, data: dict, where: str = ""):
    types = _field_types(cls)
    kwargs = {}
    for k, v in _renamed(data or {}, where).items():
        if k not in types:
            raise _unknown_key(k, types, where)
        kwargs[k] = _coerce(v, types[k], where + k)
    return cls(**kwargs)


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = _current_key(dotted).split(".")
    cls = Config
    node = data
    for i, part in enumerate(parts):
        types = _field_types(cls)
        if part not in types:
            raise _unknown_key(part, types, ".".join(parts[:i]) + ("." if i else ""))
        if i == len(parts) - 1:
            node[part] = value
            return
        tp = types[part]
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{'.'.join(parts[: i + 1])} is not a section; cannot set {dotted}")
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
        cls = tp


RECIPES = Path(__file__).resolve().parent.parent / "configs"


def recipe_path(name) -> Path:
    """A recipe file: a path, or the name of a recipe shipped with octseg (e.g. ``demo_cpu``)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (RECIPES / path.name, RECIPES / f"{path.name}.yaml"):
        if candidate.is_file() and len(path.parts) == 1:
            return candidate
    shipped = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    raise ConfigError(f"{path}: config file not found (recipes shipped with octseg: {', '.join(shipped)})")


def load_config(path=None, overrides: Optional[list[str]] = None) -> Config:
    """Read a YAML recipe, apply ``key=value`` overrides (values parsed as YAML scalars), validate."""
    data: dict = {}
    if path is not None:
        path = recipe_path(path)
        data = _read_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping of sections")
        data.setdefault("name", path.stem)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. trainer.max_epochs=3)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value)
    try:
        return validate_config(_build(Config, data))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None


def _read_yaml(path: Path):
    """A recipe file's YAML; any problem is one ConfigError line naming the file (and line, column)."""
    from octseg.io.files import open_regular
    from octseg.errors import DataError

    try:
        with open_regular(path) as fh:
            raw = fh.read()
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          f"a recipe is YAML text") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {' '.join(str(problem).split())}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None


def save_config(cfg: Config, path) -> None:
    from octseg.io.outputs import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
