"""``python -m puma_lightning <command> --config FILE [--config FILE2] [key=value ...]``.

The commands and their help texts are :data:`COMMANDS` (``python -m puma_lightning --help`` lists
them); ``bank`` takes paths instead of a config (``bank --help``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from puma_lightning.cli.help import describe_arguments, describe_config, describe_strategies
from puma_lightning.commands import BANK_HELP, COMMANDS, split_arguments
from puma_lightning.commands.arguments import Arguments
from puma_lightning.errors import PumaError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m puma_lightning",
        description="Migrate per-user soft prompts between foundation LLMs with a PUMA adapter.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Config keys (override any with key=value; COMMAND --help lists that command's own arguments and keys, "
               "and each selection strategy's parameters):\n" + describe_config(),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        epilog = ""
        if dataclasses.fields(command.arguments):
            epilog = ("Arguments of this command (key=value; they are not config keys and are not saved in "
                      "run_dir/config.yaml):\n" + describe_arguments(command.arguments) + "\n\n")
        epilog += "Config keys of this command (override any with key=value):\n" + describe_config(only=command.keys)
        if "selection" in command.keys:
            epilog += "\n\nSelection strategies (selection=NAME) and their parameters:\n" + describe_strategies()
        p = sub.add_parser(name, help=command.help, description=command.help, formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=epilog)
        p.add_argument("--config", action="append", default=[], metavar="FILE",
                       help="YAML config file; repeat to merge several (later files win)")
        p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="this command's arguments (listed below), or OmegaConf dotlist overrides of the config, e.g. "
                            "trainer.max_epochs=2; selection=NAME loads strategies/NAME.yaml")
    sub.add_parser("bank", help=BANK_HELP, description=BANK_HELP, add_help=False)  # parsed by commands.bank
    return parser


def run(command: str, config_files: Sequence[str], overrides: Sequence[str], print_config: bool = False) -> int:
    """Load the config and run one command; returns the process exit code. The ``key=value`` tokens naming the command's
    own arguments go to it (:func:`puma_lightning.commands.split_arguments`), the others override the config."""
    from omegaconf import OmegaConf

    from puma_lightning.cli.config_loader import load_config

    args, config_overrides = split_arguments(command, overrides)
    cfg = load_config(config_files, config_overrides)
    if print_config:
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        print(arguments_as_comments(command, args), end="")
        return 0
    setup_runtime(cfg)
    from puma_lightning.io.lock import RunLock
    from puma_lightning.io.ownership import RECORD_FILE, check_run_dir_path, claim_run_dir
    from puma_lightning.pipeline.run_dir import RunDir, as_it_was_on_failure

    run_dir = RunDir.of(cfg).path
    check_run_dir_path(run_dir)
    args.check(cfg, config_files)  # e.g. an out= that is one of the inputs: refused before the run dir is claimed
    with as_it_was_on_failure(run_dir, ("config.yaml", RECORD_FILE)):
        claim_run_dir(run_dir)  # a folder we did not make is refused before anything is written into it
        with RunLock(run_dir, command=" ".join([command, *overrides])):
            return _run_locked(command, cfg, run_dir, args)


def arguments_as_comments(command: str, args: Arguments) -> str:
    """The command's own arguments with their values, as YAML comments under the printed config: shown, but a saved
    ``--print-config`` stays a config file (arguments are refused there)."""
    if not dataclasses.fields(args):
        return ""
    from omegaconf import OmegaConf

    lines = OmegaConf.to_yaml(OmegaConf.structured(args)).splitlines()
    return "".join(f"# {line}\n" for line in
                   [f"arguments of {command} (key=value; not config keys, not saved in run_dir/config.yaml):", *lines])


def _run_locked(command: str, cfg, run_dir: Path, args: Arguments) -> int:  # noqa: ANN001 - DictConfig
    """Run one command while holding ``<run_dir>/.lock``."""
    from puma_lightning.cli.config_loader import save_config
    from puma_lightning.pipeline.distributed import is_global_zero

    if is_global_zero():  # DDP re-runs the command on every rank: one writer
        save_config(cfg, run_dir / "config.yaml")
    if cfg.seeds and command != "prepare":
        from puma_lightning.commands.seeds import SEEDED_COMMANDS, run_seeds

        if command not in SEEDED_COMMANDS:
            raise PumaError(f"'seeds' applies to {', '.join(SEEDED_COMMANDS)}, not to {command}; use seed=N")
        run_seeds(cfg, command)  # the seeded commands take no arguments of their own
    else:
        COMMANDS[command].run(cfg, run_dir, args)
    return 0


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (tests and notebooks swap it)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


class _QuietLightning(logging.Filter):
    """Drops Lightning's per-Trainer hardware summary and product tips."""

    NOISE = ("💡 Tip", "GPU available", "TPU available", "HPU available", "LOCAL_RANK")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.NOISE)


def root_logs_to_console() -> bool:
    """Whether the application already gave the root logger a handler writing to the console (``logging.basicConfig``
    in a script or notebook): our records propagate to it, so a handler of our own would print each line twice."""
    consoles = (sys.stderr, sys.__stderr__, sys.stdout, sys.__stdout__)
    return any(isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in consoles
               for h in logging.getLogger().handlers)


def setup_runtime(cfg) -> None:  # noqa: ANN001 - DictConfig
    import torch

    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("puma_lightning")
    if not ours.handlers and not root_logs_to_console():  # else every line would print twice (ours, then the root's)
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    # Lightning repeats hardware and advertising lines for every Trainer; keep the useful ones
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_QuietLightning())
    # expected here: the frozen backbone stays in eval mode while the prompts/adapter train
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    if cfg.trainer.num_threads:
        torch.set_num_threads(int(cfg.trainer.num_threads))
    import lightning as L

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bank":  # bank tools take paths, not a config
        from puma_lightning.commands.bank import main as bank_main

        return one_line_errors(lambda: bank_main(argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    return one_line_errors(lambda: run(args.command, args.config, args.overrides, args.print_config))


def one_line_errors(body: Callable[[], int]) -> int:
    """Run ``body``; our errors become one ``error: ...`` line and exit code 2 (``PUMA_DEBUG=1``: the traceback)."""
    try:
        return body()
    except Exception as exc:
        from puma_lightning.tasks.base import NonFiniteLossError

        if os.environ.get("PUMA_DEBUG") or not isinstance(exc, (PumaError, FileNotFoundError, NonFiniteLossError)):
            raise
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
