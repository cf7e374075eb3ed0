"""``prompt.residual``: prompts learn what a no-LLM bias model misses (its prediction is every row's offset).

The bias model's fit is :mod:`puma_lightning.pipeline.residual`; this lever owns the option and adds the offset
through the ``row_offset`` and ``pair_offset`` hooks.
"""

from __future__ import annotations

from typing import Any

from puma_lightning.pipeline.levers.lever import Lever, Option
from puma_lightning.pipeline.levers.registry import register_lever
from puma_lightning.pipeline.residual import CLICK_BASES, RATING_BASES

RESIDUAL_BASES = ("auto", "none", *RATING_BASES, *CLICK_BASES)
"""``prompt.residual`` choices: ``auto`` (:func:`task_residual`), no base, or the bias model of that name (least squares
on rating tasks, logistic on click tasks)."""


def task_residual(cfg: Any) -> str:
    """What ``prompt.residual=auto`` (the default) stands for: ``user_item_bias`` on a rating task, the base chosen on
    validation (docs/results/prompt_learning_ml100k.md); ``user_item_logodds`` on a click task, where without a base
    the prompts stayed at a validation loss of log 2 on ml100k_click and the base alone scores the popularity
    reference's validation uAUC (docs/prompt_diagnosis.md, section 9)."""
    return "user_item_bias" if cfg.data.task == "rating" else "user_item_logodds"


class ResidualBase(Lever):
    """A bias model's prediction added to every row's output, so the prompts and head learn the residual."""

    name = "residual"
    options = (Option("prompt.residual", RESIDUAL_BASES, rating_only=RATING_BASES, click_only=CLICK_BASES, auto=task_residual),)
    description = "a no-LLM bias model's prediction added to every row's output"

    def row_offset(self, cfg: Any, table: Any) -> Any:
        from puma_lightning.pipeline.residual import row_offsets

        return row_offsets(cfg, table)

    def pair_offset(self, cfg: Any, fitted_on: Any, pairs: Any) -> Any:
        from puma_lightning.pipeline.residual import pair_offsets

        return pair_offsets(cfg, fitted_on, pairs)


register_lever(ResidualBase())
