"""Command arguments (``bank=``, ``model=``, ``out=``, ...): routed to the command that takes them, typed and checked
with one-line errors, refused for another command, absent from the config, and listed by ``COMMAND --help``."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from puma_lightning.cli.config_loader import ConfigError, load_config
from puma_lightning.cli.help import field_docs
from puma_lightning.cli.main import main
from puma_lightning.commands import COMMANDS, argument_defaults, argument_owners, split_arguments
from puma_lightning.commands.arguments import ArgumentError
from puma_lightning.config import ExperimentConfig

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
OLD_CONFIG = Path(__file__).with_name("old_run_config.yaml")
TAKEN = {"migrate": {"bank", "adapter_path", "out", "rows_per_shard"}, "test": {"bank", "model", "split"},
         "placebo": {"bank", "model"}, "predict": {"bank", "model", "pairs", "top_k", "out", "overwrite"},
         "pretrain": {"model"}}
"""What each command took from the config before its arguments were its own (issue 33, item 3)."""


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    return err


def test_each_command_takes_what_it_read_from_the_config_and_nothing_else():
    assert {name: {f.name for f in dataclasses.fields(c.arguments)} for name, c in COMMANDS.items()
            if dataclasses.fields(c.arguments)} == TAKEN


def test_arguments_are_no_config_keys_and_no_command_lists_them_as_keys():
    config_keys = {f.name for f in dataclasses.fields(ExperimentConfig)}
    assert not set(argument_owners()) & config_keys
    for name, command in COMMANDS.items():
        assert set(command.keys) <= config_keys, name


def test_a_shared_argument_has_one_default_and_type_and_each_docstring_is_written_once():
    declared: dict[str, set[str]] = {}
    for key, owners in argument_owners().items():
        fields = [next(f for f in dataclasses.fields(COMMANDS[c].arguments) if f.name == key) for c in owners]
        assert len({repr(f.default) for f in fields}) == 1 and len({str(f.type) for f in fields}) == 1, key
        for c in owners:
            cls = COMMANDS[c].arguments
            owner = next(k for k in cls.__mro__ if key in k.__dict__.get("__annotations__", {}))
            doc = field_docs(cls)[key]
            assert doc, (c, key)
            declared.setdefault(doc, set()).add(f"{owner.__module__}.{owner.__qualname__}")
    assert all(len(where) == 1 for where in declared.values()), declared  # no docstring copied into a second class


def test_arguments_reach_the_command_and_overrides_the_config(tmp_path, monkeypatch):
    import puma_lightning.commands.placebo as placebo

    seen = {}
    monkeypatch.setattr(placebo, "run", lambda cfg, run_dir, args: seen.update(cfg=cfg, args=args))
    assert main(["placebo", "--config", SMOKE, f"run_dir={tmp_path}", f"bank={tmp_path / 'b'}", "model=source",
                 "prompt.lr=0.5", "placebo.resamples=7"]) == 0
    args, cfg = seen["args"], seen["cfg"]
    assert isinstance(args, placebo.PlaceboArguments) and args.bank == str(tmp_path / "b") and args.model == "source"
    assert cfg.prompt.lr == 0.5 and cfg.placebo.resamples == 7 and "bank" not in cfg and "model" not in cfg
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert not set(saved) & set(argument_owners()) and saved["prompt"]["lr"] == 0.5


def test_values_are_typed_as_the_config_read_them():
    args, rest = split_arguments("predict", ["bank=b", "top_k=3", "overwrite=true", "prompt.lr=0.1", "pairs=p.csv",
                                             "model=source", "out=o.csv", "seed=2"])
    assert (args.bank, args.top_k, args.overwrite, args.pairs, args.model, args.out) == ("b", 3, True, "p.csv", "source", "o.csv")
    assert rest == ["prompt.lr=0.1", "seed=2"]
    args, _ = split_arguments("migrate", ["rows_per_shard=null", "out=123"])
    assert args.rows_per_shard is None and args.out == "123" and args.bank is None
    assert split_arguments("test", [])[0].split == "test"


@pytest.mark.parametrize("command,token,expected", [
    ("predict", "top_k=abc", "'top_k' is 'abc'; expected an integer >= 1 or null"),
    ("predict", "top_k=0", "'top_k' is 0; expected an integer >= 1 or null"),
    ("migrate", "rows_per_shard=-2", "'rows_per_shard' is -2; expected an integer >= 1 or null"),
    ("migrate", "rows_per_shard=1.5", "'rows_per_shard' is '1.5'; expected an integer"),
    ("predict", "overwrite=maybe", "'overwrite' is 'maybe'; expected true or false"),
    ("placebo", "model=middle", "'model' is 'middle'; expected one of: source, target"),
    ("pretrain", "model=null", "'model' is 'null'; expected one of: source, target"),
    ("test", "split=train", "'split' is 'train'; expected one of: valid, test"),
])
def test_a_bad_value_is_one_line_naming_the_key_and_what_it_takes(command, token, expected, tmp_path, capsys):
    assert main([command, "--config", SMOKE, f"run_dir={tmp_path / 'run'}", token]) == 2
    assert expected in one_line_error(capsys)
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


@pytest.mark.parametrize("command,token,owners", [("fit", "bank=x", "migrate, test, placebo, predict"),
                                                  ("migrate", "top_k=3", "predict"), ("prepare", "model=source",
                                                                                       "pretrain, test, placebo, predict"),
                                                  ("test", "out=o.csv", "migrate, predict")])
def test_an_argument_of_another_command_says_which_commands_take_it(command, token, owners, tmp_path, capsys):
    assert main([command, "--config", SMOKE, f"run_dir={tmp_path / 'run'}", token]) == 2
    err = one_line_error(capsys)
    key = token.split("=")[0]
    assert f"'{key}' is not an argument of {command}" in err and owners in err and f"{key}=" in err
    assert not (tmp_path / "run").exists()


def test_load_config_says_an_argument_is_no_config_key():
    with pytest.raises(ArgumentError, match="'top_k' is not a config key; it is an argument of predict"):
        load_config([SMOKE], ["top_k=3"])


def test_a_run_config_saved_with_the_old_keys_at_their_defaults_still_loads(tmp_path, capsys):
    old = yaml.safe_load(OLD_CONFIG.read_text())
    assert {k: old[k] for k in argument_defaults()} == argument_defaults()  # what the old save_config wrote
    cfg = load_config([OLD_CONFIG], [f"run_dir={tmp_path}"])
    assert not set(cfg) & set(argument_owners()) and cfg.data.name == old["data"]["name"]
    assert main(["fit", "--config", str(OLD_CONFIG), f"run_dir={tmp_path}", "--print-config"]) == 0
    assert OmegaConf.to_container(OmegaConf.create(capsys.readouterr().out)) == OmegaConf.to_container(cfg)


@pytest.mark.parametrize("line,token", [("model: source", "model=source"), ("top_k: 5", "top_k=5"),
                                        ("overwrite: true", "overwrite=True"), ("bank: runs/x/puma/bank", "bank=runs/x/puma/bank")])
def test_a_config_file_setting_an_argument_is_one_line_naming_file_and_key(line, token, tmp_path):
    key = line.split(":")[0]
    text = "\n".join(line if ln.startswith(f"{key}:") else ln for ln in OLD_CONFIG.read_text().splitlines())
    path = tmp_path / "config.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        load_config([path])
    msg = str(err.value)
    assert str(path) in msg and f"'{key}'" in msg and f"on the command line as {token}" in msg and "\n" not in msg


def test_command_help_lists_its_arguments_with_their_docstrings_before_its_config_keys(capsys):
    for name in ("predict", "migrate", "test"):
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = capsys.readouterr().out
        arguments, keys = out.split("Config keys of this command")
        assert "Arguments of this command" in arguments
        docs = field_docs(COMMANDS[name].arguments)
        for f in dataclasses.fields(COMMANDS[name].arguments):
            line = next((ln for ln in arguments.splitlines() if ln.startswith(f"  {f.name} (")), "")
            assert line.endswith(docs[f.name]), (name, f.name)  # the whole docstring, on the argument's line
            assert not any(ln.startswith(f"  {f.name} (") for ln in keys.splitlines()), (name, f.name)
    assert "one of: source, target; default 'target'" in out and "one of: valid, test" in out
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "Arguments of this command" not in capsys.readouterr().out


def test_parsing_the_command_line_loads_no_torch():
    """Reading the commands' arguments imports their modules: those import what they run with inside their functions.
    (``--help`` may load torch: it lists the adapter kinds, whose registry is the torch modules themselves.)"""
    code = ("import sys; from puma_lightning.commands import split_arguments; "
            "from puma_lightning.cli.config_loader import choices; split_arguments('predict', ['top_k=2']); "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_the_seeded_commands_take_no_arguments():
    """``seeds=[...]`` runs a command through :mod:`puma_lightning.commands.seeds` on the config alone."""
    from puma_lightning.commands.seeds import SEEDED_COMMANDS

    assert all(not dataclasses.fields(COMMANDS[name].arguments) for name in SEEDED_COMMANDS)


def test_print_config_shows_the_commands_arguments_as_comments_and_stays_a_config(tmp_path, capsys):
    assert main(["test", "--config", SMOKE, f"run_dir={tmp_path}", "bank=runs/x/bank", "split=valid",
                 "--print-config"]) == 0
    out = capsys.readouterr().out
    comments = [line for line in out.splitlines() if line.startswith("# ")]
    assert comments[1:] == ["# bank: runs/x/bank", "# model: target", "# split: valid"], comments
    printed = tmp_path / "printed.yaml"
    printed.write_text(out)
    assert OmegaConf.to_container(load_config([printed], [])) == OmegaConf.to_container(
        load_config([SMOKE], [f"run_dir={tmp_path}"]))  # the comments are no keys: it loads as the same config
    assert main(["fit", "--config", SMOKE, f"run_dir={tmp_path}", "--print-config"]) == 0
    assert "# arguments" not in capsys.readouterr().out  # fit takes none
