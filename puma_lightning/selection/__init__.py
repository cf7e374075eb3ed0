"""User-selection strategies: choose a small representative budget of users to train the adapter on.

Importing this package registers every strategy (each module registers itself on import), so
``STRATEGIES`` is complete and :func:`select_users` can build any of them from a config node.
"""

from . import buckets, clustered, ffn, puma, random  # noqa: F401  (imported for their @register_strategy side effect)
from .kmeans import KMeansResult, kmeans
from .registry import (
    OPTIONAL_STATS,
    STRATEGIES,
    SelectionContext,
    SelectionResult,
    SelectionStrategy,
    build_strategy,
    load_strategy_class,
    register_strategy,
    select_users,
    strategy_class,
)

__all__ = [
    "OPTIONAL_STATS",
    "STRATEGIES",
    "KMeansResult",
    "SelectionContext",
    "SelectionResult",
    "SelectionStrategy",
    "build_strategy",
    "kmeans",
    "load_strategy_class",
    "register_strategy",
    "select_users",
    "strategy_class",
]
