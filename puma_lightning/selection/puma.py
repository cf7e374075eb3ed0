"""``puma``: PUMA's own selection, k-means on the prompts then variance-stratified picks per cluster.

Algorithm (DESIGN.md §3): k-means (k = 15) on the raw source prompts; each cluster first gets
``min(min_per_cluster, |c|)`` users, the rest of the budget is shared in proportion to cluster size;
inside a cluster the users are split into ``n_bins`` quantile bins of label variance and picks are
drawn from the bins with normal-shaped weights that favour the middle.

The published second pass decrements the remaining budget inside its loop over clusters, so later
clusters get shares of an ever-smaller remainder and about a fifth of the budget ends up filled
with uniformly random users. ``allocation="faithful"`` reproduces that; ``"fixed"`` (default)
allocates exactly the budget in proportion to cluster size. The result's ``info`` says which ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .allocation import apportion, bin_weights, canonical_labels, first_pass, stratified_pick
from .kmeans import kmeans
from .registry import SelectionContext, SelectionStrategy, register_strategy

__all__ = ["PumaStrategy", "apportion", "bin_weights", "faithful_second_pass", "first_pass", "stratified_pick"]


def faithful_second_pass(sizes: np.ndarray, first: np.ndarray, budget: int) -> np.ndarray:
    """Literal transcription of the published second pass, bug included.

    Returns the per-cluster picks of the second pass; ``budget - first.sum() - result.sum()`` is
    the shortfall the published code tops up with uniformly random users.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    n_total = int(sizes.sum())
    remaining = int(budget - first.sum())  # budget left after the min_per_cluster pass
    second = np.zeros_like(sizes)
    for c in range(sizes.size):  # clusters in order
        # Share of the *current* remainder in proportion to cluster size (Python round: half-even).
        share = int(round(remaining * int(sizes[c]) / n_total))
        share = min(share, int(sizes[c] - first[c]))  # a cluster cannot give more users than it has
        second[c] = share
        remaining -= share  # BUG (published): decremented inside the loop, so later clusters get
        #                     shares of an ever-smaller remainder and `remaining` is never spent.
    return second


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
        """'fixed': exact proportional second pass; 'faithful': the published buggy pass + random top-up."""
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

        first = first_pass(sizes, budget, p.min_per_cluster)
        if p.allocation == "fixed":
            second = apportion(budget - int(first.sum()), sizes, sizes - first)
        else:
            second = faithful_second_pass(sizes, first, budget)
        quotas = first + second

        weights = bin_weights(p.n_bins, p.weight_span, p.weight_floor)
        picks, bin_picks, constant = [], [], []
        for c, users in enumerate(members):
            chosen, per_bin = stratified_pick(users, ctx.label_variance[users], int(quotas[c]), weights, rng)
            picks.append(chosen)
            bin_picks.append(per_bin)
            if users.size > quotas[c] > 0 and per_bin is None:
                constant.append(c)
        selected = np.concatenate(picks) if picks else np.empty(0, dtype=np.int64)

        n_topup = budget - selected.size  # 0 for "fixed"; the published shortfall for "faithful"
        if n_topup > 0:
            pool = np.setdiff1d(np.arange(ctx.n_users), selected)
            selected = np.concatenate([selected, rng.choice(pool, size=n_topup, replace=False)])

        info = {
            "allocation": p.allocation,
            "n_random_topup": int(n_topup),
            "n_clusters": int(sizes.size),
            "cluster_sizes": sizes.tolist(),
            "first_pass": first.tolist(),
            "second_pass": second.tolist(),
            "picks_per_cluster": quotas.tolist(),
            "selected_per_cluster": np.bincount(labels[selected], minlength=sizes.size).tolist(),
            "bin_weights": weights.round(6).tolist(),
            "bin_picks_per_cluster": bin_picks,
            "uniform_clusters_constant_variance": constant,
            "kmeans_backend": km.backend,
            "kmeans_inertia": km.inertia,
        }
        return selected, info
