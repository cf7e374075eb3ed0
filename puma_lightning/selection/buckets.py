"""Bucket strategies without clustering: quantile bins of one per-user score, stratified picks.

* ``variance_bucket`` — 8 quantile bins of per-user label variance, bin weights
  ``exp(-x^2/2) + 0.1`` over ``x = linspace(-3, 3, 8)`` (DESIGN.md §3, as published).
* ``loss_bucket`` — 5 quantile bins of per-user task loss of the source prompts on the source
  model, sampled stratified (equal weight per bin: ``weight_span = 0``).

Bins are equal-population bins of the score's rank with random tie-breaking, so ties never
collapse bins; a constant score falls back to a uniform draw (``info["uniform"] = True``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .allocation import bin_weights, clean_scores, stratified_pick
from .registry import SelectionContext, SelectionStrategy, register_strategy


@dataclass
class BucketParams:
    """Parameters shared by the bucket strategies."""

    n_bins: int = 5
    """Equal-population quantile bins of the score."""
    weight_span: float = 2.0
    """Bin weights exp(-x^2/2) + weight_floor over x = linspace(-span, span, n_bins); 0 = equal weights."""
    weight_floor: float = 0.1
    """Constant added to every bin weight."""

    def __post_init__(self) -> None:
        if self.n_bins < 1:
            raise ValueError(f"parameter 'n_bins' must be >= 1, got {self.n_bins}")
        if self.weight_span < 0 or self.weight_floor < 0:
            raise ValueError("parameters 'weight_span' and 'weight_floor' must be >= 0")


class BucketStrategy(SelectionStrategy):
    """Stratified pick over quantile bins of ``score(ctx)``."""

    score_name: ClassVar[str] = ""

    def score(self, ctx: SelectionContext) -> np.ndarray:
        """The per-user score the bins are cut on."""
        raise NotImplementedError

    def _select(self, ctx: SelectionContext, budget: int) -> tuple[np.ndarray, dict[str, Any]]:
        p = self.params
        rng = np.random.default_rng(ctx.seed)
        weights = bin_weights(p.n_bins, p.weight_span, p.weight_floor)
        score = clean_scores(self.score(ctx))
        chosen, per_bin = stratified_pick(np.arange(ctx.n_users), score, budget, weights, rng)
        return chosen, {
            "score": self.score_name,
            "bin_weights": weights.round(6).tolist(),
            "bin_picks": per_bin,
            "uniform": per_bin is None,
        }


@register_strategy("variance_bucket")
class VarianceBucketStrategy(BucketStrategy):
    """8 quantile bins of label variance, normal-shaped weights over linspace(-3, 3, 8)."""

    score_name = "label_variance"

    @dataclass
    class Params(BucketParams):
        """Parameters of ``variance_bucket`` (defaults: the published values)."""

        n_bins: int = 8
        """Equal-population quantile bins of label variance."""
        weight_span: float = 3.0
        """Bin weights exp(-x^2/2) + weight_floor over x = linspace(-3, 3, 8)."""

    def score(self, ctx: SelectionContext) -> np.ndarray:
        return ctx.label_variance


@register_strategy("loss_bucket")
class LossBucketStrategy(BucketStrategy):
    """5 quantile bins of the source model's per-user task loss, equal weight per bin."""

    score_name = "loss"
    needs = ("loss",)

    @dataclass
    class Params(BucketParams):
        """Parameters of ``loss_bucket`` (defaults: the published values)."""

        n_bins: int = 5
        """Equal-population quantile bins of per-user task loss."""
        weight_span: float = 0.0
        """0: equal weight per bin (plain stratified sampling)."""

    def score(self, ctx: SelectionContext) -> np.ndarray:
        return ctx.require("loss", self.name)
