"""Levers: changes to how prompts or the adapter train, each one file that owns its config options and acts through
named hooks (:mod:`~puma_lightning.pipeline.levers.lever`). Importing this package registers the built-in ones, in
this order (the order hooks run and ``--help`` lists them); a lever of your own registers itself from a plugin
(``docs/extending.md``)."""

from puma_lightning.pipeline.levers import residual  # noqa: F401  isort: skip  (they register)
from puma_lightning.pipeline.levers import hidden_readout  # noqa: F401  isort: skip
from puma_lightning.pipeline.levers import item_match  # noqa: F401  isort: skip
from puma_lightning.pipeline.levers import taste_prior  # noqa: F401  isort: skip
from puma_lightning.pipeline.levers import adapter_init  # noqa: F401  isort: skip
from puma_lightning.pipeline.levers import aggregate_start  # noqa: F401  isort: skip
from puma_lightning.pipeline.levers import input_norm  # noqa: F401  isort: skip
from puma_lightning.pipeline.levers import keep_start  # noqa: F401  isort: skip  (before the shrink: it judges what is kept)
from puma_lightning.pipeline.levers import shrink  # noqa: F401  isort: skip
from puma_lightning.pipeline.levers import distillation  # noqa: F401  isort: skip
from puma_lightning.pipeline.levers.lever import Lever, Option
from puma_lightning.pipeline.levers.registry import LEVERS, get_lever, lever_choices, register_lever

__all__ = ["LEVERS", "Lever", "Option", "get_lever", "lever_choices", "register_lever"]
