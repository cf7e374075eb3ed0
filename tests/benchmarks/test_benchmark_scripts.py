"""Every script in ``benchmarks/`` reaches the package through its installed public API: none edits ``sys.path``,
each imports as a plain module without running (its work sits under ``if __name__ == "__main__":``), and none
imports another module's private names (``tests/test_structure.py`` checks that over benchmarks/ too)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))


def test_the_glob_finds_the_benchmark_scripts():
    assert len(SCRIPTS) >= 10, SCRIPTS


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_does_not_edit_sys_path(path):
    assert "sys.path" not in path.read_text(encoding="utf-8"), f"{path.name}: import the installed package instead"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_imports_without_running(path, monkeypatch, capsys):
    name = f"benchmark_script_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up here
    monkeypatch.setattr(sys, "argv", [str(path), "--must-not-be-parsed-at-import"])
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"
    assert capsys.readouterr().out == "", f"{path.name} printed at import"


def test_personal_probe_reads_the_prompt_study_levers():
    """The probe and the study read one lever file (configs/levers/prompt_study.yaml)."""
    spec = importlib.util.spec_from_file_location("benchmark_script_personal_probe_levers",
                                                  ROOT / "benchmarks" / "personal_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    levers = probe.all_levers()
    assert "shipped" in levers and all(isinstance(v, list) for v in levers.values())
