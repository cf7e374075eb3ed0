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

from .kmeans import kmeans
from .registry import SelectionContext, SelectionStrategy, register_strategy


def bin_weights(n_bins: int, span: float = 2.0, floor: float = 0.1) -> np.ndarray:
    """Normalised ``exp(-x^2/2) + floor`` over ``x = linspace(-span, span, n_bins)``.

    With the defaults and 5 bins: [0.079, 0.237, 0.369, 0.237, 0.079], the published weights.
    """
    x = np.linspace(-span, span, n_bins)
    w = np.exp(-(x**2) / 2.0) + floor
    return w / w.sum()


def apportion(total: int, weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Split the integer ``total`` in proportion to ``weights``, never above ``caps``.

    Water-filling: entries whose proportional share exceeds their cap are capped and the excess is
    shared again among the others (in proportion to their weights; uniformly if those are all 0).
    The real-valued shares are then rounded by largest remainder (ties: lower index first), so the
    result sums to exactly ``total``. Requires ``0 <= total <= caps.sum()``.
    """
    weights = np.asarray(weights, dtype=np.float64)
    caps = np.asarray(caps, dtype=np.int64)
    total = int(total)
    if total < 0 or total > int(caps.sum()):
        raise ValueError(f"cannot apportion {total} over capacities summing to {int(caps.sum())}")
    share = np.zeros(caps.shape, dtype=np.float64)
    active = caps > 0
    remaining = float(total)
    while remaining > 0 and active.any():
        w = np.where(active, weights, 0.0)
        if w.sum() <= 0:
            w = active.astype(np.float64)
        prop = remaining * w / w.sum()
        over = active & (prop >= caps)
        if not over.any():
            share[active] = prop[active]
            break
        share[over] = caps[over]
        remaining -= float(caps[over].sum())
        active &= ~over
    counts = np.minimum(np.floor(share + 1e-9).astype(np.int64), caps)
    while (left := total - int(counts.sum())) > 0:
        frac = np.round(share - counts, 9)
        room = np.flatnonzero(counts < caps)
        order = room[np.lexsort((room, -frac[room]))]
        counts[order[:left]] += 1
    return counts


def first_pass(sizes: np.ndarray, budget: int, min_per_cluster: int) -> np.ndarray:
    """``min(min_per_cluster, |c|)`` per cluster, scaled down proportionally if over the budget."""
    floor = np.minimum(np.asarray(sizes, dtype=np.int64), int(min_per_cluster))
    if floor.sum() <= budget:
        return floor
    return apportion(budget, floor, floor)


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


def stratified_pick(
    users: np.ndarray, variance: np.ndarray, quota: int, weights: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, list[int] | None]:
    """Pick ``quota`` of ``users`` from quantile bins of ``variance`` weighted by ``weights``.

    Bins are equal-population quantile bins of the variance rank (ties broken at random), so tied
    variances never collapse bins. A bin with too few users spills its share onto the other bins
    (:func:`apportion`). Constant variance carries no information: uniform pick (bins = None).
    """
    m = users.size
    if quota >= m:
        return users.copy(), None
    if quota <= 0:
        return users[:0], None
    if np.ptp(variance) == 0:
        return rng.choice(users, size=quota, replace=False), None
    n_bins = weights.size
    order = np.lexsort((rng.random(m), variance))
    rank = np.empty(m, dtype=np.int64)
    rank[order] = np.arange(m)
    bins = rank * n_bins // m
    per_bin = apportion(quota, weights, np.bincount(bins, minlength=n_bins))
    picks = [rng.choice(users[bins == b], size=int(k), replace=False) for b, k in enumerate(per_bin) if k > 0]
    return np.concatenate(picks), per_bin.tolist()


def _canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters by their lowest member index, so cluster order does not depend on the backend."""
    uniq, first_index, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[np.argsort(first_index, kind="stable")] = np.arange(uniq.size)
    return rank[inverse.reshape(-1)]


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
        labels = _canonical_labels(km.labels)
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
