"""Registry of datasets: every ``data.name`` is one entry here, and every list of names derives from it.

A dataset either builds its table directly (``build``: synthetic data, MovieLens from the packaged
files) or is read from raw files a user downloaded (``raw``: how to list and read them; ``prepare``
filters and caches the result, and ``build`` then loads the processed copy). Adding a dataset is one
``register_dataset(...)`` call in the module that reads it: see ``docs/custom_dataset.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from puma_lightning.data.raw.common import RawData
    from puma_lightning.data.table import InteractionTable


@dataclass(frozen=True)
class RawFormat:
    """How ``prepare`` finds and reads a raw-file dataset."""

    files: Callable[["DictConfig"], list[Path]]
    """``data`` config -> the raw files it would read (their hashes decide whether to prepare again)."""
    read: Callable[["DictConfig"], "RawData"]
    """``data`` config -> the integer-coded interactions, ids and texts (before the filters)."""
    follows: Callable[["DictConfig"], str | None] | None = None
    """``data`` config -> the published code whose rules the read follows (None: none), as ``read`` records it in
    ``rules["follows"]``; a processed folder whose manifest names another is prepared again."""
    location: Callable[["DictConfig"], str | None] | None = None
    """``data`` config -> where the inputs are (a folder or a file; None: not configured), recorded in the manifest as
    ``raw_dir`` and compared by the reuse check. None (the default): ``data.raw_dir``, which must be a folder."""
    location_hint: str = "set data.raw_dir=PATH to the downloaded files"
    """What the error says to set when ``location`` gives None and there is no processed copy to reuse."""
    params: Callable[["DictConfig"], dict] | None = None
    """``data`` config -> further preprocessing parameters (merged into ``prepare_params``, so into the manifest and the
    cache folder's hash): what decides the content beyond the common filters, e.g. which input files and columns."""


@dataclass(frozen=True)
class Dataset:
    """One ``data.name``."""

    name: str
    task: str | None
    """``rating`` or ``click``: the only task the dataset has; None: either, as ``data.task`` says."""
    description: str
    template: str
    """The template a config gets with ``data.template=auto`` (a name in ``puma_lightning.data.templates``)."""
    build: Callable[["DictConfig", int], "InteractionTable"] | None = None
    """``(data config, seed)`` -> the split table; None for raw-file datasets (loaded through ``prepare``)."""
    raw: RawFormat | None = None


DATASETS: dict[str, Dataset] = {}


def register_dataset(dataset: Dataset) -> Dataset:
    """Add a dataset; names are unique, and a dataset builds its table or is read from raw files (one of the two)."""
    if dataset.name in DATASETS:
        raise ValueError(f"dataset {dataset.name!r} is already registered")
    if (dataset.build is None) == (dataset.raw is None):
        raise ValueError(f"dataset {dataset.name!r} needs exactly one of 'build' or 'raw'")
    if dataset.task not in ("rating", "click", None):
        raise ValueError(f"dataset {dataset.name!r}: task must be 'rating', 'click' or None, got {dataset.task!r}")
    DATASETS[dataset.name] = dataset
    return dataset


def get_dataset(name: str) -> Dataset:
    """The registered dataset called ``name``, with the valid names in the error."""
    _load_builtins()
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


BUILTIN = ("synthetic", "movielens-100k", "amazon-movies", "amazon-movies-csv", "yelp", "mind", "movielens-100k-click",
           "interactions")
"""The datasets that ship with the package, in the order lists show them (their modules register them)."""


def dataset_names() -> tuple[str, ...]:
    """Every registered ``data.name``: the built-in ones in :data:`BUILTIN` order, then yours as registered."""
    _load_builtins()
    return tuple(n for n in BUILTIN if n in DATASETS) + tuple(n for n in DATASETS if n not in BUILTIN)


def raw_dataset_names() -> tuple[str, ...]:
    """The names read from raw files (what ``prepare`` accepts)."""
    return tuple(n for n in dataset_names() if DATASETS[n].raw is not None)


def build_dataset_table(dcfg: "DictConfig", seed: int) -> "InteractionTable":
    """The split table of ``dcfg.name``: built directly, or prepared from raw files and loaded."""
    dataset = get_dataset(str(dcfg.name))
    if dataset.task is not None and dcfg.task != dataset.task:
        raise ValueError(f"'data.task' must be {dataset.task!r} for {dataset.name}, got {dcfg.task!r}")
    if dataset.build is not None:
        return dataset.build(dcfg, seed)
    from puma_lightning.data.prepared import load_prepared

    return load_prepared(dcfg, seed)


def _load_builtins() -> None:
    """Import the modules that register the built-in datasets (once)."""
    import puma_lightning.data.movielens  # noqa: F401
    import puma_lightning.data.raw.amazon  # noqa: F401
    import puma_lightning.data.raw.interactions  # noqa: F401
    import puma_lightning.data.raw.mind  # noqa: F401
    import puma_lightning.data.raw.yelp  # noqa: F401
    import puma_lightning.data.synthetic  # noqa: F401
