"""The CLI's commands, one module per command: what ``python -m puma_lightning <command>`` runs on the loaded config.

Every command that takes a config is a :class:`Command` in :data:`COMMANDS` (``--help`` lists them in this order);
``bank`` takes paths instead (:mod:`puma_lightning.commands.bank`). ``cli/main.py`` only parses the command line,
loads the config and runs the command named here inside the run directory's lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from puma_lightning.commands.keys import EXPERIMENT_KEYS

__all__ = ["BANK_HELP", "COMMANDS", "Command", "EXPERIMENT_KEYS"]


@dataclass(frozen=True)
class Command:
    """One CLI command: its help text, the module that runs it, and the top-level config keys it reads."""

    help: str
    module: str
    """The module under :mod:`puma_lightning.commands` whose ``run(cfg, run_dir)`` the command is (imported when run)."""
    keys: tuple[str, ...] = EXPERIMENT_KEYS
    """Top-level config keys this command reads (its ``--help`` lists them)."""

    def run(self, cfg: Any, run_dir: Path) -> None:
        """Run the command on the loaded config."""
        import_module(f"puma_lightning.commands.{self.module}").run(cfg, run_dir)


COMMANDS: dict[str, Command] = {
    "prepare": Command("Read the raw files in data.raw_dir and write the processed dataset (reused when unchanged).", "prepare",
                       ("run_dir", "plugins", "data", "cache_dir")),
    "pretrain": Command("Train per-user soft prompts on one model (the source, or the target for the retraining baseline).",
                        "pretrain", ("run_dir", "seed", "plugins", "model", "data", "source", "target", "prompt", "trainer",
                                     "cache_dir", "resume")),
    "fit": Command("Run the whole PUMA experiment and print the comparison table (reuses finished stages in run_dir).", "fit"),
    "select": Command("Select the adapter's training users only; write selection.json, selection_summary.md, selection.png.",
                      "select", ("run_dir", "seed", "plugins", "data", "source", "prompt", "selection", "trainer", "cache_dir",
                                 "source_dir")),
    "migrate": Command("Apply a saved adapter to a prompt bank (bank=, or source.bank=) and write the migrated bank.", "migrate",
                       ("run_dir", "bank", "adapter_path", "out", "rows_per_shard", "trainer", "source")),
    "test": Command("Evaluate a prompt bank on a model and split.", "evaluate",
                    ("run_dir", "plugins", "bank", "model", "split", "data", "source", "target", "prompt", "trainer", "cache_dir")),
    "placebo": Command("Score a prompt bank's test rows with each user's own prompt and with its prompts dealt to other "
                       "users (a derangement seeded by seed; same head and rows); prints, per metric, both values and the "
                       "personal gain (how much better the own prompts are) with its 95 percent bootstrap interval, and writes "
                       "run_dir/placebo.json. An interval holding 0: no measurable personalisation.", "placebo",
                       ("run_dir", "seed", "plugins", "bank", "model", "placebo", "data", "source", "target", "prompt", "trainer",
                        "cache_dir")),
    "predict": Command("Score (user, item) pairs with a prompt bank on a model, or rank each user's candidates (top_k).",
                       "predict", ("run_dir", "plugins", "bank", "model", "pairs", "top_k", "out", "overwrite", "data", "source",
                                   "target", "prompt", "trainer", "cache_dir")),
    "chain": Command("Chained migration over chain.models [A, B, C, ...]: table and plot of the metric per hop vs full "
                     "retraining.", "chain", (*EXPERIMENT_KEYS, "chain")),
    "aggregate": Command("Aggregated migration of aggregate.sources [A, B, ...] to target: single-source vs aggregated table "
                         "and chart.", "aggregate", (*EXPERIMENT_KEYS, "aggregate")),
    "cold-start": Command("Users new on the target: source prompt + adapter, adapter init + fine-tuning, vs training from "
                          "scratch.", "cold_start", (*EXPERIMENT_KEYS, "cold_start")),
}
"""Every command that takes a config, in ``--help`` order."""

BANK_HELP = ("Inspect, compare, export and import prompt banks: bank info PATH | bank diff A B | bank export-peft PATH "
             "(--user ID | --all) --out DIR | bank import (--prompts FILE --users FILE | --peft DIR) --model NAME --out DIR.")
