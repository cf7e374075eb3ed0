"""``adapter.input_norm``: standardise every feature of the source prompts before PUMA's adapter.

The module is :class:`puma_lightning.models.adapters.InputStandardized` (saved with the adapter, so ``migrate``
applies the same map); this lever owns the option and wraps the adapter through the ``wrap_adapter`` hook.
"""

from __future__ import annotations

from typing import Any

from puma_lightning.pipeline.levers.lever import Lever, Option
from puma_lightning.pipeline.levers.registry import register_lever

INPUT_NORMS = ("none", "standardize")
"""``adapter.input_norm`` choices: the source prompts as they are, or standardised per feature (here, not beside the
module, so that reading the options loads no torch)."""


class InputNorm(Lever):
    """The source prompts standardised per feature (mean and std over all users) in front of the adapter."""

    name = "input_norm"
    options = (Option("adapter.input_norm", INPUT_NORMS),)
    description = "source prompts standardised per feature before PUMA's adapter"

    def wrap_adapter(self, cfg: Any, adapter: Any, source: Any) -> Any:
        from puma_lightning.models.adapters import with_input_norm

        return with_input_norm(adapter, str(cfg.adapter.input_norm), source)


register_lever(InputNorm())
