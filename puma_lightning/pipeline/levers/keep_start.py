"""``adapter.keep_start``: keep PUMA's adapter at its closed-form start when validation prefers it to the trained one.

The adapter's checkpoint choice picks among its trained validations only, on the training loss (for ratings 0.8 MSE
+ 0.2 cross-entropy of the answer logits). On ``configs/ml100k_full.yaml`` with all 943 users (seed 0) the
``item_map`` start alone tied full retraining and kept 102 % of its personal gain, while the 94 trained steps spread
the prompts (183 % retained, 0.030 RMSE worse); the training loss still preferred the trained adapter, and the
predictions' squared error on the unselected users' validation rows preferred the start (1.0146 against 1.0703;
docs/prompt_diagnosis.md, section 10). Under ``valid`` the module's adapter and head are saved before training and
restored after it when their validation loss per row, on every unselected user's rows (as :mod:`.shrink` judges), is
lower than the trained module's by :data:`~puma_lightning.pipeline.judging.MARGIN_SE` standard errors of the
paired difference, rows clustered by user. It runs before the shrink, which then judges whichever was kept. Cost: two
validation passes, counted in PUMA's.
"""

from __future__ import annotations

import time
import weakref
from typing import Any, Callable

import numpy as np

from puma_lightning.pipeline.judging import MARGIN_SE, best_against, row_losses
from puma_lightning.pipeline.levers.lever import Lever, Option
from puma_lightning.pipeline.levers.registry import register_lever

KEEP_STARTS = ("none", "valid")
"""``adapter.keep_start`` choices."""

_STARTS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
"""Each PUMA module's state before it trained (taken by :meth:`KeepStart.before_train`)."""


def state_copy(module: Any) -> dict:
    """A detached copy of ``module``'s trainable state (adapter and head)."""
    return {k: v.detach().clone() for k, v in module.trainable_state_dict().items()}


def keep_better(module: Any, start: dict, validation_rows: Callable[[Any], dict],
                margin_se: float = MARGIN_SE) -> dict[str, Any]:
    """Leave ``module`` trained, or load its ``start`` state where that is better on ``validation_rows`` by
    ``margin_se`` standard errors (paired per-row loss, clustered by user). Returns the record."""
    begin = time.perf_counter()
    trained_state = state_copy(module)
    trained = validation_rows(module)
    module.load_trainable_state_dict(start)
    started = validation_rows(module)
    loss_trained = row_losses(module.task, trained["prediction"], trained["label"])
    loss_start = row_losses(module.task, started["prediction"], started["label"])
    if len(loss_trained) != len(loss_start) or not np.array_equal(trained["user"], started["user"]):
        raise RuntimeError("keep_start: the start and the trained adapter were validated on different rows")
    kept, z = best_against({"trained": loss_trained, "start": loss_start}, "trained", trained["user"], margin_se)
    if kept == "trained":
        module.load_trainable_state_dict(trained_state)
    return {"kept": kept, "valid_loss": {"start": round(float(loss_start.mean()), 6),
                                         "trained": round(float(loss_trained.mean()), 6)},
            "valid_z": round(z["start"], 2), "valid_rows": int(len(loss_trained)), "seconds": round(time.perf_counter() - begin, 2)}


class KeepStart(Lever):
    """PUMA's adapter kept at its start when validation on every unselected user prefers it to the trained one."""

    name = "keep_start"
    options = (Option("adapter.keep_start", KEEP_STARTS),)
    description = "PUMA's adapter kept at its start when validation prefers it to the trained adapter"

    def before_train(self, cfg: Any, module: Any, datamodule: Any) -> dict[str, Any] | None:
        if str(cfg.adapter.get("keep_start", "none")) == "none" or not hasattr(module, "migrate_all"):
            return None  # prompt-tuning stages train no adapter
        _STARTS[module] = state_copy(module)
        return None

    def after_adapter_fit(self, cfg: Any, module: Any, validation_rows: Callable[[Any], dict]) -> dict[str, Any] | None:
        if str(cfg.adapter.get("keep_start", "none")) == "none":
            return None
        start = _STARTS.pop(module, None)
        if start is None:
            raise RuntimeError("keep_start: the module's start was not saved before it trained")
        return keep_better(module, start, validation_rows)


register_lever(KeepStart())
