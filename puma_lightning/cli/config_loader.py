"""Load, merge and validate experiment configs (YAML files + ``key=value`` overrides).

Order of precedence, lowest first: dataclass defaults, each ``--config`` file in order, the
command-line dotlist. ``selection=NAME`` is a group override: it loads ``strategies/NAME.yaml``
(keeping the configured budget) before the other overrides apply, so
``selection=kmeans_fps selection.n_clusters=20`` works. The strategy presets are package data of
:mod:`puma_lightning.presets`, read through ``importlib.resources`` so that an installed wheel
finds them (the repository's top-level ``strategies/`` is a symlink to that folder).
"""

from __future__ import annotations

import copy
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from puma_lightning.config import (ADAPTER_VALIDATION, DUPLICATE_POLICIES, HEAD_STARTS, MISSING_POLICIES, MODEL_DTYPES,
                                   OUTPUT_SCALES, PROMPT_INITS, TASKS, PREPROCESSING_MODES, PROMPT_OPTIMIZERS, PROMPT_STARTS,
                                   SPLIT_METHODS, ExperimentConfig)
from puma_lightning.commands import argument_defaults, argument_owners, not_a_config_key
from puma_lightning.data.datasets import dataset_names
from puma_lightning.errors import PumaError
from puma_lightning.pipeline.levers.registry import check_config, lever_choices

if TYPE_CHECKING:  # importlib.resources.abc from Python 3.11; importlib.abc before
    from importlib.resources.abc import Traversable

    from puma_lightning.data.templates import Template

STRATEGIES_PACKAGE = "puma_lightning.presets"
"""The package whose ``strategies/`` folder holds one ``NAME.yaml`` preset per selection strategy."""

def adapter_kinds() -> tuple[str, ...]:
    """Every registered adapter (importing the package registers the built-in ones)."""
    from puma_lightning.models.adapters import ADAPTERS

    return tuple(ADAPTERS)


CHOICES: dict[str, tuple[str, ...] | Callable[[], tuple[str, ...]]] = {
    "data.name": dataset_names,
    "data.task": TASKS,
    "data.preprocessing": PREPROCESSING_MODES,
    "data.split_by": SPLIT_METHODS,
    "data.duplicates": DUPLICATE_POLICIES,
    "source.dtype": MODEL_DTYPES,
    "target.dtype": MODEL_DTYPES,
    "prompt.init": PROMPT_INITS,
    "prompt.optimizer": PROMPT_OPTIMIZERS,
    "prompt.init_from": PROMPT_STARTS,
    "prompt.head_start": HEAD_STARTS,
    "adapter.kind": adapter_kinds,
    "adapter.output_scale": OUTPUT_SCALES,
    "adapter.validation": ADAPTER_VALIDATION,
    "aggregate.missing": MISSING_POLICIES,
}
"""The choices of the options that are not a lever's (a lever's own are in the lever registry: :func:`choices`)."""


def choices() -> dict[str, tuple[str, ...]]:
    """Every config key with a list of allowed values: :data:`CHOICES`, then every registered lever's options (plugins
    included, read when called): what validation checks, ``--help`` shows and the errors list."""
    listed = {key: (values() if callable(values) else values) for key, values in CHOICES.items()}
    return {**listed, **lever_choices()}


class ConfigError(PumaError):
    """A config problem, phrased as one line that names the file or key."""


def _one_line(exc: OmegaConfBaseException, origin: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
    msg = str(exc).splitlines()[0]
    parent = key.rsplit(".", 1)[0] if "." in str(key) else ""
    if "not in" in msg or "Key '" in msg and "not" in msg:
        valid = _valid_keys(parent)
        return ConfigError(f"{origin}: unknown key '{key}'; valid keys{' under ' + repr(parent) if parent else ''}: {', '.join(valid)}")
    return ConfigError(f"{origin}: bad value for '{key}': {msg}")


def _valid_keys(parent: str) -> list[str]:
    node: Any = OmegaConf.structured(ExperimentConfig)
    for part in [p for p in parent.split(".") if p]:
        node = node[part] if part in node else None
        if node is None:
            return []
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def strategies_dir() -> Traversable:
    """The packaged folder of strategy presets (``puma_lightning/presets/strategies``)."""
    return files(STRATEGIES_PACKAGE) / "strategies"


def strategy_names() -> list[str]:
    """Names of the packaged strategy presets (``strategies/NAME.yaml``), sorted."""
    return sorted(f.name[: -len(".yaml")] for f in strategies_dir().iterdir()
                  if f.name.endswith(".yaml") and f.is_file())


def strategy_node(name: str) -> DictConfig:
    """The parameters of one selection strategy from the packaged ``strategies/NAME.yaml``."""
    names = strategy_names()
    where = f"{STRATEGIES_PACKAGE}:strategies/{name}.yaml"
    if name not in names:  # also rejects path-like names (../x) and case mismatches
        raise ConfigError(f"selection={name}: no preset {where}; available strategies: {', '.join(names)}")
    with (strategies_dir() / f"{name}.yaml").open("r", encoding="utf-8") as fh:
        node = OmegaConf.load(fh)
    if not isinstance(node, DictConfig) or node.get("name") != name:
        got = node.get("name") if isinstance(node, DictConfig) else node
        raise ConfigError(f"{where}: 'name' must be {name!r}, got {got!r}")
    return node


def config_layers(file: str | Path, including: tuple[Path, ...] = ()) -> list[tuple[Path, DictConfig]]:
    """A config file and the files it builds on, in merge order: ``base: other.yaml`` (or a list; paths relative to the
    file) names configs whose keys this file's override, so a benchmark config says only how it differs."""
    path = Path(file)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (the base of {including[-1]})" if including else ""))
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    base = loaded.pop("base", None)
    bases = [base] if isinstance(base, str) else list(base or [])
    layers: list[tuple[Path, DictConfig]] = []
    for name in bases:
        if not isinstance(name, str):
            raise ConfigError(f"{path}: 'base' must be a config file name or a list of them, got {name!r}")
        other = path.parent / name
        if other.resolve() in {p.resolve() for p in (*including, path)}:
            raise ConfigError(f"{path}: base {name} builds on itself ({' -> '.join(str(p) for p in (*including, path, other))})")
        layers += config_layers(other, (*including, path))
    return layers + [(path, loaded)]


def switch_strategy(cfg: DictConfig, name: Any) -> None:
    """Before a config file or ``selection.name=`` names the selection strategy ``name``: where it is another strategy
    than ``cfg``'s, drop the parameters of the one before (the default's ``n_clusters``, ``min_per_cluster`` are
    ``puma``'s), keeping the budget, so the new strategy starts from its own parameters."""
    if not isinstance(cfg.selection, DictConfig) or cfg.selection.get("name") == name:
        return
    budget = cfg.selection.get("budget")
    cfg.selection = {"budget": budget} if budget is not None else {}


def load_config(config_files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> DictConfig:
    """Merge defaults, YAML files and dotlist overrides into a validated config."""
    cfg = OmegaConf.structured(ExperimentConfig)
    set_by: dict[str, str] = {}  # dotted key -> the --config file (counting its bases) that set it
    for file in config_files:
        layers = config_layers(file)
        before = copy.deepcopy(cfg)  # switch_strategy below edits cfg in place
        for index, (path, loaded) in enumerate(layers):
            named = loaded.get("selection")
            if isinstance(named, DictConfig) and "name" in named:
                switch_strategy(cfg, named.name)
            try:
                cfg = OmegaConf.merge(cfg, without_command_arguments(loaded, path))
            except OmegaConfBaseException as exc:
                raise _one_line(exc, str(path)) from None
            if index == len(layers) - 2:  # the file's bases are in: they must not undo what an earlier file set
                own = set(leaf_keys(layers[-1][1]))  # the file's own keys win over earlier files, as intended
                check_bases_keep_earlier_files(file, [p for p, _ in layers[:-1]], before, cfg,
                                               {k: v for k, v in set_by.items() if k not in own})
        set_by.update({key: str(file) for _, loaded in layers for key in leaf_keys(loaded)})

    dotlist: list[str] = []
    for token in overrides:
        if "=" not in token:
            raise ConfigError(f"override {token!r} is not of the form key=value")
        key, value = token.split("=", 1)
        if key in argument_owners():  # the CLI takes these out first; a caller of load_config may not have
            raise not_a_config_key(key)
        if key == "selection":
            budget = cfg.selection.get("budget")
            node = strategy_node(value)
            cfg.selection = OmegaConf.merge(node, {"budget": budget} if budget is not None else {})
        else:
            if key == "selection.name":
                switch_strategy(cfg, value)
            dotlist.append(token)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
    except OmegaConfBaseException as exc:
        raise _one_line(exc, "command line") from None
    validate(cfg)
    return cfg


def leaf_keys(node: DictConfig) -> list[str]:
    """The dotted keys of a config's leaves (a list is one leaf)."""
    def walk(value: Any, prefix: str) -> list[str]:
        if isinstance(value, dict):
            return [k for key, sub in value.items() for k in walk(sub, f"{prefix}{key}.")]
        return [prefix[:-1]]

    return walk(OmegaConf.to_container(node, resolve=False), "")


def check_bases_keep_earlier_files(file: str | Path, bases: Sequence[Path], before: DictConfig, after: DictConfig,
                                   set_by: dict[str, str]) -> None:
    """One line when a later ``--config`` file's ``base`` changes keys an earlier ``--config`` file set:
    ``--config personal.yaml --config demo_chain.yaml`` would otherwise run the chain on demo.yaml's data, since
    demo_chain.yaml builds on demo.yaml. Layered after its own base (``--config demo.yaml --config demo_chain.yaml``)
    nothing changes, and it loads."""
    undone = [key for key in set_by
              if OmegaConf.select(before, key, throw_on_missing=False) != OmegaConf.select(after, key, throw_on_missing=False)]
    if undone:
        shown = ", ".join(undone[:5]) + (f" and {len(undone) - 5} more" if len(undone) > 5 else "")
        earlier = sorted({set_by[key] for key in undone})
        raise ConfigError(f"{file} builds on {', '.join(str(b) for b in bases)}, which would change {shown} set by "
                          f"{', '.join(earlier)}; give {file}'s own keys as key=value overrides after "
                          f"{earlier[0]} instead (or {file} alone)")


def without_command_arguments(loaded: DictConfig, path: Path) -> DictConfig:
    """A config file's keys less the commands' arguments it carries at the top level at their defaults.

    Versions that kept ``bank``, ``model``, ``out``, ... in the config wrote every one of them into each saved
    ``run_dir/config.yaml``, at its default unless the command line set it, so such a file still loads (the defaults
    are dropped). A value other than the default would now be ignored without a word: it is one line instead, saying
    to pass it on the command line."""
    defaults = argument_defaults()
    values = OmegaConf.to_container(loaded, resolve=False)
    for key in [k for k in values if k in defaults]:
        value = values[key]
        if value != defaults[key]:
            owners = ", ".join(argument_owners()[key])
            raise ConfigError(f"{path}: '{key}' is {value!r}, but '{key}' is no config key any more: it is an argument of "
                              f"{owners}; remove it from the file and pass it on the command line as {key}={value}")
        loaded.pop(key)
    return loaded


def validate(cfg: DictConfig) -> None:
    """Check choices and ranges that types alone cannot express."""
    import importlib

    modules = [("data.module", cfg.data.module)] if cfg.data.get("module") else []
    modules += [(f"plugins[{i}]", name) for i, name in enumerate(cfg.get("plugins") or [])]
    for key, name in modules:
        try:
            importlib.import_module(str(name))
        except ImportError as exc:
            raise ConfigError(f"'{key}' is {name!r}, which cannot be imported ({exc})") from None
    for key, listed in CHOICES.items():
        allowed = listed() if callable(listed) else listed  # registries: read when validating, plugins included
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"'{key}' is {value!r}; expected one of: {', '.join(allowed)}")
    try:  # the levers' sections filled in, their options among their values, rating-only values refused on a click task
        check_config(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    from puma_lightning.data.datasets import get_dataset
    from puma_lightning.data.templates import TEMPLATES

    dataset = get_dataset(str(cfg.data.name))
    if dataset.raw is None and cfg.data.split_by != "chronological":
        raise ConfigError(f"'data.split_by' is {cfg.data.split_by!r}, but dataset {cfg.data.name!r} is built in and always splits "
                          "chronologically; split_by applies to the datasets read from raw files")
    template = checked_template(cfg)
    if cfg.data.task != "rating" and cfg.data.get("rated_history"):
        raise ConfigError(f"'data.rated_history' is {cfg.data.rated_history}: a history of ratings needs data.task=rating")
    history = cfg.data.get("rated_history") or 0
    if history < 0:
        raise ConfigError(f"'data.rated_history' must be >= 0, got {history}")
    if history and not template.uses_history:
        raise ConfigError(f"'data.rated_history' is {history} but template {template.name!r} has no {{history}}; "
                          f"use one of: {', '.join(n for n, t in TEMPLATES.items() if t.uses_history)}")
    for key in ("prompt.length", "prompt.epochs", "prompt.batch_size", "adapter.hidden", "adapter.epochs", "adapter.batch_size",
                "adapter.validations"):
        if OmegaConf.select(cfg, key) < 1:
            raise ConfigError(f"'{key}' must be >= 1, got {OmegaConf.select(cfg, key)}")
    for key in ("data.max_users", "adapter.validation_max_users"):
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"'{key}' must be >= 1 or null, got {value}")
    for key in ("prompt.lr", "adapter.lr"):
        if not OmegaConf.select(cfg, key) > 0:
            raise ConfigError(f"'{key}' must be > 0, got {OmegaConf.select(cfg, key)}")
    for part in ("prompt", "adapter"):
        if not 0.0 <= cfg[part].warmup_ratio < 1.0:
            raise ConfigError(f"'{part}.warmup_ratio' must be in [0, 1), got {cfg[part].warmup_ratio}")
        patience = cfg[part].early_stopping_patience
        if patience is not None and patience < 1:
            raise ConfigError(f"'{part}.early_stopping_patience' must be >= 1 or null, got {patience}")
    if cfg.adapter.polish_epochs < 0:
        raise ConfigError(f"'adapter.polish_epochs' must be >= 0, got {cfg.adapter.polish_epochs}")
    if cfg.adapter.steps is not None and cfg.adapter.steps < 1:
        raise ConfigError(f"'adapter.steps' must be >= 1 or null, got {cfg.adapter.steps}")
    if cfg.target.get("bank"):
        raise ConfigError(f"'target.bank' is {cfg.target.bank!r}, but only the source's prompts can be imported (source.bank); "
                          "the target's bank is what a migration makes")
    bad_sides = [s for s in cfg.baselines.shared_prompt if s not in ("source", "target")]
    if bad_sides:
        raise ConfigError(f"'baselines.shared_prompt' lists {bad_sides}; expected a list of: source, target")
    seeds = cfg.get("seeds")
    if seeds is not None and (not len(seeds) or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"'seeds' must be a non-empty list of distinct integers, got {list(seeds)}")
    if not isinstance(cfg.selection, DictConfig) or "name" not in cfg.selection:
        raise ConfigError("'selection' must be a mapping with 'name' and 'budget' (or selection=NAME)")
    budget = cfg.selection.get("budget")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise ConfigError(f"'selection.budget' must be a positive integer, got {budget!r}")
    from puma_lightning.selection import build_strategy

    try:
        build_strategy(OmegaConf.to_container(cfg.selection, resolve=True))
    except ValueError as exc:
        raise ConfigError(f"'selection': {exc}") from None


def checked_template(cfg: DictConfig) -> "Template":
    """``data.template`` resolved and checked against ``data.task``; ``auto`` is replaced by the dataset's own template
    (the task's generic one where the dataset has either task and its own reads the other task's answers)."""
    from puma_lightning.data.datasets import get_dataset
    from puma_lightning.data.templates import TASK_ANSWERS, TASK_TEMPLATES, TEMPLATES, TemplateError, resolve_template

    task = str(cfg.data.task)
    if isinstance(cfg.data.template, str) and cfg.data.template == "auto":  # the dataset's own, from the registry
        own = get_dataset(str(cfg.data.name)).template
        fits = own in TEMPLATES and len(TEMPLATES[own].answers) == len(TASK_ANSWERS[task])
        cfg.data.template = own if fits else TASK_TEMPLATES[task]
    if not isinstance(cfg.data.template, (str, DictConfig)):
        raise ConfigError(f"'data.template' must be a template name or a mapping with 'text' (and 'answers'), got "
                          f"{cfg.data.template!r}")
    if isinstance(cfg.data.template, str) and cfg.data.template not in TEMPLATES:
        raise ConfigError(f"'data.template' is {cfg.data.template!r}; expected one of: {', '.join(sorted(TEMPLATES))}, "
                          "or an inline mapping with 'text'")
    try:
        template = resolve_template(cfg.data.template, task)
    except TemplateError as exc:
        raise ConfigError(str(exc)) from None
    if len(template.answers) != len(TASK_ANSWERS[task]):
        raise ConfigError(f"'data.template' {template.name!r} answers {list(template.answers)}, but data.task={task} reads "
                          f"{len(TASK_ANSWERS[task])} answer(s); use a {task} template, e.g. {TASK_TEMPLATES[task]!r}")
    return template


def load_lever_sets(path: str | Path) -> dict[str, list[str]]:
    """Named sets of config overrides from a YAML file (``configs/levers/*.yaml``): ``levers: {name: [override, ...]}``,
    where ``+GROUP`` stands for the overrides listed under ``groups: {GROUP: [...]}``; one-line errors name the file and
    the lever."""
    path = Path(path)
    try:
        doc = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except FileNotFoundError:
        raise ConfigError(f"lever file not found: {path}") from None
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("levers"), dict):
        raise ConfigError(f"{path}: expected a mapping with 'levers' (and optionally 'groups')")
    groups = doc.get("groups") or {}
    out: dict[str, list[str]] = {}
    for name, items in doc["levers"].items():
        if not isinstance(items, list):
            raise ConfigError(f"{path}: lever {name!r} must be a list of key=value overrides, got {items!r}")
        overrides: list[str] = []
        for item in items:
            if isinstance(item, str) and item.startswith("+"):
                if item[1:] not in groups:
                    raise ConfigError(f"{path}: lever {name!r} names group {item[1:]!r}; groups: {', '.join(groups) or 'none'}")
                overrides += [str(x) for x in groups[item[1:]]]
            elif isinstance(item, str) and "=" in item:
                overrides.append(item)
            else:
                raise ConfigError(f"{path}: lever {name!r} has {item!r}; expected key=value or +GROUP")
        out[str(name)] = overrides
    return out


def save_config(cfg: DictConfig, path: Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from puma_lightning.io.atomic import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
