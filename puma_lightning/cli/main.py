"""``python -m puma_lightning <command> --config FILE [--config FILE2] [key=value ...]``.

The commands and their help texts are :data:`COMMANDS` (``python -m puma_lightning --help`` lists
them); ``bank`` takes paths instead of a config (``bank --help``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from puma_lightning.cli.help import describe_config, describe_strategies
from puma_lightning.errors import PumaError


EXPERIMENT_KEYS = ("run_dir", "seed", "seeds", "plugins", "data", "source", "target", "prompt", "adapter", "selection", "baselines",
                   "trainer", "cache_dir", "source_dir", "resume", "placebo")
"""The config keys of a whole experiment (what ``fit`` and the topologies read)."""


@dataclass(frozen=True)
class Command:
    """One CLI command: its help text, what it runs on the loaded config (inside the run lock), and its keys."""

    help: str
    run: Callable[..., None]
    """``(cfg, run_dir)`` -> None."""
    keys: tuple[str, ...] = EXPERIMENT_KEYS
    """Top-level config keys this command reads (its ``--help`` lists them)."""


def _prepare(cfg, run_dir: Path) -> None:  # noqa: ANN001 - DictConfig
    from puma_lightning.data.prepare import run_prepare

    run_prepare(cfg)


def _fit(cfg, run_dir: Path) -> None:  # noqa: ANN001
    from puma_lightning.pipeline.experiment import Experiment

    Experiment(cfg).fit()


def _pretrain(cfg, run_dir: Path) -> None:  # noqa: ANN001
    from puma_lightning.pipeline.experiment import Experiment

    stage = "source" if cfg.model == "source" else "full_retrain"
    record = Experiment(cfg).pretrain(cfg.model, stage)
    print(f"{stage}: " + ", ".join(f"{k}={v:.4f}" for k, v in record["metrics"].items()) + f" (bank in {run_dir / stage / 'bank'})")


def _select(cfg, run_dir: Path) -> None:  # noqa: ANN001
    from puma_lightning.pipeline.select_cmd import run_select

    run_select(cfg)


def _migrate(cfg, run_dir: Path) -> None:  # noqa: ANN001
    from puma_lightning.pipeline.bank_ops import migrate_bank

    if not cfg.bank and cfg.source.get("bank"):  # the bank you imported, as fit reads it
        cfg.bank = cfg.source.bank
    for key in ("bank", "adapter_path", "out"):
        if not cfg[key]:
            raise PumaError(f"migrate needs '{key}=PATH'" + (" (or source.bank=PATH)" if key == "bank" else ""))
    from puma_lightning.pipeline.distributed import is_global_zero
    from puma_lightning.pipeline.training import make_trainer

    trainer = make_trainer(cfg, run_dir, "migrate", max_epochs=1, log=False)
    bank = migrate_bank(cfg.bank, cfg.adapter_path, cfg.out, cfg.get("rows_per_shard"), trainer=trainer)
    if is_global_zero():
        print(f"migrated {len(bank.user_ids)} prompts to {bank.model_name} (hidden {bank.hidden_size}) -> {cfg.out}")


def _test(cfg, run_dir: Path) -> None:  # noqa: ANN001
    from puma_lightning.pipeline.bank_ops import evaluate_bank

    if not cfg.bank:
        raise PumaError("test needs 'bank=PATH'")
    evaluate_bank(cfg, cfg.bank, cfg.model, cfg.split)


def _placebo(cfg, run_dir: Path) -> None:  # noqa: ANN001
    from puma_lightning.pipeline.placebo_cmd import run_placebo

    run_placebo(cfg)


def _predict(cfg, run_dir: Path) -> None:  # noqa: ANN001
    from puma_lightning.pipeline.predict import run_predict

    run_predict(cfg)


def _chain(cfg, run_dir: Path) -> None:  # noqa: ANN001
    from puma_lightning.pipeline.chain import run_chain

    run_chain(cfg)


def _aggregate(cfg, run_dir: Path) -> None:  # noqa: ANN001
    from puma_lightning.pipeline.aggregate import run_aggregate

    run_aggregate(cfg)


def _cold_start(cfg, run_dir: Path) -> None:  # noqa: ANN001
    from puma_lightning.pipeline.cold_start import run_cold_start

    run_cold_start(cfg)


COMMANDS: dict[str, Command] = {
    "prepare": Command("Read the raw files in data.raw_dir and write the processed dataset (reused when unchanged).", _prepare,
                       ("run_dir", "data", "cache_dir")),
    "pretrain": Command("Train per-user soft prompts on one model (the source, or the target for the retraining baseline).",
                        _pretrain, ("run_dir", "seed", "model", "data", "source", "target", "prompt", "trainer", "cache_dir",
                                    "resume")),
    "fit": Command("Run the whole PUMA experiment and print the comparison table (reuses finished stages in run_dir).", _fit),
    "select": Command("Select the adapter's training users only; write selection.json, selection_summary.md, selection.png.",
                      _select, ("run_dir", "seed", "data", "source", "prompt", "selection", "trainer", "cache_dir", "source_dir")),
    "migrate": Command("Apply a saved adapter to a prompt bank (bank=, or source.bank=) and write the migrated bank.", _migrate,
                       ("run_dir", "bank", "adapter_path", "out", "rows_per_shard", "trainer", "source")),
    "test": Command("Evaluate a prompt bank on a model and split.", _test,
                    ("run_dir", "bank", "model", "split", "data", "source", "target", "prompt", "trainer", "cache_dir")),
    "placebo": Command("Score a prompt bank's test rows with each user's own prompt and with its prompts dealt to other "
                       "users (a derangement seeded by seed; same head and rows); prints, per metric, both values and the "
                       "personal gain (how much better the own prompts are) with its 95 percent bootstrap interval, and writes "
                       "run_dir/placebo.json. An interval holding 0: no measurable personalisation.", _placebo,
                       ("run_dir", "seed", "bank", "model", "placebo", "data", "source", "target", "prompt", "trainer",
                        "cache_dir")),
    "predict": Command("Score (user, item) pairs with a prompt bank on a model, or rank each user's candidates (top_k).",
                       _predict, ("run_dir", "bank", "model", "pairs", "top_k", "out", "overwrite", "data", "source", "target", "prompt",
                                  "trainer", "cache_dir")),
    "chain": Command("Chained migration over chain.models [A, B, C, ...]: table and plot of the metric per hop vs full "
                     "retraining.", _chain, (*EXPERIMENT_KEYS, "chain")),
    "aggregate": Command("Aggregated migration of aggregate.sources [A, B, ...] to target: single-source vs aggregated table "
                         "and chart.", _aggregate, (*EXPERIMENT_KEYS, "aggregate")),
    "cold-start": Command("Users new on the target: source prompt + adapter, adapter init + fine-tuning, vs training from "
                          "scratch.", _cold_start, (*EXPERIMENT_KEYS, "cold_start")),
}
"""Every command that takes a config, in ``--help`` order."""

BANK_HELP = ("Inspect, compare, export and import prompt banks: bank info PATH | bank diff A B | bank export-peft PATH "
             "(--user ID | --all) --out DIR | bank import (--prompts FILE --users FILE | --peft DIR) --model NAME --out DIR.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m puma_lightning",
        description="Migrate per-user soft prompts between foundation LLMs with a PUMA adapter.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Config keys (override any with key=value; COMMAND --help lists that command's own, and each selection "
               "strategy's parameters):\n" + describe_config(),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        epilog = "Config keys of this command (override any with key=value):\n" + describe_config(only=command.keys)
        if "selection" in command.keys:
            epilog += "\n\nSelection strategies (selection=NAME) and their parameters:\n" + describe_strategies()
        p = sub.add_parser(name, help=command.help, description=command.help, formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=epilog)
        p.add_argument("--config", action="append", default=[], metavar="FILE",
                       help="YAML config file; repeat to merge several (later files win)")
        p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="OmegaConf dotlist overrides, e.g. trainer.max_epochs=2; selection=NAME loads strategies/NAME.yaml")
    sub.add_parser("bank", help=BANK_HELP, description=BANK_HELP, add_help=False)  # parsed by cli.bank_cmd
    return parser


def run(command: str, config_files: Sequence[str], overrides: Sequence[str], print_config: bool = False) -> int:
    """Load the config and run one command; returns the process exit code."""
    from omegaconf import OmegaConf

    from puma_lightning.cli.config_loader import load_config

    cfg = load_config(config_files, overrides)
    if print_config:
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        return 0
    setup_runtime(cfg)
    from puma_lightning.io.lock import RunLock
    from puma_lightning.io.ownership import RECORD_FILE, check_run_dir_path, claim_run_dir
    from puma_lightning.pipeline.run_dir import RunDir, as_it_was_on_failure

    run_dir = RunDir.of(cfg).path
    check_run_dir_path(run_dir)
    check_outputs(cfg, config_files)
    with as_it_was_on_failure(run_dir, ("config.yaml", RECORD_FILE)):
        claim_run_dir(run_dir)  # a folder we did not make is refused before anything is written into it
        with RunLock(run_dir, command=" ".join([command, *overrides])):
            return _run_locked(command, cfg, run_dir)


OUTPUT_INPUTS = ("bank", "pairs", "adapter_path", "source_dir")
"""Config keys naming inputs that ``out`` may never replace (with the config files themselves)."""


def check_outputs(cfg, config_files: Sequence[str]) -> None:  # noqa: ANN001 - DictConfig
    """Refuse, before any work, an ``out`` that is one of the command's inputs (or inside one, or holding one)."""
    from puma_lightning.io.ownership import check_not_an_input

    out = cfg.get("out")
    if not out:
        return
    inputs = {key: cfg.get(key) for key in OUTPUT_INPUTS}
    inputs["source.bank"] = cfg.source.get("bank")
    inputs.update({f"--config #{i + 1}": path for i, path in enumerate(config_files)})
    check_not_an_input(out, inputs)


def _run_locked(command: str, cfg, run_dir: Path) -> int:  # noqa: ANN001 - DictConfig
    """Run one command while holding ``<run_dir>/.lock``."""
    from puma_lightning.cli.config_loader import save_config
    from puma_lightning.pipeline.distributed import is_global_zero

    if is_global_zero():  # DDP re-runs the command on every rank: one writer
        save_config(cfg, run_dir / "config.yaml")
    if cfg.seeds and command != "prepare":
        from puma_lightning.pipeline.seeds import SEEDED_COMMANDS, run_seeds

        if command not in SEEDED_COMMANDS:
            raise PumaError(f"'seeds' applies to {', '.join(SEEDED_COMMANDS)}, not to {command}; use seed=N")
        run_seeds(cfg, command)
    else:
        COMMANDS[command].run(cfg, run_dir)
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
        from puma_lightning.cli.bank_cmd import main as bank_main

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
