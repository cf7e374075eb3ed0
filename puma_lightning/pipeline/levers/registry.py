"""The lever registry: every lever by name, and what the config loader reads from it (the choices of every lever
option, the rating-only values, each lever's validation). It imports no lever: each registers itself, and
``puma_lightning.pipeline.levers`` imports the built-in ones."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from puma_lightning.pipeline.levers.lever import Lever, Option

LEVERS: dict[str, Lever] = {}
"""Every registered lever, by name, in registration order (the built-in ones first)."""


def register_lever(lever: Lever) -> Lever:
    """Add ``lever``; a second lever of the same name, or a second owner of one config key, is refused."""
    if not lever.name:
        raise ValueError(f"{type(lever).__name__}: a lever needs a name")
    if lever.name in LEVERS:
        raise ValueError(f"lever {lever.name!r} is already registered")
    owners = {o.key: name for name, other in LEVERS.items() for o in other.options}
    taken = [f"{o.key} (lever {owners[o.key]!r})" for o in lever.options if o.key in owners]
    if taken:
        raise ValueError(f"lever {lever.name!r}: its options are already owned: {', '.join(taken)}")
    if lever.section is not None and any(not o.key.startswith(f"levers.{lever.name}.") for o in lever.options):
        raise ValueError(f"lever {lever.name!r} has a section: its options are keys under 'levers.{lever.name}.'")
    LEVERS[lever.name] = lever
    return lever


def get_lever(name: str) -> Lever:
    """The lever registered as ``name``; an unknown name lists the registered ones."""
    if name not in LEVERS:
        raise KeyError(f"unknown lever {name!r}; registered levers: {', '.join(LEVERS)}")
    return LEVERS[name]


def lever_options() -> dict[str, Option]:
    """Every lever option by its config key."""
    return {o.key: o for lever in LEVERS.values() for o in lever.options}


def lever_choices() -> dict[str, tuple[str, ...]]:
    """``{key: allowed values}`` of every lever option with a list of values."""
    return {key: o.values for key, o in lever_options().items() if o.values}


def task_only(option: Option, task: str) -> tuple[str, ...]:
    """The values of ``option`` that do not fit ``task``: its rating-only ones on a click task, its click-only ones on
    a rating task."""
    return option.click_only if task == "rating" else option.rating_only


def fill_sections(cfg: DictConfig) -> None:
    """Give every registered lever with a ``section`` its settings under ``levers.<name>`` (its defaults merged with
    what the config says); a section no lever owns, an unknown setting or a wrong type is one line (``ValueError``)."""
    sections = cfg.get("levers") or {}
    owned = {name: lever for name, lever in LEVERS.items() if lever.section is not None}
    stray = [str(name) for name in sections if name not in owned]
    if stray:
        raise ValueError(f"'levers.{stray[0]}' is no registered lever's section; lever sections: "
                         f"{', '.join(owned) or 'none (a lever of your own is named in plugins)'}")
    for name, lever in owned.items():
        try:
            merged = OmegaConf.merge(OmegaConf.structured(lever.section), sections.get(name) or {})
        except OmegaConfBaseException as exc:
            raise ValueError(f"'levers.{name}': {str(exc).splitlines()[0]}") from None
        cfg.levers[name] = merged


def resolve_auto(cfg: DictConfig) -> None:
    """Replace every lever option set to ``auto`` by the value it stands for in ``cfg`` (in registration order, so an
    option's ``auto`` may read an earlier one's resolved value). The loader calls it before anything reads or hashes
    the config, so a stage's key holds the value, never ``auto``."""
    for key, option in lever_options().items():
        value = OmegaConf.select(cfg, key)
        resolved = option.resolved(cfg, value)
        if resolved != value:
            OmegaConf.update(cfg, key, resolved, merge=False)


def check_config(cfg: DictConfig) -> None:
    """What the registry says of a loaded config: each lever's section filled in, every ``auto`` resolved (by the task),
    every lever option among its values, no rating-only value on a click task nor click-only one on a rating task, each
    lever's own validation
    (``ValueError``, one line naming the key)."""
    fill_sections(cfg)
    resolve_auto(cfg)
    for key, values in lever_choices().items():
        value = OmegaConf.select(cfg, key)
        if value not in values:
            raise ValueError(f"'{key}' is {value!r}; expected one of: {', '.join(values)}")
    task = str(cfg.data.task)  # what fits one task has nothing to fit on the other: say so before any work
    for key, o in lever_options().items():
        value = OmegaConf.select(cfg, key)
        misfit = task_only(o, task)
        if value in misfit:
            fits = "clicks" if task == "rating" else "ratings"
            others = [v for v in o.values if v not in misfit]
            raise ValueError(f"{key}={value} fits {fits}, but data.task={task}; use {key}={' or '.join(others)}")
    for lever in LEVERS.values():
        lever.validate(cfg)


def lever_key(cfg: Any) -> dict[str, Any]:
    """The lever sections of ``cfg`` (``levers.<name>``): part of every stage's key where there are any, so that a
    lever of your own recomputes what it changes (empty for the built-in levers, whose keys are in their sections)."""
    sections = cfg.get("levers") if hasattr(cfg, "get") else None
    return OmegaConf.to_container(sections, resolve=True) if sections else {}
