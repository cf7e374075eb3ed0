"""Registry of datasets: every ``data.name`` is one entry here, and every list of names derives from it.

A dataset either builds its table directly (``build``: synthetic data, MovieLens from the packaged
files) or is read from raw files a user downloaded (``raw``: how to list and read them; ``prepare``
filters and caches the result, and ``build`` then loads the processed copy). Adding a dataset is one
``register_dataset(...)`` call in the module that reads it: see ``docs/custom_dataset.md``. This module only holds
the registry; :mod:`puma_lightning.data.datasets` imports the built-in datasets (registering them) and answers
lookups, so no import runs in a circle.
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


BUILTIN = ("synthetic", "movielens-100k", "amazon-movies", "amazon-movies-csv", "yelp", "mind", "movielens-100k-click",
           "interactions")
"""The datasets that ship with the package, in the order lists show them (their modules register them)."""
