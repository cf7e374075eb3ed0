"""Config and argument documentation for ``--help``: the field docstrings of the config dataclasses and of the
commands' argument dataclasses, read from the source (so the docstrings in ``config.py`` and in each command's module
are the single place they are written)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from functools import lru_cache
from typing import Any, Sequence

from puma_lightning import config as config_module


def _docs_of_class(node: ast.ClassDef) -> dict[str, str]:
    """``{field: docstring}`` from string literals placed right after each annotated field."""
    fields: dict[str, str] = {}
    for stmt, nxt in zip(node.body, node.body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            fields[stmt.target.id] = " ".join(nxt.value.value.split())
    return fields


@lru_cache(maxsize=None)
def _field_docs() -> dict[str, dict[str, str]]:
    """``{class name: {field: docstring}}`` for the classes of ``config.py``."""
    tree = ast.parse(inspect.getsource(config_module))
    return {node.name: _docs_of_class(node) for node in tree.body if isinstance(node, ast.ClassDef)}


def field_docs(cls: type) -> dict[str, str]:
    """The field docstrings of any dataclass (its bases' first), read from its source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (e.g. made at run time): no docstrings
            continue
        node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
        if node is not None:
            docs.update(_docs_of_class(node))
    return docs


def describe_config(cls: type = config_module.ExperimentConfig, prefix: str = "", only: Sequence[str] | None = None) -> str:
    """One line per config key: ``key (default; one of: choices): docstring``; nested sections are expanded. The
    choices are the config loader's (:func:`~puma_lightning.cli.config_loader.choices`: the registries').

    ``only``: the top-level keys to show (a command's own), in the config's order."""
    from puma_lightning.cli.config_loader import choices

    listed = choices()
    lines: list[str] = []
    docs = _field_docs().get(cls.__name__, {})
    for f in dataclasses.fields(cls):
        if only is not None and not prefix and f.name not in only and not (f.name == "levers" and "plugins" in only):
            continue  # (the levers' sections go with the plugins that register them)
        key = f"{prefix}{f.name}"
        default: Any = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            lines.append(f"  {key}: {docs.get(f.name, '')}")
            lines.append(describe_config(type(default), key + "."))
        else:
            allowed = f"; one of: {', '.join(listed[key])}" if key in listed else ""
            lines.append(f"  {key} (default {default!r}{allowed}): {docs.get(f.name, '')}")
    if not prefix and (only is None or "plugins" in only):
        lines.append(describe_levers())
    return "\n".join(lines)


def describe_levers() -> str:
    """Every registered lever: its options, and for a lever of your own its section's settings (``levers.NAME.KEY``)."""
    from puma_lightning.pipeline.levers.registry import LEVERS

    lines = ["  levers registered (docs/extending.md):"]
    for name, lever in LEVERS.items():
        lines.append(f"    {name}: {lever.description or ' '.join((type(lever).__doc__ or '').split())} "
                     f"[{', '.join(o.key for o in lever.options)}]")
    return "\n".join(lines)


def describe_strategies() -> str:
    """Every registered selection strategy with its parameters (``selection.PARAM=value``) and their docstrings."""
    from puma_lightning.selection import STRATEGIES

    lines: list[str] = []
    for name, strategy in STRATEGIES.items():
        doc = " ".join((strategy.__doc__ or "").split())
        lines.append(f"  selection={name}: {doc}")
        params = strategy.Params
        docs = field_docs(params)
        for f in dataclasses.fields(params):
            default: Any = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            lines.append(f"    selection.{f.name} (default {default!r}): {docs.get(f.name, '')}")
    return "\n".join(lines)


def describe_arguments(cls: type) -> str:
    """One line per argument of a command (an arguments dataclass of :mod:`puma_lightning.commands`):
    ``key (what it takes, default ...): docstring``."""
    from puma_lightning.commands.arguments import expected

    docs = field_docs(cls)
    return "\n".join(f"  {f.name} ({expected(cls, f.name)}; default {f.default!r}): {docs.get(f.name, '')}"
                     for f in dataclasses.fields(cls))
