"""Bucket strategies without clustering: quantile bins of one per-user score, stratified picks.

* ``variance_bucket`` — published mode 1 (``select_users_with_stratified_variance_sampling``,
  Kimagure7/Dont-Start-Over 9d85839): 8 ``qcut`` groups of per-user label variance (duplicate edges
  dropped, weights recomputed for the groups left), weights ``exp(-x^2/2) + 0.1`` over
  ``linspace(-3, 3, G)``, floored quotas, short groups stay short (:func:`~.published.stratified_allocation`).
* ``loss_bucket`` — published mode 7 (``select_users_with_stratified_weighted_sampling``): the same
  on per-user task loss with 8 groups and weights over ``linspace(-3, 3, 8)``.

``allocation: faithful`` (the default of both) follows the published code draw for draw; it returns
fewer users than the budget when groups are short or scores unknown, and the rest is then drawn
uniformly (``info["n_random_topup"]``). The published functions draw with ``random_state=42``
whatever the run seed; here the run seed is used (identical draws at seed 42).
``allocation: fixed`` (the ``*_fixed`` / ``loss_bucket_5`` presets): equal-population bins of the
score's rank with random tie-breaking, so ties never collapse bins, a short bin's share spills onto
the others and exactly the budget is drawn; a constant score falls back to a uniform draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from .allocation import bin_weights, clean_scores, stratified_pick
from .faithful import context_variance
from .published import stratified_allocation
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
    allocation: Literal["fixed", "faithful"] = "faithful"
    """'faithful': the published groups and draws (short groups stay short, then a uniform top-up);
    'fixed': rank bins that never collapse, shares that spill, exactly the budget."""

    def __post_init__(self) -> None:
        if self.n_bins < 1:
            raise ValueError(f"parameter 'n_bins' must be >= 1, got {self.n_bins}")
        if self.weight_span < 0 or self.weight_floor < 0:
            raise ValueError("parameters 'weight_span' and 'weight_floor' must be >= 0")


class BucketStrategy(SelectionStrategy):
    """Stratified pick over quantile bins of ``score(ctx)``."""

    score_name: ClassVar[str] = ""
    drop_duplicates: ClassVar[bool] = True
    """Published ``qcut(duplicates='drop')`` with weights over the groups left (mode 1), or weights
    over all ``n_bins`` (mode 7, whose ``qcut`` raises on duplicate edges)."""

    def score(self, ctx: SelectionContext) -> np.ndarray:
        """The per-user score the bins are cut on."""
        raise NotImplementedError

    def published_score(self, ctx: SelectionContext) -> np.ndarray:
        """The score as the published code sees it (NaN where it has none)."""
        return clean_scores(self.score(ctx))

    def _select(self, ctx: SelectionContext, budget: int) -> tuple[np.ndarray, dict[str, Any]]:
        p = self.params
        if p.allocation == "faithful":
            res = stratified_allocation(self.published_score(ctx), budget, p.n_bins, ctx.seed,
                                        weight_span=p.weight_span, weight_floor=p.weight_floor,
                                        drop_duplicates=self.drop_duplicates)
            return res.selected, {"score": self.score_name, "allocation": "faithful", "n_groups": res.n_groups,
                                  "bin_picks": res.per_group, "n_random_topup": res.n_random_topup,
                                  "published_raises": res.published_raises}
        rng = np.random.default_rng(ctx.seed)
        weights = bin_weights(p.n_bins, p.weight_span, p.weight_floor)
        score = clean_scores(self.score(ctx))
        chosen, per_bin = stratified_pick(np.arange(ctx.n_users), score, budget, weights, rng)
        return chosen, {
            "score": self.score_name,
            "allocation": "fixed",
            "bin_weights": weights.round(6).tolist(),
            "bin_picks": per_bin,
            "uniform": per_bin is None,
        }


@register_strategy("variance_bucket")
class VarianceBucketStrategy(BucketStrategy):
    """Published mode 1: 8 qcut groups of label variance, normal-shaped weights over linspace(-3, 3, G)."""

    score_name = "label_variance"
    published_mode = 1

    @dataclass
    class Params(BucketParams):
        """Parameters of ``variance_bucket`` (defaults: the published values)."""

        n_bins: int = 8
        """Equal-population quantile bins of label variance."""
        weight_span: float = 3.0
        """Bin weights exp(-x^2/2) + weight_floor over x = linspace(-3, 3, 8)."""

    def score(self, ctx: SelectionContext) -> np.ndarray:
        return ctx.label_variance

    def published_score(self, ctx: SelectionContext) -> np.ndarray:
        return context_variance(ctx.label_variance, ctx.train_counts, ctx.label_variance_pandas)


@register_strategy("variance_bucket_fixed")
class VarianceBucketFixedStrategy(VarianceBucketStrategy):
    """``variance_bucket``'s parameters with the exact-budget rank bins (``allocation: fixed``)."""

    published_mode = None

    @dataclass
    class Params(VarianceBucketStrategy.Params):
        """Parameters of ``variance_bucket_fixed``."""

        allocation: Literal["fixed", "faithful"] = "fixed"
        """'fixed': rank bins that never collapse, shares that spill, exactly the budget."""


@register_strategy("loss_bucket")
class LossBucketStrategy(BucketStrategy):
    """Published mode 7: 8 qcut groups of the source model's per-user task loss, normal-shaped weights."""

    score_name = "loss"
    needs = ("loss",)
    drop_duplicates = False
    published_mode = 7

    @dataclass
    class Params(BucketParams):
        """Parameters of ``loss_bucket`` (defaults: the published mode 7)."""

        n_bins: int = 8
        """Quantile groups of per-user task loss."""
        weight_span: float = 3.0
        """Group weights exp(-x^2/2) + weight_floor over x = linspace(-3, 3, 8)."""

    def score(self, ctx: SelectionContext) -> np.ndarray:
        return ctx.require("loss", self.name)


@register_strategy("loss_bucket_5")
class LossBucket5Strategy(LossBucketStrategy):
    """Our variant of mode 7: 5 rank bins of task loss, equal weight per bin, exactly the budget."""

    published_mode = None

    @dataclass
    class Params(BucketParams):
        """Parameters of ``loss_bucket_5``."""

        n_bins: int = 5
        """Equal-population quantile bins of per-user task loss."""
        weight_span: float = 0.0
        """0: equal weight per bin (plain stratified sampling)."""
        allocation: Literal["fixed", "faithful"] = "fixed"
        """'fixed': rank bins that never collapse, shares that spill, exactly the budget."""
