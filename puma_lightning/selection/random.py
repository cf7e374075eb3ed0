"""``random``: the baseline strategy, B users drawn uniformly without replacement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .registry import SelectionContext, SelectionStrategy, register_strategy


@register_strategy("random")
class RandomStrategy(SelectionStrategy):
    """Uniform sample of ``budget`` users (among those with training rows), seeded by ``ctx.seed``."""

    @dataclass
    class Params:
        """``random`` has no parameters."""

    def _select(self, ctx: SelectionContext, budget: int) -> tuple[np.ndarray, dict[str, Any]]:
        rng = np.random.default_rng(ctx.seed)
        return rng.choice(ctx.n_users, size=budget, replace=False), {}
