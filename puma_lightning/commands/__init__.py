"""The CLI's commands, one module per command: what ``python -m puma_lightning <command>`` runs on the loaded config.

Every command that takes a config is a :class:`Command` in :data:`COMMANDS` (``--help`` lists them in this order);
``bank`` takes paths instead (:mod:`puma_lightning.commands.bank`). ``cli/main.py`` only parses the command line,
loads the config and runs the command named here inside the run directory's lock. A command's own ``key=value``
arguments (``bank=``, ``out=``, ...) are a dataclass in its module (:mod:`puma_lightning.commands.arguments`):
:func:`split_arguments` takes them out of the command line, and every other token stays a config override.

The command modules named here with arguments are imported to read them (``--help``, the routing), so they import
what they run with inside their functions: the command line is parsed without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import import_module
from pathlib import Path
from typing import Any, Sequence

from puma_lightning.commands.arguments import ArgumentError, Arguments, parse_arguments
from puma_lightning.commands.evaluate import EvaluateArguments
from puma_lightning.commands.keys import EXPERIMENT_KEYS
from puma_lightning.commands.migrate import MigrateArguments
from puma_lightning.commands.placebo import PlaceboArguments
from puma_lightning.commands.predict import PredictArguments
from puma_lightning.commands.pretrain import PretrainArguments

__all__ = ["BANK_HELP", "COMMANDS", "Command", "EXPERIMENT_KEYS", "argument_defaults", "argument_owners", "not_a_config_key",
           "split_arguments"]


@dataclass(frozen=True)
class Command:
    """One CLI command: its help text, the module that runs it, and the top-level config keys it reads."""

    help: str
    module: str
    """The module under :mod:`puma_lightning.commands` whose ``run(cfg, run_dir, args)`` the command is (imported when
    run)."""
    keys: tuple[str, ...] = EXPERIMENT_KEYS
    """Top-level config keys this command reads (its ``--help`` lists them)."""
    arguments: type[Arguments] = Arguments
    """The command's own ``key=value`` arguments, a dataclass declared in its module (its ``--help`` lists them first)."""

    def run(self, cfg: Any, run_dir: Path, args: Arguments) -> None:
        """Run the command on the loaded config with its own arguments."""
        import_module(f"puma_lightning.commands.{self.module}").run(cfg, run_dir, args)


COMMANDS: dict[str, Command] = {
    "prepare": Command("Read the raw files in data.raw_dir and write the processed dataset (reused when unchanged).", "prepare",
                       ("run_dir", "plugins", "data", "cache_dir")),
    "pretrain": Command("Train per-user soft prompts on one model (the source, or the target for the retraining baseline).",
                        "pretrain", ("run_dir", "seed", "plugins", "levers", "data", "source", "target", "prompt", "trainer", "cache_dir",
                                     "resume"), PretrainArguments),
    "fit": Command("Run the whole PUMA experiment and print the comparison table (reuses finished stages in run_dir).", "fit"),
    "select": Command("Select the adapter's training users only; write selection.json, selection_summary.md, selection.png.",
                      "select", ("run_dir", "seed", "plugins", "levers", "data", "source", "prompt", "selection", "trainer", "cache_dir",
                                 "source_dir")),
    "migrate": Command("Apply a saved adapter to a prompt bank (bank=, or source.bank=) and write the migrated bank.", "migrate",
                       ("run_dir", "trainer", "source"), MigrateArguments),
    "test": Command("Evaluate a prompt bank on a model and split.", "evaluate",
                    ("run_dir", "plugins", "levers", "data", "source", "target", "prompt", "trainer", "cache_dir"), EvaluateArguments),
    "placebo": Command("Score a prompt bank's test rows with each user's own prompt and with its prompts dealt to other "
                       "users (a derangement seeded by seed; same head and rows); prints, per metric, both values and the "
                       "personal gain (how much better the own prompts are) with its 95 percent bootstrap interval, and writes "
                       "run_dir/placebo.json. An interval holding 0: no measurable personalisation.", "placebo",
                       ("run_dir", "seed", "plugins", "levers", "placebo", "data", "source", "target", "prompt", "trainer", "cache_dir"),
                       PlaceboArguments),
    "predict": Command("Score (user, item) pairs with a prompt bank on a model, or rank each user's candidates (top_k).",
                       "predict", ("run_dir", "plugins", "levers", "data", "source", "target", "prompt", "trainer", "cache_dir"),
                       PredictArguments),
    "chain": Command("Chained migration over chain.models [A, B, C, ...]: table and plot of the metric per hop vs full "
                     "retraining.", "chain", (*EXPERIMENT_KEYS, "chain")),
    "aggregate": Command("Aggregated migration of aggregate.sources [A, B, ...] to target: single-source vs aggregated table "
                         "and chart.", "aggregate", (*EXPERIMENT_KEYS, "aggregate")),
    "cold-start": Command("Users new on the target: source prompt + adapter, adapter init + fine-tuning, vs training from "
                          "scratch.", "cold_start", (*EXPERIMENT_KEYS, "cold_start")),
}
"""Every command that takes a config, in ``--help`` order."""


def argument_owners() -> dict[str, tuple[str, ...]]:
    """Each command argument's name -> the commands that take it, in :data:`COMMANDS` order."""
    owners: dict[str, tuple[str, ...]] = {}
    for name, command in COMMANDS.items():
        for f in fields(command.arguments):
            owners[f.name] = (*owners.get(f.name, ()), name)
    return owners


def argument_defaults() -> dict[str, Any]:
    """Each command argument's name -> its default (the same in every command that takes it): the value the config
    files of versions that kept these keys in the config hold when the command line did not set them."""
    defaults: dict[str, Any] = {}
    for command in COMMANDS.values():
        for f in fields(command.arguments):
            defaults.setdefault(f.name, f.default)
    return defaults


def not_a_config_key(key: str, command: str | None = None) -> ArgumentError:
    """The one line for a command argument given where it is not taken: to another command, or as a config key."""
    owners = argument_owners()[key]
    where = f"is not an argument of {command}" if command else "is not a config key"
    return ArgumentError(f"'{key}' {where}; it is an argument of {', '.join(owners)} (pass it to "
                         f"{'that command' if len(owners) == 1 else 'one of those'} as {key}=VALUE)")


def split_arguments(command: str, tokens: Sequence[str]) -> tuple[Arguments, list[str]]:
    """``command``'s own arguments, parsed and checked from the ``key=value`` tokens naming them, and the tokens left
    for the config (in their order). A token naming another command's argument is one :class:`ArgumentError` line."""
    own = {f.name for f in fields(COMMANDS[command].arguments)}
    owners = argument_owners()
    mine: list[str] = []
    rest: list[str] = []
    for token in tokens:
        key = token.split("=", 1)[0] if "=" in token else None
        if key in own:
            mine.append(token)
        elif key in owners:
            raise not_a_config_key(key, command)
        else:
            rest.append(token)
    return parse_arguments(COMMANDS[command].arguments, mine), rest

BANK_HELP = ("Inspect, compare, export and import prompt banks: bank info PATH | bank diff A B | bank export-peft PATH "
             "(--user ID | --all) --out DIR | bank import (--prompts FILE --users FILE | --peft DIR) --model NAME --out DIR.")
