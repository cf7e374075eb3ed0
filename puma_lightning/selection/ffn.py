"""FFN-feature strategies: k-means on the source model's binarised FFN activations instead of the
raw prompts (DESIGN.md §3), then the same allocations and stratifications as the prompt strategies.

Features (:func:`puma_lightning.pipeline.stat_models.ffn_features`): the last 3 FFN layers of the
source model fed ``[BOS, p_u]``, activations > 0 as 0/1, concatenated, L2-normalised.

* ``ffn_kmeans`` — as ``kmeans_stratified`` (proportional quotas, uniform picks).
* ``ffn_kmeans_loss`` — as ``kmeans_loss`` (loss-quantile bins, equal weights).
* ``ffn_kmeans_variance`` — as ``puma`` (min 50 per cluster, then proportional; variance-quantile
  bins with weights [.079, .237, .369, .237, .079]).
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """k-means on FFN features, proportional quotas, uniform picks inside each cluster."""

    @dataclass
    class Params(ClusterParams):
        """Parameters of ``ffn_kmeans``."""


@register_strategy("ffn_kmeans_loss")
class FFNKMeansLossStrategy(FFNClusterStrategy):
    """k-means on FFN features, then task-loss quantile bins inside each cluster."""

    within = "loss"
    needs = ("ffn_features", "loss")

    @dataclass
    class Params(BinnedClusterParams):
        """Parameters of ``ffn_kmeans_loss`` (equal bin weights: stratified sampling)."""


@register_strategy("ffn_kmeans_variance")
class FFNKMeansVarianceStrategy(FFNClusterStrategy):
    """k-means on FFN features, PUMA's minimum per cluster and variance-quantile bins inside."""

    within = "label_variance"

    @dataclass
    class Params(BinnedClusterParams):
        """Parameters of ``ffn_kmeans_variance`` (defaults: ``puma``'s)."""

        min_per_cluster: int = 50
        """First pass: min(50, |c|) users per cluster, as ``puma``."""
        weight_span: float = 2.0
        """Normal-shaped bin weights [.079, .237, .369, .237, .079] for 5 bins, as ``puma``."""


def normalise_bits(bits: np.ndarray) -> np.ndarray:
    """0/1 rows as float32, L2-normalised (all-zero rows stay zero): the ``ffn_features`` strategies read."""
    x = np.asarray(bits, dtype=np.float32)
    norm = np.sqrt(x.sum(axis=1, keepdims=True)) if x.size else np.ones((x.shape[0], 1), np.float32)
    return x / np.maximum(norm, 1.0)
