"""``prompt.taste_prior``: prompts start at the posterior of a taste prior that all users share (with
``prompt.item_match``; on clicks, fitted to the logit's first-order residual).

The fit is :mod:`puma_lightning.pipeline.taste_prior`; this lever owns the option and acts through ``before_train``
(recorded as ``taste_prior``).
"""

from __future__ import annotations

from typing import Any

from puma_lightning.pipeline.levers.lever import Lever, Option
from puma_lightning.pipeline.levers.registry import register_lever


def taste_prior_iterations(cfg: Any) -> int:
    """``prompt.taste_prior``: the most EM iterations of the shared prior (0: off)."""
    return int(cfg.prompt.get("taste_prior", 0) or 0)


class TastePrior(Lever):
    """Before a stage trains its prompts, each moves to its posterior mean under a prior fitted on all users."""

    name = "taste_prior"
    options = (Option("prompt.taste_prior"),)
    record_name = "taste_prior"
    description = "prompts start at their posterior under a taste prior that all users share (item-word match term)"

    def validate(self, cfg: Any) -> None:
        iterations = taste_prior_iterations(cfg)
        if iterations < 0:
            raise ValueError(f"'prompt.taste_prior' must be >= 0 (EM iterations; 0: off), got {iterations}")
        if iterations and not float(cfg.prompt.get("item_match", 0.0) or 0.0):
            raise ValueError("'prompt.taste_prior' moves the prompts of the item-word match term: set prompt.item_match > 0")

    def before_train(self, cfg: Any, module: Any, datamodule: Any) -> dict[str, Any] | None:
        iterations = taste_prior_iterations(cfg)
        prompts = getattr(module, "prompts", None)  # PUMA's module maps prompts; it has none of its own
        if (not iterations or getattr(module.head, "item_match", None) is None or prompts is None
                or not prompts.requires_grad or getattr(module, "shared", False)):
            return None  # off, or a stage whose per-user prompts do not train (random_init, an imported bank, PUMA)
        from puma_lightning.pipeline.taste_prior import fit_taste_prior

        return fit_taste_prior(module, datamodule, iterations, int(cfg.seed))


register_lever(TastePrior())
