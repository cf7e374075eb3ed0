"""``puma``: PUMA's own selection, k-means on the prompts then variance-stratified picks per cluster.

Algorithm (DESIGN.md §3): k-means (k = 15) on the raw source prompts; each cluster first gets
``min(min_per_cluster, |c|)`` users, the rest of the budget is shared in proportion to cluster size;
inside a cluster the users are split into ``n_bins`` quantile bins of label variance and picks are
drawn from the bins with normal-shaped weights that favour the middle.

Two allocations (the result's ``info["allocation"]`` says which ran):

* ``"fixed"`` (default): exactly the budget. First pass scaled down proportionally when the minimums
  exceed the budget; second pass apportioned by largest remainder, never above a cluster's size;
  bins are equal-population bins of the variance *rank* (ties broken at random, users with one
  rating have variance 0), and a bin short of users spills its share onto the other bins.
* ``"faithful"``: the published ``select_users_with_clustering_and_variance_sampling``
  (:mod:`.faithful`), user for user (presets ``puma_faithful``: published mode 3; ``puma_uniform``:
  mode 2, uniform first-pass weights). ``puma`` itself keeps ``"fixed"`` (``published_mode: null``). Its second pass truncates ``int(remaining * |c| / N)`` and
  decrements ``remaining`` inside the loop, so later clusters get shares of an ever-smaller rest;
  per-bin quotas are floored with the remainder on the last bin and a short bin stays short; bins
  are ``pandas.qcut(..., duplicates='drop')`` cuts, re-cut on every pass, so tied variances
  collapse bins and single-rating users (NaN variance) are never binned; whatever the passes leave
  short (about a fifth of the budget at the published settings) is filled with uniformly random
  users; when the minimums alone exceed the budget the list is cut in cluster order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .allocation import apportion, bin_weights, canonical_labels, first_pass, stratified_pick
from .faithful import context_variance, faithful_allocation
from .kmeans import kmeans
from .registry import SelectionContext, SelectionStrategy, register_strategy

__all__ = ["PumaStrategy", "apportion", "bin_weights", "faithful_allocation", "first_pass", "stratified_pick"]


@register_strategy("puma")
class PumaStrategy(SelectionStrategy):
    """k-means clusters of the prompts, a minimum per cluster, variance-stratified picks inside."""

    @dataclass
    class Params:
        """Parameters of ``puma`` (defaults: the published values)."""

        n_clusters: int = 15
        """Number of k-means clusters of the raw source prompts (clipped to the distinct prompts)."""
        n_bins: int = 5
        """Quantile bins of label variance inside each cluster."""
        min_per_cluster: int = 50
        """First pass: each cluster gets min(min_per_cluster, |c|) users (scaled down if over budget)."""
        allocation: Literal["fixed", "faithful"] = "fixed"
        """'fixed': exactly the budget, proportional; 'faithful': the published allocation, bugs included."""
        weight_type: Literal["normal", "uniform"] = "normal"
        """Bin weights: 'normal' (published mode 3) or 'uniform' (mode 2: equal weights; with
        'faithful' only in the first pass, as published, the second pass is always 'normal')."""
        weight_span: float = 2.0
        """Bin weights are exp(-x^2/2) + weight_floor over x = linspace(-span, span, n_bins)."""
        weight_floor: float = 0.1
        """Constant added to every bin weight (keeps the extreme-variance bins in play)."""
        kmeans_iters: int = 25
        """Lloyd iterations of k-means (after k-means++ initialisation)."""
        kmeans_backend: Literal["auto", "faiss-gpu", "faiss-cpu", "sklearn"] = "auto"
        """k-means backend; 'auto' = FAISS GPU, else FAISS CPU, else scikit-learn."""

        def __post_init__(self) -> None:
            for key in ("n_clusters", "n_bins", "kmeans_iters"):
                if getattr(self, key) < 1:
                    raise ValueError(f"puma parameter {key!r} must be >= 1, got {getattr(self, key)}")
            if self.min_per_cluster < 0:
                raise ValueError(f"puma parameter 'min_per_cluster' must be >= 0, got {self.min_per_cluster}")
            if self.weight_span < 0 or self.weight_floor < 0:
                raise ValueError("puma parameters 'weight_span' and 'weight_floor' must be >= 0")

    def _select(self, ctx: SelectionContext, budget: int) -> tuple[np.ndarray, dict[str, Any]]:
        p = self.params
        rng = np.random.default_rng(ctx.seed)
        km = kmeans(ctx.prompts, p.n_clusters, seed=ctx.seed, n_iter=p.kmeans_iters, backend=p.kmeans_backend)
        labels = canonical_labels(km.labels)
        members = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
        sizes = np.array([m.size for m in members], dtype=np.int64)
        common = {"allocation": p.allocation, "n_clusters": int(sizes.size), "cluster_sizes": sizes.tolist()}
        km_info = {"kmeans_backend": km.backend, "kmeans_inertia": km.inertia}
        if p.allocation == "faithful":
            selected, info = self._faithful(ctx, budget, labels)
            info["selected_per_cluster"] = np.bincount(labels[selected], minlength=sizes.size).tolist()
            return selected, {**common, **info, **km_info}

        first = first_pass(sizes, budget, p.min_per_cluster)
        second = apportion(budget - int(first.sum()), sizes, sizes - first)
        quotas = first + second

        weights = bin_weights(p.n_bins, p.weight_span if p.weight_type == "normal" else 0.0, p.weight_floor)
        picks, bin_picks, constant = [], [], []
        for c, users in enumerate(members):
            chosen, per_bin = stratified_pick(users, ctx.label_variance[users], int(quotas[c]), weights, rng)
            picks.append(chosen)
            bin_picks.append(per_bin)
            if users.size > quotas[c] > 0 and per_bin is None:
                constant.append(c)
        selected = np.concatenate(picks) if picks else np.empty(0, dtype=np.int64)

        n_topup = budget - selected.size  # 0: the quotas sum to the budget and never exceed a cluster
        if n_topup > 0:
            pool = np.setdiff1d(np.arange(ctx.n_users), selected)
            selected = np.concatenate([selected, rng.choice(pool, size=n_topup, replace=False)])

        info = {
            **common,
            "n_random_topup": int(n_topup),
            "first_pass": first.tolist(),
            "second_pass": second.tolist(),
            "picks_per_cluster": quotas.tolist(),
            "selected_per_cluster": np.bincount(labels[selected], minlength=sizes.size).tolist(),
            "bin_weights": weights.round(6).tolist(),
            "bin_picks_per_cluster": bin_picks,
            "uniform_clusters_constant_variance": constant,
            **km_info,
        }
        return selected, info

    def _faithful(self, ctx: SelectionContext, budget: int, labels: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """The published allocation (:func:`.faithful.faithful_allocation`) and its counts for ``info``."""
        p = self.params
        variance = context_variance(ctx.label_variance, ctx.train_counts, ctx.label_variance_pandas)
        res = faithful_allocation(labels, variance, budget, ctx.seed, n_bins=p.n_bins, min_per_cluster=p.min_per_cluster,
                                  weight_span=p.weight_span, weight_floor=p.weight_floor, weight_type=p.weight_type)
        info = {
            "n_random_topup": res.n_random_topup,
            "n_truncated": res.n_truncated,
            "first_pass_quota": res.first_quota,
            "first_pass": res.first_pass,
            "second_pass_quota": res.second_quota,
            "second_pass": res.second_pass,
            "picks_per_cluster": [a + b for a, b in zip(res.first_pass, res.second_pass)],
            "first_pass_bins": res.first_bins,
            "second_pass_bins": res.second_bins,
            "n_unbinned_single_rating": int(np.isnan(variance).sum()),
        }
        return res.selected, info


@register_strategy("puma_faithful")
class PumaFaithfulStrategy(PumaStrategy):
    """Published mode 3: ``puma`` with the published allocation, draw for draw (``allocation: faithful``)."""

    published_mode = 3

    @dataclass
    class Params(PumaStrategy.Params):
        """Parameters of ``puma_faithful`` (defaults: the published mode 3)."""

        allocation: Literal["fixed", "faithful"] = "faithful"
        """'faithful': the published two passes, draw for draw."""


@register_strategy("puma_uniform")
class PumaUniformStrategy(PumaStrategy):
    """Published mode 2: as ``puma_faithful`` with uniform first-pass group weights."""

    published_mode = 2

    @dataclass
    class Params(PumaStrategy.Params):
        """Parameters of ``puma_uniform`` (defaults: the published mode 2)."""

        allocation: Literal["fixed", "faithful"] = "faithful"
        """'faithful': the published two passes, draw for draw."""
        weight_type: Literal["normal", "uniform"] = "uniform"
        """Equal first-pass group weights (the second pass is always 'normal', as published)."""
