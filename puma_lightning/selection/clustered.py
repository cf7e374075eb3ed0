"""k-means strategies on the source prompts: cluster, allocate the budget over clusters, then pick
inside each cluster (uniformly, by farthest-point sampling, or from quantile bins of a score).

* ``kmeans_stratified`` — k-means on the prompts, allocation proportional to cluster size, uniform
  picks inside a cluster.
* ``kmeans_pca`` — PCA of the prompts first (``n_components``), then as ``kmeans_stratified``.
* ``kmeans_fps`` — k = 15, proportional allocation, farthest-point sampling inside each cluster.
* ``kmeans_loss`` — k-means, then loss-quantile bins (equal weights) inside each cluster.

All share :class:`ClusterStrategy`: k-means++ seeded k-means (:func:`~.kmeans.kmeans`, seed =
context seed), clusters renumbered by their lowest member, quotas from :func:`~.allocation.allocate`
(``min(min_per_cluster, |c|)`` first, then proportional; a cluster smaller than its quota gives all
its users and the excess goes to the others). The ``ffn_*`` strategies reuse it with other features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from .allocation import allocate, bin_weights, canonical_labels, clean_scores, farthest_point_pick, pca, stratified_pick
from .kmeans import kmeans
from .registry import SelectionContext, SelectionStrategy, register_strategy


@dataclass
class ClusterParams:
    """Parameters shared by the k-means strategies."""

    n_clusters: int = 15
    """k-means clusters (clipped to the number of distinct feature rows)."""
    min_per_cluster: int = 0
    """First pass: min(min_per_cluster, |c|) users per cluster; 0 = purely proportional."""
    kmeans_iters: int = 25
    """Lloyd iterations of k-means (after k-means++ initialisation)."""
    kmeans_backend: Literal["auto", "faiss-gpu", "faiss-cpu", "sklearn"] = "auto"
    """k-means backend; 'auto' = FAISS GPU, else FAISS CPU, else scikit-learn."""

    def __post_init__(self) -> None:
        for key in ("n_clusters", "kmeans_iters"):
            if getattr(self, key) < 1:
                raise ValueError(f"parameter {key!r} must be >= 1, got {getattr(self, key)}")
        if self.min_per_cluster < 0:
            raise ValueError(f"parameter 'min_per_cluster' must be >= 0, got {self.min_per_cluster}")
        for key in ("n_bins", "n_components"):
            if getattr(self, key, 1) < 1:
                raise ValueError(f"parameter {key!r} must be >= 1, got {getattr(self, key)}")
        if getattr(self, "weight_span", 0.0) < 0 or getattr(self, "weight_floor", 0.0) < 0:
            raise ValueError("parameters 'weight_span' and 'weight_floor' must be >= 0")


@dataclass
class BinnedClusterParams(ClusterParams):
    """Cluster parameters plus quantile bins of a per-user score inside each cluster."""

    n_bins: int = 5
    """Equal-population quantile bins of the score inside each cluster."""
    weight_span: float = 0.0
    """Bin weights exp(-x^2/2) + weight_floor over linspace(-span, span, n_bins); 0 = equal weights."""
    weight_floor: float = 0.1
    """Constant added to every bin weight."""


class ClusterStrategy(SelectionStrategy):
    """Cluster ``features(ctx)``, allocate quotas, then :meth:`pick` inside each cluster."""

    feature_name: ClassVar[str] = "prompts"
    within: ClassVar[str] = "uniform"
    """How users are picked inside a cluster: 'uniform', 'fps', or a score name ('loss', 'label_variance')."""

    def features(self, ctx: SelectionContext) -> np.ndarray:
        """The rows k-means clusters (the raw prompts by default)."""
        return ctx.prompts

    def _score(self, ctx: SelectionContext) -> np.ndarray:
        if self.within == "loss":
            return clean_scores(ctx.require("loss", self.name))
        return clean_scores(ctx.label_variance)

    def _select(self, ctx: SelectionContext, budget: int) -> tuple[np.ndarray, dict[str, Any]]:
        p = self.params
        rng = np.random.default_rng(ctx.seed)
        feats = np.ascontiguousarray(self.features(ctx), dtype=np.float32)
        km = kmeans(feats, p.n_clusters, seed=ctx.seed, n_iter=p.kmeans_iters, backend=p.kmeans_backend)
        labels = canonical_labels(km.labels)
        members = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
        sizes = np.array([m.size for m in members], dtype=np.int64)
        first, second = allocate(sizes, budget, p.min_per_cluster)
        quotas = first + second

        info: dict[str, Any] = {}
        weights = None
        if self.within not in ("uniform", "fps"):
            weights = bin_weights(p.n_bins, p.weight_span, p.weight_floor)
            score = self._score(ctx)
            info["bin_score"] = self.within
            info["bin_weights"] = weights.round(6).tolist()
        picks, bin_picks, constant = [], [], []
        for c, users in enumerate(members):
            q = int(quotas[c])
            if self.within == "uniform":
                chosen = users if q >= users.size else rng.choice(users, size=q, replace=False)
            elif self.within == "fps":
                chosen = users[farthest_point_pick(feats[users], q, rng)]
            else:
                chosen, per_bin = stratified_pick(users, score[users], q, weights, rng)
                bin_picks.append(per_bin)
                if users.size > q > 0 and per_bin is None:
                    constant.append(c)
            picks.append(chosen)
        selected = np.concatenate(picks) if picks else np.empty(0, dtype=np.int64)
        info.update({
            "features": self.feature_name,
            "feature_dim": int(feats.shape[1]),
            "within_cluster": self.within,
            "n_clusters": int(sizes.size),
            "cluster_sizes": sizes.tolist(),
            "first_pass": first.tolist(),
            "picks_per_cluster": quotas.tolist(),
            "selected_per_cluster": np.bincount(labels[selected], minlength=sizes.size).tolist(),
            "kmeans_backend": km.backend,
            "kmeans_inertia": km.inertia,
        })
        if weights is not None:
            info["bin_picks_per_cluster"] = bin_picks
            info["uniform_clusters_constant_score"] = constant
        return selected, info


@register_strategy("kmeans_stratified")
class KMeansStratifiedStrategy(ClusterStrategy):
    """k-means on the prompts, quotas proportional to cluster size, uniform picks inside."""

    @dataclass
    class Params(ClusterParams):
        """Parameters of ``kmeans_stratified``."""


@register_strategy("kmeans_pca")
class KMeansPCAStrategy(ClusterStrategy):
    """PCA of the prompts (exact, deterministic), then as ``kmeans_stratified``."""

    feature_name = "prompts_pca"

    @dataclass
    class Params(ClusterParams):
        """Parameters of ``kmeans_pca``."""

        n_components: int = 32
        """Principal components kept (clipped to min(N, D)); not published, 32 chosen here."""
        whiten: bool = False
        """Scale each component to unit variance before k-means."""

    def features(self, ctx: SelectionContext) -> np.ndarray:
        return pca(ctx.prompts, self.params.n_components, self.params.whiten)


@register_strategy("kmeans_fps")
class KMeansFPSStrategy(ClusterStrategy):
    """k-means (k = 15), proportional quotas, farthest-point sampling inside each cluster."""

    within = "fps"

    @dataclass
    class Params(ClusterParams):
        """Parameters of ``kmeans_fps`` (FPS starts from a seeded random member of each cluster)."""


@register_strategy("kmeans_loss")
class KMeansLossStrategy(ClusterStrategy):
    """k-means on the prompts, then quantile bins of per-user task loss inside each cluster."""

    within = "loss"
    needs = ("loss",)

    @dataclass
    class Params(BinnedClusterParams):
        """Parameters of ``kmeans_loss`` (equal bin weights: stratified sampling)."""
