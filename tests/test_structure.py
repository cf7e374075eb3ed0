"""The code's own structure rules: no module reaches into another's private members."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWN = ("puma_lightning", "benchmarks")


def _sources() -> list[Path]:
    return [p for folder in OWN for p in (ROOT / folder).rglob("*.py")]


def test_no_undefined_or_unused_names():
    """pyflakes' rules (ruff ``F``): an undefined name is a crash waiting on the path that reaches it, an unused import
    a leftover of a change."""
    import shutil
    import subprocess

    ruff = shutil.which("ruff")
    assert ruff, "ruff is part of the [test] extra: pip install -e '.[test]'"
    done = subprocess.run([ruff, "check", "--select", "F", "--output-format", "concise", "--no-cache",
                           *(str(ROOT / f) for f in (*OWN, "tests"))], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_private_names_are_imported_from_another_module():
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(OWN)):
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found


def test_no_private_attribute_of_another_object_is_used():
    """``x._name`` only on ``self``/``cls`` (and on torch, whose private hooks the compile path needs)."""
    allowed_roots = {"self", "cls", "module", "torch", "FrozenLM", "layer"}
    found = []
    for path in (ROOT / "puma_lightning").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if not (isinstance(root, ast.Name) and root.id in allowed_roots):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert not found, found


LAYERS = {"errors": 0, "config": 0, "machine": 0, "presets": 0, "io": 1, "data": 2, "models": 2, "selection": 2,
          "tasks": 3, "pipeline": 4, "cli": 5}
"""Each package may import its own layer and those below it, never one above."""


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    found = []
    for path in (ROOT / "puma_lightning").rglob("*.py"):
        rel = path.relative_to(ROOT / "puma_lightning").parts
        me = rel[0].removesuffix(".py")
        if me not in LAYERS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                parts = name.split(".")
                if parts[0] == "puma_lightning" and len(parts) > 1 and LAYERS.get(parts[1], -1) > LAYERS[me]:
                    found.append(f"{'/'.join(rel)}:{node.lineno} imports {name}")
    assert not found, found
