"""FFN-feature strategies: k-means on the source model's binarised FFN activations instead of the
raw prompts (DESIGN.md §3), then the same allocations and stratifications as the prompt strategies.

Features (:func:`puma_lightning.pipeline.stat_models.ffn_features`): the last 3 FFN layers of the
source model fed ``[BOS, p_u]``, activations > 0 as 0/1, concatenated, L2-normalised.

Presets and the published mode each reproduces (Kimagure7/Dont-Start-Over 9d85839):

* ``ffn_kmeans`` — mode 4 ``ON_based_cluster``: k = 15, ``np.round`` shares with empty shares
  raised to 1, ``random.sample`` inside each cluster.
* ``ffn_kmeans_loss`` — mode 5 ``ON_based_cluster_and_loss_sampling``: min(50, |c|) per cluster,
  5 loss groups with weights ``exp(-x^2/2) + 0.1`` over ``linspace(-2, 2, G)``, the two passes.
* ``ffn_kmeans_variance`` — mode 6 ``ON_based_cluster_and_variance_sampling``: as ``puma_faithful``
  on FFN clusters.

Our variants (``allocation: fixed``, exactly the budget): ``ffn_kmeans_fixed`` (proportional,
uniform picks), ``ffn_kmeans_loss_equal`` (no minimum, equal-weight loss bins),
``ffn_kmeans_variance_fixed`` (as ``puma``'s fixed allocation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .clustered import BinnedClusterParams, ClusterParams, ClusterStrategy
from .registry import SelectionContext, register_strategy


class FFNClusterStrategy(ClusterStrategy):
    """A :class:`ClusterStrategy` that clusters ``ctx.ffn_features``."""

    feature_name = "ffn_features"
    needs: tuple[str, ...] = ("ffn_features",)

    def features(self, ctx: SelectionContext) -> np.ndarray:
        return ctx.require("ffn_features", self.name)


@register_strategy("ffn_kmeans")
class FFNKMeansStrategy(FFNClusterStrategy):
    """Published mode 4: k-means on FFN features, np.round shares (at least 1), random.sample inside."""

    share_rule = "at_least_one"
    published_mode = 4

    @dataclass
    class Params(ClusterParams):
        """Parameters of ``ffn_kmeans`` (defaults: the published mode 4)."""

        allocation: Literal["fixed", "faithful"] = "faithful"
        """'faithful': np.round shares, empty shares raised to 1, random.sample inside each cluster."""


@register_strategy("ffn_kmeans_fixed")
class FFNKMeansFixedStrategy(FFNClusterStrategy):
    """Our variant of mode 4: k-means on FFN features, exact-budget proportional quotas, uniform picks."""

    @dataclass
    class Params(ClusterParams):
        """Parameters of ``ffn_kmeans_fixed``."""


@register_strategy("ffn_kmeans_loss")
class FFNKMeansLossStrategy(FFNClusterStrategy):
    """Published mode 5: k-means on FFN features, at least 50 per cluster, normal-weighted loss groups."""

    within = "loss"
    needs = ("ffn_features", "loss")
    published_mode = 5

    @dataclass
    class Params(BinnedClusterParams):
        """Parameters of ``ffn_kmeans_loss`` (defaults: the published mode 5)."""

        min_per_cluster: int = 50
        """First pass: min(50, |c|) users per cluster."""
        weight_span: float = 2.0
        """Group weights exp(-x^2/2) + 0.1 over linspace(-2, 2, G)."""
        allocation: Literal["fixed", "faithful"] = "faithful"
        """'faithful': the published two passes, draw for draw."""


@register_strategy("ffn_kmeans_loss_equal")
class FFNKMeansLossEqualStrategy(FFNClusterStrategy):
    """Our variant of mode 5: no minimum, equal-weight rank bins of loss, exactly the budget."""

    within = "loss"
    needs = ("ffn_features", "loss")

    @dataclass
    class Params(BinnedClusterParams):
        """Parameters of ``ffn_kmeans_loss_equal`` (equal bin weights: stratified sampling)."""


@register_strategy("ffn_kmeans_variance")
class FFNKMeansVarianceStrategy(FFNClusterStrategy):
    """Published mode 6: k-means on FFN features, PUMA's published two passes on variance groups."""

    within = "label_variance"
    published_mode = 6

    @dataclass
    class Params(BinnedClusterParams):
        """Parameters of ``ffn_kmeans_variance`` (defaults: the published mode 6)."""

        min_per_cluster: int = 50
        """First pass: min(50, |c|) users per cluster, as ``puma``."""
        weight_span: float = 2.0
        """Normal-shaped bin weights [.079, .237, .369, .237, .079] for 5 bins, as ``puma``."""
        allocation: Literal["fixed", "faithful"] = "faithful"
        """'faithful': the published two passes, draw for draw."""


@register_strategy("ffn_kmeans_variance_fixed")
class FFNKMeansVarianceFixedStrategy(FFNClusterStrategy):
    """Our variant of mode 6: as ``puma``'s fixed allocation on FFN clusters."""

    within = "label_variance"

    @dataclass
    class Params(BinnedClusterParams):
        """Parameters of ``ffn_kmeans_variance_fixed`` (defaults: ``puma``'s)."""

        min_per_cluster: int = 50
        """First pass: min(50, |c|) users per cluster, as ``puma``."""
        weight_span: float = 2.0
        """Normal-shaped bin weights [.079, .237, .369, .237, .079] for 5 bins, as ``puma``."""


def normalise_bits(bits: np.ndarray) -> np.ndarray:
    """0/1 rows as float32, L2-normalised (all-zero rows stay zero): the ``ffn_features`` strategies read."""
    x = np.asarray(bits, dtype=np.float32)
    norm = np.sqrt(x.sum(axis=1, keepdims=True)) if x.size else np.ones((x.shape[0], 1), np.float32)
    return x / np.maximum(norm, 1.0)
