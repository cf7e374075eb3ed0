"""The registry of the rows ``fit`` computes: one entry per row family, in the order ``fit`` runs them.

An entry says when it runs (``enabled``), whether its rows go in the table (``shown``) and how it makes them
(``rows``: the run context -> ``{row name: record}``); most entries run one :class:`~puma_lightning.pipeline.stage.Stage`
through :func:`~puma_lightning.pipeline.stage.run_stage`. Adding a row is one file that registers one entry (see
``docs/extending.md``); every list of row names is read from :data:`STAGES`. Importing the package
:mod:`puma_lightning.pipeline.stages` registers the built-in rows (this module never imports them: no import circle).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from omegaconf import DictConfig

from puma_lightning.pipeline.stage import run_stage


@dataclass(frozen=True)
class StageEntry:
    """One row family of the results table."""

    name: str
    rows: Callable[[Any], dict[str, dict[str, Any]]]
    """The run context (an :class:`~puma_lightning.pipeline.experiment.Experiment`) -> ``{row name: stage record}``."""
    enabled: Callable[[DictConfig], bool] = lambda cfg: True
    """Whether ``fit`` runs it for this config."""
    shown: Callable[[DictConfig], bool] = lambda cfg: True
    """Whether its rows go in the table (``source`` always runs, PUMA needs it, but is shown only with ``baselines.source``)."""
    descriptions: Mapping[str, str] = field(default_factory=dict)
    """Row name -> what the row is, for the table's last column (every row it can make)."""
    migrated: bool = False
    """Its banks are migrated from the source's: their personal gain is also a share of full retraining's (``retained``)."""


STAGES: dict[str, StageEntry] = {}


def register_stage(entry: StageEntry) -> StageEntry:
    """Add a row family after the ones registered before it; names are unique."""
    if entry.name in STAGES:
        raise ValueError(f"stage {entry.name!r} is already registered")
    STAGES[entry.name] = entry
    return entry


def single(stage_factory: Callable[[Any], Any]) -> Callable[[Any], dict[str, dict[str, Any]]]:
    """``rows`` of an entry that runs one stage: ``{stage.name: its record}``."""
    def rows(exp: Any) -> dict[str, dict[str, Any]]:
        stage = stage_factory(exp)
        return {stage.name: run_stage(exp, stage)}

    return rows


TABLE_ORDER = ("source", "random_init", "full_retrain", "puma", "puma_polish", "vocab_map", "shared_prompt_source",
               "shared_prompt_target", "classic")
"""The order of the built-in row families in the results table (yours follow them)."""
BUILTIN = ("source", "random_init", "puma", "puma_polish", "vocab_map", "full_retrain", "shared_prompt_source",
           "shared_prompt_target", "classic")
"""The built-in row families in the order ``fit`` runs them (their modules register them); yours run after them."""


def stage_names() -> tuple[str, ...]:
    """Every registered row family, in ``fit``'s order: the built-in ones in :data:`BUILTIN` order, then yours."""
    return tuple(n for n in BUILTIN if n in STAGES) + tuple(n for n in STAGES if n not in BUILTIN)


def row_descriptions() -> dict[str, str]:
    """Every row a registered family can make -> what it is, in the table's order."""
    families = [n for n in TABLE_ORDER if n in STAGES] + [n for n in STAGES if n not in TABLE_ORDER]
    return {row: text for family in families for row, text in STAGES[family].descriptions.items()}


def migrated_rows() -> tuple[str, ...]:
    """The rows whose banks are migrated from the source's."""
    return tuple(row for entry in STAGES.values() if entry.migrated for row in entry.descriptions)


def get_stage(name: str) -> StageEntry:
    """The registered row family ``name``, with the valid names in the error."""
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; choose one of {', '.join(stage_names())}") from None


