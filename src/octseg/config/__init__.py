"""Typed training configuration: YAML recipes in ``octseg/configs``, every field overridable as
``key=value`` (``loading``), one dataclass per section (``schema``), every value checked when it is
read (``validation``): a bad one is an error naming its dotted key, never a NaN run, a traceback
from deep inside a library or a run that never ends."""

from octseg.config.loading import RECIPES, config_to_dict, load_config, recipe_path, save_config
from octseg.config.schema import Config, DataConfig, OptimConfig, TrainerConfig
from octseg.config.validation import validate_config

__all__ = ["RECIPES", "Config", "DataConfig", "OptimConfig", "TrainerConfig", "config_to_dict", "load_config",
           "recipe_path", "save_config", "validate_config"]
