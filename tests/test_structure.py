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
          "tasks": 3, "pipeline": 4, "commands": 5, "cli": 6}
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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at the top or inside a function alike (a function-local import still
    ties the two modules together; it only hides the tie)."""
    modules = {_module_name(p): p for p in (ROOT / "puma_lightning").rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for me, path in modules.items():
        package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[me].update(t for t in targets if t in modules and t != me)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    cycles.append(sorted(group))
    return cycles


def test_no_import_runs_in_a_circle():
    """Every import, function-local ones included, goes one way: a registry never imports what registers in it, a
    command's module is imported by nothing below it."""
    graph = package_imports()
    assert len(graph) > 100 and sum(len(v) for v in graph.values()) > 300  # the graph was read
    assert import_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


INNER_LAYERS = {"puma_lightning.pipeline.levers": 0, "puma_lightning.pipeline.stages": 1, "puma_lightning.pipeline.experiment": 2}
"""Inside ``pipeline``: a lever acts through hooks and never imports the rows that call it (stages) or the run context
(experiment); a stage is handed the experiment and never imports it."""


def test_levers_import_no_stage_and_stages_import_no_experiment():
    def layer(module: str) -> int | None:
        return next((rank for prefix, rank in INNER_LAYERS.items()
                     if module == prefix or module.startswith(prefix + ".")), None)

    found = [f"{me} imports {target}" for me, targets in package_imports().items() for target in targets
             if layer(me) is not None and layer(target) is not None and layer(target) > layer(me)]
    assert not found, found
    assert any(layer(m) == 0 for m in package_imports()) and any(layer(m) == 1 for m in package_imports())
