"""k-means strategies on the source prompts: cluster, allocate the budget over clusters, then pick
inside each cluster (uniformly, by farthest-point sampling, or from quantile bins of a score).

Presets and the published mode each reproduces (Kimagure7/Dont-Start-Over 9d85839,
``utils/datasets.py`` ``get_train_indices``, functions in ``utils/user_select.py``):

* ``kmeans_pca`` — mode 10 ``select_users_with_pca_kmeans``: PCA to 256 components (clipped to
  min(N, D)), k = 15, ``np.round`` shares with the remainder on the largest cluster,
  ``random.sample`` inside each cluster.
* ``kmeans_fps`` — mode 9 ``select_users_with_fps``: k = 15, the same shares, farthest-point
  sampling from a random start inside each cluster.
* ``kmeans_loss`` — mode 8 ``select_users_with_embedding_and_loss``: k = 15, at least
  min(50, |c|) per cluster, 5 loss-quantile groups with weights ``exp(-x^2/2) + 0.1`` over
  ``linspace(-2, 2, G)``, the published two passes (:mod:`.faithful`).
* ``kmeans_stratified`` — ours (no published mode): proportional quotas, uniform picks.

``allocation: faithful`` (the published presets' default) follows the published counts and draws
(:mod:`.published`, :mod:`.faithful`); where the published function returns fewer users than the
budget the rest is drawn uniformly (``info["n_random_topup"]``), where it returns more (mode 4's
at-least-one rule) the list is cut in order (``info["n_truncated"]``). ``allocation: fixed`` (our
variants: ``kmeans_pca_32``, ``kmeans_fps_fixed``, ``kmeans_loss_equal``): seeded k-means++
(:func:`~.kmeans.kmeans`), clusters renumbered by their lowest member, quotas from
:func:`~.allocation.allocate` (``min(min_per_cluster, |c|)`` first, then proportional by largest
remainder; a cluster smaller than its quota gives all its users and the excess goes to the others),
rank bins whose short shares spill. The ``ffn_*`` strategies reuse all of it with other features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from .allocation import allocate, bin_weights, canonical_labels, clean_scores, farthest_point_pick, pca, stratified_pick
from .faithful import context_variance, faithful_allocation
from .kmeans import kmeans
from .published import rounded_allocation
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
    allocation: Literal["fixed", "faithful"] = "fixed"
    """'faithful': the published per-cluster counts and draws; 'fixed': exactly the budget, proportional."""

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
    share_rule: ClassVar[str] = "largest"
    """Published shares for ``allocation: faithful`` with 'uniform' / 'fps' picks: 'largest' (modes 9,
    10: np.round, remainder on the largest cluster) or 'at_least_one' (mode 4: np.round, 0 -> 1)."""

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
        common = {"features": self.feature_name, "feature_dim": int(feats.shape[1]), "within_cluster": self.within,
                  "n_clusters": int(sizes.size), "cluster_sizes": sizes.tolist(), "allocation": p.allocation}
        if p.allocation == "faithful":
            selected, info = self._faithful(ctx, budget, labels, feats)
            info["selected_per_cluster"] = np.bincount(labels[selected], minlength=sizes.size).tolist()
            return selected, {**common, **info, "kmeans_backend": km.backend, "kmeans_inertia": km.inertia}
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
            **common,
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

    def _faithful(
        self, ctx: SelectionContext, budget: int, labels: np.ndarray, feats: np.ndarray
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The published allocation of this strategy's mode, given the cluster labels, and its counts."""
        p = self.params
        if self.within in ("uniform", "fps"):
            res = rounded_allocation(labels, budget, ctx.seed, rule=self.share_rule, within=self.within,
                                     points=feats if self.within == "fps" else None)
            return res.selected, {"published_shares": res.shares, "picks_per_cluster": res.per_cluster,
                                  "n_random_topup": res.n_random_topup, "n_truncated": res.n_truncated}
        if self.within == "loss":
            score = clean_scores(ctx.require("loss", self.name))
        else:
            score = context_variance(ctx.label_variance, ctx.train_counts, ctx.label_variance_pandas)
        res = faithful_allocation(labels, score, budget, ctx.seed, n_bins=p.n_bins, min_per_cluster=p.min_per_cluster,
                                  weight_span=p.weight_span, weight_floor=p.weight_floor)
        return res.selected, {
            "bin_score": self.within, "n_random_topup": res.n_random_topup, "n_truncated": res.n_truncated,
            "first_pass_quota": res.first_quota, "first_pass": res.first_pass, "first_pass_bins": res.first_bins,
            "second_pass_quota": res.second_quota, "second_pass": res.second_pass, "second_pass_bins": res.second_bins,
            "picks_per_cluster": [a + b for a, b in zip(res.first_pass, res.second_pass)],
        }


@register_strategy("kmeans_stratified")
class KMeansStratifiedStrategy(ClusterStrategy):
    """k-means on the prompts, quotas proportional to cluster size, uniform picks inside (ours)."""

    @dataclass
    class Params(ClusterParams):
        """Parameters of ``kmeans_stratified``."""


@register_strategy("kmeans_pca")
class KMeansPCAStrategy(ClusterStrategy):
    """Published mode 10: PCA of the prompts (exact, deterministic), k-means, np.round shares, random.sample."""

    feature_name = "prompts_pca"
    published_mode = 10

    @dataclass
    class Params(ClusterParams):
        """Parameters of ``kmeans_pca`` (defaults: the published mode 10)."""

        n_components: int = 256
        """Principal components kept (published 256; clipped to min(N, D))."""
        whiten: bool = False
        """Scale each component to unit variance before k-means."""
        allocation: Literal["fixed", "faithful"] = "faithful"
        """'faithful': np.round shares, remainder on the largest cluster, random.sample inside."""

    def features(self, ctx: SelectionContext) -> np.ndarray:
        return pca(ctx.prompts, self.params.n_components, self.params.whiten)


@register_strategy("kmeans_pca_32")
class KMeansPCA32Strategy(KMeansPCAStrategy):
    """Our variant of mode 10: 32 components, exact-budget proportional quotas, uniform picks."""

    published_mode = None

    @dataclass
    class Params(ClusterParams):
        """Parameters of ``kmeans_pca_32``."""

        n_components: int = 32
        """Principal components kept (clipped to min(N, D))."""
        whiten: bool = False
        """Scale each component to unit variance before k-means."""


@register_strategy("kmeans_fps")
class KMeansFPSStrategy(ClusterStrategy):
    """Published mode 9: k-means (k = 15), np.round shares, farthest-point sampling inside each cluster."""

    within = "fps"
    published_mode = 9

    @dataclass
    class Params(ClusterParams):
        """Parameters of ``kmeans_fps`` (defaults: the published mode 9)."""

        allocation: Literal["fixed", "faithful"] = "faithful"
        """'faithful': np.round shares, remainder on the largest cluster, FPS from a seeded random start."""


@register_strategy("kmeans_fps_fixed")
class KMeansFPSFixedStrategy(KMeansFPSStrategy):
    """Our variant of mode 9: exact-budget proportional quotas, then FPS inside each cluster."""

    published_mode = None

    @dataclass
    class Params(ClusterParams):
        """Parameters of ``kmeans_fps_fixed`` (FPS starts from a seeded random member of each cluster)."""


@register_strategy("kmeans_loss")
class KMeansLossStrategy(ClusterStrategy):
    """Published mode 8: k-means on the prompts, at least 50 per cluster, normal-weighted loss groups."""

    within = "loss"
    needs = ("loss",)
    published_mode = 8

    @dataclass
    class Params(BinnedClusterParams):
        """Parameters of ``kmeans_loss`` (defaults: the published mode 8)."""

        min_per_cluster: int = 50
        """First pass: min(50, |c|) users per cluster."""
        weight_span: float = 2.0
        """Group weights exp(-x^2/2) + 0.1 over linspace(-2, 2, G)."""
        allocation: Literal["fixed", "faithful"] = "faithful"
        """'faithful': the published two passes, draw for draw."""


@register_strategy("kmeans_loss_equal")
class KMeansLossEqualStrategy(KMeansLossStrategy):
    """Our variant of mode 8: no minimum, 5 equal-weight rank bins of loss, exactly the budget."""

    published_mode = None

    @dataclass
    class Params(BinnedClusterParams):
        """Parameters of ``kmeans_loss_equal`` (equal bin weights: stratified sampling)."""
