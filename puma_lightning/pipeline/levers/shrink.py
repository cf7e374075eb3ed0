"""``adapter.shrink``: pull PUMA's migrated prompts towards their mean by a factor chosen on validation.

After the adapter has trained, every user's migrated prompt becomes ``centre + alpha * (prompt - centre)`` (``centre``:
the mean migrated prompt), ``alpha`` the value of :data:`SHRINK_GRID` with the lowest loss on the adapter's validation
rows (the same rows that chose its best epoch), 1 (no change) unless a smaller one is strictly better there. The module
is :class:`puma_lightning.models.adapters.OutputShrunk`, wrapped around the trained adapter, so the saved adapter,
``migrate`` and cold start apply the same map. Cost: one validation pass per grid value, counted in PUMA's.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from puma_lightning.pipeline.levers.lever import Lever, Option
from puma_lightning.pipeline.levers.registry import register_lever

SHRINKS = ("none", "valid")
"""``adapter.shrink`` choices."""
SHRINK_GRID = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)
"""The factors tried, from no change to every user at the mean prompt."""


def chosen_alpha(losses: Mapping[float, float]) -> float:
    """The factor with the lowest validation loss; 1 (no change) unless another is strictly lower."""
    best = 1.0 if 1.0 in losses else max(losses)
    for alpha, loss in losses.items():
        if loss < losses[best]:
            best = alpha
    return float(best)


def shrink_migrated(module: Any, validation_loss: Callable[[Any], float]) -> dict[str, Any]:
    """Wrap ``module.adapter`` (a :class:`~puma_lightning.tasks.Migration`'s) in an
    :class:`~puma_lightning.models.adapters.OutputShrunk` around its mean migrated prompt, with the factor of
    :data:`SHRINK_GRID` whose ``validation_loss(module)`` is lowest; returns the record (losses, chosen, seconds)."""
    import torch

    from puma_lightning.models.adapters import OutputShrunk

    start = time.perf_counter()
    with torch.no_grad():
        centre = module.migrate_all().mean(0) / module.output_scale  # [l, d_t] in the adapter's own output units
    inner = module.adapter
    centre = centre.to(module.source_prompts.device)
    losses: dict[float, float] = {}
    for alpha in SHRINK_GRID:
        module.adapter = OutputShrunk(inner, centre, alpha)
        losses[alpha] = float(validation_loss(module))
    alpha = chosen_alpha(losses)
    module.adapter = OutputShrunk(inner, centre, alpha)
    return {"alpha": alpha, "valid_loss": {str(a): round(v, 6) for a, v in losses.items()},
            "seconds": round(time.perf_counter() - start, 2)}


class Shrink(Lever):
    """PUMA's migrated prompts pulled towards their mean, by a factor chosen on the adapter's validation rows."""

    name = "shrink"
    options = (Option("adapter.shrink", SHRINKS),)
    description = "PUMA's migrated prompts pulled towards their mean by a factor chosen on validation"

    def after_adapter_fit(self, cfg: Any, module: Any, validation_loss: Callable[[Any], float]) -> dict[str, Any] | None:
        if str(cfg.adapter.shrink) == "none":
            return None
        return shrink_migrated(module, validation_loss)


register_lever(Shrink())
