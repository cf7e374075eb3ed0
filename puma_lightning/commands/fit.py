"""``fit``: the whole experiment (every enabled results row, :mod:`puma_lightning.pipeline.stages`) and its table."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from puma_lightning.commands.arguments import Arguments
from puma_lightning.pipeline.experiment import Experiment


def run(cfg: DictConfig, run_dir: Path, args: Arguments) -> None:
    """Run (or reuse) every stage ``cfg`` enables and write ``results.json`` / ``results.md``."""
    Experiment(cfg).fit()
