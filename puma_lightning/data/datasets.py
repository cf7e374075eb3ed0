"""Every registered ``data.name``: importing this module registers the built-in datasets (their modules register
themselves in :mod:`puma_lightning.data.registry`), and its functions answer lookups with the valid names in errors."""

from __future__ import annotations

from puma_lightning.data import movielens, synthetic  # noqa: F401  (they register)
from puma_lightning.data.raw import amazon, interactions, mind, yelp  # noqa: F401  (they register)
from puma_lightning.data.registry import BUILTIN, DATASETS, Dataset


def get_dataset(name: str) -> Dataset:
    """The registered dataset called ``name``, with the valid names in the error."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


def dataset_names() -> tuple[str, ...]:
    """Every registered ``data.name``: the built-in ones in :data:`BUILTIN` order, then yours as registered."""
    return tuple(n for n in BUILTIN if n in DATASETS) + tuple(n for n in DATASETS if n not in BUILTIN)


def raw_dataset_names() -> tuple[str, ...]:
    """The names read from raw files (what ``prepare`` accepts)."""
    return tuple(n for n in dataset_names() if DATASETS[n].raw is not None)
