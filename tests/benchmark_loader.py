"""Import a script from ``benchmarks/`` (not a package) as a module, and check the machine each
benchmark names with its figures, for the benchmark tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a fresh module (registered in ``sys.modules``, which dataclasses need)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def machine_line(printed: str) -> str:
    """The one ``machine: ...`` line of a benchmark's output; asserts it names this CPU's capability and torch."""
    lines = [line for line in printed.splitlines() if line.startswith("machine: ")]
    assert len(lines) == 1, f"expected one 'machine: ' line in:\n{printed}"
    line = lines[0]
    assert f"({torch.backends.cpu.get_cpu_capability()}, " in line, line
    assert f"torch {torch.__version__}," in line, line
    return line


def check_machine_record(record: dict[str, Any], dtype: str | None) -> None:
    """A results file's ``machine`` record: this machine's capability, threads and torch, and ``dtype``."""
    assert record["capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["torch"] == torch.__version__ and record["threads"].isdigit() and record["cpu"]
    assert record["dtype"] == dtype
