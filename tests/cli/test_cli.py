"""The command line: help lists documented keys, --print-config, one-line errors, exit codes."""

import subprocess
import sys
from pathlib import Path

import pytest

from puma_lightning.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def test_module_help_lists_commands_and_documented_keys():
    out = subprocess.run([sys.executable, "-m", "puma_lightning", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for word in ("pretrain", "fit", "migrate", "test", "adapter.kind", "selection", "Learning rate of the adapter"):
        assert word in out.stdout


@pytest.mark.slow
def test_command_help_shows_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--print-config" in out and "prompt.lr" in out


@pytest.mark.slow
def test_print_config_merges_files_and_overrides(capsys, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("prompt:\n  epochs: 9\n")
    code = main(["fit", "--config", str(ROOT / "configs" / "smoke.yaml"), "--config", str(extra), "--print-config",
                 "adapter.hidden=77", "selection=random"])
    out = capsys.readouterr().out
    assert code == 0
    assert "epochs: 9" in out and "hidden: 77" in out and "name: random" in out and "budget: 30" in out
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize("args,needle", [
    (["fit", "prompt.epochz=3"], "prompt.epochz"),
    (["fit", "adapter.lr=fast"], "adapter.lr"),
    (["fit", "--config", "nope.yaml"], "nope.yaml"),
    (["migrate", "run_dir=RUN"], "bank=PATH"),
    (["fit", "seeds=[0,0]"], "seeds"),
    (["fit", "seeds=[]"], "seeds"),
])
def test_bad_input_is_one_line_on_stderr_with_exit_2(args, needle, capsys, tmp_path):
    args = [a.replace("RUN", str(tmp_path)) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert last.startswith("error:") and needle in last and "Traceback" not in err
    assert all(line.startswith("20") for line in err.splitlines()[:-1])  # anything before is a log line


def test_no_command_prints_usage(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_help_lists_every_command_from_the_one_table_bank_included(capsys):
    from puma_lightning.commands import COMMANDS

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in (*COMMANDS, "bank"):
        assert f"    {name}" in out, name


def test_every_command_is_one_module_with_a_run_function():
    import importlib
    import inspect

    from puma_lightning.commands import COMMANDS

    modules = {command.module for command in COMMANDS.values()}
    assert len(modules) == len(COMMANDS)  # one module per command
    for name in modules:
        run = importlib.import_module(f"puma_lightning.commands.{name}").run
        assert list(inspect.signature(run).parameters) == ["cfg", "run_dir", "args"], name


def test_bank_errors_are_one_line_unless_debugging(tmp_path, capsys, monkeypatch):
    assert main(["bank", "info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    monkeypatch.setenv("PUMA_DEBUG", "1")
    with pytest.raises(Exception):
        main(["bank", "info", str(tmp_path / "missing")])


def test_each_command_help_shows_its_own_keys_and_the_strategies_parameters(capsys):
    with pytest.raises(SystemExit):
        main(["migrate", "--help"])
    out = capsys.readouterr().out
    assert "adapter_path" in out and "prompt.lr" not in out and "selection.n_clusters" not in out
    with pytest.raises(SystemExit):
        main(["select", "--help"])
    out = capsys.readouterr().out
    assert "selection=kmeans_pca" in out and "selection.n_components (default 256): Principal components kept" in out


LOG_ONCE = """
import logging, sys
if sys.argv[1] == "basicConfig":
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
from puma_lightning.cli.config_loader import load_config
from puma_lightning.cli.main import setup_runtime
setup_runtime(load_config([sys.argv[2]], []))
setup_runtime(load_config([sys.argv[2]], []))  # once per cell, as the benchmarks do
logging.getLogger("puma_lightning.probe").info("probe line")
"""


@pytest.mark.parametrize("setup", ["basicConfig", "bare"])
def test_each_log_line_is_printed_once_whether_or_not_the_script_configured_logging(setup):
    out = subprocess.run([sys.executable, "-c", LOG_ONCE, setup, str(ROOT / "configs" / "smoke.yaml")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("probe line") == 1, out.stderr
