"""Config documentation for ``--help``: the field docstrings of the config dataclasses, read
from the source (so the docstrings in ``config.py`` are the single place they are written)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from functools import lru_cache
from typing import Any

from puma_lightning import config as config_module


@lru_cache(maxsize=None)
def _field_docs() -> dict[str, dict[str, str]]:
    """``{class name: {field: docstring}}`` from string literals placed right after each field."""
    tree = ast.parse(inspect.getsource(config_module))
    docs: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            fields: dict[str, str] = {}
            body = node.body
            for stmt, nxt in zip(body, body[1:]):
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr) \
                        and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                    fields[stmt.target.id] = " ".join(nxt.value.value.split())
            docs[node.name] = fields
    return docs


def describe_config(cls: type = config_module.ExperimentConfig, prefix: str = "") -> str:
    """One line per config key: ``key (default): docstring``; nested sections are expanded."""
    lines: list[str] = []
    docs = _field_docs().get(cls.__name__, {})
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        default: Any = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            lines.append(f"  {key}: {docs.get(f.name, '')}")
            lines.append(describe_config(type(default), key + "."))
        else:
            lines.append(f"  {key} (default {default!r}): {docs.get(f.name, '')}")
    return "\n".join(lines)
