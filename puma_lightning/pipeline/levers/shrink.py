"""``adapter.shrink``: pull PUMA's migrated prompts towards their mean by a factor chosen on validation.

After the adapter has trained, every user's migrated prompt becomes ``centre + alpha * (prompt - centre)``
(``centre``: the mean migrated prompt), ``alpha`` the value of :data:`SHRINK_GRID` with the lowest loss on the
validation rows of every user the adapter did not train on (up to ``adapter.validation_max_users``), 1 (no change)
unless a smaller one is better there by more than :data:`MARGIN_SE` standard errors of the paired per-row
difference, clustered by user. Every unselected user, not the ``heldout`` ones that may choose the adapter's epoch:
on ``configs/personal.yaml`` the 120 validation rows of 30 such users chose 0.4 / 1 / 0.6 on three seeds and PUMA
kept 70 % of full retraining's personal gain, against 0.8 / 1 / 0.8 and 92 % on all 270 (docs/prompt_diagnosis.md,
section 10). The module is :class:`puma_lightning.models.adapters.OutputShrunk`, wrapped around the trained adapter,
so the saved adapter, ``migrate`` and cold start apply the same map. Cost: one validation pass per grid value,
counted in PUMA's.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import numpy as np

from puma_lightning.pipeline.judging import MARGIN_SE, best_against, row_losses
from puma_lightning.pipeline.levers.lever import Lever, Option
from puma_lightning.pipeline.levers.registry import register_lever

SHRINKS = ("none", "valid")
"""``adapter.shrink`` choices."""
SHRINK_GRID = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)
"""The factors tried, from no change to every user at the mean prompt."""


def chosen_alpha(losses: Mapping[float, np.ndarray], users: np.ndarray | None = None,
                 margin_se: float = MARGIN_SE) -> tuple[float, dict[float, float]]:
    """The factor with the lowest mean validation loss among those better than 1 (no change) by ``margin_se`` standard
    errors of the paired per-row difference (rows clustered by ``users``); 1 if none is. Returns ``(alpha, {alpha:
    z})``, ``z`` each factor's paired difference from 1 in standard errors (negative: better)."""
    alpha, z = best_against(losses, 1.0, users, margin_se)
    return float(alpha), z


def shrink_migrated(module: Any, validation_rows: Callable[[Any], dict]) -> dict[str, Any]:
    """Wrap ``module.adapter`` (a :class:`~puma_lightning.tasks.Migration`'s) in an
    :class:`~puma_lightning.models.adapters.OutputShrunk` around its mean migrated prompt, with the factor of
    :data:`SHRINK_GRID` chosen by :func:`chosen_alpha` on ``validation_rows(module)``; returns the record (each
    factor's mean validation loss and z, the chosen one, seconds)."""
    import torch

    from puma_lightning.models.adapters import OutputShrunk

    start = time.perf_counter()
    with torch.no_grad():
        centre = module.migrate_all().mean(0) / module.output_scale  # [l, d_t] in the adapter's own output units
    inner = module.adapter
    centre = centre.to(module.source_prompts.device)
    losses: dict[float, np.ndarray] = {}
    users = None
    for alpha in SHRINK_GRID:
        module.adapter = OutputShrunk(inner, centre, alpha)
        rows = validation_rows(module)
        losses[alpha], users = row_losses(module.task, rows["prediction"], rows["label"]), rows["user"]
    alpha, z = chosen_alpha(losses, users)
    module.adapter = OutputShrunk(inner, centre, alpha)
    return {"alpha": alpha, "valid_loss": {str(a): round(float(np.mean(v)), 6) for a, v in losses.items()},
            "valid_z": {str(a): round(v, 2) for a, v in z.items()}, "valid_rows": int(len(losses[1.0])),
            "seconds": round(time.perf_counter() - start, 2)}


class Shrink(Lever):
    """PUMA's migrated prompts pulled towards their mean, by a factor chosen on the adapter's validation rows."""

    name = "shrink"
    options = (Option("adapter.shrink", SHRINKS),)
    description = "PUMA's migrated prompts pulled towards their mean by a factor chosen on validation"

    def after_adapter_fit(self, cfg: Any, module: Any, validation_rows: Callable[[Any], dict]) -> dict[str, Any] | None:
        if str(cfg.adapter.shrink) == "none":
            return None
        return shrink_migrated(module, validation_rows)


register_lever(Shrink())
