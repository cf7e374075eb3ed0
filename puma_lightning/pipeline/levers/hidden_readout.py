"""``prompt.hidden_readout`` (and ``adapter.readout_rows``): a head that also reads the hidden state at the answer
position, trained with the head or fitted in closed form before the stage trains.

The head's readout is :mod:`puma_lightning.models.heads`, its ridge fit :mod:`puma_lightning.pipeline.readout_fit`;
this lever owns the options and acts through ``reads_hidden`` (a new head gets a readout) and ``before_train`` (the
ridge fit, recorded as ``readout``). ``adapter.readout_rows`` (which rows PUMA fits the target's readout on) is read
by the PUMA stage, which chooses those rows.
"""

from __future__ import annotations

from typing import Any

from puma_lightning.pipeline.levers.lever import Lever, Option
from puma_lightning.pipeline.levers.registry import register_lever

HIDDEN_READOUTS = ("auto", "none", "trained", "ridge", "ridge_own")
"""``prompt.hidden_readout`` choices (``auto``: :func:`task_readout`)."""
RIDGE_READOUTS = ("ridge", "ridge_own")
"""The choices fitted in closed form on the ratings before a stage trains (rating tasks only)."""
READOUT_ROWS = ("auto", "selected", "adapter_items", "all")
"""``adapter.readout_rows`` choices (``auto``: :func:`task_readout_rows`)."""


def task_readout(cfg: Any) -> str:
    """What ``prompt.hidden_readout=auto`` (the default) stands for: ``ridge`` on a rating task, chosen on validation
    (docs/results/prompt_learning_ml100k.md); ``none`` on a click task, where the ridge fit has no ratings to fit."""
    return "ridge" if cfg.data.task == "rating" else "none"


def task_readout_rows(cfg: Any) -> str:
    """What ``adapter.readout_rows=auto`` (the default) stands for: ``all`` on a rating task, chosen on validation over
    the selected users' rows (docs/results/migration_levers_ml100k.md); ``selected`` on a click task, where no readout
    is fitted and the value changes nothing (the published one, so a click run's stage keys stay as they were)."""
    return "all" if cfg.data.task == "rating" else "selected"


class HiddenReadout(Lever):
    """The head reads the hidden state too; under ``ridge``/``ridge_own`` its readout is fitted before training."""

    name = "hidden_readout"
    options = (Option("prompt.hidden_readout", HIDDEN_READOUTS, rating_only=RIDGE_READOUTS, auto=task_readout),
               Option("adapter.readout_rows", READOUT_ROWS, auto=task_readout_rows))
    record_name = "readout"
    description = "the head also reads the hidden state at the answer position"

    def reads_hidden(self, cfg: Any) -> bool:
        return str(cfg.prompt.get("hidden_readout", "none")) != "none"

    def before_train(self, cfg: Any, module: Any, datamodule: Any) -> dict[str, Any] | None:
        """Under ``ridge`` or ``ridge_own``, the readout's closed-form fit (its record); else nothing (None).

        Under ``ridge_own`` the fitted, frozen readout then reads each row through the user's own prompt
        (:meth:`~puma_lightning.models.heads.HiddenReadout.read_own`): the term a prompt can steer, and the channel its
        gradient arrives through."""
        if str(cfg.prompt.get("hidden_readout", "none")) not in RIDGE_READOUTS or getattr(module.head, "readout", None) is None:
            return None
        from puma_lightning.pipeline.readout_fit import fit_readout

        record = fit_readout(module, datamodule)
        if cfg.prompt.hidden_readout == "ridge_own":
            module.head.readout.read_own()
            record["reads"] = "own prompt"
        return record


register_lever(HiddenReadout())
